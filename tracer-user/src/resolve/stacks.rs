//! Stacks as people read them: a recorded stack key (native stack id, caller, Python stack
//! hash) turned into frames, outermost first, allocator last. Python frames where the
//! interpreter was, native frames at the leaf; pymalloc arenas as one stack of their own.
//! Everything resolved is cached for the session.

use std::{
    collections::HashMap,
    path::Path,
    time::{Duration, Instant},
};

use tracer_common::{AllocKind, StackKey};

use crate::{
    probes::{bpf::Tracer, targets::Targets},
    resolve::{
        frame::{Frame, FrameKind},
        python::PyFrames,
        symbolize::Resolver,
    },
};

/// CPython's functions that map a pymalloc arena.
const PYMALLOC_ARENA_FUNCTIONS: &[&str] = &[
    "_PyObject_ArenaMmap",
    "_PyMem_ArenaAlloc",
    "_PyObject_ArenaMalloc",
];
/// The frame standing for every Python stack that mapped a pymalloc arena.
pub const PYMALLOC_ARENAS_FRAME: &str =
    "[pymalloc arenas: objects of 512 B or less, attributed one by one with --pymalloc]";

/// Resolves stack keys into frames, with the session's caches.
pub struct Stacks {
    /// Native symbols and each process's mappings.
    pub resolver: Resolver,
    /// Resolved Python stacks by (process, stack hash), outermost frame first.
    py_frames: HashMap<(u32, u64), Vec<Frame>>,
    /// Code objects and frames read from each process's interpreter so far.
    py_code: HashMap<u32, PyFrames>,
    /// `--per-process`: an outermost `pid N` frame.
    per_process: bool,
    /// Keep native frames in stacks that have Python frames.
    native: bool,
}

impl Stacks {
    pub fn new(resolver: Resolver, per_process: bool, native: bool) -> Self {
        Self {
            resolver,
            py_frames: HashMap::new(),
            py_code: HashMap::new(),
            per_process,
            native,
        }
    }

    /// Forgets what was resolved for process `pid` (it exited).
    pub fn forget_process(&mut self, pid: u32) {
        self.py_frames.retain(|(p, _), _| *p != pid);
        self.py_code.remove(&pid);
    }

    /// Resolves Python stacks seen since the last call, while the targets are alive to be read.
    pub fn resolve_new_python_stacks(&mut self, targets: &Targets, tracer: &Tracer) {
        if targets.procs.values().all(|p| p.python.is_none()) {
            return;
        }
        let Ok(totals) = tracer.stack_totals() else {
            return;
        };
        // Bounded per call: a worker that just started (imports) makes thousands of new
        // stacks, and the loop must get back to publishing threads quickly; what is left is
        // resolved at the next call, or on demand for a table or the report.
        let deadline = Instant::now() + Duration::from_millis(30);
        for (key, _) in totals {
            if key.py_stack != 0 && !self.py_frames.contains_key(&(key.tgid, key.py_stack)) {
                self.python_frames(key.tgid, key.py_stack, targets, tracer);
                if Instant::now() >= deadline {
                    break;
                }
            }
        }
    }

    /// The Python frames of a recorded stack, outermost first (cached).
    fn python_frames(
        &mut self,
        tgid: u32,
        key: u64,
        targets: &Targets,
        tracer: &Tracer,
    ) -> Vec<Frame> {
        if let Some(frames) = self.py_frames.get(&(tgid, key)) {
            return frames.clone();
        }
        let interp = targets.procs.get(&tgid).and_then(|p| p.python.as_ref());
        let (Some(interp), Some(stack)) = (interp, tracer.py_stack(key)) else {
            return Vec::new();
        };
        let code = self.py_code.entry(tgid).or_default();
        let len = (stack.len as usize).min(stack.frames.len());
        let mut frames: Vec<Frame> = stack.frames[..len]
            .iter()
            .filter_map(|f| code.frame(interp, *f))
            .collect();
        if stack.truncated != 0 {
            frames.push(Frame {
                function: "[truncated: raise --max-python-depth]".to_string(),
                file: None,
                line: None,
                module: None,
                kind: FrameKind::Python,
            });
        }
        frames.reverse();
        self.py_frames.insert((tgid, key), frames.clone());
        frames
    }

    /// Frames of a stack, outermost first, allocator last: Python frames where the
    /// interpreter was, native frames at the leaf.
    pub fn frames(&mut self, key: &StackKey, targets: &Targets, tracer: &Tracer) -> Vec<Frame> {
        let native = self.native_frames(key, targets, tracer);
        let python = if key.py_stack != 0 {
            self.python_frames(key.tgid, key.py_stack, targets, tracer)
        } else {
            Vec::new()
        };
        let process: Vec<Frame> = if self.per_process {
            let exe = targets.procs.get(&key.tgid).map(|p| p.target.exe.clone());
            vec![Frame {
                function: format!("pid {}", key.tgid),
                file: None,
                line: None,
                module: exe.map(|e| {
                    Path::new(&e)
                        .file_name()
                        .map_or(e.clone(), |n| n.to_string_lossy().into_owned())
                }),
                kind: FrameKind::Process,
            }]
        } else {
            Vec::new()
        };
        if python.is_empty() {
            return process
                .into_iter()
                .chain(native.into_iter().rev())
                .collect();
        }
        // A pymalloc arena (objects of 512 bytes or less) is not the Python code that happened
        // to need a new one: objects of every other function live in it and keep it mapped.
        // Blaming it on that code ranked an endpoint that frees everything above real leaks
        // (tests/scenarios, the export control), so arenas are one stack of their own.
        if native
            .iter()
            .any(|f| PYMALLOC_ARENA_FUNCTIONS.contains(&f.function.as_str()))
        {
            let label = Frame {
                function: PYMALLOC_ARENAS_FRAME.to_string(),
                file: None,
                line: None,
                module: None,
                kind: FrameKind::Python,
            };
            let leaf = native.into_iter().take(2).collect::<Vec<_>>();
            return process
                .into_iter()
                .chain(std::iter::once(label))
                .chain(leaf.into_iter().rev())
                .collect();
        }
        // Native frames from the leaf outward: the allocator and its caller, then whatever is
        // not the interpreter itself (a C extension), up to the first interpreter frame.
        let interp_module = targets
            .procs
            .get(&key.tgid)
            .and_then(|p| p.python.as_ref())
            .and_then(|i| {
                Path::new(&i.module)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
            });
        let mut leaf = Vec::new();
        if self.native {
            for (i, f) in native.into_iter().enumerate() {
                if i >= 2 && f.module.is_some() && f.module == interp_module {
                    break;
                }
                leaf.push(f);
            }
        }
        process
            .into_iter()
            .chain(python)
            .chain(leaf.into_iter().rev())
            .collect()
    }

    /// Native frames of a stack, innermost (the allocator) first.
    fn native_frames(&mut self, key: &StackKey, targets: &Targets, tracer: &Tracer) -> Vec<Frame> {
        let pid = key.tgid;
        let kind = AllocKind::from_u32(key.kind).unwrap_or(AllocKind::Other);
        let fault = kind == AllocKind::PageFault;
        let module = (!fault).then(|| {
            targets
                .procs
                .get(&pid)
                .unwrap_or_else(|| targets.root_proc())
                .target
                .allocator_module()
        });
        let mut frames = vec![Frame::native(kind.function_name(), module)];
        // ips[0] is the probed instruction (the allocator itself); the rest are return
        // addresses. Frame-pointer unwinding from a function's entry skips its caller, whose
        // return address the probe read from [sp] (unless the kernel already added it).
        // A page fault's ips[0] is the faulting instruction (its `caller`), or for a fault
        // taken by the kernel in a syscall, the syscall's call site: kept.
        let ips = tracer.stack(key.stack_id).unwrap_or_default();
        let rest = ips.get(usize::from(!fault)..).unwrap_or_default();
        let mut returns: Vec<u64> = Vec::with_capacity(rest.len() + 1);
        if key.caller != 0 && rest.first() != Some(&key.caller) {
            returns.push(key.caller);
        }
        returns.extend_from_slice(rest);
        for ip in returns {
            // Without frame pointers the unwinder wanders into data: stop at the first address
            // outside executable code.
            let in_code = self
                .resolver
                .maps(pid)
                .and_then(|m| m.find(ip))
                .is_some_and(|m| m.executable);
            if !in_code {
                break;
            }
            frames.push(self.resolver.frame(pid, ip, true));
        }
        frames
    }
}
