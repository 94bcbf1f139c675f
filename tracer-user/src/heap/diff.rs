//! `leaktrace diff BEFORE.json AFTER.json` on two heap reports (`leaktrace-heap/v1`, or the
//! `heap` member of two `attach --heap` reports): each type and owner with its change between
//! them, largest growth first, as text, as JSON (`leaktrace-heap-diff/v1`), and as a
//! differential flamegraph of retained bytes by owner path; and the counts of the names users
//! search for (asyncio tasks, connections, threads, loggers, lru_cache entries) before and
//! after.

use std::{collections::BTreeMap, fmt::Write as _};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::report::{growth as change, HeapReport};
use crate::output::report::human_bytes;

pub const SCHEMA: &str = "leaktrace-heap-diff/v1";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeDelta {
    #[serde(rename = "type")]
    pub type_name: String,
    pub before_count: u64,
    pub after_count: u64,
    pub count_change: i64,
    pub before_bytes: u64,
    pub after_bytes: u64,
    pub bytes_change: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerDelta {
    pub path: String,
    #[serde(rename = "type")]
    pub type_name: String,
    pub before_len: Option<u64>,
    pub after_len: Option<u64>,
    pub len_change: Option<i64>,
    pub before_retained: u64,
    pub after_retained: u64,
    pub retained_change: i64,
}

/// One count of the reports' `tasks` and `names` before and after: `kind` is `task`,
/// `connection`, `open connection`, `thread`, `logger`, `logger registry` or `lru_cache`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameDelta {
    pub kind: String,
    /// What is counted: a task group (`coroutine [state] held by HOLDER`), a type, a cached
    /// function, a registry's path.
    pub name: String,
    pub before: u64,
    pub after: u64,
    pub change: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeapDiff {
    pub schema: String,
    pub before_objects: u64,
    pub after_objects: u64,
    /// Both reports complete (else the changes are between lower bounds).
    pub complete: bool,
    pub types: Vec<TypeDelta>,
    pub owners: Vec<OwnerDelta>,
    /// Raw small-block bytes (see `small_blocks` in leaktrace-heap/v1) before and after, when
    /// both reports have them.
    pub raw_small_blocks: Option<(i64, i64)>,
    /// Tasks and names by kind and name, largest growth first (added in v1).
    #[serde(default)]
    pub names: Vec<NameDelta>,
}

/// The counts of a report's `tasks` and `names`, keyed by (kind, name).
fn name_counts(r: &HeapReport) -> Vec<((&'static str, String), u64)> {
    let mut v = Vec::new();
    for t in &r.tasks {
        let holder = t.holder.as_deref().unwrap_or("no holder found");
        v.push((
            (
                "task",
                format!("{} [{}] held by {holder}", t.coroutine, t.state),
            ),
            t.count,
        ));
    }
    for c in &r.names.connections {
        v.push((("connection", c.type_name.clone()), c.count));
        if let Some(o) = c.open {
            v.push((("open connection", c.type_name.clone()), o));
        }
    }
    for t in &r.names.threads {
        v.push((("thread", t.type_name.clone()), t.count));
    }
    v.push((
        ("logger", "logging.Logger".to_string()),
        r.names.loggers.count,
    ));
    if let Some(reg) = &r.names.loggers.registry {
        v.push((("logger registry", reg.path.clone()), reg.len));
    }
    for c in &r.names.lru_caches {
        v.push((("lru_cache", c.function.clone()), c.entries));
    }
    v
}

/// Every kind and name of either report with its counts (0 where a report lacks it).
fn names_diff(before: &HeapReport, after: &HeapReport) -> Vec<NameDelta> {
    let mut m: BTreeMap<(&'static str, String), (u64, u64)> = BTreeMap::new();
    for (k, n) in name_counts(before) {
        let e = m.entry(k).or_default();
        e.0 = e.0.saturating_add(n);
    }
    for (k, n) in name_counts(after) {
        let e = m.entry(k).or_default();
        e.1 = e.1.saturating_add(n);
    }
    let mut v: Vec<NameDelta> = m
        .into_iter()
        .map(|((kind, name), (a, b))| NameDelta {
            kind: kind.to_string(),
            name,
            before: a,
            after: b,
            change: change(a, b),
        })
        .collect();
    // BTreeMap order breaks ties (kind, then name).
    v.sort_by(|a, b| b.change.cmp(&a.change));
    v
}

/// The types and owners of both reports matched by name, sorted by growth (bytes, then count;
/// ties by name). A report lists only its top owners: one missing from a side counts 0 there.
pub fn diff(before: &HeapReport, after: &HeapReport) -> HeapDiff {
    let mut types: BTreeMap<&str, TypeDelta> = BTreeMap::new();
    for (is_after, r) in [(false, before), (true, after)] {
        for t in &r.types {
            let d = types.entry(&t.type_name).or_insert_with(|| TypeDelta {
                type_name: t.type_name.clone(),
                before_count: 0,
                after_count: 0,
                count_change: 0,
                before_bytes: 0,
                after_bytes: 0,
                bytes_change: 0,
            });
            if is_after {
                d.after_count = d.after_count.saturating_add(t.count);
                d.after_bytes = d.after_bytes.saturating_add(t.bytes);
            } else {
                d.before_count = d.before_count.saturating_add(t.count);
                d.before_bytes = d.before_bytes.saturating_add(t.bytes);
            }
        }
    }
    let mut types: Vec<TypeDelta> = types
        .into_values()
        .map(|mut d| {
            d.count_change = change(d.before_count, d.after_count);
            d.bytes_change = change(d.before_bytes, d.after_bytes);
            d
        })
        .collect();
    types.sort_by(|a, b| {
        b.bytes_change
            .cmp(&a.bytes_change)
            .then(b.count_change.cmp(&a.count_change))
            .then(a.type_name.cmp(&b.type_name))
    });
    // By path and type, as in the report's own growth (one path can name two owners).
    let mut owners: BTreeMap<(&str, &str), OwnerDelta> = BTreeMap::new();
    for (is_after, r) in [(false, before), (true, after)] {
        for o in &r.owners {
            let key = (o.path.as_str(), o.type_name.as_str());
            let d = owners.entry(key).or_insert_with(|| OwnerDelta {
                path: o.path.clone(),
                type_name: o.type_name.clone(),
                before_len: None,
                after_len: None,
                len_change: None,
                before_retained: 0,
                after_retained: 0,
                retained_change: 0,
            });
            if is_after {
                d.type_name = o.type_name.clone();
                d.after_len = o.len;
                d.after_retained = o.retained_bytes;
            } else {
                d.before_len = o.len;
                d.before_retained = o.retained_bytes;
            }
        }
    }
    let mut owners: Vec<OwnerDelta> = owners
        .into_values()
        .map(|mut d| {
            d.retained_change = change(d.before_retained, d.after_retained);
            d.len_change = match (d.before_len, d.after_len) {
                (Some(a), Some(b)) => Some(change(a, b)),
                _ => None,
            };
            d
        })
        .collect();
    owners.sort_by(|a, b| {
        b.retained_change
            .cmp(&a.retained_change)
            .then(a.path.cmp(&b.path))
    });
    HeapDiff {
        schema: SCHEMA.to_string(),
        before_objects: before.objects,
        after_objects: after.objects,
        complete: before.complete && after.complete,
        types,
        owners,
        raw_small_blocks: match (&before.small_blocks, &after.small_blocks) {
            (Some(a), Some(b)) => Some((a.raw_bytes, b.raw_bytes)),
            _ => None,
        },
        names: names_diff(before, after),
    }
}

fn signed_bytes(v: i64) -> String {
    format!(
        "{}{}",
        if v < 0 { "-" } else { "+" },
        human_bytes(v.unsigned_abs())
    )
}

impl HeapDiff {
    /// The table for people: the `top` types and owners that changed most, growth first.
    pub fn text(&self, top: usize) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "heap: {} -> {} objects ({:+}){}",
            self.before_objects,
            self.after_objects,
            change(self.before_objects, self.after_objects),
            if self.complete {
                ""
            } else {
                " (a census was incomplete: changes are between lower bounds)"
            }
        );
        let _ = writeln!(s, "\nTypes (by bytes change):");
        let _ = writeln!(
            s,
            "{:>12} {:>9} {:>11} {:>11}  type",
            "+bytes", "+count", "before", "after"
        );
        for t in self
            .types
            .iter()
            .filter(|t| t.bytes_change != 0 || t.count_change != 0)
            .take(top)
        {
            let _ = writeln!(
                s,
                "{:>12} {:>+9} {:>11} {:>11}  {}",
                signed_bytes(t.bytes_change),
                t.count_change,
                human_bytes(t.before_bytes),
                human_bytes(t.after_bytes),
                t.type_name
            );
        }
        let _ = writeln!(s, "\nOwners (by retained bytes change):");
        let _ = writeln!(
            s,
            "{:>12} {:>9} {:>11} {:>11}  owner (type)",
            "+retained", "+len", "before", "after"
        );
        for o in self
            .owners
            .iter()
            .filter(|o| o.retained_change != 0 || o.len_change.is_some_and(|l| l != 0))
            .take(top)
        {
            let _ = writeln!(
                s,
                "{:>12} {:>9} {:>11} {:>11}  {} ({})",
                signed_bytes(o.retained_change),
                o.len_change.map_or("-".to_string(), |l| format!("{l:+}")),
                human_bytes(o.before_retained),
                human_bytes(o.after_retained),
                o.path,
                o.type_name
            );
        }
        let changed: Vec<&NameDelta> = self.names.iter().filter(|n| n.change != 0).collect();
        if !changed.is_empty() {
            let _ = writeln!(
                s,
                "\nTasks, connections, threads, loggers, lru_cache entries (by change):"
            );
            let _ = writeln!(
                s,
                "{:>9} {:>9} {:>9}  what (kind)",
                "change", "before", "after"
            );
            for n in changed.into_iter().take(top) {
                let _ = writeln!(
                    s,
                    "{:>+9} {:>9} {:>9}  {} ({})",
                    n.change, n.before, n.after, n.name, n.kind
                );
            }
        }
        if let Some((a, b)) = self.raw_small_blocks {
            let _ = writeln!(
                s,
                "\nRaw small-block memory (pymalloc blocks no counted object accounts for): {} -> {} ({})",
                signed_bytes(a),
                signed_bytes(b),
                signed_bytes(b.saturating_sub(a))
            );
        }
        s
    }
}

/// inferno's differential flamegraph of retained bytes by owner path (sized by AFTER, red
/// where an owner grew).
pub fn write_svg(
    before: &HeapReport,
    after: &HeapReport,
    top: usize,
    mut w: impl std::io::Write,
) -> Result<()> {
    let (a, b) = (
        before.folded(top.max(before.owners.len())),
        after.folded(top.max(after.owners.len())),
    );
    let mut out = Vec::new();
    inferno::differential::from_readers(
        inferno::differential::Options::default(),
        a.as_bytes(),
        b.as_bytes(),
        &mut out,
    )
    .context("cannot compare the two heap reports")?;
    let text = String::from_utf8(out)?;
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_unstable();
    if lines.is_empty() {
        anyhow::bail!("neither heap report has an owner that retains anything: nothing to draw");
    }
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = "leaktrace diff: retained bytes by owner (red grew, blue shrank)".to_string();
    opts.count_name = "bytes".to_string();
    inferno::flamegraph::from_lines(&mut opts, lines.into_iter(), &mut w)
        .context("cannot render the differential flamegraph")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        heap::{
            arenas::SmallBlocks,
            report::{OwnerRow, TypeRow},
        },
        output::report::Target,
    };

    fn report(items: u64, reg_len: u64, raw: Option<i64>) -> HeapReport {
        let t = |name: &str, count: u64, bytes: u64| TypeRow {
            type_name: name.into(),
            count,
            bytes,
            count_growth: None,
            bytes_growth: None,
        };
        let o = |path: &str, len: Option<u64>, bytes: u64| OwnerRow {
            path: path.into(),
            type_name: "dict".into(),
            len,
            retained_bytes: bytes,
            retained_growth: None,
        };
        HeapReport {
            schema: crate::heap::report::SCHEMA.into(),
            target: Target {
                pids: vec![7],
                exe: "/usr/bin/python3".into(),
                python: Some("3.12".into()),
            },
            duration_s: 0.2,
            complete: true,
            unheld: Vec::new(),
            incomplete_reason: None,
            skipped_reads: 0,
            censuses: 1,
            objects: 1000 + items,
            types: vec![
                t("__main__.Item", items, items * 56),
                t("dict", 500, 500 * 184),
                t("function", 300, 300 * 160),
            ],
            owners: vec![
                o("__main__:REGISTRY", Some(reg_len), reg_len * 300),
                o("__main__:CONFIG", Some(4), 900),
            ],
            tasks: vec![],
            names: Default::default(),
            small_blocks: raw.map(|r| SmallBlocks {
                arenas: 1,
                arena_bytes: 1 << 20,
                used_bytes: 100_000,
                object_bytes: (100_000 - r) as u64,
                raw_bytes: r,
                used_growth: None,
                object_growth: None,
                raw_growth: None,
                raw_growth_bytes_per_s: None,
                skipped: 0,
            }),
            cmdline: None,
            notes: Vec::new(),
            processes: Vec::new(),
            holders: Vec::new(),
            holders_incomplete: None,
        }
    }

    fn golden(name: &str, actual: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/data")
            .join(name);
        if std::env::var_os("LEAKTRACE_BLESS").is_some() {
            std::fs::write(&path, actual).unwrap();
        }
        let expected = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (LEAKTRACE_BLESS=1 creates it)", path.display()));
        assert_eq!(
            actual,
            expected,
            "{} (LEAKTRACE_BLESS=1 rewrites it)",
            path.display()
        );
    }

    #[test]
    fn changes_sorted_by_growth() {
        let mut after = report(250, 300, Some(9000));
        // A type that appeared, one that went away, and an owner only after.
        after.types.push(TypeRow {
            type_name: "bytes".into(),
            count: 2,
            bytes: 4000,
            count_growth: None,
            bytes_growth: None,
        });
        after.types.retain(|t| t.type_name != "function");
        after.owners.push(OwnerRow {
            path: "__main__:NEW".into(),
            type_name: "list".into(),
            len: Some(3),
            retained_bytes: 120,
            retained_growth: None,
        });
        let mut before = report(50, 100, Some(1000));
        let task = |coro: &str, count: u64| crate::heap::report::TaskRow {
            coroutine: coro.into(),
            state: "pending".into(),
            count,
            holder: Some("app:RELAY_TASKS".into()),
            count_growth: None,
        };
        let conns = |count: u64, open: u64| {
            vec![crate::heap::report::TypeCountRow {
                type_name: "sqlite3.Connection".into(),
                count,
                open: Some(open),
                count_growth: None,
                open_growth: None,
            }]
        };
        before.tasks = vec![task("relay", 10), task("old", 2)];
        before.names.connections = conns(3, 1);
        after.tasks = vec![task("relay", 45)];
        after.names.connections = conns(9, 7);
        let d = diff(&before, &after);
        let changes: Vec<(&str, &str, i64)> = d
            .names
            .iter()
            .map(|n| (n.kind.as_str(), n.name.as_str(), n.change))
            .collect();
        assert_eq!(
            changes,
            [
                ("task", "relay [pending] held by app:RELAY_TASKS", 35),
                ("connection", "sqlite3.Connection", 6),
                ("open connection", "sqlite3.Connection", 6),
                ("logger", "logging.Logger", 0),
                ("task", "old [pending] held by app:RELAY_TASKS", -2),
            ]
        );
        let names: Vec<&str> = d.types.iter().map(|t| t.type_name.as_str()).collect();
        assert_eq!(names, ["__main__.Item", "bytes", "dict", "function"]);
        assert_eq!(
            (d.types[0].count_change, d.types[0].bytes_change),
            (200, 11200)
        );
        assert_eq!(d.types[3].bytes_change, -48000);
        assert_eq!(d.owners[0].path, "__main__:REGISTRY");
        assert_eq!(d.owners[0].len_change, Some(200));
        assert_eq!(d.owners[0].retained_change, 60000);
        assert_eq!(d.owners[1].path, "__main__:NEW");
        assert_eq!(d.owners[1].len_change, None, "no length before");
        assert_eq!(d.raw_small_blocks, Some((1000, 9000)));
        golden("heap-diff.txt", &d.text(10));
        let json = serde_json::to_string_pretty(&d).unwrap() + "\n";
        golden("heap-diff.json", &json);
        let mut svg = Vec::new();
        write_svg(&report(50, 100, None), &after, 20, &mut svg).unwrap();
        assert!(String::from_utf8(svg).unwrap().contains("REGISTRY"));
    }

    #[test]
    fn huge_numbers_saturate() {
        let mut a = report(1, 1, None);
        for t in &mut a.types {
            t.bytes = u64::MAX;
        }
        let b = report(1, 1, None);
        let d = diff(&b, &a);
        assert!(d.types.iter().all(|t| t.bytes_change <= i64::MAX));
        let d = diff(&a, &b);
        assert_eq!(d.types.last().unwrap().bytes_change, i64::MIN);
        let _ = d.text(5);
    }
}
