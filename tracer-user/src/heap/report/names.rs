//! The rows of `tasks` and `names` in `leaktrace-heap/v1` (asyncio tasks, connections,
//! threads, loggers, lru_cache entries: [`crate::heap::census::Names`]) and their part of the
//! text table. With two censuses each row carries its growth from the first to the last: a
//! row of the first census that the last no longer has is kept with count 0 and its loss.

use std::{collections::HashMap, fmt::Write as _};

use serde::{Deserialize, Serialize};

use super::{growth, HeapReport};
use crate::heap::census::{Names, TypeCount};

/// `+3` / `-1` after a count, or nothing with one census.
fn plus(g: Option<i64>) -> String {
    g.map_or(String::new(), |g| format!(" ({g:+})"))
}

/// asyncio tasks of one coroutine and state, and the owner that holds them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskRow {
    pub coroutine: String,
    /// "pending" or "done".
    pub state: String,
    pub count: u64,
    /// `module:GLOBAL` (or `module:Class.attr`) of the container holding them, if found.
    pub holder: Option<String>,
    /// With two censuses: the change in `count` since the first (added in v1).
    #[serde(default)]
    pub count_growth: Option<i64>,
}

impl TaskRow {
    /// The last census's task groups; with `first` (two censuses), each group's growth, and
    /// the first census's groups that are gone, sorted by growth, then count.
    pub(super) fn rows(n: &Names, first: Option<&Names>) -> Vec<TaskRow> {
        let key = |c: &str, s: &str, h: &Option<String>| (c.to_string(), s.to_string(), h.clone());
        let before: HashMap<_, u64> = first
            .map(|f| {
                f.tasks
                    .iter()
                    .map(|t| (key(&t.coroutine, t.state, &t.holder), t.count))
                    .collect()
            })
            .unwrap_or_default();
        let mut rows: Vec<TaskRow> = n
            .tasks
            .iter()
            .map(|t| TaskRow {
                coroutine: t.coroutine.clone(),
                state: t.state.to_string(),
                count: t.count,
                holder: t.holder.clone(),
                count_growth: first.map(|_| {
                    growth(
                        before
                            .get(&key(&t.coroutine, t.state, &t.holder))
                            .copied()
                            .unwrap_or(0),
                        t.count,
                    )
                }),
            })
            .collect();
        if let Some(f) = first {
            for t in &f.tasks {
                let gone = !n.tasks.iter().any(|u| {
                    u.coroutine == t.coroutine && u.state == t.state && u.holder == t.holder
                });
                if gone {
                    rows.push(TaskRow {
                        coroutine: t.coroutine.clone(),
                        state: t.state.to_string(),
                        count: 0,
                        holder: t.holder.clone(),
                        count_growth: Some(growth(t.count, 0)),
                    });
                }
            }
            rows.sort_by(|a, b| {
                b.count_growth
                    .cmp(&a.count_growth)
                    .then(b.count.cmp(&a.count))
                    .then(a.coroutine.cmp(&b.coroutine))
                    .then(a.state.cmp(&b.state))
                    .then(a.holder.cmp(&b.holder))
            });
        }
        rows
    }
}

/// Objects of one type (`names.connections`, `names.threads`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TypeCountRow {
    #[serde(rename = "type")]
    pub type_name: String,
    pub count: u64,
    /// Connections still open, where that can be told (`sqlite3.Connection`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open: Option<u64>,
    /// With two censuses: the change in `count` since the first (added in v1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count_growth: Option<i64>,
    /// With two censuses, where `open` is told: its change since the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_growth: Option<i64>,
}

/// A container and its length (`names.loggers.registry`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PathLen {
    pub path: String,
    pub len: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LoggersRow {
    /// `logging.Logger` objects (subclasses included: the root logger).
    pub count: u64,
    /// `logging:Logger.manager.loggerDict`, if `logging` is imported.
    pub registry: Option<PathLen>,
    /// With two censuses: the change in `count` since the first (added in v1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count_growth: Option<i64>,
    /// With two censuses: the change in the registry's length since the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_growth: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LruRow {
    /// `module.qualname` of the cached function.
    pub function: String,
    pub entries: u64,
    pub wrappers: u64,
    /// With two censuses: the change in `entries` since the first (added in v1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries_growth: Option<i64>,
}

/// The names users search for, from the last census.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NamesReport {
    pub connections: Vec<TypeCountRow>,
    pub threads: Vec<TypeCountRow>,
    pub loggers: LoggersRow,
    pub lru_caches: Vec<LruRow>,
}

impl NamesReport {
    /// The last census's names; with `first` (two censuses), each row's growth, and rows of
    /// the first census that are gone (count 0).
    pub(super) fn from(n: &Names, first: Option<&Names>) -> NamesReport {
        let rows = |v: &[TypeCount], f: Option<&[TypeCount]>| {
            let mut out: Vec<TypeCountRow> = v
                .iter()
                .map(|t| {
                    let b = f.and_then(|f| f.iter().find(|b| b.type_name == t.type_name));
                    TypeCountRow {
                        type_name: t.type_name.clone(),
                        count: t.count,
                        open: t.open,
                        count_growth: f.map(|_| growth(b.map_or(0, |b| b.count), t.count)),
                        open_growth: match (f, t.open) {
                            (Some(_), Some(o)) => {
                                Some(growth(b.and_then(|b| b.open).unwrap_or(0), o))
                            }
                            _ => None,
                        },
                    }
                })
                .collect();
            for b in f.unwrap_or_default() {
                if !v.iter().any(|t| t.type_name == b.type_name) {
                    out.push(TypeCountRow {
                        type_name: b.type_name.clone(),
                        count: 0,
                        open: b.open.map(|_| 0),
                        count_growth: Some(growth(b.count, 0)),
                        open_growth: b.open.map(|o| growth(o, 0)),
                    });
                }
            }
            out
        };
        let mut lru_caches: Vec<LruRow> = n
            .lru_caches
            .iter()
            .map(|c| LruRow {
                function: c.function.clone(),
                entries: c.entries,
                wrappers: c.wrappers,
                entries_growth: first.map(|f| {
                    let b = f.lru_caches.iter().find(|b| b.function == c.function);
                    growth(b.map_or(0, |b| b.entries), c.entries)
                }),
            })
            .collect();
        if let Some(f) = first {
            for b in &f.lru_caches {
                if !n.lru_caches.iter().any(|c| c.function == b.function) {
                    lru_caches.push(LruRow {
                        function: b.function.clone(),
                        entries: 0,
                        wrappers: 0,
                        entries_growth: Some(growth(b.entries, 0)),
                    });
                }
            }
            lru_caches.sort_by(|a, b| {
                b.entries_growth
                    .cmp(&a.entries_growth)
                    .then(b.entries.cmp(&a.entries))
                    .then(a.function.cmp(&b.function))
            });
        }
        NamesReport {
            connections: rows(&n.connections, first.map(|f| &f.connections[..])),
            threads: rows(&n.threads, first.map(|f| &f.threads[..])),
            loggers: LoggersRow {
                count: n.loggers,
                registry: n.logger_dict.as_ref().map(|(path, len)| PathLen {
                    path: path.clone(),
                    len: *len,
                }),
                count_growth: first.map(|f| growth(f.loggers, n.loggers)),
                registry_growth: match (first, &n.logger_dict) {
                    (Some(f), Some((_, len))) => {
                        Some(growth(f.logger_dict.as_ref().map_or(0, |(_, l)| *l), *len))
                    }
                    _ => None,
                },
            },
            lru_caches,
        }
    }
}

impl HeapReport {
    /// The tasks table and the names section of [`Self::text`].
    pub(super) fn names_text(&self, s: &mut String, top: usize) {
        if self.tasks.is_empty() {
            let _ = writeln!(s, "\nTasks: no asyncio task (_asyncio.Task) found.");
        } else {
            let _ = writeln!(s, "\nTasks (asyncio, by coroutine and state):");
            // The growth column only with two censuses.
            let grown = self.censuses > 1;
            let head = if grown {
                format!("{:>10} {:>9} {:>8}", "count", "+count", "state")
            } else {
                format!("{:>10} {:>8}", "count", "state")
            };
            let _ = writeln!(s, "{head}  coroutine (holder)");
            for t in self.tasks.iter().take(top) {
                let n = if grown {
                    let g = t.count_growth.map_or(String::new(), |g| format!("{g:+}"));
                    format!("{:>10} {g:>9} {:>8}", t.count, t.state)
                } else {
                    format!("{:>10} {:>8}", t.count, t.state)
                };
                let _ = writeln!(
                    s,
                    "{n}  {} ({})",
                    t.coroutine,
                    t.holder.as_deref().unwrap_or("no holder found")
                );
            }
        }
        let n = &self.names;
        let _ = writeln!(s, "\nNames:");
        let list = |v: &[TypeCountRow]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.iter()
                    .map(|t| match t.open {
                        Some(o) => format!(
                            "{}{} {} ({o}{} open)",
                            t.count,
                            plus(t.count_growth),
                            t.type_name,
                            plus(t.open_growth)
                        ),
                        None => format!("{}{} {}", t.count, plus(t.count_growth), t.type_name),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        let _ = writeln!(s, "  connections: {}", list(&n.connections));
        let _ = writeln!(s, "  threads: {}", list(&n.threads));
        let _ = writeln!(
            s,
            "  loggers: {}{} logging.Logger{}",
            n.loggers.count,
            plus(n.loggers.count_growth),
            n.loggers
                .registry
                .as_ref()
                .map_or(String::new(), |r| format!(
                    ", {} ({}{} items)",
                    r.path,
                    r.len,
                    plus(n.loggers.registry_growth)
                ))
        );
        if n.lru_caches.is_empty() {
            let _ = writeln!(s, "  lru_cache: none");
        }
        for c in n.lru_caches.iter().take(top) {
            let _ = writeln!(
                s,
                "  lru_cache: {}{} entries in {}{}",
                c.entries,
                plus(c.entries_growth),
                c.function,
                if c.wrappers > 1 {
                    format!(" ({} wrappers)", c.wrappers)
                } else {
                    String::new()
                }
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heap::census::{LruCache, TaskGroup};

    fn names(relay: u64, old: Option<u64>, conns: (u64, u64), entries: u64) -> Names {
        let task = |coroutine: &str, count| TaskGroup {
            coroutine: coroutine.into(),
            state: "pending",
            count,
            holder: Some("app:RELAY_TASKS".into()),
        };
        let mut tasks = vec![task("relay", relay)];
        tasks.extend(old.map(|n| task("old", n)));
        Names {
            tasks,
            connections: vec![TypeCount {
                type_name: "psycopg.Connection".into(),
                count: conns.0,
                open: Some(conns.1),
            }],
            threads: vec![],
            loggers: 5,
            logger_dict: Some(("logging:Logger.manager.loggerDict".into(), 9)),
            lru_caches: vec![LruCache {
                function: "app.price".into(),
                entries,
                wrappers: 1,
            }],
        }
    }

    #[test]
    fn one_census_has_no_growth() {
        let n = names(3, None, (2, 1), 7);
        let t = TaskRow::rows(&n, None);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].count_growth, None);
        let r = NamesReport::from(&n, None);
        assert_eq!(r.connections[0].count_growth, None);
        assert_eq!(r.connections[0].open_growth, None);
        assert_eq!(r.loggers.count_growth, None);
        assert_eq!(r.lru_caches[0].entries_growth, None);
        let json = serde_json::to_value(&r).unwrap();
        assert!(json["connections"][0].get("count_growth").is_none());
    }

    #[test]
    fn two_censuses_give_each_row_its_growth_and_keep_what_went() {
        let first = names(10, Some(4), (3, 3), 2);
        let mut last = names(45, None, (9, 6), 40);
        last.lru_caches.clear();
        last.lru_caches.push(LruCache {
            function: "app.other".into(),
            entries: 1,
            wrappers: 1,
        });
        last.loggers = 8;
        let t = TaskRow::rows(&last, Some(&first));
        let got: Vec<(&str, u64, Option<i64>)> = t
            .iter()
            .map(|r| (r.coroutine.as_str(), r.count, r.count_growth))
            .collect();
        assert_eq!(got, [("relay", 45, Some(35)), ("old", 0, Some(-4))]);
        let r = NamesReport::from(&last, Some(&first));
        let c = &r.connections[0];
        assert_eq!(
            (c.count, c.count_growth, c.open, c.open_growth),
            (9, Some(6), Some(6), Some(3))
        );
        assert_eq!(r.loggers.count_growth, Some(3));
        assert_eq!(r.loggers.registry_growth, Some(0));
        let lru: Vec<(&str, u64, Option<i64>)> = r
            .lru_caches
            .iter()
            .map(|c| (c.function.as_str(), c.entries, c.entries_growth))
            .collect();
        assert_eq!(lru, [("app.other", 1, Some(1)), ("app.price", 0, Some(-2))]);
    }
}
