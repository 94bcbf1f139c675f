//! Holders that are C structures: the static variables of the interpreter and of its extension
//! modules (their writable segments, `.data` and `.bss`), and the C objects those point at.
//!
//! After the globals' and class attributes' walks, every word of those segments (at most
//! [`MAX_STATIC_BYTES`] in all) that is the address of an object on the GC's lists makes that
//! object held. One that no global reached becomes an owner row of its own, named by the file
//! and the ELF symbol covering the word, `py_cholder.cpython-312-x86_64-linux-gnu.so:registry`
//! (`+0xOFF` inside a larger symbol; `file+0xOFF`, from the file's load address, in a file
//! without symbols). When the object is a C object whose own memory holds containers (an
//! extension type's `PyObject *items`, an `lru_cache` wrapper's cache), each such container is
//! the row, named through its holder: `...so:holder→py_cholder.Holder+0x10`, or
//! `→functools._lru_cache_wrapper.cache` where the field is known.
//!
//! Words inside static type objects (a static type's `tp_dict`, `tp_mro`, `tp_subclasses`)
//! are left out: they are the types' own, not a holder's.
//!
//! [`find`] reads `/proc/PID/maps` and the ELF files (privileged I/O, done once per plan); the
//! scan itself reads only through the census's [`super::Source`].

use object::{Object, ObjectSymbol, SymbolKind};

use super::{named, AddrSet, Kind, Owner, Walker, ON_GC_LIST};
use crate::target::procmaps::{openable_path, ProcMaps};

/// Bytes of static segments scanned per census at most (the census says when it stops).
pub const MAX_STATIC_BYTES: u64 = 64 << 20;
/// ELF files larger than this are not read for their segments.
const MAX_FILE_BYTES: u64 = 256 << 20;
/// Bytes of a static type object skipped from its `ob_type` word on (`PyTypeObject` is about
/// 400 bytes on 3.8-3.15; the heap type's extra fields are not in static types).
const TYPE_SPAN: u64 = 400;
/// Owner rows made from static variables at most (the rest are held, not listed).
const MAX_STATIC_ROWS: usize = 10_000;

/// A data symbol of a segment: `[start, end)` and its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticSymbol {
    pub start: u64,
    pub end: u64,
    pub name: String,
}

/// One writable segment of a loaded ELF file, in the target's addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub start: u64,
    pub end: u64,
    /// The file's name (no folder), as owner paths show it.
    pub file: String,
    /// Where the file's virtual address 0 is in the target (offsets without a symbol are from
    /// there).
    pub bias: u64,
    /// Data symbols inside the segment, sorted by start.
    pub symbols: Vec<StaticSymbol>,
}

impl Segment {
    /// The data symbol covering `addr` (one of no size covers its first word).
    pub fn symbol_at(&self, addr: u64) -> Option<&StaticSymbol> {
        let i = self.symbols.partition_point(|s| s.start <= addr);
        let s = &self.symbols[i.checked_sub(1)?];
        (addr < s.end.max(s.start.saturating_add(8))).then_some(s)
    }

    /// The name of the word at `addr`: `file:symbol`, `file:symbol+0xOFF`, or `file+0xOFF`.
    pub fn name_of(&self, addr: u64) -> String {
        match self.symbol_at(addr) {
            Some(s) if addr == s.start => format!("{}:{}", self.file, s.name),
            Some(s) => format!("{}:{}+{:#x}", self.file, s.name, addr - s.start),
            None => format!("{}+{:#x}", self.file, addr.wrapping_sub(self.bias)),
        }
    }
}

/// Symbols whose objects make one row, named by the symbol and typed by the C struct it is:
/// the interpreter's runtime state (3.12+ keeps the main interpreter in it, with the static
/// types' dicts, the codec registry and other caches: a row for each would bury the
/// application's).
const GROUPED: &[(&str, &str)] = &[("_PyRuntime", "_PyRuntimeState")];

/// Whether a loaded file may hold Python objects in its static variables: an extension
/// module (`*.cpython-*.so`, `*.abi3.so`, anything in `lib-dynload`), libpython, or the
/// interpreter's own executable or library (`interp_file`).
pub fn may_hold_objects(path: &str, interp_file: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    path == interp_file
        || name.starts_with("libpython")
        || (name.ends_with(".so") && (name.contains(".cpython-") || name.contains(".abi3.")))
        || (path.contains("/lib-dynload/") && name.ends_with(".so"))
}

/// The writable segments of every file of process `pid` that [`may_hold_objects`], with their
/// data symbols, extension modules first (the census names a container by the first static
/// variable found holding it: an extension's is the more telling name); a file that cannot be
/// read or parsed is left out.
pub fn find(pid: u32, maps: &ProcMaps, interp_file: &str) -> Vec<Segment> {
    let (mut out, mut last) = (Vec::new(), Vec::new());
    let mut seen = std::collections::HashSet::new();
    for m in maps.iter() {
        let Some(path) = m.path.as_deref() else {
            continue;
        };
        if m.offset != 0 || !m.is_file() || !may_hold_objects(path, interp_file) {
            continue;
        }
        if !seen.insert(path.to_string()) {
            continue;
        }
        let file = openable_path(pid, m);
        if std::fs::metadata(&file).map_or(true, |md| md.len() > MAX_FILE_BYTES) {
            continue;
        }
        let Ok(data) = crate::target::elf::read_file(&file) else {
            continue;
        };
        let name = path.rsplit('/').next().unwrap_or(path).to_string();
        let segs = segments_of(&data, m.start, &name);
        if path == interp_file || name.starts_with("libpython") {
            last.extend(segs);
        } else {
            out.extend(segs);
        }
    }
    out.extend(last);
    out
}

/// The writable `PT_LOAD` segments of the ELF file `data` mapped from offset 0 at `start`.
pub fn segments_of(data: &[u8], start: u64, name: &str) -> Vec<Segment> {
    let Ok(file) = object::File::parse(data) else {
        return Vec::new();
    };
    let object::File::Elf64(elf) = &file else {
        return Vec::new();
    };
    use object::read::elf::ProgramHeader;
    let endian = elf.endian();
    let loads: Vec<_> = elf
        .elf_program_headers()
        .iter()
        .filter(|p| p.p_type(endian) == object::elf::PT_LOAD)
        .collect();
    // The load bias, from the segment that starts the file (mapped at `start`).
    let Some(first) = loads.iter().find(|p| p.p_offset(endian) == 0) else {
        return Vec::new();
    };
    let Some(bias) = start.checked_sub(first.p_vaddr(endian)) else {
        return Vec::new();
    };
    let mut out: Vec<Segment> = loads
        .iter()
        .filter(|p| p.p_flags(endian) & object::elf::PF_W != 0 && p.p_memsz(endian) > 0)
        .filter_map(|p| {
            let s = bias.checked_add(p.p_vaddr(endian))? & !7;
            let e = s.checked_add(p.p_memsz(endian))?;
            Some(Segment {
                start: s,
                end: e,
                file: name.to_string(),
                bias,
                symbols: Vec::new(),
            })
        })
        .collect();
    for sym in file.symbols().chain(file.dynamic_symbols()) {
        if sym.kind() != SymbolKind::Data || sym.is_undefined() || sym.address() == 0 {
            continue;
        }
        let (Ok(n), Some(a)) = (sym.name(), bias.checked_add(sym.address())) else {
            continue;
        };
        if n.is_empty() {
            continue;
        }
        if let Some(seg) = out.iter_mut().find(|s| a >= s.start && a < s.end) {
            seg.symbols.push(StaticSymbol {
                start: a,
                end: a.saturating_add(sym.size()),
                name: n.to_string(),
            });
        }
    }
    for seg in &mut out {
        seg.symbols
            .sort_by(|a, b| a.start.cmp(&b.start).then(a.name.cmp(&b.name)));
        seg.symbols.dedup_by_key(|s| s.start);
    }
    out
}

impl Walker<'_> {
    /// The address of the `type` type, if the census has read it (the `ob_type` of every
    /// static type object).
    fn type_type(&self) -> Option<u64> {
        self.types
            .values()
            .flatten()
            .find(|t| t.name == "type" && t.flags & super::HEAPTYPE == 0)
            .map(|t| t.addr)
    }

    /// Owner rows for the objects the static segments hold that no global reached, and every
    /// object they hold marked held (see the module's comment).
    pub(super) fn static_owners(&mut self) -> Vec<Owner> {
        let segments = std::mem::take(&mut self.statics);
        let type_type = self.type_type();
        let lru_cache = named::obj_offsets(self.hl.minor).map(|o| o.lru_cache);
        let chunk = self.lim.max_read_bytes as u64 & !7;
        let mut budget = MAX_STATIC_BYTES;
        let mut owners = Vec::new();
        // Objects already made a row (or found held by a row) in this scan.
        let mut done = AddrSet::default();
        // Per grouped symbol (its path and struct name), the objects it holds.
        let mut grouped: Vec<(String, &str, Vec<u64>)> = Vec::new();
        'segments: for seg in &segments {
            // Inside a static type object until this address.
            let mut skip_until = 0u64;
            let mut at = seg.start;
            while at < seg.end {
                if self.over_budget() {
                    break 'segments;
                }
                if budget == 0 {
                    self.stop(format!(
                        "{} MiB of C static variables scanned (the limit): containers held only by C code beyond them are not named",
                        MAX_STATIC_BYTES >> 20
                    ));
                    break 'segments;
                }
                let len = chunk.min(seg.end - at).min(budget);
                budget -= len;
                let Some(b) = self.read(at, len as usize) else {
                    at += len;
                    continue;
                };
                let words: Vec<u64> = b
                    .chunks_exact(8)
                    .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                for (i, &w) in words.iter().enumerate() {
                    let here = at + 8 * i as u64;
                    if Some(w) == type_type && i > 0 {
                        // `ob_type` of a static type: its refcount was the word before.
                        skip_until = here - 8 + TYPE_SPAN;
                    }
                    if here < skip_until || !w.is_multiple_of(8) || w == 0 {
                        continue;
                    }
                    let m = self.counted.get(&w).copied();
                    let gc = m.is_some_and(|m| m.flags & ON_GC_LIST != 0);
                    // An untracked container (a list or dict of strings) counts when it is
                    // not empty.
                    if !gc && !self.nonempty_untracked(w) {
                        continue;
                    }
                    if gc {
                        // Held by C code, whatever else holds it.
                        self.frontier.push(w);
                    }
                    if m.is_some_and(|m| m.root != 0)
                        || self.no_follow.contains(&w)
                        || !done.insert(w)
                    {
                        continue;
                    }
                    let sym = seg.symbol_at(here);
                    if let Some(&(_, ty)) = GROUPED
                        .iter()
                        .find(|(n, _)| sym.is_some_and(|s| s.name == *n))
                    {
                        let path = format!("{}:{}", seg.file, sym.map_or("", |s| &s.name));
                        match grouped.iter_mut().find(|g| g.0 == path) {
                            Some(g) => g.2.push(w),
                            None => grouped.push((path, ty, vec![w])),
                        }
                        continue;
                    }
                    if owners.len() < MAX_STATIC_ROWS {
                        let path = seg.name_of(here);
                        owners.extend(self.static_rows(w, path, lru_cache));
                    }
                }
                at += len;
            }
        }
        for (path, ty, objs) in grouped {
            // What an earlier row reached is that row's.
            let objs: Vec<u64> = objs
                .into_iter()
                .filter(|o| self.counted.get(o).is_none_or(|m| m.root == 0))
                .collect();
            if objs.is_empty() {
                continue;
            }
            let (retained_bytes, _, _) = self.retained_all(&objs);
            owners.push(Owner {
                path,
                type_name: ty.to_string(),
                len: Some(objs.len() as u64),
                retained_bytes,
            });
        }
        self.statics = segments;
        owners
    }

    /// Whether `w` is an untracked dict, list or set with items.
    fn nonempty_untracked(&mut self, w: u64) -> bool {
        let Some(kind) = self.untracked_container(w) else {
            return false;
        };
        let (off, ok) = match kind {
            Kind::Dict => (super::DICT_USED, true),
            Kind::List => (super::OB_SIZE, true),
            Kind::Set => (super::SET_USED, true),
            _ => (0, false),
        };
        let mut b = [0u8; 8];
        ok && self.fetch(w + off, &mut b) && u64::from_le_bytes(b) != 0
    }

    /// The rows for the object at `addr`, found in a static variable named `path`: the
    /// containers in its fields if it is a C object holding some, else the object itself.
    fn static_rows(&mut self, addr: u64, path: String, lru_cache: Option<u64>) -> Vec<Owner> {
        let Some((_, ti)) = self.object(addr) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if ti.fields_hold {
            let bytes = ti.basicsize;
            for (off, c) in self.c_fields(addr, &ti, bytes) {
                if self.counted.get(&c).is_some_and(|m| m.root != 0) {
                    continue;
                }
                let is_container = self.object(c).is_some_and(|(_, t)| {
                    matches!(t.kind, Kind::Dict | Kind::List | Kind::Set | Kind::Tuple)
                });
                if !is_container {
                    continue;
                }
                let field = if ti.named == Some(named::Named::Lru) && Some(off) == lru_cache {
                    ".cache".to_string()
                } else {
                    format!("+{off:#x}")
                };
                let (retained_bytes, len, type_name) = self.retained(c);
                if !type_name.is_empty() {
                    out.push(Owner {
                        path: format!("{path}→{}{field}", ti.name),
                        type_name,
                        len,
                        retained_bytes,
                    });
                }
            }
            self.hold(addr, &ti);
        }
        if out.is_empty() {
            let (retained_bytes, len, type_name) = self.retained(addr);
            if !type_name.is_empty() {
                out.push(Owner {
                    path,
                    type_name,
                    len,
                    retained_bytes,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg() -> Segment {
        Segment {
            start: 0x7000_1000,
            end: 0x7000_3000,
            file: "py_cholder.cpython-312-x86_64-linux-gnu.so".into(),
            bias: 0x7000_0000,
            symbols: vec![
                StaticSymbol {
                    start: 0x7000_1010,
                    end: 0x7000_1018,
                    name: "registry".into(),
                },
                StaticSymbol {
                    start: 0x7000_1100,
                    end: 0x7000_1200,
                    name: "HolderType".into(),
                },
            ],
        }
    }

    #[test]
    fn a_word_is_named_by_the_symbol_covering_it() {
        let s = seg();
        assert_eq!(
            s.name_of(0x7000_1010),
            "py_cholder.cpython-312-x86_64-linux-gnu.so:registry"
        );
        assert_eq!(
            s.name_of(0x7000_1108),
            "py_cholder.cpython-312-x86_64-linux-gnu.so:HolderType+0x8"
        );
        // Past a symbol's end, and before the first: the offset from the load address.
        assert_eq!(
            s.name_of(0x7000_1018),
            "py_cholder.cpython-312-x86_64-linux-gnu.so+0x1018"
        );
        assert_eq!(
            s.name_of(0x7000_1000),
            "py_cholder.cpython-312-x86_64-linux-gnu.so+0x1000"
        );
        assert_eq!(
            s.name_of(0x7000_2000),
            "py_cholder.cpython-312-x86_64-linux-gnu.so+0x2000"
        );
    }

    #[test]
    fn extension_modules_and_libpython_may_hold_objects() {
        let exe = "/usr/bin/python3.11";
        for p in [
            "/x/site-packages/py_cholder.cpython-312-x86_64-linux-gnu.so",
            "/x/site-packages/_cffi_backend.abi3.so",
            "/root/.pyenv/versions/3.8.18/lib/python3.8/lib-dynload/_json.so",
            "/root/.pyenv/versions/3.12.1/lib/libpython3.12.so.1.0",
            exe,
        ] {
            assert!(may_hold_objects(p, exe), "{p}");
        }
        for p in [
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
            "/usr/lib/x86_64-linux-gnu/libssl.so.3",
            "/usr/bin/python3.12",
        ] {
            assert!(!may_hold_objects(p, exe), "{p}");
        }
    }

    #[test]
    fn this_test_binarys_writable_segments_are_found_with_their_symbols() {
        // The test executable itself, as if mapped at its link address (bias 0 or PIE 0).
        let exe = std::env::current_exe().unwrap();
        let data = std::fs::read(&exe).unwrap();
        let segs = segments_of(&data, 0x5555_0000_0000, "t");
        assert!(!segs.is_empty(), "a writable segment");
        for s in &segs {
            assert!(s.start < s.end && s.start.is_multiple_of(8));
            assert!(s
                .symbols
                .iter()
                .all(|y| y.start >= s.start && y.start < s.end));
            assert!(s.symbols.windows(2).all(|w| w[0].start < w[1].start));
        }
        assert_eq!(segments_of(b"not an ELF file", 0, "t"), Vec::new());
    }
}
