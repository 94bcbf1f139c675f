//! `attach --heap`: censuses of the traced Python process's objects (`heap/`) at the start and
//! the end of the trace, and every `--heap-interval`, each on a thread of its own so that the
//! session loop (draining the kernel's events every 100 ms, publishing threads) never waits
//! for one. The report gains a `heap` member (a `leaktrace-heap/v1` report) and the summary a
//! few lines: the owners and types that grew most, and the small blocks no object accounts for.

use std::{
    collections::{BTreeMap, BTreeSet},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::{
    heap::{census::Limits, report::HeapReport, Plan, Taken},
    output::report::{human_bytes, Target},
    probes::targets::Targets,
    target::process::TargetProcess,
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

/// Censuses running at once at most (one thread each; more workers wait their turn).
const MAX_RUNNING: usize = 8;

/// The censuses of one traced Python process.
struct One {
    plan: Plan,
    target: TargetProcess,
    cmdline: String,
    first: Option<Taken>,
    last: Option<Taken>,
    running: Option<JoinHandle<Result<Taken>>>,
    next_at: Option<Instant>,
    taken: u32,
    /// Censuses finished (its report's `censuses`).
    collected: u32,
    /// It left the trace (exited): no more censuses.
    gone: bool,
}

/// Censuses of every traced Python process: the root, and the workers `attach` follows
/// (multiprocessing's helpers left out); a worker that appears later gets its first census
/// when its interpreter is found.
pub(super) struct HeapCensus {
    opts: HeapOptions,
    /// `--per-process`: the summed owners of several processes keep a `pid N ` prefix.
    per_process: bool,
    procs: BTreeMap<u32, One>,
    /// Processes left out for good (multiprocessing's helpers).
    helpers: BTreeSet<u32>,
    /// Why no plan could be made yet, by process (the last reason; tried again each poll).
    why_not: BTreeMap<u32, String>,
    /// Processes that exited, one line each.
    notes: Vec<String>,
}

impl HeapCensus {
    pub(super) fn new(opts: HeapOptions, per_process: bool) -> Self {
        Self {
            opts,
            per_process,
            procs: BTreeMap::new(),
            helpers: BTreeSet::new(),
            why_not: BTreeMap::new(),
            notes: Vec::new(),
        }
    }

    /// Called from the loop: makes a plan for each traced process whose interpreter is known,
    /// collects finished censuses, starts those that are due. Never blocks.
    pub(super) fn poll(&mut self, targets: &Targets) {
        if !self.opts.enabled {
            return;
        }
        for (&pid, proc) in &targets.procs {
            if self.procs.contains_key(&pid) || self.helpers.contains(&pid) {
                continue;
            }
            let Some(interp) = proc.python.as_ref() else {
                continue;
            };
            if pid != targets.root && crate::heap::is_multiprocessing_helper(pid) {
                self.helpers.insert(pid);
                continue;
            }
            match Plan::new(interp, Limits::default()) {
                Ok(p) => {
                    if let Some(why) = p.arenas_unreadable() {
                        eprintln!(
                            "leaktrace: heap: process {pid}: pymalloc's arenas are not read ({why}): no small-block figures"
                        );
                    }
                    self.why_not.remove(&pid);
                    self.procs.insert(
                        pid,
                        One {
                            plan: p,
                            target: proc.target.clone(),
                            cmdline: crate::heap::cmdline(pid),
                            first: None,
                            last: None,
                            running: None,
                            next_at: None,
                            taken: 0,
                            collected: 0,
                            gone: false,
                        },
                    );
                }
                Err(e) => {
                    self.why_not.insert(pid, format!("{e:#}"));
                }
            }
        }
        let mut running = self.procs.values().filter(|o| o.running.is_some()).count();
        for (&pid, one) in &mut self.procs {
            if one.running.as_ref().is_some_and(|h| h.is_finished()) {
                let done = one.running.take().expect("checked");
                one.collect(done);
                running -= 1;
            }
            if !one.gone && !targets.procs.contains_key(&pid) {
                one.gone = true;
                let note = format!(
                    "process {pid} exited during the trace after {} heap census{}: what was taken before is kept",
                    one.collected,
                    if one.collected == 1 { "" } else { "es" }
                );
                eprintln!("leaktrace: heap: {note}");
                self.notes.push(note);
            }
            let due = one.taken == 0 || one.next_at.is_some_and(|t| Instant::now() >= t);
            if !one.gone && due && one.running.is_none() && running < MAX_RUNNING {
                one.start(self.opts.interval);
                running += 1;
            }
        }
    }

    /// At the end of the trace, before the report is built: starts the last census of each
    /// process still there (`root_alive` says whether the root is), after one under way.
    pub(super) fn begin_final(&mut self, targets: &Targets, root_alive: bool) {
        if !self.opts.enabled {
            return;
        }
        for (&pid, one) in &mut self.procs {
            if let Some(h) = one.running.take() {
                one.collect(h);
            }
            let alive = if pid == targets.root {
                root_alive
            } else {
                !one.gone && one.target.is_alive()
            };
            if alive {
                one.start(None);
            }
        }
    }

    /// Waits for the last censuses and builds the `heap` member (growth from each process's
    /// first census to its last; one census gives a report without growth). One process
    /// censused: its report, as `target` says. Several: their sum, each in `processes`.
    pub(super) fn finish(mut self, target: Target) -> Option<HeapReport> {
        if !self.opts.enabled {
            return None;
        }
        let mut reports = Vec::new();
        for (&pid, one) in &mut self.procs {
            if let Some(h) = one.running.take() {
                one.collect(h);
            }
            let Some(first) = one.first.as_ref() else {
                continue;
            };
            let last = one.last.as_ref();
            let duration = last.map_or(0.0, |l| l.at.duration_since(first.at).as_secs_f64());
            let own = Target {
                pids: vec![pid],
                exe: one.target.exe.clone(),
                python: Some(one.plan.python.clone()),
            };
            let mut rep = crate::heap::build_report(own, duration, first, last, TOP);
            rep.censuses = one.collected;
            // Where the types that grew most are held, read right after the last census (a
            // process gone since has none).
            if let Some(l) = last {
                if let Ok(mem) = crate::python::runtime::Memory::open(pid) {
                    one.plan.add_holders(&mem, first, l, &mut rep);
                }
            }
            rep.cmdline = Some(one.cmdline.clone());
            rep.notes = self
                .notes
                .iter()
                .filter(|n| n.starts_with(&format!("process {pid} ")))
                .cloned()
                .collect();
            reports.push(rep);
        }
        match reports.len() {
            0 => {
                if self.opts.explicit {
                    eprintln!(
                        "leaktrace: heap: no census taken: {}",
                        self.why_not
                            .get(&target.pids.first().copied().unwrap_or(0))
                            .or(self.why_not.values().next())
                            .map_or(
                                "the process runs no CPython interpreter leaktrace reads",
                                String::as_str
                            )
                    );
                }
                None
            }
            1 => {
                let mut rep = reports.pop().expect("one");
                if rep.target.pids == target.pids {
                    rep.target = target;
                }
                Some(rep)
            }
            _ => {
                let target = Target {
                    pids: reports.iter().flat_map(|r| r.target.pids.clone()).collect(),
                    ..target
                };
                Some(HeapReport::merge(
                    target,
                    reports,
                    self.per_process,
                    TOP,
                    self.notes,
                ))
            }
        }
    }
}

impl One {
    fn start(&mut self, interval: Option<Duration>) {
        let plan = self.plan.clone();
        self.taken += 1;
        self.next_at = interval.map(|i| Instant::now() + i);
        self.running = Some(std::thread::spawn(move || plan.take_live()));
    }

    fn collect(&mut self, done: JoinHandle<Result<Taken>>) {
        let pid = self.plan.pid;
        match done.join() {
            // Read while it went away: not a census of a live heap.
            Ok(Ok(_)) if !self.target.is_alive() => {}
            Ok(Ok(t)) => {
                self.collected += 1;
                eprintln!(
                    "leaktrace: heap census {}: {} objects in {:.2} s (pid {pid}){}",
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
            Ok(Err(e)) => eprintln!("leaktrace: heap: census of process {pid}: {e:#}"),
            Err(_) => eprintln!("leaktrace: heap: the census thread of process {pid} panicked"),
        }
    }
}

/// `text`, cut to `max` characters (with `...`).
fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let cut: String = text.chars().take(max.saturating_sub(3)).collect();
    format!("{cut}...")
}

/// The summary's heap lines: which processes were censused, when, the owners and types that grew most
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
    let pids: Vec<String> = rep.target.pids.iter().map(u32::to_string).collect();
    let mut s = format!(
        "leaktrace: heap: {} census{}{}, {} objects{}{}\n",
        rep.censuses,
        if rep.censuses == 1 { "" } else { "es" },
        if rep.censuses > 1 {
            format!(" {:.1} s apart", rep.duration_s)
        } else {
            String::new()
        },
        rep.objects,
        if rep.processes.is_empty() {
            format!(" (pid {pid})")
        } else {
            format!(
                " in all, of {} processes (pids {})",
                rep.processes.len(),
                pids.join(", ")
            )
        },
        match &rep.incomplete_reason {
            Some(why) => format!(" (incomplete: {why})"),
            None => String::new(),
        }
    );
    for p in &rep.processes {
        s.push_str(&format!(
            "  pid {}: {} census{}, {} objects{}\n",
            p.target.pids.first().copied().unwrap_or(0),
            p.censuses,
            if p.censuses == 1 { "" } else { "es" },
            p.objects,
            p.cmdline
                .as_deref()
                .map_or(String::new(), |c| format!(" ({})", shorten(c, 80)))
        ));
    }
    for n in &rep.notes {
        s.push_str(&format!("  note: {n}\n"));
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heap::census::{Census, Owner, TypeStat};

    fn report(pid: u32, reg_len: u64) -> HeapReport {
        let mut c = Census::default();
        c.types.insert(
            "dict".into(),
            TypeStat {
                count: reg_len,
                bytes: reg_len * 100,
            },
        );
        c.owners.push(Owner {
            path: "app:REG".into(),
            type_name: "dict".into(),
            len: Some(reg_len),
            retained_bytes: reg_len * 200,
        });
        c.objects = reg_len;
        let mut r = HeapReport::build(
            Target {
                pids: vec![pid],
                exe: "/usr/bin/python3".into(),
                python: Some("3.12".into()),
            },
            0.0,
            &c,
            None,
            TOP,
        );
        r.cmdline = Some(format!("python3 -m uvicorn app:app --workers 2 # {pid}"));
        r
    }

    #[test]
    fn the_summary_names_the_processes_censused() {
        let one = summary_lines(&report(10, 3));
        assert!(
            one.starts_with("leaktrace: heap: 1 census, 3 objects (pid 10)\n"),
            "{one}"
        );
        let m = HeapReport::merge(
            Target {
                pids: vec![10, 11, 12],
                exe: "/usr/bin/python3".into(),
                python: Some("3.12".into()),
            },
            vec![report(10, 0), report(11, 300), report(12, 700)],
            true,
            TOP,
            vec!["process 13 exited during the trace after 1 heap census: what was taken before is kept".into()],
        );
        let s = summary_lines(&m);
        assert!(
            s.starts_with(
                "leaktrace: heap: 1 census, 1000 objects in all, of 3 processes (pids 10, 11, 12)\n"
            ),
            "{s}"
        );
        assert!(
            s.contains(
                "  pid 11: 1 census, 300 objects (python3 -m uvicorn app:app --workers 2 # 11)\n"
            ),
            "{s}"
        );
        assert!(
            s.contains("  note: process 13 exited during the trace"),
            "{s}"
        );
        // The owners kept apart (`--per-process`), the largest first.
        assert!(
            s.contains("owners that largest: pid 12 app:REG (dict, len 700"),
            "{s}"
        );
    }
}
