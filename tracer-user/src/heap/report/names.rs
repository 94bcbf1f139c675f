//! The rows of `tasks` and `names` in `leaktrace-heap/v1` (asyncio tasks, connections,
//! threads, loggers, lru_cache entries: [`crate::heap::census::Names`]) and their part of the
//! text table.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::HeapReport;
use crate::heap::census::{Names, TypeCount};

/// asyncio tasks of one coroutine and state, and the owner that holds them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskRow {
    pub coroutine: String,
    /// "pending" or "done".
    pub state: String,
    pub count: u64,
    /// `module:GLOBAL` (or `module:Class.attr`) of the container holding them, if found.
    pub holder: Option<String>,
}

impl TaskRow {
    pub(super) fn rows(n: &Names) -> Vec<TaskRow> {
        n.tasks
            .iter()
            .map(|t| TaskRow {
                coroutine: t.coroutine.clone(),
                state: t.state.to_string(),
                count: t.count,
                holder: t.holder.clone(),
            })
            .collect()
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
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LruRow {
    /// `module.qualname` of the cached function.
    pub function: String,
    pub entries: u64,
    pub wrappers: u64,
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
    pub(super) fn from(n: &Names) -> NamesReport {
        let rows = |v: &[TypeCount]| {
            v.iter()
                .map(|t| TypeCountRow {
                    type_name: t.type_name.clone(),
                    count: t.count,
                    open: t.open,
                })
                .collect()
        };
        NamesReport {
            connections: rows(&n.connections),
            threads: rows(&n.threads),
            loggers: LoggersRow {
                count: n.loggers,
                registry: n.logger_dict.as_ref().map(|(path, len)| PathLen {
                    path: path.clone(),
                    len: *len,
                }),
            },
            lru_caches: n
                .lru_caches
                .iter()
                .map(|c| LruRow {
                    function: c.function.clone(),
                    entries: c.entries,
                    wrappers: c.wrappers,
                })
                .collect(),
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
            let _ = writeln!(s, "{:>10} {:>8}  coroutine (holder)", "count", "state");
            for t in self.tasks.iter().take(top) {
                let _ = writeln!(
                    s,
                    "{:>10} {:>8}  {} ({})",
                    t.count,
                    t.state,
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
                        Some(o) => format!("{} {} ({o} open)", t.count, t.type_name),
                        None => format!("{} {}", t.count, t.type_name),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        let _ = writeln!(s, "  connections: {}", list(&n.connections));
        let _ = writeln!(s, "  threads: {}", list(&n.threads));
        let _ = writeln!(
            s,
            "  loggers: {} logging.Logger{}",
            n.loggers.count,
            n.loggers
                .registry
                .as_ref()
                .map_or(String::new(), |r| format!(", {} ({} items)", r.path, r.len))
        );
        if n.lru_caches.is_empty() {
            let _ = writeln!(s, "  lru_cache: none");
        }
        for c in n.lru_caches.iter().take(top) {
            let _ = writeln!(
                s,
                "  lru_cache: {} entries in {}{}",
                c.entries,
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
