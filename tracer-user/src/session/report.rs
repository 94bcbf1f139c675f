//! Building the report from what the probes hold: the live heap read first, then mappings,
//! symbols and Python stacks, the analysis of the window, and the notes a reader must see.
//! Also the SIGUSR1 snapshots written while tracing goes on.

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Result;
use tracer_common::{
    growth::{GrowthCounter, GROWTH_COUNTER_SLOTS},
    Counter, StackKey,
};

use crate::{
    analysis::{
        aggregate::{LiveAlloc, LiveGroups, StackReport},
        live::report_stacks,
    },
    error::user,
    output::report::{human_bytes, Report, Target, Totals, SCHEMA},
    probes::{bpf::Counters, growth, mode::Mode},
    python::runtime::Interpreter,
    session::{Session, Stop},
};

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

/// How long each phase of building and writing a report took, for `-v`.
pub(super) struct Phases {
    started: Instant,
    last: Instant,
    laps: Vec<(String, Duration)>,
}

impl Phases {
    pub(super) fn start() -> Self {
        let now = Instant::now();
        Self {
            started: now,
            last: now,
            laps: Vec::new(),
        }
    }

    /// Ends the phase `what`, which began where the last one ended.
    pub(super) fn lap(&mut self, what: impl Into<String>) {
        let now = Instant::now();
        self.laps.push((what.into(), now - self.last));
        self.last = now;
    }

    pub(super) fn total(&self) -> Duration {
        self.last - self.started
    }

    /// `heap 0.41 s (1000000 allocations ...), stacks 0.02 s (3), ...`
    pub(super) fn line(&self) -> String {
        self.laps
            .iter()
            .map(|(what, d)| match what.split_once(' ') {
                Some((name, rest)) => format!("{name} {:.3} s {rest}", d.as_secs_f64()),
                None => format!("{what} {:.3} s", d.as_secs_f64()),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Session {
    /// What is live now, as a report: at the end (`stop` set, and the probes are detached in
    /// the background once the live heap is read) or for a snapshot while tracing goes on.
    pub(super) fn build_report(
        &mut self,
        stop: Option<Stop>,
        phases: &mut Phases,
    ) -> Result<Report> {
        // Read the live heap first: the target keeps running while maps, symbols and Python
        // stacks are refreshed (seconds, on a busy machine), and a stack that churns (a full
        // cache that evicts) would meanwhile be replaced by allocations too young to count.
        // Allocations are grouped by stack as they are read: a million of them are never
        // held at once. Those made while the map is read are younger than `now_ns`: in the
        // report only with --min-age 0.
        let now_ns = monotonic_ns();
        let min_age_ns = self.opts.min_age.as_nanos() as u64;
        let mut live = LiveGroups::new(self.tracer.sampling().copied(), now_ns, min_age_ns);
        let read = self
            .tracer
            .for_each_alloc(|_, info| live.add_recorded(info.stack, info.size, info.ts_ns))?;
        phases.lap(format!(
            "heap ({} allocations in {} stacks, {} syscalls, {})",
            read.entries,
            live.stacks(),
            read.syscalls,
            if read.batched {
                "batched"
            } else {
                "entry by entry"
            }
        ));
        if stop.is_some() {
            // Nothing the report needs comes from the probes any more.
            self.tracer.detach_in_background();
        }
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
        for (r, count) in self.regions.pieces() {
            live.add_exact(LiveAlloc {
                stack: r.stack,
                size: r.len(),
                ts_ns: r.ts_ns,
                count,
            });
        }
        let (groups, heap_samples) = live.finish();
        phases.lap(format!(
            "maps ({} stack totals, mappings, Python stacks)",
            allocated.len()
        ));
        let sample_bytes = self.sample_bytes();
        let kernel_stacks = groups.len();
        let stacks = {
            let Session {
                stacks: resolver,
                targets,
                tracer,
                ..
            } = self;
            report_stacks(
                groups,
                now_ns,
                &allocated,
                &self.series,
                &heap_samples,
                sample_bytes,
                |k| resolver.frames(k, targets, tracer),
            )
        };
        phases.lap(format!(
            "stacks ({kernel_stacks} recorded, {} reported, {} native frames symbolized)",
            stacks.len(),
            self.stacks.resolver.symbolized()
        ));
        let mut report = self.report(stop, &counters, stacks);
        if self.opts.mode == Mode::Growth {
            annotate_growth(&mut report, &growth::counters(&self.tracer)?);
        }
        Ok(report)
    }

    /// SIGUSR1: writes a timestamped report next to the final one, and goes on tracing.
    pub(super) fn write_snapshot(&mut self) -> Result<()> {
        let mut phases = Phases::start();
        let report = self.build_report(None, &mut phases)?;
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
        phases.lap("write");
        if self.opts.verbose {
            eprintln!(
                "leaktrace: snapshot in {:.3} s: {}",
                phases.total().as_secs_f64(),
                phases.line()
            );
        }
        eprintln!(
            "leaktrace: snapshot written to `{}` ({} stacks, {} live); tracing goes on",
            path.display(),
            report.stacks.len(),
            human_bytes(report.totals.live_bytes)
        );
        Ok(())
    }

    fn report(&self, stop: Option<Stop>, counters: &Counters, stacks: Vec<StackReport>) -> Report {
        let mut notes = loss_notes(counters);
        let dropped = counters.dropped();
        if let Some(s) = self.opts.sampling {
            notes.push(format!(
                "sampled mode (one sample per {} allocated on average): live bytes and counts are estimates, each recorded allocation of s bytes standing for s/(1-exp(-s/{})) bytes; stacks that allocated little may be missing",
                human_bytes(s.n),
                s.n
            ));
        }
        if let (Some(Stop::TargetExited), Some(_)) = (stop, self.targets.child) {
            notes.push(
                "the command exited: the report shows what was live just before it did (a Python program's shutdown frees most of its objects first; stop with --duration to see them)"
                    .to_string(),
            );
        } else if let Some(Stop::TargetExited) = stop {
            notes.push(format!(
                "process {} exited after {:.1} s of tracing: the report shows what was live just before it exited",
                self.targets.root,
                self.started.elapsed().as_secs_f64()
            ));
        }
        for (pid, t) in &self.targets.exited {
            notes.push(format!(
                "worker process {pid} exited after {t:.1} s of tracing: its memory went with it and is not in this report"
            ));
        }
        if self.targets.traced.len() > 1 && !self.opts.per_process {
            notes.push(format!(
                "{} processes traced (pids {}): stacks are summed across them; --per-process keeps them apart",
                self.targets.traced.len(),
                self.targets.traced
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Report {
            schema: SCHEMA.to_string(),
            target: Target {
                pids: self.targets.traced.iter().copied().collect(),
                exe: self.targets.root_proc().target.exe.clone(),
                python: std::iter::once(self.targets.root_proc())
                    .chain(self.targets.procs.values())
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
            heap: None,
        }
    }
}

/// One note per loss counter that is not zero, each saying what was lost, whether the
/// report's numbers are lower bounds because of it, and what to do. `complete` is false
/// exactly when [`Counters::dropped`] is not zero (an allocation made while traced is missing
/// from the numbers); the other losses leave every allocation counted, with less detail.
pub fn loss_notes(counters: &Counters) -> Vec<String> {
    let n = |c: Counter| counters.get(c);
    let mut notes = Vec::new();
    let dropped = counters.dropped();
    if dropped > 0 {
        // Each cause, with its own remedy.
        let causes: Vec<String> = [
            (Counter::AllocMapFull, "the allocation map was full: raise --max-allocs"),
            (
                Counter::PendingFull,
                "more threads were inside an allocator call at once than tracked: raise --max-threads",
            ),
            (
                Counter::EventsLost,
                "the mmap event ring was full: raise --events-bytes",
            ),
        ]
        .iter()
        .filter(|(c, _)| n(*c) > 0)
        .map(|(c, why)| format!("{} because {why}", n(*c)))
        .collect();
        notes.push(format!(
            "{dropped} allocations were not tracked ({}): the numbers are lower bounds",
            causes.join("; ")
        ));
    }
    if n(Counter::MissedReturn) > 0 {
        notes.push(format!(
            "{} allocator calls never returned while traced (missed_return: a longjmp out of an allocator, a thread that ended inside one): such a call handed no memory to the program, so nothing is missing from the numbers; usually harmless",
            n(Counter::MissedReturn)
        ));
    }
    if n(Counter::StackCollision) > 0 {
        notes.push(format!(
            "{} allocations found the native stack map full (more distinct native stacks than --max-native-stacks): they are counted, with their direct caller only; raise --max-native-stacks",
            n(Counter::StackCollision)
        ));
    }
    if n(Counter::StackError) > 0 {
        notes.push(format!(
            "{} allocations have no native stack (the kernel could not unwind one): they are counted, with their direct caller only",
            n(Counter::StackError)
        ));
    }
    if n(Counter::StackTotalsFull) > 0 {
        notes.push(format!(
            "{} allocations found the stack totals map full: live tables and growth miss those stacks (the report itself is complete); raise --max-stacks",
            n(Counter::StackTotalsFull)
        ));
    }
    if n(Counter::PyStacksFull) > 0 {
        notes.push(format!(
            "{} allocations found the Python stack map full and have native stacks only; raise --max-python-stacks",
            n(Counter::PyStacksFull)
        ));
    }
    notes
}

/// Turns an exact-mode report into a growth-mode one: mode, counters, drops, notes.
fn annotate_growth(report: &mut Report, counters: &[u64; GROWTH_COUNTER_SLOTS as usize]) {
    report.mode = Mode::Growth.as_str().to_string();
    for (c, name) in growth::COUNTER_NAMES {
        report
            .counters
            .insert(name.to_string(), counters[c as usize]);
    }
    let lost = counters[GrowthCounter::FaultVmaUnknown as usize]
        + counters[GrowthCounter::ChunkMapFull as usize]
        + counters[GrowthCounter::PageMoveLost as usize];
    if lost > 0 {
        report.totals.dropped += lost;
        report.complete = false;
        report.notes.push(format!(
            "{lost} page faults or moves could not be recorded (mapping unreadable at that instant, or maps full): the numbers are lower bounds"
        ));
    }
    let huge = counters[GrowthCounter::FaultMaybeHuge as usize];
    if huge > 0 {
        report.complete = false;
        report.notes.push(format!(
            "{huge} faults were in 2 MiB blocks where transparent huge pages may have mapped 2 MiB at once; each counts 4 KiB, so those stacks' numbers are lower bounds"
        ));
    }
    // Rewrite exact mode's wording where it speaks of allocations.
    for note in &mut report.notes {
        if note.contains("allocations were not tracked") {
            *note = note.replace("allocations were not tracked", "pages were not recorded");
        }
    }
    report.notes.insert(
        0,
        "growth mode: sizes are resident anonymous pages (4 KiB each) first touched while traced, attributed to the stack that touched them; pages faulted in before attaching are not counted, and a page stays counted until it is unmapped, madvise-freed, or given back by brk/mremap (freeing to the allocator without returning memory to the kernel keeps it resident)"
            .to_string(),
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
    use std::time::Duration;

    use super::*;

    fn counters(set: &[(Counter, u64)]) -> Counters {
        let mut c = Counters::default();
        for (k, v) in set {
            c.0[*k as usize] = *v;
        }
        c
    }

    #[test]
    fn each_loss_has_its_own_note_and_remedy() {
        // Only missed returns: not a drop, no map to raise, nothing missing.
        let c = counters(&[(Counter::MissedReturn, 2)]);
        assert_eq!(c.dropped(), 0);
        let notes = loss_notes(&c);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].starts_with("2 allocator calls never returned"));
        assert!(notes[0].contains("nothing is missing") && notes[0].contains("harmless"));
        assert!(!notes[0].contains("--max-") && !notes[0].contains("lower bound"));
        // A full native stack map: its own remedy, not a drop.
        let c = counters(&[(Counter::StackCollision, 7)]);
        assert_eq!(c.dropped(), 0);
        let notes = loss_notes(&c);
        assert_eq!(notes.len(), 1);
        assert!(
            notes[0].contains("native stack map full") && notes[0].contains("--max-native-stacks")
        );
        assert!(!notes[0].contains("--max-allocs"));
        // Drops name each cause with its remedy, and only those that happened.
        let c = counters(&[(Counter::AllocMapFull, 5), (Counter::EventsLost, 1)]);
        assert_eq!(c.dropped(), 6);
        let notes = loss_notes(&c);
        assert_eq!(notes.len(), 1);
        assert!(
            notes[0].starts_with("6 allocations were not tracked"),
            "{}",
            notes[0]
        );
        assert!(notes[0].contains("5 because the allocation map was full: raise --max-allocs"));
        assert!(notes[0].contains("1 because the mmap event ring was full: raise --events-bytes"));
        assert!(!notes[0].contains("--max-threads") && notes[0].contains("lower bounds"));
        assert!(loss_notes(&Counters::default()).is_empty());
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
