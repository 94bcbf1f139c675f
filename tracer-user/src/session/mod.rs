// size: the session loop and its stop paths (duration, signals, target exit, workers) in one
// place, so that every way a trace ends detaches and writes the same way.
//! One tracing session: the loop that ties the stages together. Attach (target/, probes/),
//! then every 100 ms drain the kernel's events, follow workers, publish Python threads and
//! resolve new stacks; at each interval sample and show a table (analysis/, output/); on a
//! stop condition build and write the report (report.rs) and detach.
//!
//! Owns the session's state and the order things happen in; the work itself is in the stages.
//! May call every stage; only `cli` calls it.

mod heap;
mod report;

use std::{
    collections::HashMap,
    fs::File,
    io::{Seek, Write},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, SignalKind};
use tracer_common::{Counter, MapEvent, MapEventKind, StackKey};

pub use self::{
    heap::{HeapOptions, HEAP_BY_DEFAULT},
    report::snapshot_path,
};
use crate::{
    analysis::{
        aggregate::{Sample, Series},
        interval::{self, LiveNow, Snapshot},
        regions::Regions,
    },
    error::{exit, user},
    output::{
        format::Format,
        summary::{print_summary, short_stack},
        view::View,
    },
    probes::{
        bpf::{Limits, Tracer},
        growth,
        mode::Mode,
        targets::{PythonOptions, Targets},
    },
    python::runtime::PymallocLookup,
    resolve::{stacks::Stacks, symbolize::Resolver},
    target::{preflight, process::TargetProcess},
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
    pub maps: crate::probes::limits::MapLimits,
    pub mode: Mode,
    /// `--mode sampled`: the sampling parameters.
    pub sampling: Option<crate::probes::mode::Sampling>,
    /// Walk Python frames when the target is a supported CPython.
    pub python: bool,
    /// Also probe pymalloc (`--pymalloc`).
    pub pymalloc: bool,
    /// Every probe on its function's first byte (benchmarks).
    pub probe_at_entry: bool,
    /// No return probes (benchmarks).
    pub bench_no_return_probe: bool,
    /// Empty programs at every probe (benchmarks).
    pub bench_empty_probes: bool,
    /// How tables, the live view and the summary rank stacks.
    pub sort: crate::output::view::SortBy,
    /// What flamegraphs and folded output measure.
    pub flame: crate::output::report::Flame,
    /// `top`: a full-screen live view instead of periodic tables.
    pub live_view: bool,
    /// Keep native frames in stacks that have Python frames.
    pub native: bool,
    pub max_python_depth: u32,
    /// Also trace the target's descendants (workers), present and future.
    pub follow_children: bool,
    /// Keep each process's stacks apart under a `pid N` root frame.
    pub per_process: bool,
    /// `-v`: say how long each phase of the report took.
    pub verbose: bool,
    /// Heap censuses of a Python target (`--heap`, `--no-heap`, `--heap-interval`).
    pub heap: HeapOptions,
}

/// Why tracing stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Duration,
    Signal(&'static str),
    TargetExited,
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

struct Session {
    opts: AttachOptions,
    /// The processes traced, their interpreters and published threads.
    targets: Targets,
    tracer: Tracer,
    /// Stack keys into frames, with every cache.
    stacks: Stacks,
    regions: Regions,
    series: Series,
    started: Instant,
    /// Where intervals are shown: tables, or `top`'s live view.
    view: Box<dyn View>,
    /// The heap censuses (`attach --heap`).
    heap: heap::HeapCensus,
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
    let (pid, exe) = crate::target::spawn::spawn_stopped(argv)?;
    let opts = options(pid);
    let target = match TargetProcess::for_new_command(pid, &exe) {
        Ok(t) => t,
        Err(e) => {
            crate::target::spawn::kill_and_reap(pid);
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
                crate::target::spawn::kill_and_reap(pid);
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

        let (_lock, other) = crate::target::process::TraceLock::take(target.pid);
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
        let (probe_path, note) = crate::probes::bpf::ProbePath::choose();
        if let (Some(note), Mode::Exact | Mode::Sampled) = (note, opts.mode) {
            eprintln!("{note}");
        }
        let attached = Tracer::load(Limits {
            maps: crate::probes::limits::MapLimits {
                allocs: opts.max_allocs,
                ..opts.maps
            },
            sampling: opts.sampling,
            probe_at_entry: opts.probe_at_entry,
            no_return_probe: opts.bench_no_return_probe,
            empty_probes: opts.bench_empty_probes,
            mode: opts.mode,
            path: probe_path,
        })
        .and_then(|mut tracer| {
            let probes = match opts.mode {
                Mode::Exact | Mode::Sampled => {
                    tracer.attach(target.pid, &target.allocator_host_path)?
                }
                Mode::Growth => growth::attach(&mut tracer, target.pid)?
                    .into_iter()
                    .map(|function| crate::probes::bpf::Attached {
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
                    crate::target::spawn::kill_and_reap(pid);
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
            match (opts.mode, tracer.probe_path()) {
                (Mode::Exact | Mode::Sampled, crate::probes::bpf::ProbePath::Session) =>
                    "probes (uprobe_multi links, sessions)",
                (Mode::Exact | Mode::Sampled, crate::probes::bpf::ProbePath::Multi) =>
                    "probes (uprobe_multi links)",
                (Mode::Exact | Mode::Sampled, crate::probes::bpf::ProbePath::PerfEvent) =>
                    "probes (perf-event uprobes)",
                (Mode::Growth, _) => "tracepoints (no uprobes)",
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

        let python = PythonOptions {
            enabled: opts.python,
            pymalloc: opts.pymalloc,
            max_depth: opts.max_python_depth,
        };
        let root = target.pid;
        let mut session = Session {
            opts: opts.clone(),
            targets: Targets::new(target, child, opts.mode, python),
            tracer,
            stacks: Stacks::new(resolver, opts.per_process, opts.native),
            regions: Regions::default(),
            series: Series::default(),
            started: Instant::now(),
            view: if opts.live_view {
                crate::output::view::for_top(opts.pid, opts.top, opts.sort)
            } else {
                Box::new(crate::output::view::TextView {
                    top: opts.top,
                    sort: opts.sort,
                    pid: opts.pid,
                })
            },
            heap: heap::HeapCensus::new(opts.heap, opts.per_process),
        };
        if let Some(pid) = child {
            if opts.python {
                let exe = session.targets.root_proc().target.exe.clone();
                session.targets.interp_files.prepare_for(Path::new(&exe));
            }
            crate::target::spawn::resume(pid);
            session.follow_python_start().await?;
        } else {
            session.find_python(root)?;
        }
        if opts.follow_children {
            session.follow_children();
        }
        session.heap.poll(&session.targets);
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
                    if let Some(crate::output::view::Key::Quit) = session.view.poll_keys()? {
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
                    session.heap.poll(&session.targets);
                    if ticks % 5 == 0 {
                        session.resolve_new_python_stacks();
                    }
                    if opts.duration.is_some_and(|d| session.started.elapsed() >= d) {
                        break Stop::Duration;
                    }
                    if !session.targets.root_proc().target.is_alive() {
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
    /// Re-reads the mappings of every traced process (new libraries, new code).
    fn refresh_maps(&mut self) {
        for pid in self.targets.procs.keys() {
            let _ = self.stacks.resolver.refresh(*pid);
        }
    }

    /// Looks for an interpreter in every process where the search is not over yet.
    fn find_pythons(&mut self) -> Result<()> {
        for pid in self.targets.pending_python() {
            let _ = self.stacks.resolver.refresh(pid);
            self.find_python(pid)?;
        }
        Ok(())
    }

    /// Turns on Python frames for process `pid` if it runs a supported CPython.
    fn find_python(&mut self, pid: u32) -> Result<()> {
        let maps = self.stacks.resolver.maps(pid);
        self.targets.find_python(pid, maps, &mut self.tracer)?;
        self.name_pymalloc(pid);
        Ok(())
    }

    /// Gives the resolver the pymalloc functions found in process `pid`'s memory (the arena
    /// stack and `--pymalloc`'s frames need their names on stripped interpreters), looking
    /// for them again if they were not found yet (a process `run` just started).
    fn name_pymalloc(&mut self, pid: u32) {
        let Some(interp) = self
            .targets
            .procs
            .get_mut(&pid)
            .and_then(|p| p.python.as_mut())
        else {
            return;
        };
        if interp.pymalloc.is_empty() {
            let Some(maps) = self.stacks.resolver.maps(pid) else {
                return;
            };
            match interp.find_pymalloc(maps) {
                PymallocLookup::Found => {}
                PymallocLookup::GaveUp(why) => {
                    eprintln!("leaktrace: {why}");
                    return;
                }
                PymallocLookup::NotYet | PymallocLookup::Stopped => return,
            }
        }
        for f in &interp.pymalloc {
            self.stacks.resolver.add_known(pid, f.start, f.end, f.name);
        }
    }

    /// `run`: right after the command starts, looks for its interpreter every few milliseconds
    /// until the main thread's state is published, so that the first Python code already has
    /// Python stacks (CPython creates that state early in Py_Initialize, well before it runs any
    /// of the program's code). Gives up quietly after a few seconds (not Python, or slow start:
    /// the 500 ms search in the main loop goes on).
    async fn follow_python_start(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(3);
        let root = self.targets.root;
        while self.opts.python
            && Instant::now() < deadline
            && self.targets.root_proc().target.is_alive()
        {
            let proc = self.targets.root_proc();
            if proc.python.is_none() {
                let _ = self.stacks.resolver.refresh(root);
                self.find_python(root)?;
                let proc = self.targets.root_proc();
                if proc.python_search_done && proc.python.is_none() {
                    return Ok(());
                }
            } else {
                self.refresh_threads()?;
                if !self.targets.root_proc().py_tids.is_empty() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        Ok(())
    }

    /// Publishes the current Python threads of every traced process to the kernel.
    fn refresh_threads(&mut self) -> Result<()> {
        let unnamed: Vec<u32> = self
            .targets
            .procs
            .iter()
            .filter(|(_, p)| p.python.as_ref().is_some_and(|i| i.looking_for_pymalloc()))
            .map(|(pid, _)| *pid)
            .collect();
        for pid in unnamed {
            self.name_pymalloc(pid);
        }
        self.targets.refresh_threads(&mut self.tracer)
    }

    /// Traces descendants of the root that are not traced yet (uvicorn and gunicorn workers,
    /// also those started later), with Python frames where they run Python.
    fn follow_children(&mut self) {
        for pid in self.targets.new_children() {
            if !self.targets.follow(pid, &mut self.tracer) {
                continue;
            }
            let _ = self.stacks.resolver.refresh(pid);
            if let Err(e) = self.find_python(pid) {
                eprintln!("leaktrace: worker {pid}: no Python frames: {e:#}");
                if let Some(p) = self.targets.procs.get_mut(&pid) {
                    p.python_search_done = true;
                }
            }
        }
    }

    /// Stops tracing workers that exited, and forgets what was kept for them.
    fn forget_exited_workers(&mut self) {
        let t = self.started.elapsed().as_secs_f64();
        for pid in self.targets.forget_exited_workers(&mut self.tracer, t) {
            self.regions.drop_process(pid);
            self.stacks.forget_process(pid);
            eprintln!("leaktrace: worker pid {pid} exited after {t:.1} s: no longer traced");
        }
    }

    /// Resolves Python stacks seen since the last call, while the targets are alive to be read.
    fn resolve_new_python_stacks(&mut self) {
        self.stacks
            .resolve_new_python_stacks(&self.targets, &self.tracer);
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

    /// Live bytes per stack right now: the kernel's totals plus tracked mappings (which are
    /// exact in every mode: no samples).
    fn live_by_stack(&self) -> Result<HashMap<StackKey, LiveNow>> {
        let mut live: HashMap<StackKey, LiveNow> = HashMap::new();
        for (key, totals) in self.tracer.stack_totals()? {
            let e = live.entry(key).or_default();
            e.bytes += totals.live_bytes.max(0) as u64;
            e.allocs += totals.live_allocs.max(0) as u64;
            e.samples.live_samples += totals.live_samples.max(0) as u64;
            e.samples.recorded_samples += totals.total_samples;
            e.allocated += totals.total_bytes;
        }
        for (r, count) in self.regions.pieces() {
            let e = live.entry(r.stack).or_default();
            e.bytes += r.len();
            e.allocs += count;
        }
        Ok(live)
    }

    fn sample(&mut self) -> Result<()> {
        self.resolve_new_python_stacks();
        let t = self.started.elapsed().as_secs_f64();
        let live = self.live_by_stack()?;
        self.series.push(
            t,
            live.into_iter().map(|(k, l)| {
                (
                    k,
                    Sample {
                        bytes: l.bytes,
                        ..l.samples
                    },
                )
            }),
        );
        Ok(())
    }

    /// Mean bytes between samples in sampled mode: the noise scale of every estimate.
    fn sample_bytes(&self) -> Option<f64> {
        self.tracer.sampling().map(|s| s.n as f64)
    }

    /// The view's picture of this interval: totals and one row per distinct stack.
    fn view_snapshot(&mut self) -> Result<Snapshot> {
        let counters = self.tracer.counters()?;
        let live = self.live_by_stack()?;
        let (bytes, allocs) = live
            .values()
            .fold((0, 0), |a, v| (a.0 + v.bytes, a.1 + v.allocs));
        let sample_bytes = self.sample_bytes();
        let Session {
            stacks,
            targets,
            tracer,
            series,
            opts,
            ..
        } = self;
        let rows = interval::rows(live, sample_bytes, series, opts.top, |k| {
            short_stack(&stacks.frames(k, targets, tracer))
        });
        Ok(Snapshot {
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

    fn finish(mut self, stop: Stop, out: &mut File) -> Result<i32> {
        let mut phases = report::Phases::start();
        // The last heap census reads the target's memory on its own thread while the
        // report is built.
        let root_alive = stop != Stop::TargetExited && self.targets.root_proc().target.is_alive();
        self.heap.begin_final(&self.targets, root_alive);
        // The probes are detached in the background once the live heap is read; every one
        // is gone before the summary says so (and before leaktrace exits: dropping the
        // tracer waits too).
        let mut report = self.build_report(Some(stop), &mut phases)?;
        let root = self.targets.root;
        let Session {
            opts,
            mut tracer,
            targets,
            mut view,
            heap,
            ..
        } = self;
        view.close();
        let heap = heap.finish(crate::output::report::Target {
            pids: vec![root],
            ..report.target.clone()
        });
        if let Some(h) = &heap {
            report.heap = Some(serde_json::to_value(h)?);
            phases.lap(format!("heap ({} censuses)", h.censuses));
        }

        out.set_len(0)?;
        out.rewind()?;
        let mut writer = std::io::BufWriter::new(&mut *out);
        report
            .write_as(opts.format, opts.flame, &mut writer)
            .and_then(|()| writer.flush().map_err(Into::into))
            .with_context(|| format!("cannot write `{}`", opts.output.display()))?;
        drop(writer);
        phases.lap(format!("write ({})", opts.format.extension()));
        let written = phases.total();
        let detach = tracer.wait_detached();
        drop(tracer);
        phases.lap("detach (waiting for the background detach, then the rest)");
        if opts.verbose {
            eprintln!(
                "leaktrace: report written {:.3} s after the stop, {:.3} s to exit: {}{}",
                written.as_secs_f64(),
                phases.total().as_secs_f64(),
                phases.line(),
                detach.map_or(String::new(), |d| format!(
                    "; detaching the uprobes took {:.3} s in the background",
                    d.as_secs_f64()
                ))
            );
        }
        let why = match stop {
            Stop::Duration => "duration reached".to_string(),
            Stop::Signal(s) => format!("{s} received"),
            Stop::TargetExited => format!("process {root} exited"),
        };
        print_summary(&report, &why, opts.sort, opts.top, &opts.output);
        if let Some(h) = &heap {
            print!("{}", heap::summary_lines(h));
        }
        if let Some(pid) = targets.child {
            if stop == Stop::TargetExited {
                let status = crate::target::spawn::reap(pid);
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
}
