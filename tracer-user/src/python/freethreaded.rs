//! Free-threaded CPython (`--disable-gil`, `Py_GIL_DISABLED`: 3.13t, 3.14t, 3.15t): how it
//! differs from the GIL build for an out-of-process reader, and the few facts leaktrace needs.
//!
//! Verified against CPython 3.13.15 built with `--disable-gil` by `./dev setup` (the upstream
//! tarball inside Debian's `python3.13` source package); the 3.14t/3.15t notes are from
//! CPython's own sources (`Include/object.h`, `Include/internal/pycore_debug_offsets.h`,
//! `pycore_interpframe_structs.h`, `pycore_stackref.h`, `Objects/obmalloc.c`, mimalloc's
//! `types.h`, `options.c`, `arena.c`, `prim/unix/prim.c`) and are not exercised by a test here
//! (Debian's archive serves no 3.14/3.15 source package to build them from).
//!
//! # Telling a free-threaded build apart
//!
//! * `_Py_DebugOffsets.free_threaded` (the `u64` at byte 16 of `_PyRuntime`, 3.13+) is 1. The
//!   struct has the same entries in both builds of one minor version; only values differ.
//!   leaktrace reads it from the binary's `.PyRuntime` section and again from memory
//!   ([`super::layout::debug_offsets`]).
//! * Without that struct: a free-threaded binary exports `_Py_MergeZeroLocalRefcount` (called
//!   by the inline `Py_DECREF` of extensions built for it, so it is in `.dynsym` even of a
//!   stripped interpreter), which GIL builds lack. Its file names carry a `t`
//!   (`python3.13t`, `libpython3.13t.so.1.0`).
//!
//! # Object and thread layout (x86_64)
//!
//! * `PyObject` is 32 bytes instead of 16: `ob_tid` (owning thread, 8), `_padding`/`ob_flags`
//!   (2), `ob_mutex` (1), `ob_gc_bits` (1), `ob_ref_local` (4), `ob_ref_shared` (8), then
//!   `ob_type` at 24 (8 in GIL builds). Every field after the header (code objects, bytes,
//!   str) moves by 16 bytes: all of them come from `_Py_DebugOffsets`, nothing is hard-coded.
//! * `PyThreadState` is embedded first in a larger `_PyThreadStateImpl` (QSBR state, the
//!   thread's mimalloc heaps, biased reference-count queue); the `interp->threads` list and
//!   `native_thread_id` are as in GIL builds, so leaktrace's per-thread walk (every thread's
//!   state published by kernel tid, refreshed as threads come and go) works unchanged. There
//!   is no GIL holder to look at, and leaktrace never looks at one: an allocation on any
//!   thread walks that thread's own frames.
//! * 3.13t `_PyInterpreterFrame` is the GIL build's (`f_executable` a plain `PyObject*`,
//!   `instr_ptr` into `co_code_adaptive`; specialization is off in 3.13t).
//! * 3.14t (from its sources): `f_executable` is a `_PyStackRef` whose bit 0 is the deferred
//!   reference-count tag (`Py_TAG_BITS` = 1, as in 3.14 GIL builds): mask it off. The frame
//!   gains `int32_t tlbc_index` before `return_offset`, so `owner` moves (it comes from
//!   `_Py_DebugOffsets`). Specialization is on and each thread may run its own copy of the
//!   bytecode (thread-local bytecode): `instr_ptr` points into `co_tlbc->entries[tlbc_index]`
//!   (`_PyCodeArray { Py_ssize_t size; char *entries[]; }`, entry 0 is `co_code_adaptive`), not
//!   necessarily into `co_code_adaptive`. `_Py_DebugOffsets` 3.14 carries
//!   `code_object.co_tlbc` and `interpreter_frame.tlbc_index` (0 in GIL builds). The byte
//!   offset is `instr_ptr - entries[tlbc_index]`, or: the entry `e` with
//!   `e <= instr_ptr < e + 2 * Py_SIZE(code)`.
//! * 3.14t `PyASCIIObject.state`: `interned` becomes a whole `unsigned char` (atomic access), so
//!   `kind` starts at bit 8 (compact bit 11, ascii bit 12) instead of bit 2 (5, 6); 3.13t keeps
//!   the GIL build's bit fields.
//! * 3.15t: the same two changes as 3.14t (thread-local bytecode; `_Py_DebugOffsets` 3.15 also
//!   has `interpreter_state.tlbc_generation`), and `_PyStackRef` tagging was reworked during
//!   3.15's development (tagged ints use both low bits, `Py_INT_TAG` = 3): which bits to mask off
//!   `f_executable` in a free-threaded 3.15 must be read from that release's
//!   `pycore_stackref.h`. leaktrace refuses 3.14t and 3.15t in one line until a build of each
//!   can be tested.
//! * Frame owners are the GIL build's (3.14: 0 thread, 1 generator, 2 frame object, 3 C stack,
//!   4 interpreter).
//!
//! # Memory: mimalloc instead of pymalloc
//!
//! * `PyObject_Malloc` → `_PyObject_MiMalloc(ctx, n)` and `PyMem_Malloc` → `_PyMem_MiMalloc(ctx,
//!   n)`, which allocate from the calling thread's mimalloc heaps; `PyObject_Free`/`PyMem_Free`
//!   → `_PyObject_MiFree`/`_PyMem_MiFree` (`mi_free`, from any thread; some frees are delayed
//!   until every thread passed a quiescent state, then go through the same functions).
//!   `PyMem_RawMalloc` stays `malloc`. pymalloc is not used at all (`_PyObject_Malloc` exists but
//!   is never called), at any size: a 10 KiB `bytes` object never reaches `malloc`.
//! * mimalloc takes memory from the OS with `mmap` (anonymous, `PROT_READ|PROT_WRITE`,
//!   `MAP_NORESERVE`), in arenas reserved [`MIMALLOC_ARENA_RESERVE`] at a time (its
//!   `arena_reserve` option, 1 GiB on 64-bit, committed up front on Linux where memory is
//!   overcommitted), carved into 32 MiB segments of 64 KiB slices; small (≤ 16 KiB), medium
//!   (≤ 128 KiB) and large (≤ 16 MiB) objects share pages of segments, huge ones get a segment
//!   of their own. Freed pages are given back later with `madvise` (purge), not `munmap`.
//!
//! What each mode sees there is in the README ("Free-threaded builds").

/// mimalloc's default `arena_reserve` on 64-bit: the address space it maps at a time.
pub const MIMALLOC_ARENA_RESERVE: u64 = 1 << 30;

/// mimalloc's functions that map memory from the OS in CPython's bundled copy (the caller of
/// `mmap` is one of them, depending on inlining).
pub const MIMALLOC_OS_FUNCTIONS: &[&str] = &[
    "unix_mmap_prim",
    "unix_mmap",
    "_mi_prim_alloc",
    "mi_os_prim_alloc",
    "mi_os_prim_alloc_aligned",
    "_mi_os_alloc",
    "_mi_os_alloc_aligned",
];

/// Whether a native frame's function is one of [`MIMALLOC_OS_FUNCTIONS`], also as the compiler's
/// specialised copies (`unix_mmap_prim.constprop.0` in the 3.13t `./dev setup` builds).
pub fn is_mimalloc_os_function(name: &str) -> bool {
    let base = name.split('.').next().unwrap_or(name);
    MIMALLOC_OS_FUNCTIONS.contains(&base)
}

/// The frame standing for every stack that mapped mimalloc memory.
pub const MIMALLOC_SEGMENTS_FRAME: &str =
    "[mimalloc segments: every object of the free-threaded interpreter, mapped 1 GiB at a time and touched as used; one by one with --pymalloc]";

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::process::Command;

    fn golden(minor: u32) -> Vec<u8> {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../tests/data/python/debug_offsets/3.{minor}.bin"));
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    /// 3.13t is read; a free-threaded 3.14/3.15 gets one line naming it, never a layout.
    #[test]
    fn free_threaded_builds_read_or_refused_in_one_line() {
        let mut b = golden(13);
        b[16] = 1;
        let (layout, ft) =
            crate::python::runtime::self_described(&b, 3, 13, "/x/python3.13t").unwrap();
        assert!(ft);
        assert_eq!(
            layout,
            crate::python::runtime::self_described(&golden(13), 3, 13, "/x")
                .unwrap()
                .0
        );
        for minor in [14, 15] {
            let mut b = golden(minor);
            assert!(
                !crate::python::runtime::self_described(&b, 3, minor, "/x")
                    .unwrap()
                    .1
            );
            b[16] = 1;
            let Err(crate::python::runtime::NotPython::Unsupported(why)) =
                crate::python::runtime::self_described(&b, 3, minor, "/usr/bin/python3.Xt")
            else {
                panic!("3.{minor}t accepted");
            };
            assert_eq!(
                why,
                format!(
                    "Python 3.{minor}t in `/usr/bin/python3.Xt` is a free-threaded build (Py_GIL_DISABLED) whose frames leaktrace does not read yet (it reads the free-threaded 3.13t only)"
                )
            );
        }
    }

    /// The free-threaded CPython `./dev setup` builds (target/cpython-ft), or `None` when it
    /// is missing and LEAKTRACE_NO_PYENV=1 allows skipping; panics otherwise.
    fn ft_prefix() -> Option<(PathBuf, String)> {
        let prefix = super::super::layout::tests::repo_root().join("target/cpython-ft/install");
        let found = std::fs::read_dir(prefix.join("bin"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .find(|n| n.starts_with("python3.") && n.ends_with('t'));
        if let Some(name) = found {
            let v = name.trim_start_matches("python").to_string();
            return Some((prefix, v));
        }
        if std::env::var("LEAKTRACE_NO_PYENV").as_deref() == Ok("1") {
            eprintln!(
                "skipping the free-threaded CPython: nothing under {}",
                prefix.display()
            );
            return None;
        }
        panic!(
            "no free-threaded CPython under {}: run ./dev setup (set LEAKTRACE_NO_PYENV=1 to skip)",
            prefix.display()
        );
    }

    /// 3.13t: `_Py_DebugOffsets` read from the free-threaded binary's own bytes gives, field
    /// for field, the layout the C compiler computes from its headers (tools/pyoffsets/offsets.c
    /// built with `Py_GIL_DISABLED`): the offsets the struct carries and the facts the parser
    /// assumes for the fields it lacks (`interpreters.main`, the unicode state bits, ...).
    #[test]
    fn free_threaded_3_13t() {
        let Some((prefix, v)) = ft_prefix() else {
            return;
        };
        let exe = prefix.join(format!("bin/python{v}"));
        let bytes = crate::python::layout::tests::runtime_bytes(&exe, 584);
        let parsed =
            crate::python::layout::debug_offsets::parse(&bytes).expect("3.13t debug offsets parse");
        assert!(parsed.free_threaded);
        assert_eq!(parsed.minor, 13);
        let parsed = parsed.layout;
        assert_ne!(
            parsed,
            crate::python::layout::v3_13::LAYOUT,
            "a free-threaded build differs"
        );
        assert_eq!(
            parsed.object_type, 24,
            "ob_type after the 24-byte ob_tid.. header"
        );

        let inc = prefix.join(format!("include/python{v}"));
        let tmp = std::env::temp_dir().join(format!("leaktrace-offsets-ft-{}", std::process::id()));
        let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "gcc".into()))
            .args(["-O0", "-w", "-o"])
            .arg(&tmp)
            .arg(format!("-I{}", inc.display()))
            .arg(format!("-I{}/internal", inc.display()))
            .arg(super::super::layout::tests::repo_root().join("tools/pyoffsets/offsets.c"))
            .status()
            .expect("running gcc");
        assert!(
            status.success(),
            "offsets.c against {} failed",
            inc.display()
        );
        let out = Command::new(&tmp).output().unwrap();
        let _ = std::fs::remove_file(&tmp);
        let text = String::from_utf8(out.stdout).unwrap();
        let fields = parsed.fields();
        let (mut checked, mut debug_checked) = (0, 0);
        for line in text.lines() {
            let (name, value) = line.split_once(' ').unwrap();
            if name == "version" {
                assert_eq!(format!("{value}t"), v);
                continue;
            }
            // `_PyRuntime.allocators` (python::allocators) is not read on free-threaded builds
            // (mimalloc, not pymalloc): the GIL build's table does not apply.
            if name.starts_with("alloc.") {
                continue;
            }
            let value = if value == "absent" {
                crate::python::Layout::ABSENT
            } else {
                value.parse().unwrap()
            };
            if let Some(entry) = name.strip_prefix("debug.") {
                // Same struct in both builds: the GIL build's entry table applies.
                let (_, at) = crate::python::layout::v3_13::DEBUG
                    .entries
                    .iter()
                    .find(|(n, _)| *n == entry)
                    .unwrap_or_else(|| panic!("{name} not in crate::python::layout::v3_13::DEBUG"));
                assert_eq!(*at, value, "{v} {name}");
                debug_checked += 1;
                continue;
            }
            let (_, parsed_value) = fields
                .iter()
                .find(|(n, _)| *n == name)
                .unwrap_or_else(|| panic!("offsets.c prints {name}, which Layout lacks"));
            assert_eq!(
                *parsed_value, value,
                "{v} {name}: parsed debug offsets vs headers"
            );
            checked += 1;
        }
        assert_eq!(checked, fields.len(), "every Layout field checked");
        assert_eq!(
            debug_checked,
            crate::python::layout::v3_13::DEBUG.entries.len()
        );
    }

    #[test]
    fn mimalloc_functions_with_compiler_suffixes() {
        assert!(is_mimalloc_os_function("unix_mmap_prim.constprop.0"));
        assert!(is_mimalloc_os_function("_mi_os_alloc"));
        assert!(!is_mimalloc_os_function("_PyObject_ArenaMmap"));
        assert!(!is_mimalloc_os_function("malloc"));
    }
}
