//! The picture of one interval for tables and `top`'s live view: totals and one row per
//! distinct stack label, each with its growth and trend over the window so far.

use std::collections::HashMap;

use tracer_common::StackKey;

use crate::analysis::{
    aggregate::{Sample, Series},
    trend::{self, Trend},
};

/// What one kernel stack holds now.
#[derive(Clone, Copy, Debug, Default)]
pub struct LiveNow {
    pub bytes: u64,
    pub allocs: u64,
    /// Bytes allocated from it while traced (kernel totals only).
    pub allocated: u64,
    /// Sampled mode: the recorded blocks behind `bytes` (kernel totals only; mappings are
    /// exact).
    pub samples: Sample,
}

/// One stack in a view.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// Innermost frames first, for a narrow column: `leaky (app.py:12) < main (app.py:30)`.
    pub label: String,
    pub live_bytes: u64,
    pub live_allocs: u64,
    pub growth_bytes_per_s: Option<f64>,
    pub trend: Option<&'static str>,
    /// `--mode sampled`: recorded allocations behind the row's estimates (None: exact).
    pub samples: Option<u64>,
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

/// The rows of an interval, from what each stack holds now and the series; `sample_bytes` is
/// `--sample-bytes` in sampled mode (the noise scale of the trends). Only the biggest and
/// fastest-growing stacks are labelled (`label` resolves a stack into its one-line form);
/// stacks with the same label are one row.
pub fn rows(
    live: HashMap<StackKey, LiveNow>,
    sample_bytes: Option<f64>,
    series: &Series,
    top: usize,
    mut label: impl FnMut(&StackKey) -> String,
) -> Vec<Row> {
    let mut keys: Vec<(StackKey, LiveNow)> =
        live.into_iter().filter(|(_, v)| v.bytes > 0).collect();
    keys.sort_by(|a, b| b.1.bytes.cmp(&a.1.bytes).then(a.0.cmp(&b.0)));
    // Symbolize only the biggest and fastest-growing stacks: the rest are not shown.
    let limit = top.saturating_mul(4).max(40);
    let mut by_growth = keys.clone();
    by_growth.sort_by(|a, b| {
        let g = |k: &StackKey| series.growth(k).unwrap_or(f64::NEG_INFINITY);
        g(&b.0).total_cmp(&g(&a.0))
    });
    let mut chosen: Vec<(StackKey, LiveNow)> = keys.iter().take(limit).copied().collect();
    for k in by_growth.into_iter().take(limit) {
        if !chosen.iter().any(|c| c.0 == k.0) {
            chosen.push(k);
        }
    }
    let mut rows: Vec<Row> = Vec::new();
    let mut row_keys: Vec<Vec<StackKey>> = Vec::new();
    let mut row_allocated: Vec<u64> = Vec::new();
    for (key, now) in chosen {
        let label = label(&key);
        let samples = now.samples.live_samples;
        match rows.iter().position(|r| r.label == label) {
            Some(i) => {
                rows[i].live_bytes += now.bytes;
                rows[i].live_allocs += now.allocs;
                rows[i].samples = rows[i].samples.map(|s| s + samples);
                row_keys[i].push(key);
                row_allocated[i] += now.allocated;
            }
            None => {
                rows.push(Row {
                    label,
                    live_bytes: now.bytes,
                    live_allocs: now.allocs,
                    growth_bytes_per_s: None,
                    trend: None,
                    samples: sample_bytes.map(|_| samples),
                });
                row_keys.push(vec![key]);
                row_allocated.push(now.allocated);
            }
        }
    }
    for ((row, keys), allocated) in rows.iter_mut().zip(&row_keys).zip(&row_allocated) {
        let points = series.merged(keys);
        row.growth_bytes_per_s = trend::slope_of(&points);
        row.trend = trend::classify(&points, *allocated as f64, sample_bytes).map(Trend::as_str);
    }
    rows
}
