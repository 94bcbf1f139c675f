//! Telling a leak from a cache: a robust growth rate and a trend for a stack's live bytes
//! sampled over time.
//!
//! The slope is Theil-Sen's (the median of the slopes between every pair of samples), which a
//! few outliers (a burst of in-flight requests at one sample) do not move. The trend compares
//! the stack's rise over the last third of the window with its size, relative to itself, so the
//! same rules hold for a 10 KiB stack and a 10 GiB one:
//!
//! - `transient`: it came and went: at the end it holds at most 10% of its peak;
//! - `growing`: it still grew over the last third of the window, by more than 5% of its final
//!   size, and the whole-window slope is positive: what keeps growing is a leak;
//! - `churning`: flat at the end, and it allocated more than 4 times its peak during the window
//!   (high turnover: request buffers, caches that evict);
//! - `plateaued`: flat at the end without that turnover (a cache filled to its bound, warm-up).

/// Samples used at most for the slope (an evenly spaced subset beyond): Theil-Sen is quadratic.
const MAX_POINTS: usize = 200;
/// Samples needed before a trend is given.
const MIN_POINTS: usize = 3;
/// Growth over the last third, relative to the final size, that still counts as growing.
const STILL_GROWING: f64 = 0.05;
/// Live bytes at the end, relative to the peak, under which a stack is transient.
const GONE: f64 = 0.10;
/// Bytes allocated during the window, relative to the peak, above which a flat stack churns.
const TURNOVER: f64 = 4.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trend {
    Growing,
    Plateaued,
    Churning,
    Transient,
}

impl Trend {
    pub fn as_str(self) -> &'static str {
        match self {
            Trend::Growing => "growing",
            Trend::Plateaued => "plateaued",
            Trend::Churning => "churning",
            Trend::Transient => "transient",
        }
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
    let n = slopes.len();
    Some(if n % 2 == 1 {
        slopes[n / 2]
    } else {
        (slopes[n / 2 - 1] + slopes[n / 2]) / 2.0
    })
}

/// The trend of a stack's live bytes, given the bytes it allocated during the window.
pub fn classify(points: &[(f64, f64)], allocated_bytes: f64) -> Option<Trend> {
    if points.len() < MIN_POINTS {
        return None;
    }
    let end = points.last()?.1;
    let peak = points.iter().map(|p| p.1).fold(0.0, f64::max);
    if peak <= 0.0 || end <= GONE * peak {
        return Some(Trend::Transient);
    }
    let t0 = points.first()?.0;
    let t1 = points.last()?.0;
    let mut last_third: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|p| p.0 >= t1 - (t1 - t0) / 3.0)
        .collect();
    // Samples a few milliseconds off their interval can leave one point in the last third,
    // which has no slope: take the last two then.
    if last_third.len() < 2 {
        last_third = points[points.len() - 2..].to_vec();
    }
    let rise_last = robust_slope(&last_third).unwrap_or(0.0) * (t1 - t0) / 3.0;
    let whole = robust_slope(points).unwrap_or(0.0);
    if rise_last > STILL_GROWING * end && whole > 0.0 {
        return Some(Trend::Growing);
    }
    if allocated_bytes > TURNOVER * peak {
        return Some(Trend::Churning);
    }
    Some(Trend::Plateaued)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(n: usize, f: impl Fn(f64) -> f64) -> Vec<(f64, f64)> {
        (0..n).map(|i| (i as f64, f(i as f64))).collect()
    }

    /// Deterministic noise in [-1, 1].
    fn noise(i: f64) -> f64 {
        ((i * 12.9898).sin() * 43758.5453).fract() * 2.0 - 1.0
    }

    #[test]
    fn a_leak_with_one_sample_in_its_last_third_is_growing() {
        // Measured on the demo: samples every 5 s, the series starting at the first interval,
        // the last third holding only the final sample.
        let points = [
            (5.039, 10_241_131.0),
            (10.044, 19_304_975.0),
            (15.043, 29_799_286.0),
            (20.055, 31_774_090.0),
        ];
        assert_eq!(classify(&points, 31_774_090.0), Some(Trend::Growing));
    }

    #[test]
    fn slope_ignores_an_outlier() {
        let mut line = series(11, |t| 100.0 + 10.0 * t);
        line[5].1 = 10_000.0;
        assert_eq!(robust_slope(&line), Some(10.0));
        assert_eq!(robust_slope(&[(1.0, 5.0)]), None);
        assert_eq!(robust_slope(&[(1.0, 5.0), (1.0, 9.0)]), None);
    }

    #[test]
    fn slope_of_a_long_series_uses_a_subset() {
        let line = series(5000, |t| 3.0 * t);
        assert_eq!(robust_slope(&line), Some(3.0));
    }

    #[test]
    fn linear_leak_is_growing() {
        let leak = series(30, |t| 1000.0 + 500.0 * t);
        assert_eq!(classify(&leak, 16_000.0), Some(Trend::Growing));
    }

    #[test]
    fn noisy_leak_is_growing() {
        let leak = series(30, |t| (1000.0 + 500.0 * t) * (1.0 + 0.05 * noise(t)));
        assert_eq!(classify(&leak, 16_000.0), Some(Trend::Growing));
    }

    #[test]
    fn step_is_plateaued() {
        let step = series(30, |t| if t < 10.0 { 1000.0 } else { 50_000.0 });
        assert_eq!(classify(&step, 50_000.0), Some(Trend::Plateaued));
    }

    #[test]
    fn warm_up_then_flat_is_plateaued() {
        let cache = series(30, |t| 1000.0 * t.min(12.0));
        assert_eq!(classify(&cache, 12_000.0), Some(Trend::Plateaued));
    }

    #[test]
    fn sawtooth_with_turnover_is_churning() {
        let saw = series(30, |t| 1000.0 + 500.0 * (t % 5.0));
        assert_eq!(classify(&saw, 1_000_000.0), Some(Trend::Churning));
    }

    #[test]
    fn up_then_gone_is_transient() {
        let gone = series(30, |t| if t < 15.0 { 100.0 * t } else { 0.0 });
        assert_eq!(classify(&gone, 1500.0), Some(Trend::Transient));
    }

    #[test]
    fn constant_is_plateaued_and_short_series_unclassified() {
        assert_eq!(
            classify(&series(10, |_| 4096.0), 4096.0),
            Some(Trend::Plateaued)
        );
        assert_eq!(classify(&series(2, |t| t), 1.0), None);
    }
}
