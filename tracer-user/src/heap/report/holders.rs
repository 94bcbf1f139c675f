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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heap::census::{Census, Holder};

    fn report() -> HeapReport {
        let target = crate::output::report::Target {
            pids: vec![7],
            exe: "/usr/bin/python3".into(),
            python: Some("3.12".into()),
        };
        HeapReport::build(
            target,
            2.0,
            &Census::default(),
            Some(&Census::default()),
            20,
        )
    }

    #[test]
    fn rows_lines_and_reports_without_them() {
        let mut r = report();
        let mut v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["holders"], serde_json::json!([]));
        // A report written before `holders` existed still parses.
        v.as_object_mut().unwrap().remove("holders");
        let old: HeapReport = serde_json::from_value(v).unwrap();
        assert!(old.holders.is_empty() && old.holders_incomplete.is_none());
        let row = |path: &str, container: &str, len, count, containers| Holder {
            type_name: "app.Order".into(),
            path: path.into(),
            container: container.into(),
            len,
            count,
            containers,
        };
        r.set_holders(Holders {
            rows: vec![
                row("app:PAYLOAD_REGISTRY", "dict", Some(12431), 12431, 1),
                row("app:REG[*]", "list", Some(30), 30, 3),
                row("app:m.sessions[*]", "app.Session", None, 1, 1),
            ],
            skipped_reads: 2,
            objects: 20000,
            incomplete: Some("--max-depth 64 reached: holder counts are lower bounds".into()),
        });
        assert_eq!(r.skipped_reads, 2);
        let text = r.text(5);
        assert!(
            text.contains(
                "Where the types that grew most are held:\n  app.Order 12431 in app:PAYLOAD_REGISTRY (dict, 12431 items)\n  app.Order 30 in app:REG[*] (list, 3 containers, 30 items)\n  app.Order 1 in app:m.sessions[*] (app.Session)\n  (incomplete: --max-depth 64"
            ),
            "{text}"
        );
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["holders"][1]["path"], "app:REG[*]");
        assert_eq!(v["holders"][2]["len"], serde_json::Value::Null);
        assert_eq!(v["holders"][0]["containers"], 1);
    }
}
