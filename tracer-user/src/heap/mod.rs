//! `leaktrace heap PID`: a census of a running CPython's objects, read out of its memory (no
//! probe, no pause, no write): objects by type, and module globals, class attributes and the
//! containers C static variables hold by the bytes they retain, with growth between censuses.
//!
//! * [`layout`]: where each version keeps its GC lists, and the object fields read.
//! * [`census`]: one census over a [`census::Source`] (a process, or bytes for the fuzz target).
//! * [`report`]: the `leaktrace-heap/v1` JSON, the text table, the SVG.
//! * [`arenas`]: pymalloc's arenas read from outside, compared with the objects' bytes.
//! * [`diff`]: `leaktrace diff` of two heap reports.
//!
//! May call: `python` (finding the interpreter), `target` (the process), `output` (the v1
//! target record, byte formatting).

pub mod arenas;
pub mod census;
pub mod diff;
pub mod layout;
pub mod report;
mod workers;

use workers::worker_line;
pub use workers::{cmdline, is_multiprocessing_helper, workers};

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::{
    error::user,
    python::runtime::{InterpFiles, Interpreter, NotPython},
    target::{process::TargetProcess, procmaps::ProcMaps},
};

/// Output format of `leaktrace heap`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum HeapFormat {
    Text,
    Json,
    Svg,
}

#[derive(Debug, clap::Args)]
pub struct HeapArgs {
    /// Process to read (a CPython 3.8-3.15 interpreter).
    pub pid: u32,
    /// Take a second census this many seconds after the first and report the growth.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// With --duration, also take a census every SECS in between (growth is last minus first).
    #[arg(long, value_name = "SECS")]
    pub interval: Option<f64>,
    /// Rows in the text table and the SVG, owners in the JSON.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub top: usize,
    #[arg(long, value_enum, default_value = "text")]
    pub format: HeapFormat,
    /// Output file (default: standard output).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Objects read per census at most.
    #[arg(long, value_name = "N", default_value_t = 10_000_000)]
    pub max_objects: u64,
    /// Bytes read at once at most (a list's items, a dict's entries).
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    pub max_read_bytes: usize,
    /// Containers followed from a global or attribute, at most this deep.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub max_depth: u32,
    /// Seconds one census may take at most.
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    pub time_budget: f64,
    /// Also take a census of each child process running the same interpreter (uvicorn's and
    /// gunicorn's workers, a multiprocessing pool; its helpers left out), kept apart: one
    /// section per process in the text, a `processes` array in the JSON (the top-level rows
    /// summed, owners prefixed `pid N `), a root frame `pid N` in the SVG.
    #[arg(long)]
    pub per_process: bool,
}

impl HeapArgs {
    fn validate(&self) -> Result<()> {
        for (name, v) in [("--duration", self.duration), ("--interval", self.interval)] {
            if let Some(v) = v {
                if !(v.is_finite() && v > 0.0 && v <= 86_400.0) {
                    return Err(user(format!(
                        "{name} must be between 0 and 86400 seconds: give e.g. {name} 30"
                    )));
                }
            }
        }
        if self.interval.is_some() && self.duration.is_none() {
            return Err(user(
                "--interval needs --duration: give e.g. --duration 60 --interval 10",
            ));
        }
        if self.max_read_bytes < 4096 || self.max_objects == 0 || self.max_depth == 0 {
            return Err(user(
                "--max-read-bytes must be at least 4096, --max-objects and --max-depth at least 1",
            ));
        }
        if !(self.time_budget.is_finite() && self.time_budget > 0.0) {
            return Err(user("--time-budget must be a positive number of seconds"));
        }
        Ok(())
    }

    pub fn limits(&self) -> census::Limits {
        census::Limits {
            max_objects: self.max_objects,
            max_read_bytes: self.max_read_bytes,
            max_depth: self.max_depth,
            time_budget_s: self.time_budget,
        }
    }
}

/// Everything one census of one process needs, found once: where its GC lists and its
/// arena table are, and the limits. Owned and `Send`, so a census can run on a thread of its own
/// (`attach --heap`) with a [`census::Source`] opened there.
#[derive(Clone, Debug)]
pub struct Plan {
    pub pid: u32,
    /// `3.12`, as in reports.
    pub python: String,
    hl: layout::HeapLayout,
    heads: Vec<u64>,
    /// `_PyRuntime`: its threads' frames are roots of the census.
    runtime: u64,
    /// pymalloc's arena table, or why it cannot be read.
    arenas: std::result::Result<arenas::Location, String>,
    limits: census::Limits,
    /// The file holding the interpreter (its segments are scanned last).
    module: String,
    /// The writable segments of the interpreter and its extension modules, whose static
    /// variables hold objects too ([`census::statics`]): found by the first census that needs
    /// them, on its own thread, and shared by every clone of the plan (finding them reads
    /// those ELF files, 0.3 s on a small 3.12 process: not for `attach`'s session loop).
    statics: std::sync::Arc<std::sync::OnceLock<Vec<census::Segment>>>,
}

/// One census and the arenas read right after it.
#[derive(Clone, Debug)]
pub struct Taken {
    pub census: census::Census,
    pub arenas: Option<arenas::ArenaUsage>,
    /// When it started.
    pub at: Instant,
    pub seconds: f64,
}

impl Plan {
    /// The plan for `interp` (a process's interpreter), or a one-line reason it cannot be read.
    pub fn new(interp: &Interpreter, limits: census::Limits) -> Result<Plan> {
        let pid = interp.pid;
        if interp.free_threaded {
            return Err(user(format!(
                "Python {} is a free-threaded build: `leaktrace heap` does not read its objects yet (they live in mimalloc heaps, not GC lists); use `leaktrace attach {pid} --pymalloc`",
                interp.version()
            )));
        }
        let Some(hl) = layout::heap_layout(interp.minor, &interp.layout) else {
            return Err(user(format!(
                "`leaktrace heap` does not read Python {} yet (it reads 3.8-3.15): use `leaktrace attach {pid}`",
                interp.version()
            )));
        };
        let main = interp.main_interpreter();
        let base = if hl.gc_in_runtime {
            interp.runtime
        } else {
            main.ok_or_else(|| {
                user(format!(
                    "cannot read the main interpreter of process {pid}: is it still starting up? try again"
                ))
            })?
        };
        let heads: Vec<u64> = hl.gc_heads.iter().map(|o| base + o).collect();
        let arenas = arenas::locate(
            interp.minor,
            |n| interp.data_symbol(n),
            main,
            |a| interp.mem.u64(a),
        )
        .ok_or_else(|| match interp.minor {
            8..=11 => format!(
                "Python {} keeps them in static variables and `{}` has no symbol table",
                interp.version(),
                interp.module
            ),
            _ => format!("no arena table known for Python {}", interp.version()),
        });
        Ok(Plan {
            module: interp.module.clone(),
            statics: Default::default(),
            pid,
            python: interp.version(),
            hl,
            heads,
            runtime: interp.runtime,
            arenas,
            limits,
        })
    }

    /// The static variables' segments ([`Plan::statics`]), found once.
    fn statics(&self) -> &[census::Segment] {
        self.statics.get_or_init(|| {
            ProcMaps::read(self.pid)
                .map(|maps| census::statics::find(self.pid, &maps, &self.module))
                .unwrap_or_default()
        })
    }

    /// Why pymalloc's arenas are not read, if they are not.
    pub fn arenas_unreadable(&self) -> Option<&str> {
        self.arenas.as_ref().err().map(String::as_str)
    }

    /// One census through `src`, then the arenas.
    pub fn take(&self, src: &dyn census::Source) -> Taken {
        let at = Instant::now();
        let census = census::Walker::new(src, &self.hl, self.limits.clone())
            .with_threads(self.runtime)
            .with_statics(self.statics().to_vec())
            .census(&self.heads);
        let arenas = self
            .arenas
            .as_ref()
            .ok()
            .and_then(|loc| arenas::usage(src, loc, self.limits.max_read_bytes));
        Taken {
            census,
            arenas,
            at,
            seconds: at.elapsed().as_secs_f64(),
        }
    }

    /// Where the objects of `types` are held ([`census::Holders`]): a walk from the roots in
    /// the order of `owners` (the last census's, biggest first), bounded like a census.
    pub fn holders(
        &self,
        src: &dyn census::Source,
        types: &[String],
        owners: &[census::Owner],
    ) -> census::Holders {
        let order: Vec<String> = owners.iter().map(|o| o.path.clone()).collect();
        census::Walker::new(src, &self.hl, self.limits.clone()).holder_walk(
            &self.heads,
            types,
            &order,
        )
    }

    /// After the last census: the holders of the types that grew most from `first` to `last`,
    /// added to `rep` (nothing with no type grown); the types looked for, the objects visited
    /// and the seconds taken.
    pub fn add_holders(
        &self,
        src: &dyn census::Source,
        first: &Taken,
        last: &Taken,
        rep: &mut report::HeapReport,
    ) -> Option<(usize, u64, f64)> {
        let types = census::grown_types(&first.census, &last.census);
        if types.is_empty() {
            return None;
        }
        let at = Instant::now();
        // Roots in the order of their growth, then their size: the roots that grew claim the
        // objects they share with others, and their containers rank first.
        let before: std::collections::HashMap<(&str, &str), u64> = first
            .census
            .owners
            .iter()
            .map(|o| ((o.path.as_str(), o.type_name.as_str()), o.retained_bytes))
            .collect();
        let mut owners = last.census.owners.clone();
        let grew = |o: &census::Owner| {
            let b = before
                .get(&(o.path.as_str(), o.type_name.as_str()))
                .copied()
                .unwrap_or(0);
            i128::from(o.retained_bytes) - i128::from(b)
        };
        owners.sort_by(|a, b| {
            grew(b)
                .cmp(&grew(a))
                .then(b.retained_bytes.cmp(&a.retained_bytes))
                .then(a.path.cmp(&b.path))
        });
        let h = self.holders(src, &types, &owners);
        let visited = h.objects;
        rep.set_holders(h);
        Some((types.len(), visited, at.elapsed().as_secs_f64()))
    }

    /// One census of the live process (opens its memory).
    pub fn take_live(&self) -> Result<Taken> {
        let mem = crate::python::runtime::Memory::open(self.pid)?;
        Ok(self.take(&mem))
    }
}

/// The report of the censuses `first` and (with two or more) `last`, with the arenas compared.
pub fn build_report(
    target: crate::output::report::Target,
    duration_s: f64,
    first: &Taken,
    last: Option<&Taken>,
    top: usize,
) -> report::HeapReport {
    let mut rep = report::HeapReport::build(
        target,
        duration_s,
        &first.census,
        last.map(|l| &l.census),
        top,
    );
    rep.small_blocks = arenas::SmallBlocks::between(first, last);
    rep
}

/// One process of `leaktrace heap` and its censuses.
struct Censused {
    target: TargetProcess,
    interp: Interpreter,
    plan: Plan,
    cmdline: String,
    first: Option<Taken>,
    last: Option<Taken>,
    taken: u32,
    /// Set once it exited: no more censuses.
    exited: bool,
}

/// The interpreter and plan of process `pid`, or a one-line reason it cannot be read.
fn open(pid: u32, files: &mut InterpFiles, limits: census::Limits) -> Result<Censused> {
    let target = TargetProcess::for_reading(pid)?;
    let maps = ProcMaps::read(pid).map_err(|e| {
        user(format!(
            "cannot read /proc/{pid}/maps ({e}): run leaktrace as root"
        ))
    })?;
    let interp = match Interpreter::discover(pid, &maps, files) {
        Ok(i) => i,
        Err(NotPython::Absent) => {
            return Err(user(format!(
                "process {pid} ({}) runs no CPython interpreter: `leaktrace heap` reads CPython 3.8-3.15; use `leaktrace attach {pid}` for other programs",
                target.exe
            )))
        }
        Err(NotPython::Unsupported(why)) => {
            return Err(user(format!("{why}: `leaktrace heap` cannot read it")))
        }
    };
    let plan = Plan::new(&interp, limits)?;
    if let Some(why) = plan.arenas_unreadable() {
        eprintln!(
            "leaktrace: process {pid}: pymalloc's arenas are not read ({why}): no small-block figures"
        );
    }
    Ok(Censused {
        target,
        interp,
        plan,
        cmdline: cmdline(pid),
        first: None,
        last: None,
        taken: 0,
        exited: false,
    })
}

impl Censused {
    fn pid(&self) -> u32 {
        self.plan.pid
    }

    /// Takes census `n`; false (and a note in `notes`) if the process is gone.
    fn take(&mut self, n: u32, per_process: bool, notes: &mut Vec<String>) -> bool {
        let gone = |p: &mut Censused, notes: &mut Vec<String>| {
            p.exited = true;
            let note = format!(
                "process {} exited after {} census{}: what was taken before is kept",
                p.pid(),
                p.taken,
                if p.taken == 1 { "" } else { "es" }
            );
            eprintln!("leaktrace: heap: {note}");
            notes.push(note);
            false
        };
        if !self.target.is_alive() {
            return gone(self, notes);
        }
        let t = self.plan.take(&self.interp.mem);
        if per_process && !self.target.is_alive() {
            // Read while it went away: not a census of a live heap.
            return gone(self, notes);
        }
        eprintln!(
            "leaktrace: census {n} taken{}: {} objects in {:.2} s ({} reads){}",
            if per_process {
                format!(" (pid {})", self.pid())
            } else {
                String::new()
            },
            t.census.objects,
            t.seconds,
            t.census.reads,
            if t.census.skipped_reads > 0 {
                format!(", {} reads skipped", t.census.skipped_reads)
            } else {
                String::new()
            }
        );
        self.taken += 1;
        if self.first.is_none() {
            self.first = Some(t);
        } else {
            self.last = Some(t);
        }
        true
    }
}

/// Runs `leaktrace heap`.
pub fn run(args: HeapArgs) -> Result<i32> {
    args.validate()?;
    let pid = args.pid;
    let mut files = InterpFiles::default();
    let root = open(pid, &mut files, args.limits())?;
    let exe = root.target.exe.clone();
    let python = root.interp.version();
    let mut notes = Vec::new();
    let mut procs = vec![root];
    if args.per_process {
        for w in workers(pid) {
            match open(w, &mut files, args.limits()) {
                Ok(p) => procs.push(p),
                Err(e) => {
                    let note = format!("process {w} skipped: {e:#}");
                    eprintln!("leaktrace: heap: {note}");
                    notes.push(note);
                }
            }
        }
    } else if let Some(line) = worker_line(pid, &workers(pid)) {
        eprintln!("{line}");
    }

    let started = Instant::now();
    let round = |n: u32, procs: &mut Vec<Censused>, notes: &mut Vec<String>| {
        for p in procs.iter_mut().filter(|p| !p.exited) {
            p.take(n, args.per_process, notes);
        }
    };
    round(1, &mut procs, &mut notes);
    if let Some(d) = args.duration {
        let end = started + Duration::from_secs_f64(d);
        let step = args.interval.map(Duration::from_secs_f64);
        let mut n = 2;
        loop {
            let next = step.map_or(end, |s| (Instant::now() + s).min(end));
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
            if !args.per_process && !procs[0].target.is_alive() {
                return Err(user(format!(
                    "process {pid} exited before the last census: nothing to compare"
                )));
            }
            round(n, &mut procs, &mut notes);
            n += 1;
            if Instant::now() >= end || procs.iter().all(|p| p.exited) {
                break;
            }
        }
    }
    let report_of = |p: &Censused, duration_s: f64| {
        let first = p.first.as_ref()?;
        let mut rep = build_report(
            crate::output::report::Target {
                pids: vec![p.pid()],
                exe: p.target.exe.clone(),
                python: Some(p.interp.version()),
            },
            duration_s,
            first,
            p.last.as_ref(),
            args.top,
        );
        rep.censuses = p.taken;
        // Where the types that grew most are held, read after the last census.
        if let Some(l) = &p.last {
            if let Some((n, objects, secs)) = p.plan.add_holders(&p.interp.mem, first, l, &mut rep)
            {
                eprintln!(
                    "leaktrace: holders of the {n} types that grew most{}: {objects} objects in {secs:.2} s",
                    if procs.len() > 1 {
                        format!(" (pid {})", p.pid())
                    } else {
                        String::new()
                    }
                );
            }
        }
        Some(rep)
    };
    let rep = if args.per_process {
        let reports: Vec<report::HeapReport> = procs
            .iter()
            .filter_map(|p| {
                let span = match (&p.first, &p.last) {
                    (Some(f), Some(l)) => l.at.duration_since(f.at).as_secs_f64(),
                    _ => 0.0,
                };
                let mut rep = report_of(p, span)?;
                rep.cmdline = Some(p.cmdline.clone());
                rep.notes = notes
                    .iter()
                    .filter(|n| n.starts_with(&format!("process {} ", p.pid())))
                    .cloned()
                    .collect();
                Some(rep)
            })
            .collect();
        if reports.is_empty() {
            return Err(user(format!(
                "no census taken: process {pid} and its workers exited"
            )));
        }
        report::HeapReport::merge(
            crate::output::report::Target {
                pids: reports.iter().flat_map(|r| r.target.pids.clone()).collect(),
                exe,
                python: Some(python),
            },
            reports,
            true,
            args.top,
            notes,
        )
    } else {
        report_of(&procs[0], started.elapsed().as_secs_f64()).expect("the first census")
    };
    let text = match args.format {
        HeapFormat::Json => serde_json::to_string_pretty(&rep)? + "\n",
        HeapFormat::Text => rep.text(args.top),
        HeapFormat::Svg => rep.svg(args.top)?,
    };
    match &args.output {
        Some(p) => std::fs::write(p, text)
            .with_context(|| format!("cannot write `{}`", p.display()))
            .map_err(|e| user(format!("{e:#}: check the folder exists and is writable")))?,
        None => print!("{text}"),
    }
    Ok(crate::error::exit::OK)
}
