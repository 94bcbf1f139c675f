//! Finding what to trace in a process: is it alive, which allocator does it use.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::{
    error::user,
    target::{
        elf::ElfFile,
        procmaps::{is_libc_name, ProcMaps},
    },
};

/// A process being traced.
#[derive(Clone, Debug)]
pub struct TargetProcess {
    pub pid: u32,
    /// The executable as the target sees it.
    pub exe: String,
    /// The file whose allocator is probed, as the target sees it.
    pub allocator: String,
    /// The same file as this process can open it (through `/proc/PID/root`).
    pub allocator_host_path: PathBuf,
    /// Start time in clock ticks since boot: tells a PID reused by another process apart.
    start_time: u64,
}

/// The fields of `/proc/PID/stat` that matter here: state and start time.
fn parse_stat(stat: &str) -> Option<(char, u64)> {
    // The command name is in parentheses and may itself contain spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3 of the full line, starttime field 22.
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

fn read_stat(pid: u32) -> Option<(char, u64)> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

impl TargetProcess {
    /// A process to read, not to trace (`leaktrace heap`): the checks of [`Self::discover`]
    /// without the allocator, which a reader does not need (a process whose dynamic loader has
    /// not mapped libc yet, or one without libc, is still read).
    pub fn for_reading(pid: u32) -> Result<Self> {
        let (exe, start_time) = Self::check(pid)?;
        Ok(Self {
            pid,
            exe,
            allocator_host_path: PathBuf::new(),
            allocator: String::new(),
            start_time,
        })
    }

    /// That `pid` is another process that runs: its executable and start time.
    fn check(pid: u32) -> Result<(String, u64)> {
        if pid == std::process::id() {
            return Err(user(
                "refusing to trace leaktrace itself: give the PID of the process to trace",
            ));
        }
        let Some((state, start_time)) = read_stat(pid) else {
            return Err(user(format!(
                "no process with PID {pid}: check the PID (ps -ef, pgrep -f) and that it still runs"
            )));
        };
        if matches!(state, 'Z' | 'X') {
            return Err(user(format!(
                "process {pid} has already exited: nothing to trace"
            )));
        }
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok((exe, start_time))
    }

    pub fn discover(pid: u32) -> Result<Self> {
        let (exe, start_time) = Self::check(pid)?;
        let maps = ProcMaps::read(pid).map_err(|e| {
            user(format!(
                "cannot read /proc/{pid}/maps ({e}): run leaktrace as root"
            ))
        })?;
        let (allocator, allocator_host_path) = if let Some(libc) = maps.find_file(is_libc_name) {
            (
                libc.path.clone().expect("file mappings have paths"),
                crate::target::procmaps::openable_path(pid, libc),
            )
        } else if ElfFile::open(Path::new(&format!("/proc/{pid}/exe")))
            .is_ok_and(|e| e.function("malloc").is_some())
        {
            // A statically linked program carries its allocator in the executable.
            (exe.clone(), PathBuf::from(format!("/proc/{pid}/exe")))
        } else if maps.iter().next().is_none() {
            return Err(user(format!(
                "process {pid} has no user memory (a kernel thread?): give the PID of a user-space process"
            )));
        } else {
            return Err(user(format!(
                "libc not found in process {pid} ({exe}): leaktrace traces the C library's allocator, and this process maps none"
            )));
        };
        Ok(Self {
            pid,
            exe,
            allocator_host_path,
            allocator,
            start_time,
        })
    }

    /// A command leaktrace forked and stopped before it ran: it will run `exe`, which either
    /// carries its own allocator (static) or uses the same C library as leaktrace.
    pub fn for_new_command(pid: u32, exe: &Path) -> Result<Self> {
        let (_, start_time) = read_stat(pid).ok_or_else(|| {
            user(format!(
                "the command (pid {pid}) ended before it could be traced"
            ))
        })?;
        let exe_str = exe.to_string_lossy().into_owned();
        let is_static = ElfFile::open(exe).is_ok_and(|e| e.function("malloc").is_some())
            && !has_interpreter(exe);
        let allocator = if is_static {
            exe_str.clone()
        } else {
            let own = ProcMaps::read(std::process::id())
                .map_err(|e| user(format!("cannot read leaktrace's own maps: {e}")))?;
            own.find_file(is_libc_name)
                .and_then(|m| m.path.clone())
                .ok_or_else(|| user("cannot find the C library leaktrace itself uses"))?
        };
        Ok(Self {
            pid,
            exe: exe_str,
            allocator_host_path: PathBuf::from(&allocator),
            allocator,
            start_time,
        })
    }

    /// Whether the process still runs (and the PID was not reused).
    pub fn is_alive(&self) -> bool {
        matches!(read_stat(self.pid), Some((state, start)) if start == self.start_time && !matches!(state, 'Z' | 'X'))
    }

    pub fn allocator_module(&self) -> String {
        Path::new(&self.allocator)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.allocator.clone())
    }
}

/// The children of `pid` (of every one of its threads), from `/proc/PID/task/TID/children`.
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Every descendant of `root` (children, their children, ...), at most `limit` of them,
/// leaving out `exclude` (leaktrace itself, when it is one).
pub fn descendants(root: u32, exclude: u32, limit: usize) -> Vec<u32> {
    let mut out = Vec::new();
    let mut queue = vec![root];
    while let Some(p) = queue.pop() {
        for c in children(p) {
            if c == exclude || c == root || out.contains(&c) {
                continue;
            }
            if out.len() >= limit {
                return out;
            }
            out.push(c);
            queue.push(c);
        }
    }
    out.sort_unstable();
    out
}

/// Marks a process as traced by this leaktrace for as long as it is held (an advisory lock on
/// `/run/leaktrace/PID.lock`, released by the kernel when leaktrace exits, however it exits).
pub struct TraceLock {
    _file: std::fs::File,
}

impl TraceLock {
    /// Takes the lock for `pid`. Another leaktrace tracing the same process is not an error
    /// (each has its own probes and maps): its PID is returned so the user can be told that
    /// the target pays for both.
    pub fn take(pid: u32) -> (Option<TraceLock>, Option<u32>) {
        use std::{
            io::{Read, Seek, Write},
            os::fd::AsRawFd,
        };
        let dir = Path::new("/run/leaktrace");
        if std::fs::create_dir_all(dir).is_err() {
            return (None, None);
        }
        let Ok(mut file) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(format!("{pid}.lock")))
        else {
            return (None, None);
        };
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let mut other = String::new();
            let _ = file.read_to_string(&mut other);
            return (None, other.trim().parse().ok());
        }
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = write!(file, "{}", std::process::id());
        (Some(TraceLock { _file: file }), None)
    }
}

/// Whether an ELF file asks for a dynamic loader (PT_INTERP), i.e. is not static.
fn has_interpreter(path: &Path) -> bool {
    use object::{read::elf::ProgramHeader, Object};
    let Ok(data) = std::fs::read(path) else {
        return false;
    };
    match object::File::parse(&*data) {
        Ok(object::File::Elf64(elf)) => elf
            .elf_program_headers()
            .iter()
            .any(|ph| ph.p_type(elf.endian()) == object::elf::PT_INTERP),
        Ok(f) => f.kind() == object::ObjectKind::Dynamic,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_children_and_grandchildren() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & sleep 30 & wait"])
            .spawn()
            .unwrap();
        let pid = child.id();
        let me = std::process::id();
        let mut found = Vec::new();
        for _ in 0..200 {
            found = descendants(me, 0, 100);
            if found.contains(&pid) && children(pid).len() == 2 {
                found = descendants(me, 0, 100);
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let grandchildren = children(pid);
        let _ = std::process::Command::new("pkill")
            .args(["-P", &pid.to_string()])
            .status();
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.contains(&pid), "{found:?}");
        assert_eq!(grandchildren.len(), 2, "{grandchildren:?}");
        for g in &grandchildren {
            assert!(found.contains(g), "{found:?} lacks grandchild {g}");
        }
        assert!(descendants(me, pid, 100).iter().all(|p| *p != pid));
    }

    #[test]
    fn parses_stat_with_odd_names() {
        let stat = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 987654 1000000 200 18446744073709551615";
        assert_eq!(parse_stat(stat), Some(('S', 987654)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn discovers_this_test_process_parent_and_rejects_bad_pids() {
        let me = TargetProcess::discover(std::process::id()).unwrap_err();
        assert!(me.to_string().contains("itself"));
        let none = TargetProcess::discover(u32::MAX - 1).unwrap_err();
        assert!(none.to_string().contains("no process with PID"), "{none}");
        // The test harness's parent (cargo) is a real glibc process.
        let ppid = std::os::unix::process::parent_id();
        let t = TargetProcess::discover(ppid).expect("parent process is traceable");
        assert_eq!(t.allocator_module(), "libc.so.6");
        assert!(t.allocator_host_path.exists());
        assert!(t.is_alive());
    }
}
