//! Parsing `/proc/PID/maps`: which file backs an address, at which file offset.

use std::path::Path;

/// Most of `/proc/PID/maps` read: the kernel's default `vm.max_map_count` (65530) lines of
/// ~100 bytes, with room for long paths.
pub const MAX_MAPS_BYTES: u64 = 64 << 20;

/// One line of `/proc/PID/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub readable: bool,
    pub executable: bool,
    /// Offset in the backing file of `start`.
    pub offset: u64,
    pub inode: u64,
    /// Backing path as the target sees it (inside its mount namespace), or a pseudo name such
    /// as `[heap]`; `None` for anonymous memory.
    pub path: Option<String>,
}

impl Mapping {
    /// Whether the mapping is backed by a real file (not `[heap]`, `[vdso]`, deleted memfd...).
    pub fn is_file(&self) -> bool {
        self.inode != 0 && self.path.as_deref().is_some_and(|p| p.starts_with('/'))
    }

    /// Offset in the backing file of `addr` (an address inside the mapping). The kernel's
    /// numbers are read as text: one past `u64` saturates instead of overflowing.
    pub fn file_offset(&self, addr: u64) -> u64 {
        addr.saturating_sub(self.start).saturating_add(self.offset)
    }
}

/// Parses the text of a maps file; malformed lines are skipped. The result is sorted by start.
pub fn parse(text: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = text.lines().filter_map(parse_line).collect();
    out.sort_by_key(|m| m.start);
    out
}

fn parse_line(line: &str) -> Option<Mapping> {
    // start-end perms offset dev inode [path]; the path may contain spaces.
    let mut rest = line;
    let mut field = || {
        let s = rest.trim_start();
        let end = s.find(char::is_whitespace).unwrap_or(s.len());
        let (f, r) = s.split_at(end);
        rest = r;
        (!f.is_empty()).then_some(f)
    };
    let range = field()?;
    let perms = field()?;
    let offset = field()?;
    let _dev = field()?;
    let inode = field()?;
    let path = rest.trim();
    let (start, end) = range.split_once('-')?;
    let perms = perms.as_bytes();
    if perms.len() < 4 {
        return None;
    }
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        readable: perms[0] == b'r',
        executable: perms[2] == b'x',
        offset: u64::from_str_radix(offset, 16).ok()?,
        inode: inode.parse().ok()?,
        path: (!path.is_empty()).then(|| path.to_string()),
    })
}

/// A snapshot of one process's mappings.
#[derive(Clone, Debug, Default)]
pub struct ProcMaps {
    maps: Vec<Mapping>,
}

impl ProcMaps {
    pub fn new(maps: Vec<Mapping>) -> Self {
        let mut maps = maps;
        maps.sort_by_key(|m| m.start);
        Self { maps }
    }

    /// Reads `/proc/PID/maps`, at most [`MAX_MAPS_BYTES`] of it.
    pub fn read(pid: u32) -> std::io::Result<Self> {
        use std::io::Read as _;
        let file = std::fs::File::open(format!("/proc/{pid}/maps"))?;
        let mut raw = Vec::new();
        file.take(MAX_MAPS_BYTES).read_to_end(&mut raw)?;
        if raw.len() as u64 >= MAX_MAPS_BYTES {
            return Err(std::io::Error::other(format!(
                "/proc/{pid}/maps is larger than {MAX_MAPS_BYTES} bytes"
            )));
        }
        Ok(Self::new(parse(&String::from_utf8_lossy(&raw))))
    }

    pub fn find(&self, addr: u64) -> Option<&Mapping> {
        let i = self.maps.partition_point(|m| m.start <= addr);
        let m = self.maps.get(i.checked_sub(1)?)?;
        (addr < m.end).then_some(m)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Mapping> {
        self.maps.iter()
    }

    /// The first file mapping whose file name satisfies `pred`.
    pub fn find_file(&self, pred: impl Fn(&str) -> bool) -> Option<&Mapping> {
        self.maps.iter().find(|m| {
            m.is_file()
                && m.path
                    .as_deref()
                    .and_then(|p| Path::new(p).file_name())
                    .and_then(|n| n.to_str())
                    .is_some_and(&pred)
        })
    }
}

/// A path through which this process can open the file behind a mapping of process `pid`,
/// whatever mount namespace or root the process lives in: `/proc/PID/map_files/START-END`
/// (the mapped file itself), else the path under `/proc/PID/root`, else the path as printed.
/// (`/proc/PID/maps` prints paths as seen from the reader's root, and a container's files may
/// not be reachable by that path at all.)
pub fn openable_path(pid: u32, m: &Mapping) -> std::path::PathBuf {
    let map_file =
        std::path::PathBuf::from(format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end));
    if std::fs::metadata(&map_file).is_ok() {
        return map_file;
    }
    let path = m.path.as_deref().unwrap_or("");
    let under_root = Path::new("/proc")
        .join(pid.to_string())
        .join("root")
        .join(path.trim_start_matches('/'));
    if std::fs::metadata(&under_root).is_ok() {
        return under_root;
    }
    std::path::PathBuf::from(path)
}

/// Whether a file name is glibc's (or another libc's) shared object.
pub fn is_libc_name(name: &str) -> bool {
    name == "libc.so.6"
        || name.starts_with("libc-") && name.ends_with(".so")
        || name.starts_with("libc.musl-")
        || name.starts_with("ld-musl-")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 fe:01 1234                       /usr/bin/fixture
55d0c0a01000-55d0c0a02000 r-xp 00001000 fe:01 1234                       /usr/bin/fixture
55d0c1e4d000-55d0c1e6e000 rw-p 00000000 00:00 0                          [heap]
7f1a2b400000-7f1a2b428000 r--p 00000000 fe:01 5678                       /usr/lib/x86_64-linux-gnu/libc.so.6
7f1a2b428000-7f1a2b59d000 r-xp 00028000 fe:01 5678                       /usr/lib/x86_64-linux-gnu/libc.so.6
7f1a2b600000-7f1a2b700000 rw-p 00000000 00:00 0 
7f1a2b800000-7f1a2b801000 r-xp 00000000 fe:01 99                         /opt/my app/lib with space.so
7ffd6a5f0000-7ffd6a5f2000 r-xp 00000000 00:00 0                          [vdso]
";

    #[test]
    fn parses_every_field() {
        let maps = parse(SAMPLE);
        assert_eq!(maps.len(), 8);
        let libc_text = &maps[4];
        assert_eq!(libc_text.start, 0x7f1a2b428000);
        assert_eq!(libc_text.end, 0x7f1a2b59d000);
        assert!(libc_text.executable && libc_text.readable);
        assert_eq!(libc_text.offset, 0x28000);
        assert_eq!(libc_text.inode, 5678);
        assert_eq!(
            libc_text.path.as_deref(),
            Some("/usr/lib/x86_64-linux-gnu/libc.so.6")
        );
        assert_eq!(maps[5].path, None);
        assert!(!maps[2].is_file(), "[heap] is not a file");
        assert_eq!(
            maps[6].path.as_deref(),
            Some("/opt/my app/lib with space.so")
        );
    }

    #[test]
    fn finds_address_and_file_offset() {
        let maps = ProcMaps::new(parse(SAMPLE));
        let m = maps.find(0x7f1a2b428010).expect("inside libc text");
        assert_eq!(m.file_offset(0x7f1a2b428010), 0x28010);
        assert!(maps.find(0x7f1a2b59d000).is_none(), "end is exclusive");
        assert!(maps.find(0x1000).is_none());
        assert_eq!(maps.find(0x55d0c0a00000).map(|m| m.inode), Some(1234));
    }

    #[test]
    fn recognises_libc() {
        let maps = ProcMaps::new(parse(SAMPLE));
        let libc = maps.find_file(is_libc_name).expect("libc mapped");
        assert_eq!(libc.start, 0x7f1a2b400000);
        assert!(is_libc_name("libc-2.31.so"));
        assert!(!is_libc_name("libcrypto.so.3"));
    }

    /// From the fuzz target `procmaps`: an offset near the top of the address space.
    #[test]
    fn file_offset_past_u64() {
        let maps = ProcMaps::new(parse("1000-3000 r-xp fffffffffffff000 fe:01 7 /lib/x.so\n"));
        let m = maps.find(0x2fff).expect("inside");
        assert_eq!(m.file_offset(0x1000), 0xfffffffffffff000);
        assert_eq!(m.file_offset(0x2fff), u64::MAX);
    }

    #[test]
    fn skips_garbage() {
        assert!(parse("not a maps line\n\n12-zz r-xp 0 0 0\n").is_empty());
    }
}
