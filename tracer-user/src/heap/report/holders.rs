//! The report's `holders`: for the types that grew most, the containers holding them and the
//! path from a root to each ([`crate::heap::census::Holders`]).

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::HeapReport;
use crate::heap::census::Holders;

/// Objects of one type held directly by the containers at one path.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HolderRow {
    #[serde(rename = "type")]
    pub type_name: String,
    /// From a root: `module:name` or `module:Class.attr`, then `.attr` and `[*]` steps.
    pub path: String,
    /// The containers' type.
    pub container: String,
    /// Their items, summed over the containers at this path; null for instances.
    pub len: Option<u64>,
    /// Objects of `type` they hold directly.
    pub count: u64,
    /// Containers at this path that hold some (1 for a single dict or list).
    pub containers: u64,
}

impl HeapReport {
    /// Adds a holder walk's rows (its skipped reads to `skipped_reads`, its limit to
    /// `holders_incomplete`).
    pub fn set_holders(&mut self, h: Holders) {
        self.skipped_reads += h.skipped_reads;
        self.holders_incomplete = h.incomplete;
        self.holders = h
            .rows
            .into_iter()
            .map(|r| HolderRow {
                type_name: r.type_name,
                path: r.path,
                container: r.container,
                len: r.len,
                count: r.count,
                containers: r.containers,
            })
            .collect();
    }

    /// The text table's section, when there are holders.
    pub(super) fn holders_text(&self, s: &mut String) {
        if self.holders.is_empty() {
            return;
        }
        let _ = writeln!(s, "\nWhere the types that grew most are held:");
        for h in &self.holders {
            let _ = writeln!(s, "  {}", holder_line(h));
        }
        if let Some(why) = &self.holders_incomplete {
            let _ = writeln!(s, "  (incomplete: {why})");
        }
    }
}

/// `app.Order 12431 in app:REG[*] (list, 3 containers, 12431 items)`.
pub fn holder_line(h: &HolderRow) -> String {
    let mut what = vec![h.container.clone()];
    if h.containers > 1 {
        what.push(format!("{} containers", h.containers));
    }
    if let Some(n) = h.len {
        what.push(format!("{n} item{}", if n == 1 { "" } else { "s" }));
    }
    format!(
        "{} {} in {} ({})",
        h.type_name,
        h.count,
        h.path,
        what.join(", ")
    )
}
