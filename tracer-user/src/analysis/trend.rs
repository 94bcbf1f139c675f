//! Telling a leak from a cache: a robust growth rate and a trend for a stack's live bytes
//! sampled over time, that says `uncertain` when its data cannot tell.
//!
//! The slope is Theil-Sen's (the median of the slopes between every pair of samples), which a
//! few outliers (a burst of in-flight requests at one sample) do not move. The trend compares
//! the stack's rise over the last third of the window with its size, relative to itself, so the
//! same rules hold for a 10 KiB stack and a 10 GiB one:
//!
//! - `transient`: it came and went: at the end it holds at most 10% of its peak;
//! - `growing`: it grew over the window (it ends higher than it started, its last third sits
//!   higher than its first third, the whole-window slope is positive) and it still grew over
//!   the last third by more than 5% of its final size: what keeps growing is a leak;
//! - `churning`: flat at the end, and it allocated more than 4 times its peak during the window
//!   (high turnover: request buffers, caches that evict, garbage the cyclic collector frees);
//! - `plateaued`: flat at the end without that turnover (a cache filled to its bound, warm-up);
//! - `uncertain`: the data cannot tell (fewer than 3 points, or, in sampled mode, too few
//!   samples for any of the above).
//!
//! In sampled mode every figure is an estimate: each recorded allocation stands for about `N`
//! bytes (`--sample-bytes`) when it is small, and, whatever its size, adds at most `N^2` to the
//! variance of a sum (the Horvitz-Thompson variance `s^2 (1-p)/p^2` with `p = 1-exp(-s/N)` is
//! `N^2 (x / (2 sinh(x/2)))^2 <= N^2`, `x = s/N`). So the change of a stack's estimate between
//! two points has a standard deviation of at most `N * sqrt(k)`, `k` the recorded allocations
//! live at one point and not at the other (see [`changes`]; at least 1: seeing none does not
//! mean that none happened). Each verdict is then required to hold beyond that noise:
//! - `growing` needs the window's rise and the last third's rise each above [`Z`] standard
//!   deviations;
//! - for a stack that grew over the window at a rate that would count as growing, any flat
//!   verdict needs its last third to hold significantly less than its share of that rise
//!   ([`Z_STOP`] standard deviations of the binomial share of the window's samples), otherwise
//!   a leak whose last samples happen to be late would look flat;
//! - `plateaued` needs the last third's rise bounded: its rise plus `Z` standard deviations
//!   under [`FLAT_BOUND`] of the final size; `churning` needs that or no significant rise over
//!   the window (its turnover is known from the many blocks it recorded);
//! - `transient` needs the fall from the peak to be significant.
//! What fails these is `uncertain`. A steady leak from a small stack is `growing` once the
//! window holds about 30 samples (a leak of `L` bytes/s over a window of `T` seconds:
//! `L * T >= 30 * N`: 95% of windows then, all from `60 * N`); below that it is mostly
//! `uncertain`, and never `plateaued` or `churning` (see the tests).

/// Samples used at most for the slope (an evenly spaced subset beyond): Theil-Sen is quadratic.
const MAX_POINTS: usize = 200;
/// Samples needed before a trend other than `uncertain` is given.
pub const MIN_POINTS: usize = 3;
/// Growth over the last third, relative to the final size, that still counts as growing.
const STILL_GROWING: f64 = 0.05;
/// Live bytes at the end, relative to the peak, under which a stack is transient.
const GONE: f64 = 0.10;
/// Bytes allocated during the window, relative to the peak, above which a flat stack churns.
const TURNOVER: f64 = 4.0;
/// Sampled mode: a flat verdict needs the last third's rise bounded under this share of the
/// final size (at `Z` standard deviations).
pub const FLAT_BOUND: f64 = 0.25;
/// Standard deviations a sampled change must exceed to count (about 2.3% one-sided each;
/// `growing` needs two such tests and a level rise at once).
pub const Z: f64 = 2.0;
/// Standard deviations below its expected share that the last third's rise must fall before a
/// stack that grew is said to have stopped (a steady leak is then almost never called flat).
pub const Z_STOP: f64 = 3.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trend {
    Growing,
    Plateaued,
    Churning,
    Transient,
    Uncertain,
}

impl Trend {
    pub fn as_str(self) -> &'static str {
        match self {
            Trend::Growing => "growing",
            Trend::Plateaued => "plateaued",
            Trend::Churning => "churning",
            Trend::Transient => "transient",
            Trend::Uncertain => "uncertain",
        }
    }
}

/// One sample of a stack's live bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Point {
    /// Seconds into the session.
    pub t: f64,
    /// Live bytes (an estimate in sampled mode).
    pub bytes: f64,
    /// Sampled mode: recorded allocations live at this point.
    pub live: u32,
    /// Sampled mode: recorded allocations made from the stack so far (never decreases).
    pub recorded: u32,
}

impl Point {
    pub fn new(t: f64, bytes: f64) -> Self {
        Point {
            t,
            bytes,
            live: 0,
            recorded: 0,
        }
    }
}

/// Recorded allocations live at one of `a` and `b` but not at the other: what the change of
/// the estimate between them depends on (blocks born and freed in between do not count). The
/// counts give an upper bound: at most `min(recorded since a, live at b)` of `b`'s are new.
pub fn changes(a: &Point, b: &Point) -> u64 {
    let recorded = u64::from(b.recorded.saturating_sub(a.recorded));
    let came = recorded.min(u64::from(b.live));
    let net = i64::from(b.live) - i64::from(a.live);
    // came - left = net, so left = came - net (at least 0 with inconsistent counts).
    came + (came as i64 - net).max(0) as u64
}

/// One standard deviation (an upper bound) of the sampled estimate's change from `a` to `b`;
/// 0 in exact mode (`sample_bytes` None).
pub fn sigma(sample_bytes: Option<f64>, a: &Point, b: &Point) -> f64 {
    match sample_bytes {
        None => 0.0,
        Some(n) => n * (changes(a, b).max(1) as f64).sqrt(),
    }
}

fn subset(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    if points.len() <= MAX_POINTS {
        return points.to_vec();
    }
    (0..MAX_POINTS)
        .map(|i| points[i * (points.len() - 1) / (MAX_POINTS - 1)])
        .collect()
}

/// Theil-Sen slope in bytes per second; None with fewer than two distinct times.
pub fn robust_slope(points: &[(f64, f64)]) -> Option<f64> {
    let p = subset(points);
    let mut slopes = Vec::with_capacity(p.len() * p.len() / 2);
    for i in 0..p.len() {
        for j in i + 1..p.len() {
            let dt = p[j].0 - p[i].0;
            if dt != 0.0 {
                slopes.push((p[j].1 - p[i].1) / dt);
            }
        }
    }
    if slopes.is_empty() {
        return None;
    }
    slopes.sort_by(f64::total_cmp);
    Some(median_sorted(&slopes))
}

/// Theil-Sen slope of [`Point`]s.
pub fn slope_of(points: &[Point]) -> Option<f64> {
    robust_slope(&xy(points))
}

fn xy(points: &[Point]) -> Vec<(f64, f64)> {
    points.iter().map(|p| (p.t, p.bytes)).collect()
}

fn median_sorted(v: &[f64]) -> f64 {
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn median(points: &[Point]) -> f64 {
    let mut v: Vec<f64> = points.iter().map(|p| p.bytes).collect();
    v.sort_by(f64::total_cmp);
    median_sorted(&v)
}

/// The trend of a stack's live bytes, given the bytes it allocated during the window and, in
/// sampled mode, the mean bytes between samples. None only without any point.
pub fn classify(
    points: &[Point],
    allocated_bytes: f64,
    sample_bytes: Option<f64>,
) -> Option<Trend> {
    let (first, last) = (*points.first()?, *points.last()?);
    if points.len() < MIN_POINTS {
        return Some(Trend::Uncertain);
    }
    let sig = |a: &Point, b: &Point| sigma(sample_bytes, a, b);
    let (start, end) = (first.bytes, last.bytes);
    let (peak_at, peak) =
        points.iter().enumerate().fold(
            (0, f64::MIN),
            |m, (i, p)| if p.bytes > m.1 { (i, p.bytes) } else { m },
        );
    if peak <= 0.0 {
        // Nothing live at any point: in exact mode it came and went between samples; in
        // sampled mode no sample says anything.
        return Some(match sample_bytes {
            None => Trend::Transient,
            Some(_) => Trend::Uncertain,
        });
    }
    if end <= GONE * peak {
        return Some(if peak - end > Z * sig(&points[peak_at], &last) {
            Trend::Transient
        } else {
            Trend::Uncertain
        });
    }
    let (t0, t1) = (first.t, last.t);
    let third = (t1 - t0) / 3.0;
    let mut last_third: Vec<Point> = points
        .iter()
        .copied()
        .filter(|p| p.t >= t1 - third)
        .collect();
    // Samples a few milliseconds off their interval can leave one point in the last third,
    // which has no slope: take the last two then (the same for the first third).
    if last_third.len() < 2 {
        last_third = points[points.len() - 2..].to_vec();
    }
    let mut first_third: Vec<Point> = points
        .iter()
        .copied()
        .filter(|p| p.t <= t0 + third)
        .collect();
    if first_third.len() < 2 {
        first_third = points[..2].to_vec();
    }
    let rise_last = slope_of(&last_third).unwrap_or(0.0) * third;
    let sigma_last = sig(&last_third[0], &last);
    let whole = slope_of(points).unwrap_or(0.0);
    let rise = end - start;
    let grew = rise > 0.0
        && rise > Z * sig(&first, &last)
        && whole > 0.0
        && median(&last_third) > median(&first_third);
    let threshold = STILL_GROWING * end;
    if grew && rise_last > threshold && rise_last > Z * sigma_last {
        return Some(Trend::Growing);
    }
    // Had it kept growing at the window's rate, the last third would hold its share of the
    // window's rise: unless it holds significantly less, the data cannot say the growth
    // stopped. Sampled, the last third's share of the window's recorded samples is binomial.
    let share = (t1 - last_third[0].t) / (t1 - t0);
    let expected = rise * share;
    if grew && expected > threshold {
        let spread = sample_bytes.map_or(0.0, |n| (rise * n * share * (1.0 - share)).sqrt());
        if end - last_third[0].bytes >= expected - Z_STOP * spread {
            return Some(Trend::Uncertain);
        }
    }
    let bounded = match sample_bytes {
        None => rise_last <= threshold || !grew,
        Some(_) => rise_last + Z * sigma_last <= FLAT_BOUND * end,
    };
    // High turnover and no significant rise over the window.
    if allocated_bytes > TURNOVER * peak && (bounded || !grew) {
        return Some(Trend::Churning);
    }
    if bounded {
        return Some(Trend::Plateaued);
    }
    Some(Trend::Uncertain)
}

#[cfg(test)]
mod tests;
