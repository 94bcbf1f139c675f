//! Several processes' heap reports in one (`heap --per-process`, `attach --heap` on a worker
//! tree): the top-level rows are their sum, the reports themselves go into `processes`.

use std::{collections::BTreeMap, fmt::Write as _};

use super::{
    order_owners, order_types, order_unheld, HeapReport, HolderRow, LoggersRow, LruRow,
    NamesReport, OwnerRow, PathLen, Target, TaskRow, TypeCountRow, TypeRow, UnheldRow, SCHEMA,
};

/// `a + b` where either may be unknown: known if one is (a process with one census has no
/// growth; the sum is then the growth of those with two).
fn add(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0).saturating_add(b.unwrap_or(0))),
    }
}

fn add_u(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0).saturating_add(b.unwrap_or(0))),
    }
}

fn pid_of(r: &HeapReport) -> u32 {
    r.target.pids.first().copied().unwrap_or(0)
}

fn type_counts(lists: impl Iterator<Item = (u32, Vec<TypeCountRow>)>) -> Vec<TypeCountRow> {
    let mut by: BTreeMap<String, TypeCountRow> = BTreeMap::new();
    for (_, rows) in lists {
        for t in rows {
            let e = by.entry(t.type_name.clone()).or_insert(TypeCountRow {
                type_name: t.type_name.clone(),
                count: 0,
                open: None,
                count_growth: None,
                open_growth: None,
            });
            e.count += t.count;
            e.open = add_u(e.open, t.open);
            e.count_growth = add(e.count_growth, t.count_growth);
            e.open_growth = add(e.open_growth, t.open_growth);
        }
    }
    by.into_values().collect()
}

impl HeapReport {
    /// The report of `reports` (one per process): types, unheld types, names and tasks summed
    /// across them; owners summed by path, or with `apart` (`--per-process`) kept apart, each
    /// path prefixed `pid N ` like the outermost frame of `attach --per-process`. No
    /// `small_blocks` at the top (each process has its own). `censuses` and `duration_s` are
    /// those of the process censused most; `notes` say which processes are missing or short.
    pub fn merge(
        target: Target,
        reports: Vec<HeapReport>,
        apart: bool,
        top: usize,
        notes: Vec<String>,
    ) -> HeapReport {
        let mut types: BTreeMap<String, TypeRow> = BTreeMap::new();
        let mut owners: BTreeMap<(String, String), OwnerRow> = BTreeMap::new();
        let mut unheld: BTreeMap<String, UnheldRow> = BTreeMap::new();
        // (count, growth) per coroutine, state and holder.
        let mut tasks: BTreeMap<(String, String, Option<String>), (u64, Option<i64>)> =
            BTreeMap::new();
        let mut lru: BTreeMap<String, LruRow> = BTreeMap::new();
        let mut loggers = LoggersRow::default();
        let prefix = |pid: u32, path: &str| {
            if apart {
                format!("pid {pid} {path}")
            } else {
                path.to_string()
            }
        };
        for r in &reports {
            let pid = pid_of(r);
            for t in &r.types {
                let e = types.entry(t.type_name.clone()).or_insert(TypeRow {
                    type_name: t.type_name.clone(),
                    count: 0,
                    bytes: 0,
                    count_growth: None,
                    bytes_growth: None,
                });
                e.count += t.count;
                e.bytes += t.bytes;
                e.count_growth = add(e.count_growth, t.count_growth);
                e.bytes_growth = add(e.bytes_growth, t.bytes_growth);
            }
            for o in &r.owners {
                let path = prefix(pid, &o.path);
                let e = owners
                    .entry((path.clone(), o.type_name.clone()))
                    .or_insert(OwnerRow {
                        path,
                        type_name: o.type_name.clone(),
                        len: None,
                        retained_bytes: 0,
                        retained_growth: None,
                    });
                e.len = add_u(e.len, o.len);
                e.retained_bytes += o.retained_bytes;
                e.retained_growth = add(e.retained_growth, o.retained_growth);
            }
            for u in &r.unheld {
                let e = unheld.entry(u.type_name.clone()).or_insert(UnheldRow {
                    type_name: u.type_name.clone(),
                    count: 0,
                    count_growth: 0,
                    unheld: 0,
                    unheld_growth: 0,
                });
                e.count += u.count;
                e.count_growth += u.count_growth;
                e.unheld += u.unheld;
                e.unheld_growth += u.unheld_growth;
            }
            for t in &r.tasks {
                let holder = t.holder.as_deref().map(|h| prefix(pid, h));
                let e = tasks
                    .entry((t.coroutine.clone(), t.state.clone(), holder))
                    .or_default();
                e.0 += t.count;
                e.1 = add(e.1, t.count_growth);
            }
            for c in &r.names.lru_caches {
                let e = lru.entry(c.function.clone()).or_insert(LruRow {
                    function: c.function.clone(),
                    entries: 0,
                    wrappers: 0,
                    entries_growth: None,
                });
                e.entries += c.entries;
                e.wrappers += c.wrappers;
                e.entries_growth = add(e.entries_growth, c.entries_growth);
            }
            loggers.count += r.names.loggers.count;
            loggers.count_growth = add(loggers.count_growth, r.names.loggers.count_growth);
            loggers.registry_growth = add(loggers.registry_growth, r.names.loggers.registry_growth);
            if let Some(reg) = &r.names.loggers.registry {
                // The same path in every process: the lengths add up.
                let e = loggers.registry.get_or_insert(PathLen {
                    path: reg.path.clone(),
                    len: 0,
                });
                e.len += reg.len;
            }
        }
        let mut types: Vec<TypeRow> = types.into_values().collect();
        order_types(&mut types);
        let mut owners: Vec<OwnerRow> = owners.into_values().collect();
        order_owners(&mut owners);
        owners.truncate(top);
        let mut unheld: Vec<UnheldRow> = unheld.into_values().collect();
        order_unheld(&mut unheld);
        unheld.truncate(top);
        let mut tasks: Vec<TaskRow> = tasks
            .into_iter()
            .map(
                |((coroutine, state, holder), (count, count_growth))| TaskRow {
                    coroutine,
                    state,
                    count,
                    holder,
                    count_growth,
                },
            )
            .collect();
        tasks.sort_by(|a, b| {
            b.count_growth
                .cmp(&a.count_growth)
                .then(b.count.cmp(&a.count))
                .then(a.coroutine.cmp(&b.coroutine))
        });
        let names = NamesReport {
            connections: type_counts(
                reports
                    .iter()
                    .map(|r| (pid_of(r), r.names.connections.clone())),
            ),
            threads: type_counts(reports.iter().map(|r| (pid_of(r), r.names.threads.clone()))),
            loggers,
            lru_caches: lru.into_values().collect(),
        };
        // Holders: by type and path, prefixed `pid N ` with `apart`, else summed by path.
        let mut holders: BTreeMap<(String, String, String), HolderRow> = BTreeMap::new();
        for r in &reports {
            for h in &r.holders {
                let path = prefix(pid_of(r), &h.path);
                let e = holders
                    .entry((h.type_name.clone(), path.clone(), h.container.clone()))
                    .or_insert(HolderRow {
                        type_name: h.type_name.clone(),
                        path,
                        container: h.container.clone(),
                        len: None,
                        count: 0,
                        containers: 0,
                    });
                e.len = add_u(e.len, h.len);
                e.count += h.count;
                e.containers += h.containers;
            }
        }
        let growth_of: BTreeMap<&str, i64> = types
            .iter()
            .map(|t| (t.type_name.as_str(), t.bytes_growth.unwrap_or(0)))
            .collect();
        let mut holders: Vec<HolderRow> = holders.into_values().collect();
        holders.sort_by(|a, b| {
            let g = |h: &HolderRow| growth_of.get(h.type_name.as_str()).copied().unwrap_or(0);
            g(b).cmp(&g(a))
                .then(a.type_name.cmp(&b.type_name))
                .then(b.count.cmp(&a.count))
                .then(a.path.cmp(&b.path))
        });
        let holders_incomplete = reports.iter().find_map(|r| {
            r.holders_incomplete
                .as_ref()
                .map(|why| format!("pid {}: {why}", pid_of(r)))
        });
        let incomplete = reports.iter().find_map(|r| {
            r.incomplete_reason
                .as_ref()
                .map(|why| format!("pid {}: {why}", pid_of(r)))
        });
        HeapReport {
            schema: SCHEMA.to_string(),
            target,
            duration_s: reports.iter().map(|r| r.duration_s).fold(0.0, f64::max),
            complete: incomplete.is_none(),
            incomplete_reason: incomplete,
            skipped_reads: reports.iter().map(|r| r.skipped_reads).sum(),
            censuses: reports.iter().map(|r| r.censuses).max().unwrap_or(0),
            objects: reports.iter().map(|r| r.objects).sum(),
            types,
            owners,
            unheld,
            tasks,
            names,
            small_blocks: None,
            cmdline: None,
            notes,
            holders,
            holders_incomplete,
            processes: reports,
        }
    }

    /// [`Self::text`] of a report with `processes`: a line naming them, the notes, then one
    /// section per process headed by its pid and command line.
    pub(super) fn processes_text(&self, top: usize) -> String {
        let mut s = String::new();
        let pids: Vec<String> = self
            .processes
            .iter()
            .map(|p| pid_of(p).to_string())
            .collect();
        let _ = writeln!(
            s,
            "leaktrace heap: {} process{} ({}), Python {}, {} objects in all{}",
            self.processes.len(),
            if self.processes.len() == 1 { "" } else { "es" },
            pids.join(", "),
            self.target.python.as_deref().unwrap_or("?"),
            self.objects,
            if self.censuses > 1 {
                format!(", growth over {:.1} s", self.duration_s)
            } else {
                String::new()
            }
        );
        for n in &self.notes {
            let _ = writeln!(s, "note: {n}");
        }
        for p in &self.processes {
            let _ = writeln!(
                s,
                "\n=== pid {}: {} ===",
                pid_of(p),
                p.cmdline.as_deref().unwrap_or(&p.target.exe)
            );
            s.push_str(&p.text(top));
        }
        s
    }

    /// [`Self::folded`] of a report with `processes`: each process's lines under `pid N`.
    pub(super) fn processes_folded(&self, top: usize) -> String {
        let mut s = String::new();
        for p in &self.processes {
            for line in p.folded(top).lines() {
                let _ = writeln!(s, "pid {};{line}", pid_of(p));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::census;
    use super::*;
    use crate::heap::census::Census;

    fn one(pid: u32, first: Census, last: Option<Census>) -> HeapReport {
        let mut r = HeapReport::build(
            Target {
                pids: vec![pid],
                exe: "/usr/bin/python3".into(),
                python: Some("3.12".into()),
            },
            2.0,
            &first,
            last.as_ref(),
            20,
        );
        r.cmdline = Some(format!("python3 worker.py {pid}"));
        r
    }

    fn target(pids: &[u32]) -> Target {
        Target {
            pids: pids.to_vec(),
            exe: "/usr/bin/python3".into(),
            python: Some("3.12".into()),
        }
    }

    #[test]
    fn apart_owners_are_prefixed_and_types_summed() {
        let a = one(11, census(10, 300), Some(census(110, 400)));
        let b = one(12, census(20, 700), Some(census(220, 900)));
        let m = HeapReport::merge(target(&[10, 11, 12]), vec![a, b], true, 20, vec![]);
        assert_eq!(m.objects, 330);
        assert_eq!(m.censuses, 2);
        assert_eq!(m.types.len(), 1);
        assert_eq!(m.types[0].count, 330);
        assert_eq!(m.types[0].count_growth, Some(300));
        let owners: Vec<(&str, Option<u64>, Option<i64>)> = m
            .owners
            .iter()
            .map(|o| (o.path.as_str(), o.len, o.retained_growth))
            .collect();
        // pid 12 grew by 200 items (40000 bytes), pid 11 by 100: ranked by growth.
        assert_eq!(
            owners,
            vec![
                ("pid 12 app:REG", Some(900), Some(40_000)),
                ("pid 11 app:REG", Some(400), Some(20_000)),
            ]
        );
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["schema"], SCHEMA);
        assert_eq!(v["target"]["pids"], serde_json::json!([10, 11, 12]));
        assert_eq!(v["processes"].as_array().unwrap().len(), 2);
        assert_eq!(v["processes"][1]["owners"][0]["path"], "app:REG");
        assert_eq!(v["processes"][1]["owners"][0]["len"], 900);
        assert_eq!(v["processes"][1]["cmdline"], "python3 worker.py 12");
        // A report with processes reads back (the contract: fields added, none removed).
        let back: HeapReport = serde_json::from_value(v).unwrap();
        assert_eq!(back, m);
        assert_eq!(
            m.folded(20),
            "pid 11;app;REG 80000\npid 12;app;REG 180000\n"
        );
    }

    #[test]
    fn summed_owners_add_lengths_and_growth_of_those_with_two_censuses() {
        let a = one(11, census(10, 300), Some(census(110, 400)));
        // A worker censused once (it appeared late): no growth of its own.
        let b = one(12, census(20, 700), None);
        let m = HeapReport::merge(
            target(&[11, 12]),
            vec![a, b],
            false,
            20,
            vec!["process 12 appeared after the first census: one census".into()],
        );
        assert_eq!(m.owners.len(), 1);
        assert_eq!(m.owners[0].path, "app:REG");
        assert_eq!(m.owners[0].len, Some(1100));
        assert_eq!(m.owners[0].retained_growth, Some(20_000));
        assert_eq!(m.types[0].count_growth, Some(100));
        assert!(m.small_blocks.is_none());
    }

    #[test]
    fn text_has_one_section_per_process_and_the_notes() {
        let mut a = one(11, census(10, 300), None);
        a.incomplete_reason = Some("--max-objects 5 reached".into());
        a.complete = false;
        let b = one(12, census(20, 700), None);
        let m = HeapReport::merge(
            target(&[11, 12]),
            vec![a, b],
            true,
            20,
            vec!["process 12 exited after census 1: its census is kept".into()],
        );
        assert!(!m.complete);
        assert_eq!(
            m.incomplete_reason.as_deref(),
            Some("pid 11: --max-objects 5 reached")
        );
        let t = m.text(5);
        assert!(
            t.starts_with("leaktrace heap: 2 processes (11, 12), Python 3.12, 30 objects in all\n"),
            "{t}"
        );
        assert!(t.contains("note: process 12 exited after census 1: its census is kept"));
        let s11 = t
            .find("=== pid 11: python3 worker.py 11 ===")
            .expect("pid 11");
        let s12 = t
            .find("=== pid 12: python3 worker.py 12 ===")
            .expect("pid 12");
        assert!(s11 < s12);
        // Each section is that process's own table, with its own lengths.
        assert!(t[s11..s12].contains("300  app:REG (dict)"), "{t}");
        assert!(t[s12..].contains("700  app:REG (dict)"), "{t}");
        assert!(t[s11..s12].contains("incomplete: --max-objects 5 reached"));
    }
}
