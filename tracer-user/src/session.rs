//! One tracing session: attach, poll, print, and write the report on the way out.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    fs::File,
    io::{Seek, Write},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, SignalKind};
use tracer_common::{AllocKind, Counter, MapEvent, MapEventKind, StackKey};

use crate::{
    aggregate::{self, LiveAlloc, Resolved, Series},
    bpf::{Counters, Limits, Tracer},
    error::{exit, user},
    preflight,
    pyruntime::{Interpreter, NotPython},
    regions::Regions,
    report::{human_bytes, Format, Frame, Report, StackReport, Target, Totals, SCHEMA},
    symbolize::Resolver,
    target::TargetProcess,
};

/// Settings of `leaktrace attach`.
#[derive(Clone, Debug)]
pub struct AttachOptions {
    pub pid: u32,
    pub duration: Option<Duration>,
    pub interval: Duration,
    pub min_age: Duration,
    pub top: usize,
    pub output: PathBuf,
    pub format: Format,
    pub max_allocs: u32,
    /// Every map's size (`max_allocs` is `maps.allocs`).
    pub maps: crate::limits::MapLimits,
    pub mode: crate::mode::Mode,
    /// `--mode sampled`: the sampling parameters.
    pub sampling: Option<crate::mode::Sampling>,
    /// Walk Python frames when the target is a supported CPython.
    pub python: bool,
    /// Also probe pymalloc (`--pymalloc`).
    pub pymalloc: bool,
    /// Every probe on its function's first byte (benchmarks).
    pub probe_at_entry: bool,
    /// No return probes (benchmarks).
    pub bench_no_return_probe: bool,
    /// How tables, the live view and the summary rank stacks.
    pub sort: crate::view::SortBy,
    /// What flamegraphs and folded output measure.
    pub flame: crate::report::Flame,
    /// `top`: a full-screen live view instead of periodic tables.
    pub live_view: bool,
    /// Keep native frames in stacks that have Python frames.
    pub native: bool,
    pub max_python_depth: u32,
    /// Also trace the target's descendants (workers), present and future.
    pub follow_children: bool,
    /// Keep each process's stacks apart under a `pid N` root frame.
    pub per_process: bool,
}

/// Why tracing stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Duration,
    Signal(&'static str),
    TargetExited,
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Opens the report file up front, so an unwritable path fails before attaching.
fn open_output(path: &PathBuf) -> Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| {
            user(format!(
                "cannot write the report to `{}` ({e}): choose a writable path with --output",
                path.display()
            ))
        })
}

/// Worker processes traced at most at once (beyond, new ones are not followed and a note says so).
const MAX_PROCESSES: usize = 256;
/// Tries to attach to a new process that does not map its allocator yet (just exec'd).
const CHILD_ATTACH_TRIES: u32 = 20;

/// One traced process: the target of `attach`/`run`, or one of its workers.
struct Proc {
    target: TargetProcess,
    python: Option<Interpreter>,
    /// Threads whose state is published to the kernel.
    py_tids: HashSet<u32>,
    /// No more looking for an interpreter (found one, or found one we cannot read).
    python_search_done: bool,
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

/// CPython's functions that map a pymalloc arena.
const PYMALLOC_ARENA_FUNCTIONS: &[&str] = &[
    "_PyObject_ArenaMmap",
    "_PyMem_ArenaAlloc",
    "_PyObject_ArenaMalloc",
];
use crate::python::freethreaded;
pub use crate::python::freethreaded::MIMALLOC_SEGMENTS_FRAME;
/// The frame standing for every Python stack that mapped a pymalloc arena.
pub const PYMALLOC_ARENAS_FRAME: &str =
    "[pymalloc arenas: objects of 512 B or less, attributed one by one with --pymalloc]";

struct Session {
    opts: AttachOptions,
    /// The process named on the command line (or started by `run`).
    root: u32,
    /// Every process traced right now, the root included, by PID.
    procs: BTreeMap<u32, Proc>,
    /// Every process traced at some point.
    traced: BTreeSet<u32>,
    /// Workers that exited while traced: (pid, seconds into the session).
    exited: Vec<(u32, f64)>,
    /// New processes not attached yet (allocator not mapped yet): failed tries so far.
    waiting: HashMap<u32, u32>,
    /// Processes given up on: not followed again.
    skipped: HashSet<u32>,
    tracer: Tracer,
    resolver: Resolver,
    regions: Regions,
    series: Series,
    started: Instant,
    /// Resolved Python stacks by (process, stack hash), outermost frame first.
    py_frames: HashMap<(u32, u64), Vec<Frame>>,
    /// Set when leaktrace started the target itself (`run`).
    child: Option<u32>,
    /// Files examined for an interpreter.
    interp_files: crate::pyruntime::InterpFiles,
    /// Where intervals are shown: tables, or `top`'s live view.
    view: Box<dyn crate::view::View>,
}

pub fn attach(opts: AttachOptions) -> Result<i32> {
    preflight_checks()?;
    let target = TargetProcess::discover(opts.pid)?;
    trace(target, opts, None)
}

fn preflight_checks() -> Result<()> {
    preflight::check_privileges()?;
    preflight::raise_fd_limit();
    for warning in preflight::check_kernel(std::path::Path::new("/sys"))? {
        eprintln!("leaktrace: warning: {warning}");
    }
    Ok(())
}

/// `leaktrace run -- COMMAND`: starts the command stopped before it executes anything,
/// attaches, lets it go, and traces it until it exits (or --duration, or a signal).
/// Returns the command's exit status when it exited while traced.
pub fn run_command(options: impl FnOnce(u32) -> AttachOptions, argv: &[String]) -> Result<i32> {
    preflight_checks()?;
    let (pid, exe) = crate::spawn::spawn_stopped(argv)?;
    let opts = options(pid);
    let target = match TargetProcess::for_new_command(pid, &exe) {
        Ok(t) => t,
        Err(e) => {
            crate::spawn::kill_and_reap(pid);
            return Err(e);
        }
    };
    trace(target, opts, Some(pid))
}

/// Traces `target` until a stop condition; `child` is set when leaktrace started the target
/// (stopped, to be continued once attached).
fn trace(target: TargetProcess, opts: AttachOptions, child: Option<u32>) -> Result<i32> {
    let mut out = match open_output(&opts.output) {
        Ok(out) => out,
        Err(e) => {
            if let Some(pid) = child {
                crate::spawn::kill_and_reap(pid);
            }
            return Err(e);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        // Handle signals from here on, so Ctrl-C while attaching still detaches cleanly.
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sighup = signal(SignalKind::hangup())?;
        let mut sigusr1 = signal(SignalKind::user_defined1())?;

        let (_lock, other) = crate::target::TraceLock::take(target.pid);
        if let Some(other) = other {
            eprintln!(
                "leaktrace: warning: another leaktrace (pid {other}) is tracing pid {} too: both work, but the target pays for both",
                target.pid
            );
        }
        eprintln!(
            "leaktrace: attaching to pid {} ({}), allocator in {} ...",
            target.pid, target.exe, target.allocator
        );
        let t0 = Instant::now();
        let attached = Tracer::load(Limits {
            maps: crate::limits::MapLimits {
                allocs: opts.max_allocs,
                ..opts.maps
            },
            sampling: opts.sampling,
            probe_at_entry: opts.probe_at_entry,
            no_return_probe: opts.bench_no_return_probe,
            mode: opts.mode,
        })
        .and_then(|mut tracer| {
            let probes = match opts.mode {
                crate::mode::Mode::Exact | crate::mode::Mode::Sampled => {
                    tracer.attach(target.pid, &target.allocator_host_path)?
                }
                crate::mode::Mode::Growth => crate::growth::attach(&mut tracer, target.pid)?
                    .into_iter()
                    .map(|function| crate::bpf::Attached {
                        function,
                        offset: 0,
                    })
                    .collect(),
            };
            Ok((tracer, probes))
        });
        let (tracer, attached) = match attached {
            Ok(v) => v,
            Err(e) => {
                if let Some(pid) = child {
                    crate::spawn::kill_and_reap(pid);
                }
                return Err(e);
            }
        };
        let mut resolver = Resolver::new();
        let _ = resolver.refresh(target.pid);
        let probes: Vec<String> = attached
            .iter()
            .map(|a| match a.offset {
                0 => a.function.to_string(),
                off => format!("{}+{off}", a.function),
            })
            .collect();
        eprintln!(
            "leaktrace: attached {} {} in {} ms: {}",
            attached.len(),
            match opts.mode {
                crate::mode::Mode::Exact | crate::mode::Mode::Sampled => "probes",
                crate::mode::Mode::Growth => "tracepoints (no uprobes)",
            },
            t0.elapsed().as_millis(),
            probes.join(" ")
        );
        eprintln!(
            "leaktrace: tracing {}; report every {} s; Ctrl-C to stop and write `{}`",
            match opts.duration {
                Some(d) => format!("for {} s", d.as_secs_f64()),
                None if child.is_some() => "until the command exits".to_string(),
                None => "until Ctrl-C".to_string(),
            },
            opts.interval.as_secs_f64(),
            opts.output.display()
        );

        let root = target.pid;
        let mut session = Session {
            opts: opts.clone(),
            root,
            procs: BTreeMap::from([(root, Proc::new(target))]),
            traced: BTreeSet::from([root]),
            exited: Vec::new(),
            waiting: HashMap::new(),
            skipped: HashSet::new(),
            tracer,
            resolver,
            regions: Regions::default(),
            series: Series::default(),
            started: Instant::now(),
            py_frames: HashMap::new(),
            child,
            interp_files: Default::default(),
            view: if opts.live_view {
                crate::view::for_top(opts.pid, opts.top, opts.sort)
            } else {
                Box::new(crate::view::TextView {
                    top: opts.top,
                    sort: opts.sort,
                })
            },
        };
        if let Some(pid) = child {
            if opts.python {
                let exe = session.root_proc().target.exe.clone();
                session.interp_files.prepare_for(Path::new(&exe));
            }
            crate::spawn::resume(pid);
            session.follow_python_start().await?;
        } else {
            session.find_python(root)?;
        }
        if opts.follow_children {
            session.follow_children();
        }
        session.sample()?;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut ticks: u64 = 0;
        let mut next_report = session.started + opts.interval;
        let stop = loop {
            tokio::select! {
                _ = sigint.recv() => break Stop::Signal("SIGINT"),
                _ = sigterm.recv() => break Stop::Signal("SIGTERM"),
                _ = sighup.recv() => break Stop::Signal("SIGHUP"),
                _ = sigusr1.recv() => session.write_snapshot()?,
                _ = tick.tick() => {
                    ticks += 1;
                    if let Some(crate::view::Key::Quit) = session.view.poll_keys()? {
                        break Stop::Signal("q");
                    }
                    session.drain();
                    if opts.follow_children {
                        session.follow_children();
                    }
                    if ticks % 5 == 0 {
                        // `run` and new workers: the interpreter is mapped some time after exec.
                        session.find_pythons()?;
                    }
                    session.forget_exited_workers();
                    session.refresh_threads()?;
                    if ticks % 5 == 0 {
                        session.resolve_new_python_stacks();
                    }
                    if opts.duration.is_some_and(|d| session.started.elapsed() >= d) {
                        break Stop::Duration;
                    }
                    if !session.root_proc().target.is_alive() {
                        break Stop::TargetExited;
                    }
                    if Instant::now() >= next_report {
                        next_report += opts.interval;
                        session.refresh_maps();
                        session.sample()?;
                        session.show_interval()?;
                    }
                }
            }
        };
        session.finish(stop, &mut out)
    })
}

impl Session {
    fn root_proc(&self) -> &Proc {
        &self.procs[&self.root]
    }

    /// Re-reads the mappings of every traced process (new libraries, new code).
    fn refresh_maps(&mut self) {
        for pid in self.procs.keys() {
            let _ = self.resolver.refresh(*pid);
        }
    }

    /// Looks for an interpreter in every process where the search is not over yet.
    fn find_pythons(&mut self) -> Result<()> {
        let pending: Vec<u32> = self
            .procs
            .iter()
            .filter(|(_, p)| p.python.is_none() && !p.python_search_done)
            .map(|(pid, _)| *pid)
            .collect();
        for pid in pending {
            let _ = self.resolver.refresh(pid);
            self.find_python(pid)?;
        }
        Ok(())
    }

    /// Turns on Python frames for process `pid` if it runs a supported CPython.
    fn find_python(&mut self, pid: u32) -> Result<()> {
        let started_by_us = self.child == Some(pid);
        let is_root = pid == self.root;
        let Some(proc) = self.procs.get_mut(&pid) else {
            return Ok(());
        };
        if !self.opts.python || proc.python_search_done {
            return Ok(());
        }
        let Some(maps) = self.resolver.maps(pid) else {
            return Ok(());
        };
        match Interpreter::discover(pid, maps, &mut self.interp_files) {
            Ok(interp) => {
                self.tracer
                    .set_python(pid, &interp.config(self.opts.max_python_depth))?;
                if self.opts.pymalloc {
                    self.attach_pymalloc(pid, &interp)?;
                } else if interp.free_threaded
                    && is_root
                    && self.opts.mode != crate::mode::Mode::Growth
                {
                    eprintln!(
                        "leaktrace: note: Python {} is free-threaded: its objects come from mimalloc, not malloc, so they are not seen one by one (mimalloc's own mappings are one stack); add --pymalloc to see every object",
                        interp.version()
                    );
                }
                // Printed once everything is in place: scripts and tests wait for it.
                if is_root {
                    eprintln!(
                        "leaktrace: Python {} in `{}`: recording Python frames",
                        interp.version(),
                        interp.module
                    );
                } else {
                    eprintln!(
                        "leaktrace: worker {pid}: Python {} in `{}`: recording Python frames",
                        interp.version(),
                        interp.module
                    );
                }
                let proc = self.procs.get_mut(&pid).expect("checked above");
                proc.python = Some(interp);
                proc.python_search_done = true;
                self.refresh_threads()?;
            }
            // A command started by `run`, or a worker just started, maps its interpreter some
            // time after exec.
            Err(NotPython::Absent) if started_by_us || !is_root => {
                // A worker that already maps its C library and no interpreter runs no Python.
                let has_libc = maps.find_file(crate::procmaps::is_libc_name).is_some();
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

    fn attach_pymalloc(&mut self, pid: u32, interp: &Interpreter) -> Result<()> {
        // The path maps print is as seen from leaktrace's root (a chrooted target's files keep
        // their host path there): open the file through the mapping itself.
        let host = crate::procmaps::ProcMaps::read(pid)
            .ok()
            .and_then(|maps| {
                maps.iter()
                    .find(|m| m.path.as_deref() == Some(interp.module.as_str()))
                    .map(|m| crate::procmaps::openable_path(pid, m))
            })
            .unwrap_or_else(|| {
                Path::new("/proc")
                    .join(pid.to_string())
                    .join("root")
                    .join(interp.module.trim_start_matches('/'))
            });
        let (probes, exported_only) =
            self.tracer
                .attach_pymalloc(pid, &host, interp.free_threaded)?;
        if pid != self.root {
            return Ok(());
        }
        let names: Vec<&str> = probes.iter().map(|p| p.function).collect();
        eprintln!(
            "leaktrace: --pymalloc: probing {} in `{}`: every Python object allocation now traps into the kernel; expect the target to run several times slower while attached",
            names.join(" "),
            interp.module
        );
        if exported_only {
            eprintln!(
                "leaktrace: warning: `{}` has no symbol table: only calls through the exported PyObject_*/PyMem_* functions are seen, and CPython's internal allocations bypass them",
                interp.module
            );
        }
        Ok(())
    }

    /// `run`: right after the command starts, looks for its interpreter every few milliseconds
    /// until the main thread's state is published, so that the first Python code already has
    /// Python stacks (CPython creates that state early in Py_Initialize, well before it runs any
    /// of the program's code). Gives up quietly after a few seconds (not Python, or slow start:
    /// the 500 ms search in the main loop goes on).
    async fn follow_python_start(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(3);
        let root = self.root;
        while self.opts.python && Instant::now() < deadline && self.root_proc().target.is_alive() {
            let proc = self.root_proc();
            if proc.python.is_none() {
                let _ = self.resolver.refresh(root);
                self.find_python(root)?;
                let proc = self.root_proc();
                if proc.python_search_done && proc.python.is_none() {
                    return Ok(());
                }
            } else {
                self.refresh_threads()?;
                if !self.root_proc().py_tids.is_empty() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        Ok(())
    }

    /// Publishes the current Python threads of every traced process to the kernel.
    fn refresh_threads(&mut self) -> Result<()> {
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
            self.tracer.update_tstates(&threads, &gone)?;
            proc.py_tids = now;
        }
        Ok(())
    }

    /// Traces descendants of the root that are not traced yet (uvicorn and gunicorn workers,
    /// also those started later). A process that does not map its allocator yet (exec'd a
    /// moment ago) is tried again at the next round.
    fn follow_children(&mut self) {
        let me = std::process::id();
        let found = crate::target::descendants(self.root, me, MAX_PROCESSES * 4);
        for pid in found {
            if self.procs.contains_key(&pid) || self.skipped.contains(&pid) {
                continue;
            }
            if self.procs.len() >= MAX_PROCESSES {
                if self.skipped.insert(pid) {
                    eprintln!(
                        "leaktrace: warning: already tracing {MAX_PROCESSES} processes: not following pid {pid}"
                    );
                }
                continue;
            }
            let t0 = Instant::now();
            let target = match crate::target::TargetProcess::discover(pid) {
                Ok(t) => t,
                Err(e) => {
                    let tries = self.waiting.entry(pid).or_insert(0);
                    *tries += 1;
                    if *tries >= CHILD_ATTACH_TRIES {
                        self.waiting.remove(&pid);
                        self.skipped.insert(pid);
                        eprintln!("leaktrace: not following pid {pid}: {e}");
                    }
                    continue;
                }
            };
            self.waiting.remove(&pid);
            let attached = match self.opts.mode {
                crate::mode::Mode::Growth => self
                    .tracer
                    .add_target(pid)
                    .map(|()| "its page faults".to_string()),
                crate::mode::Mode::Exact | crate::mode::Mode::Sampled => self
                    .tracer
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
                    let _ = self.resolver.refresh(pid);
                    self.procs.insert(pid, Proc::new(target));
                    self.traced.insert(pid);
                    if let Err(e) = self.find_python(pid) {
                        eprintln!("leaktrace: worker {pid}: no Python frames: {e:#}");
                        if let Some(p) = self.procs.get_mut(&pid) {
                            p.python_search_done = true;
                        }
                    }
                }
                Err(e) => {
                    // Exited while we attached, most likely; anything else is said once.
                    let _ = self.tracer.forget_process(pid, &[]);
                    self.skipped.insert(pid);
                    if target.is_alive() {
                        eprintln!("leaktrace: warning: not following pid {pid}: {e:#}");
                    }
                }
            }
        }
    }

    /// Stops tracing workers that exited: their probes go, and so does what the maps hold
    /// for them (their memory went with them).
    fn forget_exited_workers(&mut self) {
        let gone: Vec<u32> = self
            .procs
            .iter()
            .filter(|(pid, p)| **pid != self.root && !p.target.is_alive())
            .map(|(pid, _)| *pid)
            .collect();
        for pid in gone {
            let proc = self.procs.remove(&pid).expect("listed above");
            let tids: Vec<u32> = proc.py_tids.into_iter().collect();
            if self.opts.mode == crate::mode::Mode::Growth {
                let _ = self.tracer.remove_target(pid);
            }
            if let Err(e) = self.tracer.forget_process(pid, &tids) {
                eprintln!("leaktrace: warning: cleaning up after pid {pid}: {e:#}");
            }
            self.regions.drop_process(pid);
            self.py_frames.retain(|(p, _), _| *p != pid);
            let t = self.started.elapsed().as_secs_f64();
            self.exited.push((pid, t));
            eprintln!("leaktrace: worker pid {pid} exited after {t:.1} s: no longer traced");
        }
    }

    /// Resolves Python stacks seen since the last call, while the targets are alive to be read.
    fn resolve_new_python_stacks(&mut self) {
        if self.procs.values().all(|p| p.python.is_none()) {
            return;
        }
        let Ok(totals) = self.tracer.stack_totals() else {
            return;
        };
        // Bounded per call: a worker that just started (imports) makes thousands of new
        // stacks, and the loop must get back to publishing threads quickly; what is left is
        // resolved at the next call, or on demand for a table or the report.
        let deadline = Instant::now() + Duration::from_millis(30);
        for (key, _) in totals {
            if key.py_stack != 0 && !self.py_frames.contains_key(&(key.tgid, key.py_stack)) {
                self.python_frames(key.tgid, key.py_stack);
                if Instant::now() >= deadline {
                    break;
                }
            }
        }
    }

    /// The Python frames of a recorded stack, outermost first (cached).
    fn python_frames(&mut self, tgid: u32, key: u64) -> Vec<Frame> {
        if let Some(frames) = self.py_frames.get(&(tgid, key)) {
            return frames.clone();
        }
        let interp = self.procs.get_mut(&tgid).and_then(|p| p.python.as_mut());
        let (Some(interp), Some(stack)) = (interp, self.tracer.py_stack(key)) else {
            return Vec::new();
        };
        let len = (stack.len as usize).min(stack.frames.len());
        let mut frames: Vec<Frame> = stack.frames[..len]
            .iter()
            .filter_map(|f| interp.frame(*f))
            .collect();
        if stack.truncated != 0 {
            frames.push(Frame {
                function: "[truncated: raise --max-python-depth]".to_string(),
                file: None,
                line: None,
                module: None,
                kind: crate::report::FrameKind::Python,
            });
        }
        frames.reverse();
        self.py_frames.insert((tgid, key), frames.clone());
        frames
    }

    fn drain(&mut self) {
        let regions = &mut self.regions;
        self.tracer.drain_events(|e: MapEvent| {
            let tgid = e.stack.tgid;
            match e.kind {
                k if k == MapEventKind::Map as u32 => {
                    regions.map(tgid, e.addr, e.len, e.stack, e.ts_ns)
                }
                k if k == MapEventKind::Unmap as u32 => {
                    regions.unmap(tgid, e.addr, e.len);
                }
                k if k == MapEventKind::Remap as u32 => regions.remap(
                    tgid,
                    (e.old_addr, e.old_len),
                    (e.addr, e.len),
                    e.stack,
                    e.ts_ns,
                ),
                _ => {}
            }
        });
    }

    /// Live bytes per stack right now: the kernel's totals plus tracked mappings.
    fn live_by_stack(&self) -> Result<HashMap<StackKey, (u64, u64)>> {
        let mut live: HashMap<StackKey, (u64, u64)> = HashMap::new();
        for (key, totals) in self.tracer.stack_totals()? {
            let e = live.entry(key).or_default();
            e.0 += totals.live_bytes.max(0) as u64;
            e.1 += totals.live_allocs.max(0) as u64;
        }
        for (r, count) in self.regions.pieces() {
            let e = live.entry(r.stack).or_default();
            e.0 += r.len();
            e.1 += count;
        }
        Ok(live)
    }

    fn sample(&mut self) -> Result<()> {
        self.resolve_new_python_stacks();
        let t = self.started.elapsed().as_secs_f64();
        let live = self.live_by_stack()?;
        self.series
            .push(t, live.into_iter().map(|(k, (bytes, _))| (k, bytes)));
        Ok(())
    }

    /// Frames of a stack, outermost first, allocator last: Python frames where the
    /// interpreter was, native frames at the leaf.
    fn frames(&mut self, key: &StackKey) -> Vec<Frame> {
        let native = self.native_frames(key);
        let python = if key.py_stack != 0 {
            self.python_frames(key.tgid, key.py_stack)
        } else {
            Vec::new()
        };
        let process: Vec<Frame> = if self.opts.per_process {
            let exe = self.procs.get(&key.tgid).map(|p| p.target.exe.clone());
            vec![Frame {
                function: format!("pid {}", key.tgid),
                file: None,
                line: None,
                module: exe.map(|e| {
                    Path::new(&e)
                        .file_name()
                        .map_or(e.clone(), |n| n.to_string_lossy().into_owned())
                }),
                kind: crate::report::FrameKind::Process,
            }]
        } else {
            Vec::new()
        };
        // mimalloc's memory (free-threaded builds), like pymalloc's arenas below, holds the
        // objects of every thread and function: one stack of its own, whoever mapped it.
        if native
            .iter()
            .take(2)
            .any(|f| freethreaded::is_mimalloc_os_function(&f.function))
        {
            let label = Frame {
                function: MIMALLOC_SEGMENTS_FRAME.to_string(),
                file: None,
                line: None,
                module: None,
                kind: crate::report::FrameKind::Python,
            };
            // The allocator frame only: mimalloc maps from more than one line, and where its
            // memory came from inside mimalloc says nothing to the reader.
            let leaf = native.into_iter().take(1);
            return process
                .into_iter()
                .chain(std::iter::once(label))
                .chain(leaf)
                .collect();
        }
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
                kind: crate::report::FrameKind::Python,
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
        let interp_module = self
            .procs
            .get(&key.tgid)
            .and_then(|p| p.python.as_ref())
            .and_then(|i| {
                Path::new(&i.module)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
            });
        let mut leaf = Vec::new();
        if self.opts.native {
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
    fn native_frames(&mut self, key: &StackKey) -> Vec<Frame> {
        let pid = key.tgid;
        let kind = AllocKind::from_u32(key.kind).unwrap_or(AllocKind::Other);
        let fault = kind == AllocKind::PageFault;
        let module = (!fault).then(|| {
            self.procs
                .get(&pid)
                .unwrap_or_else(|| self.root_proc())
                .target
                .allocator_module()
        });
        let mut frames = vec![Frame::native(kind.function_name(), module)];
        // ips[0] is the probed instruction (the allocator itself); the rest are return
        // addresses. Frame-pointer unwinding from a function's entry skips its caller, whose
        // return address the probe read from [sp] (unless the kernel already added it).
        // A page fault's ips[0] is the faulting instruction (its `caller`), or for a fault
        // taken by the kernel in a syscall, the syscall's call site: kept.
        let ips = self.tracer.stack(key.stack_id).unwrap_or_default();
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

    /// The view's picture of this interval: totals and one row per distinct stack.
    fn view_snapshot(&mut self) -> Result<crate::view::Snapshot> {
        let counters = self.tracer.counters()?;
        let live = self.live_by_stack()?;
        let (bytes, allocs) = live.values().fold((0, 0), |a, v| (a.0 + v.0, a.1 + v.1));
        let mut keys: Vec<(StackKey, (u64, u64))> =
            live.into_iter().filter(|(_, v)| v.0 > 0).collect();
        keys.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(a.0.cmp(&b.0)));
        // Symbolize only the biggest and fastest-growing stacks: the rest are not shown.
        let limit = self.opts.top.saturating_mul(4).max(40);
        let mut by_growth = keys.clone();
        by_growth.sort_by(|a, b| {
            let g = |k: &StackKey| self.series.growth(k).unwrap_or(f64::NEG_INFINITY);
            g(&b.0).total_cmp(&g(&a.0))
        });
        let mut chosen: Vec<(StackKey, (u64, u64))> = keys.iter().take(limit).copied().collect();
        for k in by_growth.into_iter().take(limit) {
            if !chosen.iter().any(|c| c.0 == k.0) {
                chosen.push(k);
            }
        }
        let allocated: HashMap<StackKey, u64> = self
            .tracer
            .stack_totals()?
            .into_iter()
            .map(|(k, t)| (k, t.total_bytes))
            .collect();
        let mut rows: Vec<crate::view::Row> = Vec::new();
        let mut row_keys: Vec<Vec<StackKey>> = Vec::new();
        for (key, (bytes, count)) in chosen {
            let label = short_stack(&self.frames(&key));
            match rows.iter().position(|r| r.label == label) {
                Some(i) => {
                    rows[i].live_bytes += bytes;
                    rows[i].live_allocs += count;
                    row_keys[i].push(key);
                }
                None => {
                    rows.push(crate::view::Row {
                        label,
                        live_bytes: bytes,
                        live_allocs: count,
                        growth_bytes_per_s: None,
                        trend: None,
                    });
                    row_keys.push(vec![key]);
                }
            }
        }
        for (row, keys) in rows.iter_mut().zip(&row_keys) {
            let points = self.series.merged(keys);
            let allocated_bytes: u64 = keys.iter().filter_map(|k| allocated.get(k)).sum();
            row.growth_bytes_per_s = crate::trend::robust_slope(&points);
            row.trend = crate::trend::classify(&points, allocated_bytes as f64)
                .map(crate::trend::Trend::as_str);
        }
        Ok(crate::view::Snapshot {
            elapsed_s: self.started.elapsed().as_secs_f64(),
            live_bytes: bytes,
            live_allocs: allocs,
            allocs_seen: counters.get(Counter::AllocsSeen),
            frees_seen: counters.get(Counter::FreesSeen),
            dropped: counters.dropped(),
            rows,
        })
    }

    fn show_interval(&mut self) -> Result<()> {
        let snapshot = self.view_snapshot()?;
        self.view.show(snapshot)
    }

    /// What is live now, as a report: at the end (`stop` set) or for a snapshot while tracing.
    fn build_report(&mut self, stop: Option<Stop>) -> Result<Report> {
        // Read the live heap first: the target keeps running while maps, symbols and Python
        // stacks are refreshed (seconds, on a busy machine), and a stack that churns (a full
        // cache that evicts) would meanwhile be replaced by allocations too young to count.
        let heap = self.tracer.allocs()?;
        let now_ns = monotonic_ns();
        self.drain();
        if stop != Some(Stop::TargetExited) {
            self.refresh_maps();
        }
        self.sample()?;
        let counters = self.tracer.counters()?;
        let allocated: HashMap<StackKey, (u64, u64)> = self
            .tracer
            .stack_totals()?
            .into_iter()
            .map(|(k, t)| (k, (t.total_bytes, t.total_allocs)))
            .collect();
        let min_age_ns = self.opts.min_age.as_nanos() as u64;
        let heap = heap.iter().map(|(_, info)| LiveAlloc {
            stack: info.stack,
            size: info.size,
            ts_ns: info.ts_ns,
            count: 1,
        });
        // Sampled mode: each recorded block stands for its weight.
        let live = crate::mode::weigh(self.tracer.sampling(), heap, now_ns, min_age_ns)
            .into_iter()
            .chain(self.regions.pieces().map(|(r, count)| LiveAlloc {
                stack: r.stack,
                size: r.len(),
                ts_ns: r.ts_ns,
                count,
            }));
        let groups = aggregate::group(live, now_ns, min_age_ns);
        let mut keys: Vec<StackKey> = groups.keys().copied().collect();
        keys.sort();
        let resolved: Vec<Resolved> = keys
            .iter()
            .map(|k| Resolved {
                frames: self.frames(k),
                agg: groups[k],
                growth: self.series.growth(k),
                allocated: allocated.get(k).copied().unwrap_or_default(),
            })
            .collect();
        let mut keys_by_frames: HashMap<Vec<Frame>, Vec<StackKey>> = HashMap::new();
        for (key, r) in keys.iter().zip(&resolved) {
            keys_by_frames
                .entry(r.frames.clone())
                .or_default()
                .push(*key);
        }
        // A stack as reported can be several kernel stacks, and those whose allocations were
        // all freed by the end (a cache that churned through them) still belong to its series:
        // without them, a flat stack whose allocations move between kernel stacks looks like
        // it grows.
        let gone: Vec<StackKey> = self
            .series
            .keys()
            .filter(|k| !groups.contains_key(*k))
            .copied()
            .collect();
        for key in gone {
            let frames = self.frames(&key);
            if let Some(keys) = keys_by_frames.get_mut(&frames) {
                keys.push(key);
            }
        }
        let mut stacks = aggregate::merge(resolved, now_ns);
        // Growth and trend from the whole window's samples of each stack as reported.
        for s in &mut stacks {
            let points = self.series.merged(&keys_by_frames[&s.frames]);
            s.growth_bytes_per_s = crate::trend::robust_slope(&points).or(s.growth_bytes_per_s);
            s.trend = crate::trend::classify(&points, s.alloc_bytes as f64)
                .map(|t| t.as_str().to_string());
            if let (Some(first), Some(last)) = (points.first(), points.last()) {
                s.added_bytes = (last.1 - first.1).max(0.0) as u64;
            }
        }
        let mut report = self.report(stop, &counters, stacks);
        if self.opts.mode == crate::mode::Mode::Growth {
            crate::growth::annotate(&mut report, &crate::growth::counters(&self.tracer)?);
        }
        Ok(report)
    }

    /// SIGUSR1: writes a timestamped report next to the final one, and goes on tracing.
    fn write_snapshot(&mut self) -> Result<()> {
        let report = self.build_report(None)?;
        let path = snapshot_path(&self.opts.output, std::time::SystemTime::now());
        let file = File::create(&path).map_err(|e| {
            user(format!(
                "cannot write the snapshot `{}`: {e}",
                path.display()
            ))
        })?;
        report.write_as(
            self.opts.format,
            self.opts.flame,
            std::io::BufWriter::new(file),
        )?;
        eprintln!(
            "leaktrace: snapshot written to `{}` ({} stacks, {} live); tracing goes on",
            path.display(),
            report.stacks.len(),
            human_bytes(report.totals.live_bytes)
        );
        Ok(())
    }

    fn finish(mut self, stop: Stop, out: &mut File) -> Result<i32> {
        let report = self.build_report(Some(stop))?;
        // Detach before the (possibly slow) rendering: the target runs free again.
        let target = self.root_proc().target.clone();
        let Session {
            opts,
            tracer,
            child,
            mut view,
            ..
        } = self;
        drop(tracer);
        view.close();

        out.set_len(0)?;
        out.rewind()?;
        let mut writer = std::io::BufWriter::new(&mut *out);
        report
            .write_as(opts.format, opts.flame, &mut writer)
            .and_then(|()| writer.flush().map_err(Into::into))
            .with_context(|| format!("cannot write `{}`", opts.output.display()))?;
        drop(writer);
        print_summary(&opts, &target, &report, stop);
        if let Some(pid) = child {
            if stop == Stop::TargetExited {
                let status = crate::spawn::reap(pid);
                eprintln!("leaktrace: the command exited with status {status}");
                return Ok(status);
            }
            eprintln!("leaktrace: the command (pid {pid}) goes on running, no longer traced");
            return Ok(exit::OK);
        }
        Ok(match stop {
            Stop::TargetExited => exit::TARGET_EXITED,
            _ => exit::OK,
        })
    }

    fn report(&self, stop: Option<Stop>, counters: &Counters, stacks: Vec<StackReport>) -> Report {
        let mut notes = Vec::new();
        let dropped = counters.dropped();
        if dropped > 0 {
            notes.push(format!(
                "{dropped} allocations were not tracked (map full or lost events): the numbers are lower bounds; raise --max-allocs (or --max-threads, --events-bytes: see the counters)"
            ));
        }
        if let Some(s) = self.opts.sampling {
            notes.push(format!(
                "sampled mode (one sample per {} allocated on average): live bytes and counts are estimates, each recorded allocation of s bytes standing for s/(1-exp(-s/{})) bytes; stacks that allocated little may be missing",
                human_bytes(s.n),
                s.n
            ));
        }
        let full = |c: Counter| counters.get(c);
        if full(Counter::StackTotalsFull) > 0 {
            notes.push(format!(
                "{} allocations found the stack totals map full: live tables and growth miss those stacks (the report itself is complete); raise --max-stacks",
                full(Counter::StackTotalsFull)
            ));
        }
        if full(Counter::PyStacksFull) > 0 {
            notes.push(format!(
                "{} allocations found the Python stack map full and have native stacks only; raise --max-python-stacks",
                full(Counter::PyStacksFull)
            ));
        }
        if let (Some(Stop::TargetExited), Some(_)) = (stop, self.child) {
            notes.push(
                "the command exited: the report shows what was live just before it did (a Python program's shutdown frees most of its objects first; stop with --duration to see them)"
                    .to_string(),
            );
        } else if let Some(Stop::TargetExited) = stop {
            notes.push(format!(
                "process {} exited after {:.1} s of tracing: the report shows what was live just before it exited",
                self.root,
                self.started.elapsed().as_secs_f64()
            ));
        }
        for (pid, t) in &self.exited {
            notes.push(format!(
                "worker process {pid} exited after {t:.1} s of tracing: its memory went with it and is not in this report"
            ));
        }
        if self.traced.len() > 1 && !self.opts.per_process {
            notes.push(format!(
                "{} processes traced (pids {}): stacks are summed across them; --per-process keeps them apart",
                self.traced.len(),
                self.traced
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let stack_lost = counters.get(Counter::StackCollision) + counters.get(Counter::StackError);
        if stack_lost > 0 {
            notes.push(format!(
                "{stack_lost} allocations have no native stack (stack map full or collided): they show only their direct caller"
            ));
        }
        Report {
            schema: SCHEMA.to_string(),
            target: Target {
                pids: self.traced.iter().copied().collect(),
                exe: self.root_proc().target.exe.clone(),
                python: std::iter::once(self.root_proc())
                    .chain(self.procs.values())
                    .find_map(|p| p.python.as_ref())
                    .map(Interpreter::version),
            },
            mode: self.opts.mode.as_str().to_string(),
            sample_bytes: self.opts.sampling.map(|s| s.n),
            duration_s: self.started.elapsed().as_secs_f64(),
            totals: Totals {
                live_bytes: stacks.iter().map(|s| s.live_bytes).sum(),
                live_allocs: stacks.iter().map(|s| s.live_allocs).sum(),
                allocs_seen: counters.get(Counter::AllocsSeen),
                frees_seen: counters.get(Counter::FreesSeen),
                dropped,
            },
            stacks,
            min_age_s: self.opts.min_age.as_secs_f64(),
            complete: dropped == 0,
            counters: Counters::NAMES
                .iter()
                .map(|(c, name)| (name.to_string(), counters.get(*c)))
                .collect::<BTreeMap<_, _>>(),
            notes,
        }
    }
}

fn print_summary(opts: &AttachOptions, target: &TargetProcess, report: &Report, stop: Stop) {
    let why = match stop {
        Stop::Duration => "duration reached".to_string(),
        Stop::Signal(s) => format!("{s} received"),
        Stop::TargetExited => format!("process {} exited", target.pid),
    };
    println!(
            "leaktrace: stopped ({why}); detached. {} live in {} allocations older than {} s; {} allocs and {} frees seen; dropped {}",
            human_bytes(report.totals.live_bytes),
            report.totals.live_allocs,
            report.min_age_s,
            report.totals.allocs_seen,
            report.totals.frees_seen,
            report.totals.dropped,
        );
    let mut ranked: Vec<&StackReport> = report.stacks.iter().collect();
    if opts.sort == crate::view::SortBy::Growth {
        ranked.sort_by(|a, b| {
            let g = |s: &StackReport| s.growth_bytes_per_s.unwrap_or(f64::NEG_INFINITY);
            g(b).total_cmp(&g(a)).then(b.live_bytes.cmp(&a.live_bytes))
        });
    }
    for s in ranked.into_iter().take(opts.top) {
        println!(
            "  {:>10} {:>8} {:>12} {:>9}  {}",
            human_bytes(s.live_bytes),
            s.live_allocs,
            crate::view::human_rate(s.growth_bytes_per_s),
            s.trend.as_deref().unwrap_or("-"),
            short_stack(&s.frames)
        );
    }
    for note in &report.notes {
        eprintln!("leaktrace: note: {note}");
    }
    eprintln!(
        "leaktrace: wrote `{}` ({} stacks)",
        opts.output.display(),
        report.stacks.len()
    );
}

/// `leaks.svg` -> `leaks-20261123T232100Z.svg`: where a SIGUSR1 snapshot goes.
pub fn snapshot_path(output: &Path, now: std::time::SystemTime) -> PathBuf {
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let stamp = format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    let stem = output
        .file_stem()
        .map_or_else(|| "leaktrace".into(), |s| s.to_string_lossy().into_owned());
    let name = match output.extension() {
        Some(ext) => format!("{stem}-{stamp}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{stamp}"),
    };
    output.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_stacks_lead_with_python_frames() {
        let py = |f: &str, line| Frame {
            function: f.into(),
            file: Some(format!("/srv/app/{f}.py")),
            line: Some(line),
            module: None,
            kind: crate::report::FrameKind::Python,
        };
        let frames = vec![
            py("main", 30),
            py("leaky", 12),
            Frame::native("_PyObject_Malloc", Some("libpython3.12.so".into())),
            Frame::native("malloc", Some("libc.so.6".into())),
        ];
        assert_eq!(
            short_stack(&frames),
            "leaky (leaky.py:12) < main (main.py:30) [malloc]"
        );
        let native = vec![Frame::native("main", None), Frame::native("malloc", None)];
        assert_eq!(short_stack(&native), "malloc < main");
    }

    #[test]
    fn snapshot_names_carry_a_utc_timestamp() {
        let t = std::time::UNIX_EPOCH + Duration::from_secs(1_795_476_060); // 2026-11-23 23:21:00
        assert_eq!(
            snapshot_path(Path::new("out/leaks.svg"), t),
            PathBuf::from("out/leaks-20261123T232100Z.svg")
        );
        assert_eq!(
            snapshot_path(Path::new("report"), std::time::UNIX_EPOCH),
            PathBuf::from("report-19700101T000000Z")
        );
        let leap = std::time::UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(
            snapshot_path(Path::new("a.json"), leap),
            PathBuf::from("a-20000229T000000Z.json")
        );
    }
}

/// A one-line stack for tables, innermost first. With Python frames: the Python frames (file
/// names only) and the allocator, `leaky (app.py:12) < main (app.py:30) [malloc]`; without:
/// the innermost native frames, `malloc < leak_here (fixture.c:30) < main (fixture.c:98)`.
pub fn short_stack(frames: &[Frame]) -> String {
    const SHOWN: usize = 4;
    let python: Vec<&Frame> = frames
        .iter()
        .rev()
        .filter(|f| f.kind == crate::report::FrameKind::Python)
        .collect();
    if python.is_empty() {
        let mut parts: Vec<String> = frames.iter().rev().take(SHOWN).map(Frame::label).collect();
        if frames.len() > SHOWN {
            parts.push("...".into());
        }
        return parts.join(" < ");
    }
    let short = |f: &Frame| {
        let file = f.file.as_deref().map(|p| {
            Path::new(p)
                .file_name()
                .map_or(p.into(), |n| n.to_string_lossy().into_owned())
        });
        match (file, f.line) {
            (Some(file), Some(line)) => format!("{} ({file}:{line})", f.function),
            _ => f.function.clone(),
        }
    };
    let mut parts: Vec<String> = python.iter().take(SHOWN).map(|f| short(f)).collect();
    if python.len() > SHOWN {
        parts.push("...".into());
    }
    let allocator = frames.last().map(|f| f.function.as_str()).unwrap_or("?");
    if allocator.starts_with('[') {
        // Already bracketed: `[page fault]`.
        return format!("{} {allocator}", parts.join(" < "));
    }
    format!("{} [{allocator}]", parts.join(" < "))
}
