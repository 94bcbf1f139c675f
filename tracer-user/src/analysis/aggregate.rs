//! Pure aggregation: live allocations grouped by stack, the minimum-age filter, growth slopes,
//! and merging stacks that symbolize to the same frames.

use std::collections::HashMap;

use tracer_common::StackKey;

use serde::{Deserialize, Serialize};

use crate::{
    probes::{limits::SERIES_POINTS, mode::Sampling},
    resolve::frame::Frame,
};

/// One live allocation, from the kernel's map or from the tracked mmap ranges.
#[derive(Clone, Copy, Debug)]
pub struct LiveAlloc {
    pub stack: StackKey,
    pub size: u64,
    pub ts_ns: u64,
    /// Allocations this entry stands for: 1, or 0 for the extra pieces of a split mapping.
    pub count: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackAgg {
    pub live_bytes: u64,
    pub live_allocs: u64,
    /// Timestamp of the oldest allocation (CLOCK_MONOTONIC ns).
    pub oldest_ts_ns: u64,
}

/// Weighs the outstanding allocations read from the kernel (each `count` 1) for the report,
/// leaving out those younger than `min_age_ns`. Exact mode: unchanged. Sampled mode: each one
/// counts for its weight; per stack, the rounding remainders are carried from one allocation
/// to the next, so each stack's sums are within one byte and one allocation of the exact
/// weighted sums.
pub fn weigh(
    sampling: Option<&Sampling>,
    allocs: impl IntoIterator<Item = LiveAlloc>,
    now_ns: u64,
    min_age_ns: u64,
) -> Vec<LiveAlloc> {
    let Some(s) = sampling else {
        return allocs.into_iter().collect();
    };
    let mut carry: HashMap<StackKey, (f64, f64)> = HashMap::new();
    allocs
        .into_iter()
        .filter(|a| now_ns.saturating_sub(a.ts_ns) >= min_age_ns)
        .map(|a| {
            let (wb, wc) = s.weight(a.size);
            let c = carry.entry(a.stack).or_default();
            c.0 += wb * a.count as f64;
            c.1 += wc * a.count as f64;
            let (bytes, count) = (c.0.round().max(0.0), c.1.round().max(0.0));
            c.0 -= bytes;
            c.1 -= count;
            LiveAlloc {
                size: bytes as u64,
                count: count as u64,
                ..a
            }
        })
        .collect()
}

/// Groups allocations at least `min_age_ns` old at `now_ns` by stack.
pub fn group(
    allocs: impl IntoIterator<Item = LiveAlloc>,
    now_ns: u64,
    min_age_ns: u64,
) -> HashMap<StackKey, StackAgg> {
    let mut out: HashMap<StackKey, StackAgg> = HashMap::new();
    for a in allocs {
        if now_ns.saturating_sub(a.ts_ns) < min_age_ns {
            continue;
        }
        let e = out.entry(a.stack).or_insert(StackAgg {
            oldest_ts_ns: u64::MAX,
            ..Default::default()
        });
        e.live_bytes += a.size;
        e.live_allocs += a.count;
        e.oldest_ts_ns = e.oldest_ts_ns.min(a.ts_ns);
    }
    out
}

/// Least-squares slope of `(t, y)` points; None with fewer than two distinct times.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mean_t = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for (t, y) in points {
        num += (t - mean_t) * (y - mean_y);
        den += (t - mean_t) * (t - mean_t);
    }
    (den > 0.0).then(|| num / den)
}

/// Live bytes per stack sampled over time.
#[derive(Debug, Default)]
pub struct Series {
    points: HashMap<StackKey, Vec<(f64, f64)>>,
}

impl Series {
    pub fn push(&mut self, t_s: f64, sample: impl IntoIterator<Item = (StackKey, u64)>) {
        for (key, bytes) in sample {
            let points = self.points.entry(key).or_default();
            if points.len() >= SERIES_POINTS {
                let mut i = 0;
                points.retain(|_| {
                    i += 1;
                    i % 2 == 1
                });
            }
            points.push((t_s, bytes as f64));
        }
    }

    /// Every stack sampled so far, live at the end or not.
    pub fn keys(&self) -> impl Iterator<Item = &StackKey> {
        self.points.keys()
    }

    /// Growth in bytes/s over the samples in which the stack was present.
    pub fn growth(&self, key: &StackKey) -> Option<f64> {
        slope(self.points.get(key)?)
    }

    /// Several stacks' live bytes summed sample by sample (a stack shown once in a report can
    /// be several kernel stacks that symbolize alike).
    pub fn merged(&self, keys: &[StackKey]) -> Vec<(f64, f64)> {
        let mut by_time: std::collections::BTreeMap<i64, (f64, f64)> = Default::default();
        for key in keys {
            for &(t, bytes) in self.points.get(key).into_iter().flatten() {
                by_time.entry((t * 1e6) as i64).or_insert((t, 0.0)).1 += bytes;
            }
        }
        by_time.into_values().collect()
    }
}

/// A stack after symbolization, before merging.
pub struct Resolved {
    pub frames: Vec<Frame>,
    pub agg: StackAgg,
    pub growth: Option<f64>,
    /// (bytes, allocations) allocated from this stack while traced, freed or not.
    pub allocated: (u64, u64),
}

/// One stack as reported: the `stacks` entries of the `leaktrace/v1` report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StackReport {
    /// Outermost call first, allocation site last.
    pub frames: Vec<Frame>,
    pub live_bytes: u64,
    pub live_allocs: u64,
    pub oldest_age_s: f64,
    pub growth_bytes_per_s: Option<f64>,
    // Additions to v1.
    /// Bytes allocated from this stack while traced (freed or not).
    #[serde(default)]
    pub alloc_bytes: u64,
    /// Allocations made from this stack while traced (freed or not).
    #[serde(default)]
    pub alloc_count: u64,
    /// `growing`, `plateaued`, `churning` or `transient`; null when not classified.
    #[serde(default)]
    pub trend: Option<String>,
    /// Live bytes gained between the first and the last sample of the window (0 if none).
    #[serde(default)]
    pub added_bytes: u64,
}

/// Merges stacks with identical frames and sorts by live bytes (largest first, then by
/// frames for a deterministic order).
pub fn merge(resolved: Vec<Resolved>, now_ns: u64) -> Vec<StackReport> {
    let mut by_frames: HashMap<Vec<Frame>, (StackAgg, Option<f64>, (u64, u64))> = HashMap::new();
    for r in resolved {
        let e = by_frames.entry(r.frames).or_insert((
            StackAgg {
                oldest_ts_ns: u64::MAX,
                ..Default::default()
            },
            None,
            (0, 0),
        ));
        e.2 .0 += r.allocated.0;
        e.2 .1 += r.allocated.1;
        e.0.live_bytes += r.agg.live_bytes;
        e.0.live_allocs += r.agg.live_allocs;
        e.0.oldest_ts_ns = e.0.oldest_ts_ns.min(r.agg.oldest_ts_ns);
        e.1 = match (e.1, r.growth) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
    }
    let mut out: Vec<StackReport> = by_frames
        .into_iter()
        .map(|(frames, (agg, growth, allocated))| StackReport {
            frames,
            live_bytes: agg.live_bytes,
            live_allocs: agg.live_allocs,
            oldest_age_s: now_ns.saturating_sub(agg.oldest_ts_ns) as f64 / 1e9,
            growth_bytes_per_s: growth,
            alloc_bytes: allocated.0,
            alloc_count: allocated.1,
            trend: None,
            added_bytes: 0,
        })
        .collect();
    out.sort_by(|a, b| {
        b.live_bytes.cmp(&a.live_bytes).then_with(|| {
            let la: Vec<String> = a.frames.iter().map(Frame::label).collect();
            let lb: Vec<String> = b.frames.iter().map(Frame::label).collect();
            la.cmp(&lb)
        })
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: i32) -> StackKey {
        StackKey {
            tgid: 7,
            stack_id: id,
            caller: 0,
            kind: 0,
            _pad: 0,
            py_stack: 0,
        }
    }

    #[test]
    fn groups_and_filters_young_allocations() {
        let s = 1_000_000_000;
        let allocs = [
            LiveAlloc {
                stack: key(1),
                size: 100,
                ts_ns: 1 * s,
                count: 1,
            },
            LiveAlloc {
                stack: key(1),
                size: 50,
                ts_ns: 3 * s,
                count: 1,
            },
            LiveAlloc {
                stack: key(2),
                size: 10,
                ts_ns: 9 * s,
                count: 1,
            }, // 1 s old at 10 s: kept
            LiveAlloc {
                stack: key(3),
                size: 10,
                ts_ns: 9 * s + 1,
                count: 1,
            }, // younger: dropped
        ];
        let g = group(allocs, 10 * s, s);
        assert_eq!(g.len(), 2);
        assert_eq!(
            g[&key(1)],
            StackAgg {
                live_bytes: 150,
                live_allocs: 2,
                oldest_ts_ns: s
            }
        );
        assert_eq!(g[&key(2)].live_bytes, 10);
    }

    #[test]
    fn slope_of_a_line_and_of_flat_data() {
        let line: Vec<(f64, f64)> = (0..10).map(|t| (t as f64, 5.0 + 3.0 * t as f64)).collect();
        assert!((slope(&line).unwrap() - 3.0).abs() < 1e-9);
        assert_eq!(slope(&[(0.0, 4.0), (1.0, 4.0), (2.0, 4.0)]), Some(0.0));
        assert_eq!(slope(&[(1.0, 4.0)]), None);
        assert_eq!(slope(&[(1.0, 4.0), (1.0, 9.0)]), None);
    }

    #[test]
    fn merged_series_sum_sample_by_sample() {
        let mut series = Series::default();
        series.push(0.0, [(key(1), 10), (key(2), 1)]);
        series.push(1.0, [(key(1), 20)]);
        series.push(2.0, [(key(1), 30), (key(2), 5)]);
        assert_eq!(
            series.merged(&[key(1), key(2)]),
            vec![(0.0, 11.0), (1.0, 20.0), (2.0, 35.0)]
        );
        assert!(series.merged(&[key(9)]).is_empty());
    }

    #[test]
    fn merge_sums_identical_frames_and_sorts() {
        let frames = |name: &str| vec![Frame::native("main", None), Frame::native(name, None)];
        let agg = |bytes, ts| StackAgg {
            live_bytes: bytes,
            live_allocs: 1,
            oldest_ts_ns: ts,
        };
        let out = merge(
            vec![
                Resolved {
                    frames: frames("a"),
                    agg: agg(10, 5),
                    growth: Some(1.0),
                    allocated: (40, 4),
                },
                Resolved {
                    frames: frames("b"),
                    agg: agg(30, 7),
                    growth: None,
                    allocated: (30, 1),
                },
                Resolved {
                    frames: frames("a"),
                    agg: agg(25, 2),
                    growth: Some(2.0),
                    allocated: (100, 10),
                },
            ],
            4_000_000_002,
        );
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].frames, frames("a"));
        assert_eq!(out[0].live_bytes, 35);
        assert_eq!(out[0].live_allocs, 2);
        assert_eq!(out[0].growth_bytes_per_s, Some(3.0));
        assert_eq!((out[0].alloc_bytes, out[0].alloc_count), (140, 14));
        assert!((out[0].oldest_age_s - 4.0).abs() < 1e-9);
        assert_eq!(out[1].live_bytes, 30);
        assert_eq!(out[1].growth_bytes_per_s, None);
    }

    #[test]
    fn weighing_carries_remainders_per_stack() {
        let s = Sampling { n: 1000 };
        let stack = StackKey {
            tgid: 1,
            stack_id: 1,
            caller: 0,
            kind: 0,
            _pad: 0,
            py_stack: 0,
        };
        let allocs: Vec<LiveAlloc> = (0..1000)
            .map(|i| LiveAlloc {
                stack,
                size: 700,
                ts_ns: i,
                count: 1,
            })
            .collect();
        let out = weigh(Some(&s), allocs.clone(), 10_000, 0);
        let (wb, wc) = s.weight(700);
        let bytes: u64 = out.iter().map(|a| a.size).sum();
        let count: u64 = out.iter().map(|a| a.count).sum();
        assert!((bytes as f64 - 1000.0 * wb).abs() <= 1.0);
        assert!((count as f64 - 1000.0 * wc).abs() <= 1.0);
        // The age filter applies first; exact mode passes everything through.
        assert_eq!(weigh(Some(&s), allocs.clone(), 1000, 500).len(), 501);
        assert_eq!(weigh(None, allocs, 1000, 500).len(), 1000);
    }
}
