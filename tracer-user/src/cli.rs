//! The command line.

use std::{path::PathBuf, time::Duration};

use anyhow::Result;
use clap::{Parser, Subcommand};
use tracer_common::DEFAULT_MAX_ALLOCS;

use crate::{
    error::user,
    report::Format,
    session::{self, AttachOptions},
};

#[derive(Debug, Parser)]
#[command(
    name = "leaktrace",
    version,
    about = "Find the allocations that survive in a live process, with eBPF: no restart, no code change.",
    after_help = "Exit codes: 0 report written; 1 error; 2 bad command line; 3 the target exited while traced (report written)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach to a running process and report its surviving allocations on exit.
    Attach(AttachArgs),
    /// Start a command and trace it from its first allocation.
    Run(RunArgs),
    /// Attach to a running process with a live full-screen view (plain tables when stdout is
    /// not a terminal): totals, a sparkline of live bytes, top stacks with growth and trend.
    Top(AttachArgs),
    /// Re-render a saved JSON report in another format.
    Report(ReportArgs),
    /// Compare two saved JSON reports: the stacks that grew most, and a differential flamegraph.
    Diff(DiffArgs),
}

#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    pub before: PathBuf,
    pub after: PathBuf,
    /// The differential flamegraph (SVG).
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
    pub flame: crate::report::Flame,
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
    pub flame: crate::report::Flame,
    /// How tables and the live view rank stacks. Reports keep the JSON order (live bytes).
    #[arg(long, value_enum, default_value = "growth")]
    pub sort: crate::view::SortBy,
    /// Stacks shown in each table.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub top: usize,
    /// Report file (default: leaktrace-PID.svg in the current directory).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Report format (default: from the output's extension, else svg).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Outstanding allocations tracked at most; beyond it allocations are counted as dropped.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_ALLOCS, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_allocs: u32,
    /// Do not walk Python frames (native stacks only).
    #[arg(long)]
    pub no_python: bool,
    /// Also probe CPython's object allocator (pymalloc), so objects of 512 bytes or less are
    /// attributed one by one instead of as arenas. Costly: every Python object allocation traps.
    #[arg(long, conflicts_with = "no_python")]
    pub pymalloc: bool,
    /// `exact`: every allocator call (uprobes on malloc & co). `growth`: no uprobes; resident
    /// anonymous pages first touched while traced, by the stack that touched them (page-fault
    /// and memory-syscall tracepoints; near-zero cost once memory stops growing).
    #[arg(long, value_enum, default_value = "exact")]
    pub mode: crate::mode::Mode,
    /// In stacks with Python frames, leave out native frames.
    #[arg(long)]
    pub no_native: bool,
    /// Put every probe on its function's first byte (benchmarks: shows what placement saves).
    #[arg(long, hide = true)]
    pub probe_at_entry: bool,
    /// Python frames recorded per stack at most (the outermost are cut and counted).
    #[arg(long, value_name = "N", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=128))]
    pub max_python_depth: u32,
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
            python: !self.no_python,
            pymalloc: self.pymalloc,
            probe_at_entry: self.probe_at_entry,
            sort: self.sort,
            flame: self.flame,
            live_view: false,
            native: !self.no_native,
            max_python_depth: self.max_python_depth,
            mode: self.mode,
        }
    }
}

/// Option combinations clap cannot express; exit code 2 like clap's own errors.
fn check_combinations(trace: &TraceArgs) -> Result<()> {
    if trace.mode == crate::mode::Mode::Growth && trace.pymalloc {
        return Err(anyhow::Error::new(crate::error::UserError {
            message: "--pymalloc adds uprobes and --mode growth uses none: drop one of them".into(),
            code: crate::error::exit::USAGE,
        }));
    }
    Ok(())
}

/// Runs a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> Result<i32> {
    match &cli.command {
        Command::Attach(a) | Command::Top(a) => check_combinations(&a.trace)?,
        Command::Run(r) => check_combinations(&r.trace)?,
        Command::Report(_) | Command::Diff(_) => {}
    }
    match cli.command {
        Command::Attach(a) => session::attach(a.trace.options(a.pid)),
        Command::Run(r) => session::run_command(|pid| r.trace.options(pid), &r.command),
        Command::Report(r) => rerender(r),
        Command::Diff(d) => diff(d),
        Command::Top(a) => session::attach(AttachOptions {
            live_view: true,
            ..a.trace.options(a.pid)
        }),
    }
}

/// Reads a saved report, refusing anything that is not leaktrace/v1 JSON.
pub fn read_report(path: &std::path::Path) -> Result<crate::report::Report> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| user(format!("cannot read `{}`: {e}", path.display())))?;
    let report: crate::report::Report = serde_json::from_str(&text).map_err(|e| {
        user(format!(
            "`{}` is not a leaktrace JSON report ({e}): write one with --format json",
            path.display()
        ))
    })?;
    if report.schema != crate::report::SCHEMA {
        return Err(user(format!(
            "`{}` has schema `{}`; this leaktrace reads `{}`",
            path.display(),
            report.schema,
            crate::report::SCHEMA
        )));
    }
    Ok(report)
}

fn diff(args: DiffArgs) -> Result<i32> {
    let before = read_report(&args.before)?;
    let after = read_report(&args.after)?;
    let file = std::fs::File::create(&args.output).map_err(|e| {
        user(format!(
            "cannot write `{}` ({e}): choose a writable path with --output",
            args.output.display()
        ))
    })?;
    crate::compare::write_diff_svg(&before, &after, std::io::BufWriter::new(file))?;
    print!("{}", crate::compare::summary(&before, &after, args.top));
    eprintln!("leaktrace: wrote `{}`", args.output.display());
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
        crate::report::human_bytes(report.totals.live_bytes)
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
        assert_eq!(a.trace.mode, crate::mode::Mode::Exact);
        let cli = Cli::try_parse_from(["leaktrace", "attach", "42", "--mode", "growth"]).unwrap();
        let Command::Attach(a) = &cli.command else {
            panic!("attach")
        };
        assert_eq!(a.trace.mode, crate::mode::Mode::Growth);
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
