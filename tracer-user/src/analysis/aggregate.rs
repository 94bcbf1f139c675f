//! Pure aggregation: live allocations grouped by stack, the minimum-age filter, growth slopes,
//! and merging stacks that symbolize to the same frames.

use std::collections::HashMap;

use tracer_common::StackKey;

use serde::{Deserialize, Serialize};

use crate::{
    analysis::trend::Point,
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

/// The live allocations of a report grouped by stack while they are read, so that a million of
/// them are never held at once: those younger than `min_age_ns` at `now_ns` are left out, and in
/// sampled mode each recorded allocation counts for its weight.
#[derive(Debug)]
pub struct LiveGroups {
    sampling: Option<Sampling>,
    now_ns: u64,
    min_age_ns: u64,
    stacks: HashMap<StackKey, Group>,
}

#[derive(Debug)]
struct Group {
    agg: StackAgg,
    /// Sampled mode: weighted bytes and allocations of the recorded blocks, summed unrounded.
    weighed: (f64, f64),
    /// Sampled mode: recorded blocks behind the estimate.
    samples: u64,
}

impl LiveGroups {
    pub fn new(sampling: Option<Sampling>, now_ns: u64, min_age_ns: u64) -> Self {
        Self {
            sampling,
            now_ns,
            min_age_ns,
            stacks: HashMap::new(),
        }
    }

    fn old_enough(&self, ts_ns: u64) -> bool {
        self.now_ns.saturating_sub(ts_ns) >= self.min_age_ns
    }

    fn entry(&mut self, stack: StackKey) -> &mut Group {
        self.stacks.entry(stack).or_insert(Group {
            agg: StackAgg {
                oldest_ts_ns: u64::MAX,
                ..Default::default()
            },
            weighed: (0.0, 0.0),
            samples: 0,
        })
    }

    /// One outstanding allocation from the kernel's map: exact mode counts it as it is;
    /// sampled mode counts it for its weight.
    pub fn add_recorded(&mut self, stack: StackKey, size: u64, ts_ns: u64) {
        if !self.old_enough(ts_ns) {
            return;
        }
        let weight = self.sampling.map(|s| s.weight(size));
        let g = self.entry(stack);
        g.agg.oldest_ts_ns = g.agg.oldest_ts_ns.min(ts_ns);
        match weight {
            None => {
                g.agg.live_bytes += size;
                g.agg.live_allocs += 1;
            }
            Some((wb, wc)) => {
                g.weighed.0 += wb;
                g.weighed.1 += wc;
                g.samples += 1;
            }
        }
    }

    /// Allocations counted as they are in every mode (tracked mappings: `count` 1, or 0 for
    /// the extra pieces of a split mapping).
    pub fn add_exact(&mut self, a: LiveAlloc) {
        if !self.old_enough(a.ts_ns) {
            return;
        }
        let g = self.entry(a.stack);
        g.agg.live_bytes += a.size;
        g.agg.live_allocs += a.count;
        g.agg.oldest_ts_ns = g.agg.oldest_ts_ns.min(a.ts_ns);
    }

    /// Distinct stacks so far.
    pub fn stacks(&self) -> usize {
        self.stacks.len()
    }

    /// Each stack's totals, and in sampled mode the recorded blocks behind each estimate.
    /// Weighted sums are rounded once per stack: each is within one byte and one allocation
    /// of the exact weighted sum.
    pub fn finish(self) -> (HashMap<StackKey, StackAgg>, HashMap<StackKey, u64>) {
        let mut samples = HashMap::new();
        let groups = self
            .stacks
            .into_iter()
            .map(|(k, g)| {
                let mut agg = g.agg;
                if self.sampling.is_some() {
                    agg.live_bytes += g.weighed.0.round().max(0.0) as u64;
                    agg.live_allocs += g.weighed.1.round().max(0.0) as u64;
                    if g.samples > 0 {
                        samples.insert(k, g.samples);
                    }
                }
                (k, agg)
            })
            .collect();
        (groups, samples)
    }
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

/// Live bytes per stack sampled over time, with the sample counts behind them (sampled mode).
#[derive(Debug, Default)]
pub struct Series {
    points: HashMap<StackKey, Vec<Point>>,
}

/// What one stack holds at one sample: live bytes, and in sampled mode the recorded
/// allocations live and recorded so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    pub bytes: u64,
    pub live_samples: u64,
    pub recorded_samples: u64,
}

impl Series {
    pub fn push(&mut self, t_s: f64, sample: impl IntoIterator<Item = (StackKey, Sample)>) {
        for (key, s) in sample {
            let points = self.points.entry(key).or_default();
            if points.len() >= SERIES_POINTS {
                let mut i = 0;
                points.retain(|_| {
                    i += 1;
                    i % 2 == 1
                });
            }
            points.push(Point {
                t: t_s,
                bytes: s.bytes as f64,
                live: s.live_samples.min(u64::from(u32::MAX)) as u32,
                recorded: s.recorded_samples.min(u64::from(u32::MAX)) as u32,
            });
        }
    }

    /// Every stack sampled so far, live at the end or not.
    pub fn keys(&self) -> impl Iterator<Item = &StackKey> {
        self.points.keys()
    }

    /// Growth in bytes/s over the samples in which the stack was present.
    pub fn growth(&self, key: &StackKey) -> Option<f64> {
        let points: Vec<(f64, f64)> = self
            .points
            .get(key)?
            .iter()
            .map(|p| (p.t, p.bytes))
            .collect();
        slope(&points)
    }

    /// Several stacks' live bytes (and sample counts) summed sample by sample (a stack shown
    /// once in a report can be several kernel stacks that symbolize alike).
    pub fn merged(&self, keys: &[StackKey]) -> Vec<Point> {
        let mut by_time: std::collections::BTreeMap<i64, Point> = Default::default();
        for key in keys {
            for p in self.points.get(key).into_iter().flatten() {
                let e = by_time
                    .entry((p.t * 1e6) as i64)
                    .or_insert(Point::new(p.t, 0.0));
                e.bytes += p.bytes;
                e.live = e.live.saturating_add(p.live);
                e.recorded = e.recorded.saturating_add(p.recorded);
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
    /// `growing`, `plateaued`, `churning`, `transient` or `uncertain`; null without samples.
    #[serde(default)]
    pub trend: Option<String>,
    /// Live bytes gained between the first and the last sample of the window (0 if none).
    #[serde(default)]
    pub added_bytes: u64,
    /// `--mode sampled`: recorded allocations behind `live_bytes` and `live_allocs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_samples: Option<u64>,
    /// `--mode sampled`: recorded allocations that entered or left the stack's live set
    /// between the window's first and last sample, behind `growth_bytes_per_s` and
    /// `added_bytes` (an upper bound).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub growth_samples: Option<u64>,
    /// `--mode sampled`: one standard deviation of `growth_bytes_per_s` from sampling (at
    /// most `sample_bytes * sqrt(max(growth_samples, 1)) / window`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub growth_stderr_bytes_per_s: Option<f64>,
}

/// Estimates from fewer recorded allocations than this are marked in tables (`~`, and the
/// sample count).
pub const FEW_SAMPLES: u64 = 5;

impl StackReport {
    /// Whether its figures are estimates from fewer than [`FEW_SAMPLES`] samples.
    pub fn few_samples(&self) -> bool {
        self.live_samples.is_some_and(|n| n < FEW_SAMPLES)
    }
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
            live_samples: None,
            growth_samples: None,
            growth_stderr_bytes_per_s: None,
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

    fn key(id: u64) -> StackKey {
        StackKey {
            tgid: 7,
            kind: 0,
            native_stack: id,
            caller: 0,
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
        let mut groups = LiveGroups::new(None, 10 * s, s);
        for (i, a) in allocs.into_iter().enumerate() {
            // Both ways in count alike in exact mode.
            if i % 2 == 0 {
                groups.add_recorded(a.stack, a.size, a.ts_ns);
            } else {
                groups.add_exact(a);
            }
        }
        let (g, samples) = groups.finish();
        assert!(samples.is_empty(), "exact mode has no samples");
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
        let b = |bytes, live_samples, recorded_samples| Sample {
            bytes,
            live_samples,
            recorded_samples,
        };
        series.push(0.0, [(key(1), b(10, 1, 1)), (key(2), b(1, 0, 2))]);
        series.push(1.0, [(key(1), b(20, 2, 2))]);
        series.push(2.0, [(key(1), b(30, 3, 3)), (key(2), b(5, 1, 3))]);
        let p = |t, bytes, live, recorded| Point {
            t,
            bytes,
            live,
            recorded,
        };
        assert_eq!(
            series.merged(&[key(1), key(2)]),
            vec![p(0.0, 11.0, 1, 3), p(1.0, 20.0, 2, 2), p(2.0, 35.0, 4, 6)]
        );
        assert!(series.merged(&[key(9)]).is_empty());
        assert_eq!(series.growth(&key(1)), Some(10.0));
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
    fn sampled_allocations_count_for_their_weight_per_stack() {
        let s = Sampling { n: 1000 };
        let stack = |id| StackKey {
            tgid: 1,
            kind: 0,
            native_stack: id,
            caller: 0,
            py_stack: 0,
        };
        let (wb, wc) = s.weight(700);
        let run = |now, min_age| {
            let mut g = LiveGroups::new(Some(s), now, min_age);
            for i in 0..1000 {
                g.add_recorded(stack(1 + i % 2), 700, i);
            }
            // A mapping is exact in every mode: not weighed, no sample.
            g.add_exact(LiveAlloc {
                stack: stack(3),
                size: 4096,
                ts_ns: 0,
                count: 1,
            });
            g.finish()
        };
        let (groups, samples) = run(10_000, 0);
        for id in [1, 2] {
            let agg = groups[&stack(id)];
            assert!((agg.live_bytes as f64 - 500.0 * wb).abs() <= 1.0, "{agg:?}");
            assert!(
                (agg.live_allocs as f64 - 500.0 * wc).abs() <= 1.0,
                "{agg:?}"
            );
            assert_eq!(samples[&stack(id)], 500);
        }
        assert_eq!(groups[&stack(1)].oldest_ts_ns, 0);
        assert_eq!(groups[&stack(2)].oldest_ts_ns, 1);
        assert_eq!(
            (groups[&stack(3)].live_bytes, groups[&stack(3)].live_allocs),
            (4096, 1)
        );
        assert!(!samples.contains_key(&stack(3)));
        // The age filter applies before weighing: ts 0..=500 are at least 500 ns old at 1000.
        let (groups, samples) = run(1000, 500);
        assert_eq!(samples[&stack(1)] + samples[&stack(2)], 501);
        let bytes = groups[&stack(1)].live_bytes + groups[&stack(2)].live_bytes;
        assert!((bytes as f64 - 501.0 * wb).abs() <= 2.0);
    }
}
