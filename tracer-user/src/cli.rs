//! The command line.

use std::{path::PathBuf, time::Duration};

use anyhow::Result;
use clap::{Parser, Subcommand};
use tracer_common::{
    DEFAULT_MAX_ALLOCS, DEFAULT_MAX_PY_STACKS, DEFAULT_MAX_STACKS, DEFAULT_MAX_STACK_TOTALS,
    EVENTS_BYTES, MAX_PENDING,
};

use crate::{
    error::{user, UserError},
    output::format::Format,
    probes::{
        limits::MapLimits,
        mode::{parse_sample_bytes, Mode, Sampling, DEFAULT_SAMPLE_BYTES},
    },
    session::{self, AttachOptions},
};

#[derive(Debug, Parser)]
#[command(
    name = "leaktrace",
    version,
    about = "Find the allocations that survive in a live process, with eBPF: no restart, no code change.",
    after_help = "Python frames: CPython 3.8-3.15 on x86_64, default (GIL) builds, shared libpython or static interpreter, and the free-threaded 3.13t (tested: pyenv 3.8-3.13, Debian's static 3.11, Debian's 3.14 and 3.15 static and shared, 3.13t built --disable-gil; on 3.13t objects come from mimalloc: --pymalloc sees them one by one). Other versions and free-threaded 3.14t/3.15t: native stacks only, said in one line.\n\nExit codes: 0 report written; 1 error; 2 bad command line; 3 the target exited while traced (report written)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach to a running process and report its surviving allocations on exit.
    #[command(after_help = crate::probes::limits::help_text())]
    Attach(AttachArgs),
    /// Start a command and trace it from its first allocation.
    #[command(after_help = crate::probes::limits::help_text())]
    Run(RunArgs),
    /// Attach to a running process with a live full-screen view (plain tables when stdout is
    /// not a terminal): totals, a sparkline of live bytes, top stacks with growth and trend.
    Top(AttachArgs),
    /// Re-render a saved JSON report in another format.
    Report(ReportArgs),
    /// Compare two saved JSON reports: the stacks that grew most, and a differential flamegraph;
    /// or two heap reports (`leaktrace heap --format json`, `attach --heap`): the types and
    /// owners that grew most.
    Diff(DiffArgs),
    /// Count a running CPython's objects by type, and rank its module globals and class
    /// attributes by the bytes they retain, read from its memory (no probe, no pause); with
    /// --duration, what grew between two censuses; with --per-process, of a pre-fork parent and
    /// each of its workers.
    Heap(crate::heap::HeapArgs),
}

#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    pub before: PathBuf,
    pub after: PathBuf,
    /// The differential flamegraph (SVG); for two heap reports, a `.json` path writes the
    /// changes as JSON (leaktrace-heap-diff/v1) instead.
    #[arg(short, long, value_name = "FILE", default_value = "diff.svg")]
    pub output: PathBuf,
    /// Stacks listed in the summary.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub top: usize,
}

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// A report written with `--format json` (schema leaktrace/v1).
    pub input: PathBuf,
    /// Output format (default: from the output's extension, else svg).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Output file (default: the input with the format's extension).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// What flamegraphs and folded output measure (see `attach --help`).
    #[arg(long, value_enum, default_value = "live")]
    pub flame: crate::output::report::Flame,
}

#[derive(Debug, clap::Args)]
pub struct AttachArgs {
    /// Process to trace.
    pub pid: u32,
    #[command(flatten)]
    pub trace: TraceArgs,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub trace: TraceArgs,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// Options shared by `attach` and `run`.
#[derive(Debug, clap::Args)]
pub struct TraceArgs {
    /// Stop after this many seconds (default: run until Ctrl-C or SIGTERM).
    #[arg(long, value_name = "SECS", value_parser = seconds)]
    pub duration: Option<Duration>,
    /// Seconds between live tables.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = seconds)]
    pub interval: Duration,
    /// Leave out allocations younger than this at the end (in-flight requests are not leaks).
    #[arg(long, value_name = "SECS", default_value = "1", value_parser = seconds_or_zero)]
    pub min_age: Duration,
    /// What flamegraphs and folded output measure: `live` bytes, or the bytes `growth`ing stacks
    /// added during the window.
    #[arg(long, value_enum, default_value = "live")]
    pub flame: crate::output::report::Flame,
    /// How tables and the live view rank stacks. Reports keep the JSON order (live bytes).
    #[arg(long, value_enum, default_value = "growth")]
    pub sort: crate::output::view::SortBy,
    /// Stacks shown in each table.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub top: usize,
    /// Report file (default: leaktrace-PID.svg in the current directory).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Report format (default: from the output's extension, else svg).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// What is recorded: every allocator call (`exact`, uprobes on malloc & co); a byte-based
    /// Poisson sample of them (`sampled`: cheaper, figures are unbiased estimates); or, with no
    /// uprobes at all, resident anonymous pages first touched while traced, by the stack that
    /// touched them (`growth`: page-fault and memory-syscall tracepoints; near-zero cost once
    /// memory stops growing).
    #[arg(long, value_enum, default_value = "exact")]
    pub mode: Mode,
    /// With --mode sampled: mean bytes allocated between two samples (default 512K; accepts
    /// plain bytes, K and M).
    #[arg(long, value_name = "BYTES", value_parser = parse_sample_bytes)]
    pub sample_bytes: Option<u64>,
    /// Outstanding allocations tracked at most; beyond it allocations are counted as dropped.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_ALLOCS, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_allocs: u32,
    /// Distinct allocation stacks with live totals at most (beyond: counted, left out of the
    /// live tables).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_STACK_TOTALS, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_stacks: u32,
    /// Distinct native stacks kept at most (beyond: counted; such allocations show their
    /// caller only).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_STACKS, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_native_stacks: u32,
    /// Distinct Python stacks kept at most (about 4 KiB of kernel memory each; beyond:
    /// counted, native stacks only).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_PY_STACKS, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_python_stacks: u32,
    /// Threads inside an allocator call at once, at most (beyond: counted as dropped).
    #[arg(long, value_name = "N", default_value_t = MAX_PENDING, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_threads: u32,
    /// Size of the mmap event ring in bytes (a power of two, at least 4096; when full, events
    /// are counted as lost).
    #[arg(long, value_name = "BYTES", default_value_t = EVENTS_BYTES, value_parser = clap::value_parser!(u32).range(4096..))]
    pub events_bytes: u32,
    /// Do not walk Python frames (native stacks only).
    #[arg(long)]
    pub no_python: bool,
    /// Also probe CPython's object allocator (pymalloc), so objects of 512 bytes or less are
    /// attributed one by one instead of as arenas. Costly: every Python object allocation traps.
    #[arg(long, conflicts_with = "no_python")]
    pub pymalloc: bool,
    /// In stacks with Python frames, leave out native frames.
    #[arg(long)]
    pub no_native: bool,
    // Hidden, for benchmarks (bench/README.md): probes at the first byte; no return probe;
    // empty programs on uprobe_multi links (the traps alone).
    #[arg(long, hide = true)]
    pub probe_at_entry: bool,
    #[arg(long, hide = true)]
    pub bench_no_return_probe: bool,
    #[arg(long, hide = true)]
    pub bench_empty_probes: bool,
    /// Python frames recorded per stack at most (the outermost are cut and counted).
    #[arg(long, value_name = "N", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=128))]
    pub max_python_depth: u32,
    /// Trace only the given process, not its worker processes (by default every descendant
    /// is traced, including workers started later, such as a uvicorn or gunicorn worker
    /// restarted after --max-requests).
    #[arg(long)]
    pub no_children: bool,
    /// Keep each process's stacks apart, under a root frame `pid N` (default: stacks are summed
    /// across the target and its workers), and the heap census's owners (`pid N module:name`).
    #[arg(long)]
    pub per_process: bool,
    /// Say more: how long each phase of the report took (reading the live heap, the maps,
    /// symbolizing stacks, writing, detaching).
    #[arg(short, long)]
    pub verbose: bool,
    /// Take a census of a Python target's objects (as `leaktrace heap`), and of each Python
    /// worker traced, at the start and the end of the trace, each on a thread of its own: the
    /// report gains a `heap` member (types, owners, small blocks; with workers, their sum and
    /// one report per process) and the summary the owners and types that grew most. On by
    /// default; with --mode growth, the cheap path to leave on.
    #[arg(long, conflicts_with = "no_heap")]
    pub heap: bool,
    /// No heap census.
    #[arg(long)]
    pub no_heap: bool,
    /// Also take a heap census every SECS while tracing (growth is still last minus first).
    #[arg(long, value_name = "SECS", value_parser = seconds, conflicts_with = "no_heap")]
    pub heap_interval: Option<Duration>,
}

fn parse_seconds(s: &str, allow_zero: bool) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !v.is_finite() || v < 0.0 || (!allow_zero && v == 0.0) || v > 1e9 {
        return Err(format!("`{s}` is out of range"));
    }
    Ok(Duration::from_secs_f64(v))
}

fn seconds(s: &str) -> Result<Duration, String> {
    parse_seconds(s, false)
}

fn seconds_or_zero(s: &str) -> Result<Duration, String> {
    parse_seconds(s, true)
}

impl TraceArgs {
    fn options(self, pid: u32) -> AttachOptions {
        let maps = self.map_limits();
        let output = self
            .output
            .unwrap_or_else(|| PathBuf::from(format!("leaktrace-{pid}.svg")));
        let format = self
            .format
            .or_else(|| Format::from_path(&output))
            .unwrap_or(Format::Svg);
        AttachOptions {
            pid,
            duration: self.duration,
            interval: self.interval,
            min_age: self.min_age,
            top: self.top,
            output,
            format,
            max_allocs: self.max_allocs,
            maps,
            mode: self.mode,
            sampling: (self.mode == Mode::Sampled).then(|| Sampling {
                n: self.sample_bytes.unwrap_or(DEFAULT_SAMPLE_BYTES),
            }),
            python: !self.no_python,
            pymalloc: self.pymalloc,
            probe_at_entry: self.probe_at_entry,
            bench_no_return_probe: self.bench_no_return_probe,
            bench_empty_probes: self.bench_empty_probes,
            sort: self.sort,
            flame: self.flame,
            live_view: false,
            native: !self.no_native,
            max_python_depth: self.max_python_depth,
            follow_children: !self.no_children,
            per_process: self.per_process,
            verbose: self.verbose,
            heap: crate::session::HeapOptions {
                enabled: !self.no_heap
                    && (self.heap
                        || self.heap_interval.is_some()
                        || crate::session::HEAP_BY_DEFAULT),
                explicit: self.heap || self.heap_interval.is_some(),
                interval: self.heap_interval,
            },
        }
    }
}

impl TraceArgs {
    fn map_limits(&self) -> MapLimits {
        MapLimits {
            allocs: self.max_allocs,
            stacks: self.max_stacks,
            native_stacks: self.max_native_stacks,
            python_stacks: self.max_python_stacks,
            threads: self.max_threads,
            events_bytes: self.events_bytes,
        }
    }

    /// Combinations clap cannot check: a usage error (exit 2) with what to do.
    fn validate(&self) -> Result<()> {
        let usage = |message: String| {
            anyhow::Error::new(UserError {
                message,
                code: crate::error::exit::USAGE,
            })
        };
        if self.sample_bytes.is_some() && self.mode != Mode::Sampled {
            return Err(usage(format!(
                "--sample-bytes only applies to --mode sampled (the mode is {}): add --mode sampled or drop --sample-bytes",
                self.mode.as_str()
            )));
        }
        if self.mode == Mode::Growth && self.pymalloc {
            return Err(usage(
                "--pymalloc adds uprobes and --mode growth uses none: drop one of them".into(),
            ));
        }
        if self.mode == Mode::Sampled && self.pymalloc {
            return Err(usage(
                "--pymalloc cannot be combined with --mode sampled yet: use --mode exact with --pymalloc".into(),
            ));
        }
        self.map_limits().check().map_err(usage)
    }
}

/// Parses the process's command line. `--version` also names the git commit and the kernel
/// features found (read only when asked: the BTF file is a few MiB).
pub fn parse() -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    // clap keeps `&'static str` versions (without its `string` feature): leaked once per run.
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    let mut command = Cli::command().version(leak(crate::probes::features::short_version()));
    if std::env::args_os().skip(1).any(|a| a == "--version") {
        let long = crate::probes::features::long_version(std::path::Path::new("/sys"));
        command = command.long_version(leak(long));
    }
    Cli::from_arg_matches(&command.get_matches()).unwrap_or_else(|e| e.exit())
}

/// Runs a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> Result<i32> {
    match &cli.command {
        Command::Attach(a) | Command::Top(a) => a.trace.validate()?,
        Command::Run(r) => r.trace.validate()?,
        _ => {}
    }
    match cli.command {
        Command::Attach(a) => session::attach(a.trace.options(a.pid)),
        Command::Run(r) => session::run_command(|pid| r.trace.options(pid), &r.command),
        Command::Report(r) => rerender(r),
        Command::Diff(d) => diff(d),
        Command::Heap(h) => crate::heap::run(h),
        Command::Top(a) => session::attach(AttachOptions {
            live_view: true,
            ..a.trace.options(a.pid)
        }),
    }
}

/// A saved report's text, at most one byte more than `MAX_REPORT_BYTES` (the callers refuse
/// a longer one, each in its own words).
fn read_bounded(path: &std::path::Path) -> Result<String> {
    use crate::output::report::MAX_REPORT_BYTES;
    use std::io::Read as _;
    let cannot_read = |e: std::io::Error| user(format!("cannot read `{}`: {e}", path.display()));
    let mut text = String::new();
    std::fs::File::open(path)
        .map_err(cannot_read)?
        .take(MAX_REPORT_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(cannot_read)?;
    Ok(text)
}

/// Reads a saved report, refusing anything that is not leaktrace/v1 JSON.
pub fn read_report(path: &std::path::Path) -> Result<crate::output::report::Report> {
    use crate::output::report::{ReadError, Report, MAX_REPORT_BYTES};
    let text = read_bounded(path)?;
    if text.len() as u64 > MAX_REPORT_BYTES {
        return Err(user(format!(
            "`{}` is larger than {MAX_REPORT_BYTES} bytes: not a leaktrace JSON report",
            path.display()
        )));
    }
    Report::from_json(&text).map_err(|e| match e {
        ReadError::NotJson(e) => user(format!(
            "`{}` is not a leaktrace JSON report ({e}): write one with --format json",
            path.display()
        )),
        ReadError::Schema(_) => user(format!("`{}` has {e}", path.display())),
    })
}

/// The heap census in a saved report: a `leaktrace-heap/v1` report, or the `heap` member of a
/// `leaktrace/v1` report written by `attach --heap`; `None` for a report without one.
fn read_heap_part(path: &std::path::Path) -> Result<Option<crate::heap::report::HeapReport>> {
    use crate::output::report::MAX_REPORT_BYTES;
    let text = read_bounded(path)?;
    let not_report = |e: &dyn std::fmt::Display| {
        user(format!(
            "`{}` is not a leaktrace JSON report ({e}): write one with --format json",
            path.display()
        ))
    };
    if text.len() as u64 > MAX_REPORT_BYTES {
        return Err(not_report(&format!("larger than {MAX_REPORT_BYTES} bytes")));
    }
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| not_report(&e))?;
    let part = match v.get("schema").and_then(|s| s.as_str()) {
        Some(crate::heap::report::SCHEMA) => v,
        Some(crate::output::report::SCHEMA) => match v.get("heap") {
            Some(h) if !h.is_null() => h.clone(),
            _ => return Ok(None),
        },
        _ => return Ok(None),
    };
    serde_json::from_value(part)
        .map(Some)
        .map_err(|e| not_report(&e))
}

/// `leaktrace diff` of two heap censuses: text on stdout, and `-o` as SVG (or JSON for a
/// `.json` path).
fn heap_diff(
    args: &DiffArgs,
    before: &crate::heap::report::HeapReport,
    after: &crate::heap::report::HeapReport,
) -> Result<()> {
    let d = crate::heap::diff::diff(before, after);
    print!("{}", d.text(args.top));
    let file = std::fs::File::create(&args.output).map_err(|e| {
        user(format!(
            "cannot write `{}` ({e}): choose a writable path with --output",
            args.output.display()
        ))
    })?;
    let mut w = std::io::BufWriter::new(file);
    if args.output.extension().is_some_and(|e| e == "json") {
        serde_json::to_writer_pretty(&mut w, &d)?;
        std::io::Write::write_all(&mut w, b"\n")?;
    } else {
        crate::heap::diff::write_svg(before, after, args.top, &mut w)?;
    }
    std::io::Write::flush(&mut w)?;
    eprintln!("leaktrace: wrote `{}`", args.output.display());
    Ok(())
}

fn is_heap_report(path: &std::path::Path) -> bool {
    // Cheap look at the start: the schema is the first field leaktrace writes.
    let mut head = [0u8; 256];
    let n = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
        .unwrap_or(0);
    String::from_utf8_lossy(&head[..n]).contains(crate::heap::report::SCHEMA)
}

fn diff(args: DiffArgs) -> Result<i32> {
    if is_heap_report(&args.before) || is_heap_report(&args.after) {
        let (Some(before), Some(after)) =
            (read_heap_part(&args.before)?, read_heap_part(&args.after)?)
        else {
            return Err(user(
                "`leaktrace diff` compares two heap reports (leaktrace heap --format json, or attach --heap reports) or two allocation reports: give two of a kind",
            ));
        };
        heap_diff(&args, &before, &after)?;
        return Ok(crate::error::exit::OK);
    }
    let before = read_report(&args.before)?;
    let after = read_report(&args.after)?;
    let file = std::fs::File::create(&args.output).map_err(|e| {
        user(format!(
            "cannot write `{}` ({e}): choose a writable path with --output",
            args.output.display()
        ))
    })?;
    crate::output::compare::write_diff_svg(&before, &after, std::io::BufWriter::new(file))?;
    print!(
        "{}",
        crate::output::compare::summary(&before, &after, args.top)
    );
    eprintln!("leaktrace: wrote `{}`", args.output.display());
    // Two `attach --heap` reports: their censuses too, as text.
    if let (Some(b), Some(a)) = (
        read_heap_part(&args.before).ok().flatten(),
        read_heap_part(&args.after).ok().flatten(),
    ) {
        print!("\n{}", crate::heap::diff::diff(&b, &a).text(args.top));
    }
    Ok(crate::error::exit::OK)
}

fn rerender(args: ReportArgs) -> Result<i32> {
    let report = read_report(&args.input)?;
    let format = args
        .format
        .or_else(|| args.output.as_deref().and_then(Format::from_path))
        .unwrap_or(Format::Svg);
    let output = args
        .output
        .unwrap_or_else(|| args.input.with_extension(format.extension()));
    if output == args.input {
        return Err(user(format!(
            "refusing to overwrite the input `{}`: choose another --output",
            output.display()
        )));
    }
    let file = std::fs::File::create(&output).map_err(|e| {
        user(format!(
            "cannot write `{}` ({e}): choose a writable path with --output",
            output.display()
        ))
    })?;
    report.write_as(format, args.flame, std::io::BufWriter::new(file))?;
    eprintln!(
        "leaktrace: wrote `{}` ({} stacks, {} live)",
        output.display(),
        report.stacks.len(),
        crate::output::report::human_bytes(report.totals.live_bytes)
    );
    Ok(crate::error::exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_attach_with_defaults() {
        let cli = Cli::try_parse_from(["leaktrace", "attach", "42"]).unwrap();
        let Command::Attach(AttachArgs { pid, trace: a }) = cli.command else {
            panic!("attach")
        };
        assert_eq!(pid, 42);
        assert_eq!(a.interval, Duration::from_secs(5));
        assert_eq!(a.min_age, Duration::from_secs(1));
        assert_eq!(a.max_allocs, DEFAULT_MAX_ALLOCS);
        assert!(a.duration.is_none());
    }

    #[test]
    fn rejects_bad_numbers() {
        assert!(Cli::try_parse_from(["leaktrace", "attach", "42", "--duration", "-1"]).is_err());
        assert!(Cli::try_parse_from(["leaktrace", "attach", "42", "--interval", "0"]).is_err());
        assert!(Cli::try_parse_from(["leaktrace", "attach", "x"]).is_err());
        let ok = Cli::try_parse_from([
            "leaktrace",
            "attach",
            "1",
            "--min-age",
            "0",
            "--duration",
            "2.5",
        ]);
        let Command::Attach(AttachArgs { trace: a, .. }) = ok.unwrap().command else {
            panic!("attach")
        };
        assert_eq!(a.duration, Some(Duration::from_millis(2500)));
        assert_eq!(a.min_age, Duration::ZERO);
    }

    #[test]
    fn mode_defaults_to_exact_and_growth_refuses_pymalloc() {
        let cli = Cli::try_parse_from(["leaktrace", "attach", "42"]).unwrap();
        let Command::Attach(a) = cli.command else {
            panic!("attach")
        };
        assert_eq!(a.trace.mode, crate::probes::mode::Mode::Exact);
        let cli = Cli::try_parse_from(["leaktrace", "attach", "42", "--mode", "growth"]).unwrap();
        let Command::Attach(a) = &cli.command else {
            panic!("attach")
        };
        assert_eq!(a.trace.mode, crate::probes::mode::Mode::Growth);
        assert!(Cli::try_parse_from(["leaktrace", "attach", "1", "--mode", "fast"]).is_err());
        let cli =
            Cli::try_parse_from(["leaktrace", "attach", "1", "--mode", "growth", "--pymalloc"])
                .unwrap();
        let err = run(cli).unwrap_err();
        assert_eq!(crate::error::code_of(&err), crate::error::exit::USAGE);
    }

    #[test]
    fn parses_run_with_its_command() {
        let cli = Cli::try_parse_from([
            "leaktrace",
            "run",
            "--duration",
            "3",
            "--",
            "python3",
            "-c",
            "x",
        ])
        .unwrap();
        let Command::Run(r) = cli.command else {
            panic!("run")
        };
        assert_eq!(r.command, ["python3", "-c", "x"]);
        assert_eq!(r.trace.duration, Some(Duration::from_secs(3)));
        assert!(
            Cli::try_parse_from(["leaktrace", "run"]).is_err(),
            "a command is required"
        );
    }
}
