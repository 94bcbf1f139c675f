//! The `leaktrace-heap/v1` report and its renderings (text table, SVG of retained bytes by
//! owner path).

use std::fmt::Write as _;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::census::Census;
use crate::output::report::{human_bytes, Target};

mod holders;
mod merge;
mod names;
pub use holders::{holder_line, HolderRow};
pub use names::{LoggersRow, LruRow, NamesReport, PathLen, TaskRow, TypeCountRow};

pub const SCHEMA: &str = "leaktrace-heap/v1";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TypeRow {
    #[serde(rename = "type")]
    pub type_name: String,
    pub count: u64,
    pub bytes: u64,
    pub count_growth: Option<i64>,
    pub bytes_growth: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OwnerRow {
    pub path: String,
    #[serde(rename = "type")]
    pub type_name: String,
    pub len: Option<u64>,
    pub retained_bytes: u64,
    pub retained_growth: Option<i64>,
}

/// A type that grew while no path from a root reaches some of its objects.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnheldRow {
    #[serde(rename = "type")]
    pub type_name: String,
    pub count: u64,
    pub count_growth: i64,
    /// Its objects on the GC's lists that nothing reached from a root holds.
    pub unheld: u64,
    pub unheld_growth: i64,
}

/// What the text table says of an [`UnheldRow`].
pub const NO_HOLDER: &str =
    "no holder found: a reference leaked by C code, or garbage waiting for the cyclic collector";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeapReport {
    pub schema: String,
    pub target: Target,
    pub duration_s: f64,
    pub complete: bool,
    /// Why `complete` is false (the first limit hit or the first torn list), else null.
    pub incomplete_reason: Option<String>,
    pub skipped_reads: u64,
    /// Censuses taken (1, or 2+ with --duration).
    pub censuses: u32,
    /// Objects counted in the last census.
    pub objects: u64,
    pub types: Vec<TypeRow>,
    pub owners: Vec<OwnerRow>,
    /// With two censuses: the types whose objects that no root reaches grew, by that growth.
    #[serde(default)]
    pub unheld: Vec<UnheldRow>,
    /// asyncio tasks of the last census, by coroutine, state and holder.
    pub tasks: Vec<TaskRow>,
    /// Connections, threads, loggers, lru_cache entries (added in v1).
    #[serde(default)]
    pub names: NamesReport,
    /// pymalloc's arenas against the objects' bytes (absent where the arenas are not read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub small_blocks: Option<super::arenas::SmallBlocks>,
    /// The process's command line (added in v1; set in the reports of `processes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// One line each: a process that exited, one that could not be read (added in v1).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// `--per-process` and worker trees: one full report per process censused, the
    /// top-level rows being their sum (added in v1; absent for one process).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<HeapReport>,
    /// With two censuses: the containers holding the types that grew most (added in v1).
    #[serde(default)]
    pub holders: Vec<HolderRow>,
    /// Why the holder walk is not complete, if it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holders_incomplete: Option<String>,
}

/// Types by bytes growth, then bytes, then name.
fn order_types(types: &mut [TypeRow]) {
    types.sort_by(|a, b| {
        b.bytes_growth
            .cmp(&a.bytes_growth)
            .then(b.bytes.cmp(&a.bytes))
            .then(a.type_name.cmp(&b.type_name))
    });
}

/// Owners by retained growth, then retained bytes, then path.
fn order_owners(owners: &mut [OwnerRow]) {
    owners.sort_by(|a, b| {
        b.retained_growth
            .cmp(&a.retained_growth)
            .then(b.retained_bytes.cmp(&a.retained_bytes))
            .then(a.path.cmp(&b.path))
    });
}

fn order_unheld(unheld: &mut [UnheldRow]) {
    unheld.sort_by(|a, b| {
        b.unheld_growth
            .cmp(&a.unheld_growth)
            .then(a.type_name.cmp(&b.type_name))
    });
}

/// `b - a`, saturated to i64 (the growth of a count or of bytes between two censuses).
pub(super) fn growth(a: u64, b: u64) -> i64 {
    (i128::from(b) - i128::from(a)).clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

impl HeapReport {
    /// The report from the first census and, with --duration, the last; `top` owners kept.
    pub fn build(
        target: Target,
        duration_s: f64,
        first: &Census,
        last: Option<&Census>,
        top: usize,
    ) -> HeapReport {
        let now = last.unwrap_or(first);
        let mut types: Vec<TypeRow> = now
            .types
            .iter()
            .map(|(name, s)| {
                let before = first.types.get(name).cloned().unwrap_or_default();
                TypeRow {
                    type_name: name.clone(),
                    count: s.count,
                    bytes: s.bytes,
                    count_growth: last.map(|_| growth(before.count, s.count)),
                    bytes_growth: last.map(|_| growth(before.bytes, s.bytes)),
                }
            })
            .collect();
        if last.is_some() {
            // Types that disappeared shrank to zero.
            for (name, s) in &first.types {
                if !now.types.contains_key(name) {
                    types.push(TypeRow {
                        type_name: name.clone(),
                        count: 0,
                        bytes: 0,
                        count_growth: Some(-(s.count as i64)),
                        bytes_growth: Some(-(s.bytes as i64)),
                    });
                }
            }
        }
        order_types(&mut types);
        // Keyed by path and type: one path can name two owners (a class attribute of two
        // classes of one qualified name, as `enum` makes them).
        let before: std::collections::HashMap<(&str, &str), u64> = first
            .owners
            .iter()
            .map(|o| ((o.path.as_str(), o.type_name.as_str()), o.retained_bytes))
            .collect();
        let mut owners: Vec<OwnerRow> = now
            .owners
            .iter()
            .map(|o| OwnerRow {
                path: o.path.clone(),
                type_name: o.type_name.clone(),
                len: o.len,
                retained_bytes: o.retained_bytes,
                retained_growth: last.map(|_| {
                    growth(
                        before
                            .get(&(o.path.as_str(), o.type_name.as_str()))
                            .copied()
                            .unwrap_or(0),
                        o.retained_bytes,
                    )
                }),
            })
            .collect();
        order_owners(&mut owners);
        owners.truncate(top);
        let mut unheld: Vec<UnheldRow> = match last {
            Some(l) => l
                .unheld
                .iter()
                .filter_map(|(name, &n)| {
                    let count = l.types.get(name).map_or(0, |t| t.count);
                    let before = first.types.get(name).map_or(0, |t| t.count);
                    let row = UnheldRow {
                        type_name: name.clone(),
                        count,
                        count_growth: growth(before, count),
                        unheld: n,
                        unheld_growth: growth(first.unheld.get(name).copied().unwrap_or(0), n),
                    };
                    (row.count_growth > 0 && row.unheld_growth > 0).then_some(row)
                })
                .collect(),
            None => Vec::new(),
        };
        order_unheld(&mut unheld);
        unheld.truncate(top);
        let incomplete = first
            .incomplete
            .clone()
            .or(last.and_then(|l| l.incomplete.clone()));
        HeapReport {
            schema: SCHEMA.to_string(),
            target,
            duration_s,
            complete: incomplete.is_none(),
            incomplete_reason: incomplete,
            skipped_reads: first.skipped_reads + last.map_or(0, |l| l.skipped_reads),
            censuses: 1 + u32::from(last.is_some()),
            objects: now.objects,
            types,
            owners,
            unheld,
            tasks: TaskRow::rows(&now.names, last.map(|_| &first.names)),
            names: NamesReport::from(&now.names, last.map(|_| &first.names)),
            small_blocks: None,
            cmdline: None,
            notes: Vec::new(),
            processes: Vec::new(),
            holders: Vec::new(),
            holders_incomplete: None,
        }
    }

    /// The terminal table (one section per process for a report with `processes`).
    pub fn text(&self, top: usize) -> String {
        if !self.processes.is_empty() {
            return self.processes_text(top);
        }
        let mut s = String::new();
        let pid = self.target.pids.first().copied().unwrap_or(0);
        let _ = writeln!(
            s,
            "leaktrace heap: process {pid} ({}), Python {}, {} objects{}",
            self.target.exe,
            self.target.python.as_deref().unwrap_or("?"),
            self.objects,
            if self.censuses > 1 {
                format!(", growth over {:.1} s", self.duration_s)
            } else {
                String::new()
            }
        );
        if let Some(why) = &self.incomplete_reason {
            let _ = writeln!(s, "incomplete: {why}");
        }
        if self.skipped_reads > 0 {
            let _ = writeln!(
                s,
                "{} reads skipped (memory that changed or was freed while read)",
                self.skipped_reads
            );
        }
        let g = |v: Option<i64>| v.map_or(String::new(), |v| format!("{v:+}"));
        let gb = |v: Option<i64>| {
            v.map_or(String::new(), |v| {
                let sign = if v < 0 { "-" } else { "+" };
                format!("{sign}{}", human_bytes(v.unsigned_abs()))
            })
        };
        let _ = writeln!(
            s,
            "\nTypes (by {}):",
            if self.censuses > 1 {
                "bytes growth"
            } else {
                "bytes"
            }
        );
        let _ = writeln!(
            s,
            "{:>10} {:>11} {:>9} {:>12}  type",
            "count", "bytes", "+count", "+bytes"
        );
        for t in self.types.iter().take(top) {
            let _ = writeln!(
                s,
                "{:>10} {:>11} {:>9} {:>12}  {}",
                t.count,
                human_bytes(t.bytes),
                g(t.count_growth),
                gb(t.bytes_growth),
                t.type_name
            );
        }
        let _ = writeln!(
            s,
            "\nOwners (module globals, class attributes and C static variables, by retained bytes):"
        );
        let _ = writeln!(
            s,
            "{:>11} {:>12} {:>9}  owner (type)",
            "retained", "+retained", "len"
        );
        for o in self.owners.iter().take(top) {
            let _ = writeln!(
                s,
                "{:>11} {:>12} {:>9}  {} ({})",
                human_bytes(o.retained_bytes),
                gb(o.retained_growth),
                o.len.map_or(String::new(), |l| l.to_string()),
                o.path,
                o.type_name
            );
        }
        if !self.unheld.is_empty() {
            let _ = writeln!(
                s,
                "\nGrowing with no holder (no path from a module, a class, a global or an attribute):"
            );
            for u in self.unheld.iter().take(top) {
                let _ = writeln!(
                    s,
                    "{:>10} {:>9}  {} ({} of {} unheld): {NO_HOLDER}",
                    u.unheld,
                    format!("{:+}", u.unheld_growth),
                    u.type_name,
                    u.unheld,
                    u.count
                );
            }
        }
        self.holders_text(&mut s);
        self.names_text(&mut s, top);
        if let Some(b) = &self.small_blocks {
            let _ = write!(s, "\n{}", b.text(pid));
        }
        s
    }

    /// Folded lines of retained bytes by owner path: module, then global (then attribute);
    /// for a report with `processes`, each process's under a root frame `pid N`.
    pub fn folded(&self, top: usize) -> String {
        if !self.processes.is_empty() {
            return self.processes_folded(top);
        }
        let mut s = String::new();
        for o in self
            .owners
            .iter()
            .take(top)
            .filter(|o| o.retained_bytes > 0)
        {
            let (module, rest) = o.path.split_once(':').unwrap_or(("?", &o.path));
            let frames: Vec<String> = std::iter::once(module.to_string())
                .chain(rest.split('.').map(str::to_string))
                .map(|f| f.replace([';', ' '], "_"))
                .collect();
            let _ = writeln!(s, "{} {}", frames.join(";"), o.retained_bytes);
        }
        s
    }

    pub fn svg(&self, top: usize) -> Result<String> {
        let folded = self.folded(top);
        let title = match self.target.pids.as_slice() {
            [pid] => format!("Retained bytes by owner, process {pid}"),
            pids => format!(
                "Retained bytes by owner, processes {}",
                pids.iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        if folded.is_empty() {
            return Ok(format!(
                r#"<?xml version="1.0" standalone="no"?>
<svg version="1.1" width="1200" height="60" xmlns="http://www.w3.org/2000/svg">
<text x="600" y="24" text-anchor="middle" font-family="Verdana" font-size="17">{title}</text>
<text x="600" y="48" text-anchor="middle" font-family="Verdana" font-size="12">No module global or class attribute retains anything.</text>
</svg>
"#
            ));
        }
        let mut opts = inferno::flamegraph::Options::default();
        opts.title = title;
        opts.subtitle =
            (!self.complete).then(|| "Incomplete census: numbers are lower bounds".to_string());
        opts.count_name = "bytes".to_string();
        opts.colors =
            inferno::flamegraph::Palette::Basic(inferno::flamegraph::color::BasicPalette::Mem);
        let mut out = Vec::new();
        inferno::flamegraph::from_lines(&mut opts, folded.lines(), &mut out)
            .context("cannot render the flamegraph")?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heap::census::{Owner, TypeStat};

    /// A census of `dicts` dicts (half of them unheld) and `app:REG` of `reg_len` items (also
    /// the merge tests').
    pub(super) fn census(dicts: u64, reg_len: u64) -> Census {
        let mut c = Census::default();
        c.types.insert(
            "dict".into(),
            TypeStat {
                count: dicts,
                bytes: dicts * 100,
            },
        );
        c.owners.push(Owner {
            path: "app:REG".into(),
            type_name: "dict".into(),
            len: Some(reg_len),
            retained_bytes: reg_len * 200,
        });
        c.objects = dicts;
        c.unheld.insert("dict".into(), dicts / 2);
        c
    }

    fn target() -> Target {
        Target {
            pids: vec![7],
            exe: "/usr/bin/python3".into(),
            python: Some("3.12".into()),
        }
    }

    #[test]
    fn growth_between_two_censuses() {
        let r = HeapReport::build(target(), 2.0, &census(10, 5), Some(&census(15, 9)), 20);
        assert_eq!(r.schema, SCHEMA);
        assert_eq!(r.types[0].count_growth, Some(5));
        assert_eq!(r.types[0].bytes_growth, Some(500));
        assert_eq!(r.owners[0].len, Some(9));
        assert_eq!(r.owners[0].retained_growth, Some(800));
        assert!(r.complete && r.tasks.is_empty());
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["types"][0]["type"], "dict");
        assert_eq!(v["owners"][0]["path"], "app:REG");
        assert_eq!(r.folded(5), "app;REG 1800\n");
        assert_eq!(
            r.unheld,
            vec![UnheldRow {
                type_name: "dict".into(),
                count: 15,
                count_growth: 5,
                unheld: 7,
                unheld_growth: 2,
            }]
        );
        assert_eq!(v["unheld"][0]["unheld_growth"], 2);
        assert!(r
            .text(5)
            .contains(&format!("dict (7 of 15 unheld): {NO_HOLDER}")));
    }

    #[test]
    fn one_path_naming_two_owners_is_not_growth() {
        // `enum` leaves two classes of one qualified name: `signal:Signals.SIGTERM` is an int
        // in one and a member in the other. Steady memory must not show as growth.
        let two = || {
            let mut c = census(10, 5);
            for (t, b) in [("int", 28), ("signal.Signals", 1689)] {
                c.owners.push(Owner {
                    path: "signal:Signals.SIGTERM".into(),
                    type_name: t.into(),
                    len: None,
                    retained_bytes: b,
                });
            }
            c
        };
        let r = HeapReport::build(target(), 2.0, &two(), Some(&two()), 20);
        assert!(
            r.owners.iter().all(|o| o.retained_growth == Some(0)),
            "{:?}",
            r.owners
        );
    }

    #[test]
    fn shrinking_or_steady_unheld_is_not_reported() {
        let mut a = census(10, 5);
        a.unheld.insert("dict".into(), 9);
        let r = HeapReport::build(target(), 2.0, &a, Some(&census(15, 9)), 20);
        assert!(r.unheld.is_empty());
        assert!(!r.text(5).contains(NO_HOLDER));
    }

    #[test]
    fn one_census_has_null_growth() {
        let r = HeapReport::build(target(), 0.1, &census(3, 1), None, 20);
        let v = serde_json::to_value(&r).unwrap();
        assert!(v["types"][0]["count_growth"].is_null());
        assert!(v["owners"][0]["retained_growth"].is_null());
        assert!(r.text(5).contains("app:REG (dict)"));
        assert!(r.unheld.is_empty(), "one census has no growth");
    }
}
