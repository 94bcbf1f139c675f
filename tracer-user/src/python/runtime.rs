// size: just over the limit because of the unit tests on patched real 3.15 binaries (unknown
// minor, free-threaded flag, mismatch, cookie), which belong next to the discovery they test.
//! A live CPython interpreter inside a traced process: where it is, and how its threads map to
//! kernel thread ids (what its code objects are called is read in `resolve::python`). Every
//! read of the target's memory is bounded.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    os::unix::fs::FileExt,
    path::Path,
};

use anyhow::{Context, Result};
use tracer_common::{FrameModel, PyConfig, MAX_PY_FRAMES, NO_FIELD, PY_FRAME_WINDOW};

use crate::{
    python::{
        allocators,
        layout::{debug_offsets, layout_for, Layout},
        version,
    },
    target::{elf::ElfFile, procmaps::ProcMaps},
};

/// Threads walked per interpreter at most.
const MAX_THREADS: usize = 4096;
/// Interpreters walked at most.
const MAX_INTERPRETERS: usize = 64;
/// Bytes of glibc's `struct pthread` searched for the kernel thread id (3.8-3.10).
const PTHREAD_SCAN_BYTES: usize = 2048;

/// Reads another process's memory through `/proc/PID/mem`.
pub struct Memory {
    file: File,
}

impl Memory {
    pub fn open(pid: u32) -> Result<Self> {
        let file = File::open(format!("/proc/{pid}/mem"))
            .with_context(|| format!("cannot open /proc/{pid}/mem"))?;
        Ok(Self { file })
    }

    pub fn read(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
        let mut buf = vec![0; len];
        self.file.read_exact_at(&mut buf, addr).ok()?;
        Some(buf)
    }

    /// Fills `buf` from `addr`; false if any of it cannot be read.
    pub fn read_exact_into(&self, addr: u64, buf: &mut [u8]) -> bool {
        self.file.read_exact_at(buf, addr).is_ok()
    }

    pub fn u64(&self, addr: u64) -> Option<u64> {
        let mut b = [0; 8];
        self.file.read_exact_at(&mut b, addr).ok()?;
        Some(u64::from_le_bytes(b))
    }

    pub fn u32(&self, addr: u64) -> Option<u32> {
        let mut b = [0; 4];
        self.file.read_exact_at(&mut b, addr).ok()?;
        Some(u32::from_le_bytes(b))
    }
}

/// The interpreter found in a process.
pub struct Interpreter {
    pub pid: u32,
    pub major: u32,
    pub minor: u32,
    /// The file holding the interpreter (libpython or the executable), as the target sees it.
    pub module: String,
    /// A free-threaded build (`Py_GIL_DISABLED`, "3.13t"): objects come from mimalloc.
    pub free_threaded: bool,
    /// Its code keeps frame pointers (3.15's default, PEP 831), so native stacks can be
    /// unwound through it; without them, a walk that reaches it goes astray.
    pub frame_pointers: bool,
    pub(crate) layout: Layout,
    pub(crate) runtime: u64,
    /// `PyCode_Type`, to check that an address still holds a code object.
    pub(crate) code_type: Option<u64>,
    pub(crate) mem: Memory,
    /// Offset of the kernel tid in glibc's `struct pthread` (3.8-3.10), once found.
    pthread_tid_offset: Option<u64>,
    /// pymalloc's functions found through `_PyRuntime.allocators` (3.12+), see
    /// [`crate::python::allocators`]; empty until found.
    pub pymalloc: Vec<allocators::KnownFunction>,
    pymalloc_search: allocators::Search,
    /// The file the interpreter is in, and its load bias, for [`Interpreter::find_pymalloc`].
    file: std::sync::Arc<InterpFile>,
    bias: u64,
}

/// A file that holds a CPython interpreter, parsed once.
pub struct InterpFile {
    elf: ElfFile,
    runtime_vaddr: u64,
    major: u32,
    minor: u32,
    /// Exports the free-threaded build's own symbol (see [`crate::python::freethreaded`]).
    free_threaded: bool,
    /// See [`Interpreter::frame_pointers`].
    frame_pointers: bool,
    layout: Layout,
}

/// Files examined for an interpreter, by path as the target sees them.
#[derive(Default)]
pub struct InterpFiles {
    files: HashMap<String, Option<std::sync::Arc<InterpFile>>>,
}

impl InterpFiles {
    /// The interpreter in `path` (opened as `host`), `None` if it holds none; an interpreter
    /// of a version leaktrace cannot read is an error.
    pub fn get(
        &mut self,
        path: &str,
        host: &Path,
    ) -> std::result::Result<Option<std::sync::Arc<InterpFile>>, NotPython> {
        if let Some(f) = self.files.get(path) {
            return Ok(f.clone());
        }
        let Some((elf, runtime_vaddr)) = ElfFile::open(host)
            .ok()
            .and_then(|e| e.object("_PyRuntime").map(|r| (e, r)))
        else {
            self.files.insert(path.to_string(), None);
            return Ok(None);
        };
        let (major, minor) = match version::detect(host) {
            Ok(Some(v)) => v,
            _ => {
                return Err(NotPython::Unsupported(format!(
                    "found a Python interpreter in `{path}` but could not tell its version"
                )));
            }
        };
        let (layout, free_threaded) = if (major, minor) >= (3, 13) {
            // 3.13+ describe their own layout in `_Py_DebugOffsets`, statically initialized at
            // the start of `_PyRuntime`: read it from the file, never assume it.
            let bytes = elf.initial_bytes("_PyRuntime").unwrap_or_default();
            self_described(bytes, major, minor, path)?
        } else {
            let layout =
                layout_for(major, minor).map_err(|e| NotPython::Unsupported(e.to_string()))?;
            (layout, false)
        };
        let file = std::sync::Arc::new(InterpFile {
            frame_pointers: elf.keeps_frame_pointers(),
            elf,
            runtime_vaddr,
            major,
            minor,
            free_threaded,
            layout,
        });
        self.files.insert(path.to_string(), Some(file.clone()));
        Ok(Some(file))
    }

    /// Parses, ahead of time, the files a program about to start would hold its interpreter
    /// in: the executable and the libpython the dynamic loader resolves for it.
    pub fn prepare_for(&mut self, exe: &Path) {
        let exe_s = exe.to_string_lossy().into_owned();
        let _ = self.get(&exe_s, exe);
        for lib in loader_libraries(exe) {
            if Path::new(&lib)
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libpython3"))
            {
                let _ = self.get(&lib, Path::new(&lib));
            }
        }
    }
}

/// The layout a 3.13+ interpreter in `path` describes in its `_Py_DebugOffsets` (`bytes`: the
/// start of its `_PyRuntime`), or why it gets native stacks only: a version leaktrace has no
/// table for, a free-threaded build, a struct that is truncated, foreign, or names another
/// version than the file does.
pub(crate) fn self_described(
    bytes: &[u8],
    major: u32,
    minor: u32,
    path: &str,
) -> std::result::Result<(Layout, bool), NotPython> {
    let parsed = debug_offsets::parse(bytes).map_err(|e| {
        NotPython::Unsupported(match e {
            // Already names the version and what is supported.
            debug_offsets::DebugOffsetsError::UnknownMinor { .. } => e.to_string(),
            _ => format!("cannot read the layout of Python {major}.{minor} in `{path}`: {e}"),
        })
    })?;
    if parsed.minor != minor {
        return Err(NotPython::Unsupported(format!(
            "`{path}` says it is Python {major}.{minor} but its _Py_DebugOffsets says 3.{}",
            parsed.minor
        )));
    }
    // Free-threaded builds: 3.13t is read and tested (target/cpython-ft); 3.14t changes more
    // than the struct describes (thread-local bytecode: `instr_ptr` may point into a thread's
    // own copy of the code; a byte-wide `interned` moves the string kind bits), which
    // leaktrace does not handle yet: refused rather than read with wrong lines.
    if parsed.free_threaded && minor != 13 {
        return Err(NotPython::Unsupported(format!(
            "Python {major}.{minor}t in `{path}` is a free-threaded build (Py_GIL_DISABLED) whose frames leaktrace does not read yet (it reads the free-threaded 3.13t only)"
        )));
    }
    Ok((parsed.layout, parsed.free_threaded))
}

/// The shared libraries the dynamic loader resolves for `exe`, without running any of its code
/// (what `ldd` does: `LD_TRACE_LOADED_OBJECTS=1`).
fn loader_libraries(exe: &Path) -> Vec<String> {
    let Ok(out) = std::process::Command::new(exe)
        .env("LD_TRACE_LOADED_OBJECTS", "1")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split("=>").nth(1))
        .filter_map(|r| r.split_whitespace().next())
        .filter(|p| p.starts_with('/'))
        .map(str::to_string)
        .collect()
}

/// What [`Interpreter::find_pymalloc`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum PymallocLookup {
    Found,
    /// Not yet: looked for again at the next call.
    NotYet,
    /// Not looked for: no table on this version or build, or the search is over.
    Stopped,
    /// The search just ended without finding them: the line to print (once).
    GaveUp(String),
}

/// Why a process gets native stacks only.
#[derive(Debug)]
pub enum NotPython {
    /// No interpreter in the process.
    Absent,
    /// An interpreter this version of leaktrace cannot read.
    Unsupported(String),
}

impl Interpreter {
    /// Finds the interpreter mapped in `pid`, if any, parsing candidate files through `files`.
    pub fn discover(
        pid: u32,
        maps: &ProcMaps,
        files: &mut InterpFiles,
    ) -> std::result::Result<Interpreter, NotPython> {
        // libpython first (pyenv, most distributions), else an executable that embeds it.
        let mut candidates: Vec<&crate::target::procmaps::Mapping> = maps
            .iter()
            .filter(|m| m.is_file())
            .filter(|m| {
                let name = Path::new(m.path.as_deref().unwrap_or(""))
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("");
                name.starts_with("libpython3") || name.starts_with("python3")
            })
            .collect();
        candidates.sort_by_key(|m| !m.path.as_deref().unwrap_or("").contains("libpython"));
        let mut seen = HashSet::new();
        for m in candidates {
            let path = m.path.clone().expect("file mapping");
            if !seen.insert(path.clone()) {
                continue;
            }
            let Some(file) = files.get(&path, &crate::target::procmaps::openable_path(pid, m))?
            else {
                continue;
            };
            // The mapping of the file with the lowest offset gives the load bias.
            let first = maps
                .iter()
                .filter(|x| x.path.as_deref() == Some(path.as_str()))
                .min_by_key(|x| x.offset)
                .expect("the file is mapped");
            let Some(bias) = file.elf.load_bias(first.start, first.offset) else {
                continue;
            };
            let mem = Memory::open(pid).map_err(|e| NotPython::Unsupported(e.to_string()))?;
            let interp = Interpreter {
                pid,
                major: file.major,
                minor: file.minor,
                module: path,
                free_threaded: file.free_threaded,
                frame_pointers: file.frame_pointers,
                layout: file.layout,
                runtime: bias + file.runtime_vaddr,
                code_type: file.elf.object("PyCode_Type").map(|a| bias + a),
                mem,
                pthread_tid_offset: None,
                pymalloc: Vec::new(),
                pymalloc_search: allocators::Search::default(),
                file: file.clone(),
                bias,
            };
            // 3.13+: the struct in memory is the one the interpreter runs with (the file's
            // initial bytes were read before); a readable one that disagrees is refused.
            if file.minor >= 13 {
                if let Some(bytes) = interp.mem.read(interp.runtime, debug_offsets::READ_BYTES) {
                    let live = self_described(&bytes, file.major, file.minor, &interp.module)?;
                    if live != (interp.layout, interp.free_threaded) {
                        return Err(NotPython::Unsupported(format!(
                            "the _Py_DebugOffsets of Python {} in `{}` differ between the file and the process",
                            interp.version(),
                            interp.module
                        )));
                    }
                }
            }
            let cfg = interp.config(MAX_PY_FRAMES as u32);
            if !frame_fields_fit(&cfg) {
                return Err(NotPython::Unsupported(format!(
                    "Python {} keeps frame fields beyond the {PY_FRAME_WINDOW} bytes leaktrace reads per frame",
                    interp.version()
                )));
            }
            let mut interp = interp;
            // The first look: it never gives up yet.
            let _ = interp.find_pymalloc(maps);
            return Ok(interp);
        }
        Err(NotPython::Absent)
    }

    /// Looks for pymalloc's functions in `_PyRuntime.allocators` (3.12+ default builds) if
    /// they are not found yet. A process `run` just started has not had its pointers relocated
    /// yet (they fail validation): looked for again at each call, for
    /// [`allocators::SEARCH_FOR`] after the first.
    pub fn find_pymalloc(&mut self, maps: &ProcMaps) -> PymallocLookup {
        if !self.pymalloc.is_empty() {
            return PymallocLookup::Found;
        }
        let off =
            allocators::offsets_for(self.minor).filter(|_| !self.free_threaded && self.major == 3);
        let Some(off) = off else {
            self.pymalloc_search.finish();
            return PymallocLookup::Stopped;
        };
        match self.pymalloc_search.attempt(std::time::Instant::now()) {
            allocators::Attempt::Look => {}
            allocators::Attempt::Stop => return PymallocLookup::Stopped,
            allocators::Attempt::GiveUp => {
                let without = if self.file.elf.function("_PyObject_ArenaMmap").is_some() {
                    "its symbol table names them instead"
                } else {
                    "pymalloc arenas keep the Python stack that mapped them, and --pymalloc probes only the exported PyObject_* functions"
                };
                return PymallocLookup::GaveUp(format!(
                    "pid {}: stopped looking for pymalloc's functions: after {} s `_PyRuntime.allocators` in `{}` still points at none of them (an allocator installed with PyMem_SetAllocator and PyObject_SetArenaAllocator?): {without}",
                    self.pid,
                    allocators::SEARCH_FOR.as_secs(),
                    self.module
                ));
            }
        }
        if let Some(bytes) = self
            .mem
            .read(self.runtime + off.raw, allocators::READ_BYTES)
        {
            self.pymalloc = allocators::known_functions(
                &bytes,
                &off,
                &self.file.elf,
                self.bias,
                maps,
                &self.module,
            );
        }
        if self.pymalloc.is_empty() {
            return PymallocLookup::NotYet;
        }
        self.pymalloc_search.finish();
        PymallocLookup::Found
    }

    /// Whether [`Interpreter::find_pymalloc`] may still look (not found, not given up).
    pub fn looking_for_pymalloc(&self) -> bool {
        self.pymalloc.is_empty() && !self.pymalloc_search.is_over()
    }

    /// The runtime address of the data symbol `name` of the interpreter's file (local ones
    /// too, where the file keeps its symbol table).
    pub fn data_symbol(&self, name: &str) -> Option<u64> {
        self.file.elf.object(name).map(|a| self.bias + a)
    }

    /// The main `PyInterpreterState`'s address, if readable (0 while it starts up is `None`).
    pub fn main_interpreter(&self) -> Option<u64> {
        self.mem
            .u64(self.runtime + self.layout.runtime_interpreters_main)
            .filter(|&a| a != 0)
    }

    /// The pymalloc function named `name`, if found in memory.
    pub fn pymalloc_function(&self, name: &str) -> Option<&allocators::KnownFunction> {
        self.pymalloc.iter().find(|f| f.name == name)
    }

    /// `3.13`, or `3.13t` for a free-threaded build.
    pub fn version(&self) -> String {
        let t = if self.free_threaded { "t" } else { "" };
        format!("{}.{}{t}", self.major, self.minor)
    }

    /// The walker's settings for this interpreter.
    pub fn config(&self, max_depth: u32) -> PyConfig {
        config_for(&self.layout, self.minor, max_depth)
    }

    /// Every Python thread state with its kernel thread id. Empty before the interpreter has
    /// started (e.g. right after `leaktrace run` started the process).
    pub fn threads(&mut self) -> Vec<(u32, u64)> {
        let l = self.layout;
        let mut out = Vec::new();
        let Some(mut interp) = self.mem.u64(self.runtime + l.runtime_interpreters_head) else {
            return out;
        };
        let mut tstates = Vec::new();
        for _ in 0..MAX_INTERPRETERS {
            if interp == 0 {
                break;
            }
            let mut t = self.mem.u64(interp + l.interp_threads_head).unwrap_or(0);
            for _ in 0..MAX_THREADS {
                if t == 0 {
                    break;
                }
                tstates.push(t);
                t = self.mem.u64(t + l.tstate_next).unwrap_or(0);
            }
            interp = self.mem.u64(interp + l.interp_next).unwrap_or(0);
        }
        // Thread ids as the process sees them (its own PID namespace) -> as the kernel side
        // sees them (the initial namespace). Identical outside containers.
        let tids = task_ids(self.pid);
        if Layout::has(l.tstate_native_thread_id) {
            for t in tstates {
                if let Some(tid) = self.mem.u64(t + l.tstate_native_thread_id) {
                    if let Some(&host) = u32::try_from(tid).ok().and_then(|tid| tids.get(&tid)) {
                        out.push((host, t));
                    }
                }
            }
            return out;
        }
        // 3.8-3.10 only know the pthread_t, the address of glibc's `struct pthread`, which
        // holds the tid at an offset that depends on the glibc build: find it once as the
        // offset where every thread's struct holds one of the process's tids.
        let pthreads: Vec<(u64, u64)> = tstates
            .iter()
            .filter_map(|&t| Some((t, self.mem.u64(t + l.tstate_thread_id)?)))
            .filter(|&(_, p)| p != 0)
            .collect();
        let own: HashSet<u32> = tids.keys().copied().collect();
        if self.pthread_tid_offset.is_none() && !pthreads.is_empty() {
            self.pthread_tid_offset = find_tid_offset(&self.mem, &pthreads, &own);
        }
        if let Some(off) = self.pthread_tid_offset {
            for (t, p) in pthreads {
                if let Some(&host) = self.mem.u32(p + off).and_then(|tid| tids.get(&tid)) {
                    out.push((host, t));
                }
            }
        }
        out
    }
}

/// The walker's settings for a CPython 3.`minor` layout.
pub fn config_for(l: &Layout, minor: u32, max_depth: u32) -> PyConfig {
    let opt = |v: u64| if Layout::has(v) { v } else { NO_FIELD };
    let max_depth = max_depth.min(MAX_PY_FRAMES as u32);
    // 3.11+: _PyInterpreterFrame chains, reached through cframe (3.11/3.12) or directly.
    let interpreter_frames =
        |model: FrameModel, tstate_frame: u64, cframe_current_frame: u64| PyConfig {
            model: model as u32,
            max_depth,
            tstate_frame,
            cframe_current_frame,
            frame_code: l.iframe_code,
            frame_back: l.iframe_previous,
            frame_instr: l.iframe_instr,
            frame_owner: opt(l.iframe_owner),
            owner_shim_min: l.owner_shim_min,
            code_name: l.code_name,
            frame_code_tag_mask: if Layout::has(l.iframe_code_tag_mask) {
                l.iframe_code_tag_mask
            } else {
                0
            },
        };
    match minor {
        ..=10 => PyConfig {
            model: FrameModel::FrameObject as u32,
            max_depth,
            tstate_frame: l.tstate_frame,
            cframe_current_frame: NO_FIELD,
            frame_code: l.frame_code,
            frame_back: l.frame_back,
            frame_instr: l.frame_lasti,
            frame_owner: NO_FIELD,
            owner_shim_min: 0,
            code_name: l.code_name,
            frame_code_tag_mask: 0,
        },
        11 | 12 => interpreter_frames(FrameModel::CFrame, l.tstate_cframe, l.cframe_current_frame),
        _ => interpreter_frames(FrameModel::CurrentFrame, l.tstate_current_frame, NO_FIELD),
    }
}

/// Whether every frame field the walker reads lies in the window it reads per frame.
pub fn frame_fields_fit(cfg: &PyConfig) -> bool {
    let fits = |off: u64, size: u64| {
        off.checked_add(size)
            .is_some_and(|end| end <= PY_FRAME_WINDOW as u64)
    };
    // Pointer fields are read as aligned words of the window.
    let word = |off: u64| off % 8 == 0 && fits(off, 8);
    word(cfg.frame_code)
        && word(cfg.frame_instr)
        && word(cfg.frame_back)
        && (cfg.frame_owner == NO_FIELD || fits(cfg.frame_owner, 1))
}

/// The threads of a process: tid in its own PID namespace -> tid in ours (the one eBPF
/// reports), from the last field of each task's `NSpid:` line.
fn task_ids(pid: u32) -> HashMap<u32, u32> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return HashMap::new();
    };
    dir.filter_map(|e| {
        let host: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/task/{host}/status")).ok();
        let own = status.as_deref().and_then(ns_tid).unwrap_or(host);
        Some((own, host))
    })
    .collect()
}

/// The innermost-namespace tid from the text of a task's status file (`NSpid: 4242 7`).
pub fn ns_tid(status: &str) -> Option<u32> {
    status
        .lines()
        .find(|l| l.starts_with("NSpid:"))?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

/// The offset in `struct pthread` at which every given thread holds a tid of the process.
fn find_tid_offset(mem: &Memory, pthreads: &[(u64, u64)], tids: &HashSet<u32>) -> Option<u64> {
    let blobs: Vec<Vec<u8>> = pthreads
        .iter()
        .filter_map(|&(_, p)| mem.read(p, PTHREAD_SCAN_BYTES))
        .collect();
    if blobs.is_empty() {
        return None;
    }
    find_offset_in(&blobs, tids)
}

/// Pure part of [`find_tid_offset`]: the first 4-byte-aligned offset where every blob holds a
/// distinct value from `tids`.
pub fn find_offset_in(blobs: &[Vec<u8>], tids: &HashSet<u32>) -> Option<u64> {
    let len = blobs.iter().map(Vec::len).min()?;
    (0..len.saturating_sub(3)).step_by(4).find_map(|off| {
        let mut values = HashSet::new();
        let all = blobs.iter().all(|b| {
            let v = u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]]);
            tids.contains(&v) && values.insert(v)
        });
        all.then_some(off as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn every_supported_layout_fits_the_frame_window() {
        for minor in 8..=15 {
            let layout = layout_for(3, minor).unwrap();
            let interp_cfg = |model_minor: u32| config_for(&layout, model_minor, 128);
            assert!(frame_fields_fit(&interp_cfg(minor)), "3.{minor}");
        }
        let mut cfg = config_for(&layout_for(3, 11).unwrap(), 11, 128);
        cfg.frame_back = 124;
        assert!(!frame_fields_fit(&cfg), "beyond the window");
        cfg.frame_back = 12;
        assert!(!frame_fields_fit(&cfg), "unaligned");
    }

    /// A copy of Debian's python3.15 with `patch` applied to its bytes (file offsets found by
    /// symbol), in a scratch directory; `None` without the sid root (when allowed).
    fn patched_python315(tag: &str, patch: impl Fn(&mut [u8], usize, usize)) -> Option<PathBuf> {
        use object::{Object, ObjectSection, ObjectSymbol};
        let root = crate::python::layout::tests::sid_root()?;
        let mut data = std::fs::read(root.join("usr/bin/python3.15")).unwrap();
        let file_offset = |name: &str| -> usize {
            let file = object::File::parse(&*data).unwrap();
            let sym = file
                .dynamic_symbols()
                .find(|s| s.name() == Ok(name))
                .unwrap();
            let section = file.section_by_index(sym.section_index().unwrap()).unwrap();
            (section.file_range().unwrap().0 + sym.address() - section.address()) as usize
        };
        let (version, runtime) = (file_offset("Py_Version"), file_offset("_PyRuntime"));
        patch(&mut data, version, runtime);
        let dir = std::env::temp_dir().join(format!("leaktrace-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("python3");
        std::fs::write(&path, data).unwrap();
        Some(path)
    }

    fn refusal(path: &Path) -> String {
        let s = path.to_str().unwrap();
        match InterpFiles::default().get(s, path) {
            Err(NotPython::Unsupported(why)) => why,
            Err(NotPython::Absent) => panic!("{s}: no interpreter found"),
            Ok(_) => panic!("{s}: accepted"),
        }
    }

    /// Real 3.15 bytes, as they are: accepted, with the layout of the table.
    #[test]
    fn debian_315_binary_is_read_from_its_own_debug_offsets() {
        let Some(path) = patched_python315("as-is", |_, _, _| {}) else {
            return;
        };
        let file = InterpFiles::default()
            .get(path.to_str().unwrap(), &path)
            .unwrap_or_else(|_| panic!("refused"))
            .unwrap();
        assert_eq!((file.major, file.minor), (3, 15));
        assert_eq!(file.layout, layout_for(3, 15).unwrap());
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    /// A minor version without a table (a real 3.15 binary whose version says 3.16): one line
    /// naming it, never a layout.
    #[test]
    fn unknown_minor_is_named_and_refused() {
        let Some(path) = patched_python315("v316", |d, version, runtime| {
            d[version..version + 4].copy_from_slice(&0x031000a1u32.to_le_bytes());
            d[runtime + 8..runtime + 16].copy_from_slice(&0x031000a1u64.to_le_bytes());
        }) else {
            return;
        };
        assert_eq!(
            refusal(&path),
            "unsupported Python version 3.16 (leaktrace supports 3.8-3.15)"
        );
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    /// `_Py_DebugOffsets.free_threaded` is read: such a build is refused in one line until
    /// leaktrace reads its frames.
    #[test]
    fn free_threaded_build_is_refused() {
        let Some(path) = patched_python315("ft", |d, _, runtime| d[runtime + 16] = 1) else {
            return;
        };
        let why = refusal(&path);
        assert!(
            why.contains("free-threaded build (Py_GIL_DISABLED)"),
            "{why}"
        );
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    /// A struct that does not match the version the binary claims, or is cut short.
    #[test]
    fn inconsistent_or_damaged_debug_offsets_are_refused() {
        let Some(path) = patched_python315("mismatch", |d, version, _| {
            d[version..version + 4].copy_from_slice(&0x030e0af0u32.to_le_bytes());
        }) else {
            return;
        };
        let why = refusal(&path);
        assert!(why.contains("its _Py_DebugOffsets says 3.15"), "{why}");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
        let Some(path) = patched_python315("cookie", |d, _, runtime| d[runtime] = b'X') else {
            return;
        };
        let why = refusal(&path);
        assert!(why.contains("does not start with `xdebugpy`"), "{why}");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn reads_the_innermost_namespace_tid() {
        assert_eq!(ns_tid("Name:\tpython3\nNSpid:\t4242\n"), Some(4242));
        assert_eq!(ns_tid("Name:\tpython3\nNSpid:\t4242\t7\n"), Some(7));
        assert_eq!(ns_tid("Name:\tpython3\n"), None);
    }

    #[test]
    fn finds_tid_offset_shared_by_every_thread() {
        let mut a = vec![0u8; 64];
        let mut b = vec![0u8; 64];
        // A decoy: only thread a has a tid-looking value at 8.
        a[8..12].copy_from_slice(&100u32.to_le_bytes());
        a[40..44].copy_from_slice(&100u32.to_le_bytes());
        b[40..44].copy_from_slice(&101u32.to_le_bytes());
        let tids: HashSet<u32> = [100, 101].into();
        assert_eq!(find_offset_in(&[a.clone(), b], &tids), Some(40));
        // Two threads may not claim the same tid.
        let mut c = vec![0u8; 64];
        c[40..44].copy_from_slice(&100u32.to_le_bytes());
        assert_eq!(find_offset_in(&[a, c], &tids), None);
    }
}
