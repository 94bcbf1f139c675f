//! What was live at the end of a window, as the report's stacks: live allocations grouped by
//! stack and aged, resolved into frames, merged where they read the same, with each merged
//! stack's growth and trend over the whole window.

use std::collections::HashMap;

use tracer_common::StackKey;

use crate::{
    analysis::{
        aggregate::{group, merge, LiveAlloc, Resolved, Series, StackReport},
        trend,
    },
    resolve::frame::Frame,
};

/// The report's stacks from the live allocations (weighed, mappings included) at `now_ns`,
/// those younger than `min_age_ns` left out. `allocated` is (bytes, allocations) per stack
/// while traced; `frames_of` resolves a stack.
pub fn report_stacks(
    live: impl IntoIterator<Item = LiveAlloc>,
    now_ns: u64,
    min_age_ns: u64,
    allocated: &HashMap<StackKey, (u64, u64)>,
    series: &Series,
    mut frames_of: impl FnMut(&StackKey) -> Vec<Frame>,
) -> Vec<StackReport> {
    let groups = group(live, now_ns, min_age_ns);
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
        let points = series.merged(&keys_by_frames[&s.frames]);
        s.growth_bytes_per_s = trend::robust_slope(&points).or(s.growth_bytes_per_s);
        s.trend = trend::classify(&points, s.alloc_bytes as f64).map(|t| t.as_str().to_string());
        if let (Some(first), Some(last)) = (points.first(), points.last()) {
            s.added_bytes = (last.1 - first.1).max(0.0) as u64;
        }
    }
    stacks
}
