//! The picture of one interval for tables and `top`'s live view: totals and one row per
//! distinct stack label, each with its growth and trend over the window so far.

use std::collections::HashMap;

use tracer_common::StackKey;

use crate::analysis::{
    aggregate::Series,
    trend::{self, Trend},
};

/// One stack in a view.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// Innermost frames first, for a narrow column: `leaky (app.py:12) < main (app.py:30)`.
    pub label: String,
    pub live_bytes: u64,
    pub live_allocs: u64,
    pub growth_bytes_per_s: Option<f64>,
    pub trend: Option<&'static str>,
}

/// Everything a view shows at one interval.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub elapsed_s: f64,
    pub live_bytes: u64,
    pub live_allocs: u64,
    pub allocs_seen: u64,
    pub frees_seen: u64,
    pub dropped: u64,
    pub rows: Vec<Row>,
}

/// The rows of an interval, from live (bytes, allocations) per stack, bytes allocated per stack
/// while traced, and the series. Only the biggest and fastest-growing stacks are labelled
/// (`label` resolves a stack into its one-line form); stacks with the same label are one row.
pub fn rows(
    live: HashMap<StackKey, (u64, u64)>,
    allocated: &HashMap<StackKey, u64>,
    series: &Series,
    top: usize,
    mut label: impl FnMut(&StackKey) -> String,
) -> Vec<Row> {
    let mut keys: Vec<(StackKey, (u64, u64))> = live.into_iter().filter(|(_, v)| v.0 > 0).collect();
    keys.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(a.0.cmp(&b.0)));
    // Symbolize only the biggest and fastest-growing stacks: the rest are not shown.
    let limit = top.saturating_mul(4).max(40);
    let mut by_growth = keys.clone();
    by_growth.sort_by(|a, b| {
        let g = |k: &StackKey| series.growth(k).unwrap_or(f64::NEG_INFINITY);
        g(&b.0).total_cmp(&g(&a.0))
    });
    let mut chosen: Vec<(StackKey, (u64, u64))> = keys.iter().take(limit).copied().collect();
    for k in by_growth.into_iter().take(limit) {
        if !chosen.iter().any(|c| c.0 == k.0) {
            chosen.push(k);
        }
    }
    let mut rows: Vec<Row> = Vec::new();
    let mut row_keys: Vec<Vec<StackKey>> = Vec::new();
    for (key, (bytes, count)) in chosen {
        let label = label(&key);
        match rows.iter().position(|r| r.label == label) {
            Some(i) => {
                rows[i].live_bytes += bytes;
                rows[i].live_allocs += count;
                row_keys[i].push(key);
            }
            None => {
                rows.push(Row {
                    label,
                    live_bytes: bytes,
                    live_allocs: count,
                    growth_bytes_per_s: None,
                    trend: None,
                });
                row_keys.push(vec![key]);
            }
        }
    }
    for (row, keys) in rows.iter_mut().zip(&row_keys) {
        let points = series.merged(keys);
        let allocated_bytes: u64 = keys.iter().filter_map(|k| allocated.get(k)).sum();
        row.growth_bytes_per_s = trend::robust_slope(&points);
        row.trend = trend::classify(&points, allocated_bytes as f64).map(Trend::as_str);
    }
    rows
}
