//! The processes a session traces: the target, the workers it follows, their interpreters, and
//! the Python threads published to the kernel. Attaching a new worker, turning on Python frames
//! for it, and dropping it when it exits all happen here, through the [`Tracer`].

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    path::Path,
    time::Instant,
};

use anyhow::{Context, Result};

use crate::{
    probes::{bpf::Tracer, growth, mode::Mode},
    python::runtime::{InterpFiles, Interpreter, NotPython},
    target::{
        process::{descendants, TargetProcess},
        procmaps::{is_libc_name, ProcMaps},
    },
};

/// Worker processes traced at most at once (beyond, new ones are not followed and a note says so).
pub const MAX_PROCESSES: usize = 256;
/// Tries to attach to a new process that does not map its allocator yet (just exec'd).
const CHILD_ATTACH_TRIES: u32 = 20;

/// One traced process: the target of `attach`/`run`, or one of its workers.
pub struct Proc {
    pub target: TargetProcess,
    pub python: Option<Interpreter>,
    /// Threads whose state is published to the kernel.
    pub py_tids: HashSet<u32>,
    /// No more looking for an interpreter (found one, or found one we cannot read).
    pub python_search_done: bool,
}

impl Proc {
    fn new(target: TargetProcess) -> Self {
        Self {
            target,
            python: None,
            py_tids: HashSet::new(),
            python_search_done: false,
        }
    }
}

/// What the command line asks of Python processes.
#[derive(Clone, Copy, Debug)]
pub struct PythonOptions {
    /// Walk Python frames when the target is a supported CPython.
    pub enabled: bool,
    /// Also probe pymalloc (`--pymalloc`).
    pub pymalloc: bool,
    pub max_depth: u32,
}

/// Every process traced in a session, by PID.
pub struct Targets {
    /// The process named on the command line (or started by `run`).
    pub root: u32,
    /// Set when leaktrace started the target itself (`run`).
    pub child: Option<u32>,
    /// Every process traced right now, the root included, by PID.
    pub procs: BTreeMap<u32, Proc>,
    /// Every process traced at some point.
    pub traced: BTreeSet<u32>,
    /// Workers that exited while traced: (pid, seconds into the session).
    pub exited: Vec<(u32, f64)>,
    /// New processes not attached yet (allocator not mapped yet): failed tries so far.
    waiting: HashMap<u32, u32>,
    /// Processes given up on: not followed again.
    skipped: HashSet<u32>,
    /// Files examined for an interpreter.
    pub interp_files: InterpFiles,
    mode: Mode,
    python: PythonOptions,
}

impl Targets {
    pub fn new(
        target: TargetProcess,
        child: Option<u32>,
        mode: Mode,
        python: PythonOptions,
    ) -> Self {
        let root = target.pid;
        Self {
            root,
            child,
            procs: BTreeMap::from([(root, Proc::new(target))]),
            traced: BTreeSet::from([root]),
            exited: Vec::new(),
            waiting: HashMap::new(),
            skipped: HashSet::new(),
            interp_files: Default::default(),
            mode,
            python,
        }
    }

    pub fn root_proc(&self) -> &Proc {
        &self.procs[&self.root]
    }

    /// Processes where the search for an interpreter is not over yet.
    pub fn pending_python(&self) -> Vec<u32> {
        self.procs
            .iter()
            .filter(|(_, p)| p.python.is_none() && !p.python_search_done)
            .map(|(pid, _)| *pid)
            .collect()
    }

    /// Turns on Python frames for process `pid` if it runs a supported CPython; `maps` are its
    /// mappings as last read.
    pub fn find_python(
        &mut self,
        pid: u32,
        maps: Option<&ProcMaps>,
        tracer: &mut Tracer,
    ) -> Result<()> {
        let started_by_us = self.child == Some(pid);
        let is_root = pid == self.root;
        let Some(proc) = self.procs.get_mut(&pid) else {
            return Ok(());
        };
        if proc.python_search_done {
            return Ok(());
        }
        let Some(maps) = maps else {
            return Ok(());
        };
        if !self.python.enabled {
            // As below: a worker that maps its C library and no interpreter runs no Python.
            let settled = maps.find_file(is_libc_name).is_some()
                && maps.find_file(|n| n.contains("python")).is_none();
            let retry = started_by_us || (!is_root && !settled);
            return self.cut_native_only(pid, maps, tracer, retry);
        }
        match Interpreter::discover(pid, maps, &mut self.interp_files) {
            Ok(interp) => {
                tracer.set_python(pid, &interp.config(self.python.max_depth))?;
                // The Python frames take over where the native walk ends.
                let native_note = if cut_native_at(pid, &interp, maps, tracer)? {
                    " (native stacks end at the interpreter: it has no frame pointers)"
                } else {
                    ""
                };
                if self.python.pymalloc {
                    self.attach_pymalloc(pid, &interp, tracer)?;
                } else if interp.free_threaded && is_root && self.mode != Mode::Growth {
                    eprintln!(
                        "leaktrace: note: Python {} is free-threaded: its objects come from mimalloc, not malloc, so they are not seen one by one (mimalloc's own mappings are one stack); add --pymalloc to see every object",
                        interp.version()
                    );
                }
                // Printed once everything is in place: scripts and tests wait for it.
                if is_root {
                    eprintln!(
                        "leaktrace: Python {} in `{}`: recording Python frames{native_note}",
                        interp.version(),
                        interp.module
                    );
                } else {
                    eprintln!(
                        "leaktrace: worker {pid}: Python {} in `{}`: recording Python frames{native_note}",
                        interp.version(),
                        interp.module
                    );
                }
                let proc = self.procs.get_mut(&pid).expect("checked above");
                proc.python = Some(interp);
                proc.python_search_done = true;
                self.refresh_threads(tracer)?;
            }
            // A command started by `run`, or a worker just started, maps its interpreter some
            // time after exec.
            Err(NotPython::Absent) if started_by_us || !is_root => {
                // A worker that already maps its C library and no interpreter runs no Python.
                let has_libc = maps.find_file(is_libc_name).is_some();
                if !is_root && has_libc && maps.find_file(|n| n.contains("python")).is_none() {
                    proc.python_search_done = true;
                }
            }
            Err(NotPython::Absent) => {
                proc.python_search_done = true;
                eprintln!(
                    "leaktrace: pid {pid} is not a Python process: tracing native stacks only"
                )
            }
            Err(NotPython::Unsupported(why)) => {
                proc.python_search_done = true;
                eprintln!("leaktrace: warning: {why}: tracing native stacks only")
            }
        }
        Ok(())
    }

    /// `--no-python`: no Python frames, but native stacks still end at an interpreter without
    /// frame pointers, as with them: past it a frame-pointer walk finds only junk (and the
    /// comparison of the two modes would count that walk against Python frames). A process
    /// whose interpreter may still be mapped later (`retry`) is looked at again.
    fn cut_native_only(
        &mut self,
        pid: u32,
        maps: &ProcMaps,
        tracer: &mut Tracer,
        retry: bool,
    ) -> Result<()> {
        let found = Interpreter::discover(pid, maps, &mut self.interp_files);
        if matches!(found, Err(NotPython::Absent)) && retry {
            return Ok(());
        }
        if let Some(proc) = self.procs.get_mut(&pid) {
            proc.python_search_done = true;
        }
        let Ok(interp) = found else {
            return Ok(());
        };
        if cut_native_at(pid, &interp, maps, tracer)? {
            eprintln!(
                "leaktrace: pid {pid}: Python {} in `{}`, --no-python: native stacks only, ending at the interpreter (it has no frame pointers)",
                interp.version(),
                interp.module
            );
        }
        Ok(())
    }

    /// `--pymalloc`: comparisons with `_PyObject_Malloc`'s address from which its body is taken
    /// as inlined into its callers ([`crate::target::elf::ElfFile::address_uses`]; Debian's
    /// shared libpython3.14/3.15 have 5, their static python3.14/3.15 about 300).
    const PYMALLOC_INLINED_MIN: usize = 32;

    fn attach_pymalloc(
        &mut self,
        pid: u32,
        interp: &Interpreter,
        tracer: &mut Tracer,
    ) -> Result<()> {
        // The path maps print is as seen from leaktrace's root (a chrooted target's files keep
        // their host path there): open the file through the mapping itself.
        let host = crate::target::procmaps::ProcMaps::read(pid)
            .ok()
            .and_then(|maps| {
                maps.iter()
                    .find(|m| m.path.as_deref() == Some(interp.module.as_str()))
                    .map(|m| crate::target::procmaps::openable_path(pid, m))
            })
            .unwrap_or_else(|| {
                Path::new("/proc")
                    .join(pid.to_string())
                    .join("root")
                    .join(interp.module.trim_start_matches('/'))
            });
        // Read and parsed once: for the probes, then for the inlining check below.
        let data = crate::target::elf::read_file(&host)?;
        let mut elf = crate::target::elf::ElfFile::parse(&data)
            .with_context(|| format!("`{}` is not a usable ELF file", host.display()))?;
        let (probes, exported_only) =
            tracer.attach_pymalloc(pid, &host, &mut elf, interp.free_threaded, &interp.pymalloc)?;
        if pid != self.root {
            return Ok(());
        }
        let names: Vec<&str> = probes.iter().map(|p| p.function).collect();
        eprintln!(
            "leaktrace: --pymalloc: probing {} in `{}`: every Python object allocation now traps into the kernel; expect the target to run several times slower while attached",
            names.join(" "),
            interp.module
        );
        // Debian's static 3.14/3.15 (PGO + LTO): the object allocator's body is inlined into
        // its callers behind a comparison with its address, so its probe sees few calls.
        if let Some(f) = interp.pymalloc_function("_PyObject_Malloc") {
            let inlined = elf.address_uses(&data, f.vaddr);
            if inlined >= Self::PYMALLOC_INLINED_MIN {
                eprintln!(
                    "leaktrace: warning: `{}` has pymalloc's _PyObject_Malloc inlined into {inlined} call sites (a PGO/LTO build): --pymalloc sees only the calls that reach the function; to see every object, start the target with PYTHONMALLOC=malloc (its objects then come from malloc, traced without --pymalloc)",
                    interp.module
                );
            }
        }
        if exported_only {
            eprintln!(
                "leaktrace: warning: `{}` has no symbol table: only calls through the exported PyObject_*/PyMem_* functions are seen, and CPython's internal allocations bypass them",
                interp.module
            );
        }
        Ok(())
    }

    /// Publishes the current Python threads of every traced process to the kernel.
    pub fn refresh_threads(&mut self, tracer: &mut Tracer) -> Result<()> {
        for proc in self.procs.values_mut() {
            let Some(interp) = proc.python.as_mut() else {
                continue;
            };
            let threads = interp.threads();
            if threads.is_empty() && !proc.target.is_alive() {
                continue;
            }
            let now: HashSet<u32> = threads.iter().map(|t| t.0).collect();
            let gone: Vec<u32> = proc.py_tids.difference(&now).copied().collect();
            tracer.update_tstates(&threads, &gone)?;
            proc.py_tids = now;
        }
        Ok(())
    }

    /// Descendants of the root that are neither traced nor given up on: candidates for
    /// [`Targets::follow`] (uvicorn and gunicorn workers, also those started later).
    pub fn new_children(&self) -> Vec<u32> {
        let me = std::process::id();
        descendants(self.root, me, MAX_PROCESSES * 4)
            .into_iter()
            .filter(|pid| !self.procs.contains_key(pid) && !self.skipped.contains(pid))
            .collect()
    }

    /// Starts tracing worker `pid`; true when it is traced now. A process that does not map
    /// its allocator yet (exec'd a moment ago) is tried again at the next round.
    pub fn follow(&mut self, pid: u32, tracer: &mut Tracer) -> bool {
        if self.procs.len() >= MAX_PROCESSES {
            if self.skipped.insert(pid) {
                eprintln!(
                    "leaktrace: warning: already tracing {MAX_PROCESSES} processes: not following pid {pid}"
                );
            }
            return false;
        }
        let t0 = Instant::now();
        let target = match TargetProcess::discover(pid) {
            Ok(t) => t,
            Err(e) => {
                let tries = self.waiting.entry(pid).or_insert(0);
                *tries += 1;
                if *tries >= CHILD_ATTACH_TRIES {
                    self.waiting.remove(&pid);
                    self.skipped.insert(pid);
                    eprintln!("leaktrace: not following pid {pid}: {e}");
                }
                return false;
            }
        };
        self.waiting.remove(&pid);
        let attached = match self.mode {
            Mode::Growth => growth::add_target(tracer, pid).map(|()| "its page faults".to_string()),
            Mode::Exact | Mode::Sampled => tracer
                .attach(pid, &target.allocator_host_path)
                .map(|probes| format!("{} probes", probes.len())),
        };
        match attached {
            Ok(what) => {
                eprintln!(
                    "leaktrace: following worker pid {pid} ({}): {what} in {} ms",
                    target.exe,
                    t0.elapsed().as_millis()
                );
                self.procs.insert(pid, Proc::new(target));
                self.traced.insert(pid);
                true
            }
            Err(e) => {
                // Exited while we attached, most likely; anything else is said once.
                let _ = tracer.forget_process(pid, &[]);
                self.skipped.insert(pid);
                if target.is_alive() {
                    eprintln!("leaktrace: warning: not following pid {pid}: {e:#}");
                }
                false
            }
        }
    }

    /// Stops tracing workers that exited: their probes go, and so does what the maps hold
    /// for them (their memory went with them). `t` is the time into the session; returns the
    /// processes dropped.
    pub fn forget_exited_workers(&mut self, tracer: &mut Tracer, t: f64) -> Vec<u32> {
        let gone: Vec<u32> = self
            .procs
            .iter()
            .filter(|(pid, p)| **pid != self.root && !p.target.is_alive())
            .map(|(pid, _)| *pid)
            .collect();
        for &pid in &gone {
            let proc = self.procs.remove(&pid).expect("listed above");
            let tids: Vec<u32> = proc.py_tids.into_iter().collect();
            if self.mode == Mode::Growth {
                let _ = growth::remove_target(tracer, pid);
            }
            if let Err(e) = tracer.forget_process(pid, &tids) {
                eprintln!("leaktrace: warning: cleaning up after pid {pid}: {e:#}");
            }
            self.exited.push((pid, t));
        }
        gone
    }
}

/// Ends process `pid`'s native stacks at its interpreter when that has no frame pointers (a
/// native walk that reaches it goes astray); whether it did.
fn cut_native_at(
    pid: u32,
    interp: &Interpreter,
    maps: &ProcMaps,
    tracer: &mut Tracer,
) -> Result<bool> {
    let cut = (!interp.frame_pointers)
        .then(|| interp_text(maps, &interp.module))
        .flatten();
    if let Some(text) = cut {
        tracer.set_native_cut(pid, text)?;
    }
    Ok(cut.is_some())
}

/// `[start, end)` of the executable mappings of `module` (the interpreter's code) in `maps`.
pub fn interp_text(maps: &ProcMaps, module: &str) -> Option<tracer_common::TextRange> {
    let code = maps
        .iter()
        .filter(|m| m.executable && m.path.as_deref() == Some(module));
    let (start, end) = code.fold(None, |acc: Option<(u64, u64)>, m| {
        Some(acc.map_or((m.start, m.end), |(s, e)| (s.min(m.start), e.max(m.end))))
    })?;
    Some(tracer_common::TextRange { start, end })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpreter_text_is_its_executable_mappings() {
        let maps = ProcMaps::new(crate::target::procmaps::parse(
            "55d0a0000000-55d0a0100000 r--p 00000000 08:01 42 /usr/bin/python3.11\n\
             55d0a0100000-55d0a0400000 r-xp 00100000 08:01 42 /usr/bin/python3.11\n\
             55d0a0400000-55d0a0500000 r--p 00400000 08:01 42 /usr/bin/python3.11\n\
             7f0000000000-7f0000100000 r-xp 00000000 08:01 7 /usr/lib/x86_64-linux-gnu/libc.so.6\n",
        ));
        assert_eq!(
            interp_text(&maps, "/usr/bin/python3.11"),
            Some(tracer_common::TextRange {
                start: 0x55d0a0100000,
                end: 0x55d0a0400000
            })
        );
        assert_eq!(interp_text(&maps, "/usr/bin/python3.12"), None);
    }
}
