//! What was live at the end of a window, as the report's stacks: live allocations grouped by
//! stack and aged, resolved into frames, merged where they read the same, with each merged
//! stack's growth and trend over the whole window.

use std::collections::HashMap;

use tracer_common::StackKey;

use crate::{
    analysis::{
        aggregate::{merge, Resolved, Series, StackAgg, StackReport},
        trend,
    },
    resolve::frame::Frame,
};

/// The report's stacks from the live allocations grouped by stack (weighed, mappings
/// included, see [`crate::analysis::aggregate::LiveGroups`]) at `now_ns`. `allocated` is
/// (bytes, allocations) per stack while traced; `frames_of` resolves a stack. Sampled mode
/// (`sample_bytes` set): `samples` is the recorded blocks behind each stack's estimate, and
/// each stack gets its sample counts.
pub fn report_stacks(
    groups: HashMap<StackKey, StackAgg>,
    now_ns: u64,
    allocated: &HashMap<StackKey, (u64, u64)>,
    series: &Series,
    samples: &HashMap<StackKey, u64>,
    sample_bytes: Option<f64>,
    mut frames_of: impl FnMut(&StackKey) -> Vec<Frame>,
) -> Vec<StackReport> {
    let mut keys: Vec<StackKey> = groups.keys().copied().collect();
    keys.sort();
    let resolved: Vec<Resolved> = keys
        .iter()
        .map(|k| Resolved {
            frames: frames_of(k),
            agg: groups[k],
            growth: series.growth(k),
            allocated: allocated.get(k).copied().unwrap_or_default(),
        })
        .collect();
    let mut keys_by_frames: HashMap<Vec<Frame>, Vec<StackKey>> = HashMap::new();
    for (key, r) in keys.iter().zip(&resolved) {
        keys_by_frames
            .entry(r.frames.clone())
            .or_default()
            .push(*key);
    }
    // A stack as reported can be several kernel stacks, and those whose allocations were
    // all freed by the end (a cache that churned through them) still belong to its series:
    // without them, a flat stack whose allocations move between kernel stacks looks like
    // it grows.
    let gone: Vec<StackKey> = series
        .keys()
        .filter(|k| !groups.contains_key(*k))
        .copied()
        .collect();
    for key in gone {
        let frames = frames_of(&key);
        if let Some(keys) = keys_by_frames.get_mut(&frames) {
            keys.push(key);
        }
    }
    let mut stacks = merge(resolved, now_ns);
    // Growth and trend from the whole window's samples of each stack as reported.
    for s in &mut stacks {
        let keys = &keys_by_frames[&s.frames];
        let points = series.merged(keys);
        s.growth_bytes_per_s = trend::slope_of(&points).or(s.growth_bytes_per_s);
        s.trend = trend::classify(&points, s.alloc_bytes as f64, sample_bytes)
            .map(|t| t.as_str().to_string());
        if let (Some(first), Some(last)) = (points.first(), points.last()) {
            s.added_bytes = (last.bytes - first.bytes).max(0.0) as u64;
        }
        if let Some(n) = sample_bytes {
            s.live_samples = Some(keys.iter().filter_map(|k| samples.get(k)).sum());
            let (changes, span) = match (points.first(), points.last()) {
                (Some(a), Some(b)) => (trend::changes(a, b), b.t - a.t),
                _ => (0, 0.0),
            };
            s.growth_samples = Some(changes);
            s.growth_stderr_bytes_per_s = (span > 0.0 && s.growth_bytes_per_s.is_some())
                .then(|| n * (changes.max(1) as f64).sqrt() / span);
        }
    }
    stacks
}
