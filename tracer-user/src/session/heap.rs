//! `attach --heap`: censuses of the traced Python process's objects (`heap/`) at the start and
//! the end of the trace, and every `--heap-interval`, each on a thread of its own so that the
//! session loop (draining the kernel's events every 100 ms, publishing threads) never waits
//! for one. The report gains a `heap` member (a `leaktrace-heap/v1` report) and the summary a
//! few lines: the owners and types that grew most, and the small blocks no object accounts for.

use std::{
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::{
    heap::{census::Limits, report::HeapReport, Plan, Taken},
    output::report::{human_bytes, Target},
    probes::targets::Targets,
};

/// `--heap`, `--no-heap`, `--heap-interval` as the session sees them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HeapOptions {
    pub enabled: bool,
    /// Given on the command line (`--heap` or `--heap-interval`): say so when no census can
    /// be taken.
    pub explicit: bool,
    pub interval: Option<Duration>,
}

/// Whether `attach` and `run` take censuses without `--heap` (BENCHMARKS.md, "Heap census
/// during a trace": the measured cost behind this choice).
pub const HEAP_BY_DEFAULT: bool = true;

/// Owners and types kept in the report's `heap` member.
const TOP: usize = 20;
/// Lines of each kind in the summary.
const SUMMARY_ROWS: usize = 3;

pub(super) struct HeapCensus {
    opts: HeapOptions,
    plan: Option<Plan>,
    /// Why no plan could be made yet (the last reason).
    why_not: Option<String>,
    first: Option<Taken>,
    last: Option<Taken>,
    running: Option<JoinHandle<Result<Taken>>>,
    next_at: Option<Instant>,
    taken: u32,
    /// Censuses finished (the report's `censuses`).
    collected: u32,
}

impl HeapCensus {
    pub(super) fn new(opts: HeapOptions) -> Self {
        Self {
            opts,
            plan: None,
            why_not: None,
            first: None,
            last: None,
            running: None,
            next_at: None,
            taken: 0,
            collected: 0,
        }
    }

    /// Called from the loop: makes the plan once the root's interpreter is known, collects a
    /// finished census, starts the next one when it is due. Never blocks.
    pub(super) fn poll(&mut self, targets: &Targets) {
        if !self.opts.enabled {
            return;
        }
        if self.plan.is_none() {
            let Some(interp) = targets.root_proc().python.as_ref() else {
                return;
            };
            match Plan::new(interp, Limits::default()) {
                Ok(p) => {
                    if let Some(why) = p.arenas_unreadable() {
                        eprintln!(
                            "leaktrace: heap: pymalloc's arenas are not read ({why}): no small-block figures"
                        );
                    }
                    self.plan = Some(p);
                }
                Err(e) => {
                    self.why_not = Some(format!("{e:#}"));
                    return;
                }
            }
        }
        if self.running.as_ref().is_some_and(|h| h.is_finished()) {
            let done = self.running.take().expect("checked");
            self.collect(done);
        }
        let due = self.first.is_none() && self.taken == 0
            || self.next_at.is_some_and(|t| Instant::now() >= t);
        if due && self.running.is_none() {
            self.start();
        }
    }

    fn start(&mut self) {
        let Some(plan) = self.plan.clone() else {
            return;
        };
        self.taken += 1;
        self.next_at = self.opts.interval.map(|i| Instant::now() + i);
        self.running = Some(std::thread::spawn(move || plan.take_live()));
    }

    fn collect(&mut self, done: JoinHandle<Result<Taken>>) {
        match done.join() {
            Ok(Ok(t)) => {
                self.collected += 1;
                eprintln!(
                    "leaktrace: heap census {}: {} objects in {:.2} s{}",
                    self.taken,
                    t.census.objects,
                    t.seconds,
                    match &t.census.incomplete {
                        Some(why) => format!(" (incomplete: {why})"),
                        None => String::new(),
                    }
                );
                if self.first.is_none() {
                    self.first = Some(t);
                } else {
                    self.last = Some(t);
                }
            }
            Ok(Err(e)) => self.why_not = Some(format!("{e:#}")),
            Err(_) => self.why_not = Some("the census thread panicked".to_string()),
        }
    }

    /// At the end of the trace, before the report is built: starts the last census (when the
    /// target is still there), after one under way.
    pub(super) fn begin_final(&mut self, target_alive: bool) {
        if !self.opts.enabled {
            return;
        }
        if let Some(h) = self.running.take() {
            self.collect(h);
        }
        if target_alive {
            self.start();
        }
    }

    /// Waits for the last census and builds the `heap` member (growth from the first census to
    /// the last; one census gives a report without growth).
    pub(super) fn finish(mut self, target: Target) -> Option<HeapReport> {
        if !self.opts.enabled {
            return None;
        }
        if let Some(h) = self.running.take() {
            self.collect(h);
        }
        let Some(first) = self.first.as_ref() else {
            if self.opts.explicit {
                eprintln!(
                    "leaktrace: heap: no census taken: {}",
                    self.why_not
                        .as_deref()
                        .unwrap_or("the process runs no CPython interpreter leaktrace reads")
                );
            }
            return None;
        };
        let last = self.last.as_ref();
        let duration = last.map_or(0.0, |l| l.at.duration_since(first.at).as_secs_f64());
        let mut rep = crate::heap::build_report(target, duration, first, last, TOP);
        rep.censuses = self.collected;
        // Where the types that grew most are held, read right after the last census (a target
        // gone since has none).
        if let (Some(plan), Some(l)) = (&self.plan, last) {
            if let Ok(mem) = crate::python::runtime::Memory::open(plan.pid) {
                plan.add_holders(&mem, first, l, &mut rep);
            }
        }
        Some(rep)
    }
}

/// The summary's heap lines: when the censuses were, the owners and types that grew most
/// (or, with one census, the largest), and the small blocks.
pub(super) fn summary_lines(rep: &HeapReport) -> String {
    let pid = rep.target.pids.first().copied().unwrap_or(0);
    let gb = |v: i64| {
        format!(
            "{}{}",
            if v < 0 { "-" } else { "+" },
            human_bytes(v.unsigned_abs())
        )
    };
    let mut s = format!(
        "leaktrace: heap: {} census{}{}, {} objects{}\n",
        rep.censuses,
        if rep.censuses == 1 { "" } else { "es" },
        if rep.censuses > 1 {
            format!(" {:.1} s apart", rep.duration_s)
        } else {
            String::new()
        },
        rep.objects,
        match &rep.incomplete_reason {
            Some(why) => format!(" (incomplete: {why})"),
            None => String::new(),
        }
    );
    let grown = rep.censuses > 1;
    let owners: Vec<String> = rep
        .owners
        .iter()
        .filter(|o| !grown || o.retained_growth.is_some_and(|g| g > 0))
        .take(SUMMARY_ROWS)
        .map(|o| {
            format!(
                "{} ({}{}, {}{})",
                o.path,
                o.type_name,
                o.len.map_or(String::new(), |l| format!(", len {l}")),
                human_bytes(o.retained_bytes),
                o.retained_growth
                    .filter(|_| grown)
                    .map_or(String::new(), |g| format!(", {}", gb(g)))
            )
        })
        .collect();
    let types: Vec<String> = rep
        .types
        .iter()
        .filter(|t| !grown || t.bytes_growth.is_some_and(|g| g > 0))
        .take(SUMMARY_ROWS)
        .map(|t| match (t.count_growth, t.bytes_growth) {
            (Some(c), Some(b)) if grown => format!("{} {c:+} ({})", t.type_name, gb(b)),
            _ => format!("{} {} ({})", t.type_name, t.count, human_bytes(t.bytes)),
        })
        .collect();
    let what = if grown { "grew most" } else { "largest" };
    if owners.is_empty() {
        s.push_str(&format!("  owners that {what}: none\n"));
    } else {
        s.push_str(&format!("  owners that {what}: {}\n", owners.join("; ")));
    }
    if !types.is_empty() {
        s.push_str(&format!("  types that {what}: {}\n", types.join("; ")));
    }
    // The first holder of each type that grew most.
    let mut held: Vec<String> = Vec::new();
    for h in &rep.holders {
        if held.len() < SUMMARY_ROWS
            && !held
                .iter()
                .any(|l| l.starts_with(&format!("{} ", h.type_name)))
        {
            held.push(crate::heap::report::holder_line(h));
        }
    }
    if !held.is_empty() {
        s.push_str(&format!("  where they are held: {}\n", held.join("; ")));
    }
    if let Some(b) = &rep.small_blocks {
        for line in b.text(pid).lines() {
            s.push_str(&format!("  {}\n", line.trim_start()));
        }
    }
    s
}
