//! Tracing modes (`--mode`: exact, sampled, growth) and the estimator of `--mode sampled`.
//!
//! In sampled mode the kernel records an allocation of `s` bytes with probability
//! `p(s) = 1 - exp(-s/N)` (byte-based Poisson sampling, see [`tracer_common::sampling`]); each
//! recorded allocation then stands for `1/p(s)` allocations and `s/p(s)` bytes. The per-stack
//! totals the kernel keeps are already weighted (fixed point, from the tables built here); the
//! final report weighs every outstanding allocation exactly, in
//! [`crate::analysis::aggregate::weigh`].

use tracer_common::sampling::{
    self, layout, COUNT_SCALE, EXP_CELLS, WEIGHT_ENTRIES, WEIGHT_ONE, WEIGHT_STEPS,
};

/// `--mode`: what the allocator probes record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Every allocator call.
    #[default]
    Exact,
    /// Byte-based Poisson sampling, one sample per --sample-bytes on average; reported
    /// figures are unbiased estimates.
    Sampled,
    /// No allocator uprobes: resident pages first touched while traced (page-fault and
    /// memory-syscall tracepoints), by the stack that touched them.
    Growth,
}

impl Mode {
    /// The report's `mode` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Exact => "exact",
            Mode::Sampled => "sampled",
            Mode::Growth => "growth",
        }
    }
}

/// Default `--sample-bytes`: 512 KiB, as jemalloc's `lg_prof_sample` default.
pub const DEFAULT_SAMPLE_BYTES: u64 = 512 * 1024;

/// Parses a byte count: `524288`, `512K`, `512KiB`, `4M`, `1MiB` (K and M are powers of 1024).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a byte count (examples: 524288, 512K, 4M)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("`{s}`: unknown unit (use K or M, e.g. 512K)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// `--sample-bytes`: a byte count from 1 to 1 GiB.
pub fn parse_sample_bytes(s: &str) -> Result<u64, String> {
    let n = parse_bytes(s)?;
    if n == 0 {
        return Err(
            "--sample-bytes must be at least 1 (use --mode exact to record every call)".into(),
        );
    }
    if n > sampling::MAX_SAMPLE_BYTES {
        return Err(format!("`{s}` is over the 1 GiB maximum of --sample-bytes"));
    }
    Ok(n)
}

/// `x / (1 - e^-x)`, 1 at 0.
fn f(x: f64) -> f64 {
    if x < 1e-9 {
        1.0 + x / 2.0
    } else {
        x / -(-x).exp_m1()
    }
}

/// Sampled mode with a mean of `n` bytes between samples.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    pub n: u64,
}

impl Sampling {
    /// The content of the kernel's sampling table (see [`tracer_common::sampling::layout`]).
    pub fn table(&self) -> Vec<u64> {
        let n = self.n as f64;
        let mut t = vec![0u64; layout::ENTRIES as usize];
        let cells = EXP_CELLS as f64;
        for c in 1..=EXP_CELLS {
            t[(layout::EXP_BASE + c) as usize] = (n * -(c as f64 / cells).ln()).round() as u64;
        }
        for k in 0..WEIGHT_ENTRIES {
            let x = k as f64 / WEIGHT_STEPS as f64;
            t[(layout::WEIGHT_BASE + k) as usize] = (f(x) * WEIGHT_ONE as f64).round() as u64;
        }
        t
    }

    /// Probability that an allocation of `size` bytes is recorded.
    pub fn probability(&self, size: u64) -> f64 {
        -(-(size as f64) / self.n as f64).exp_m1()
    }

    /// What one recorded allocation of `size` bytes stands for: (bytes, allocations).
    pub fn weight(&self, size: u64) -> (f64, f64) {
        if size == 0 {
            return (0.0, 0.0);
        }
        let p = self.probability(size);
        (size as f64 / p, 1.0 / p)
    }

    /// The kernel's fixed-point counts (per-stack totals) back in allocations.
    pub fn count_from_kernel(&self, fixed: i64) -> i64 {
        (fixed + COUNT_SCALE as i64 / 2).div_euclid(COUNT_SCALE as i64)
    }
}

/// The kernel's weight computation, run on the table this side builds (unit tests, and a
/// check at load).
pub fn kernel_weights(table: &[u64], size: u64, n: u64) -> (u64, u64) {
    sampling::weights(size, n, |i| table.get(i as usize).copied().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*: deterministic, good enough for a simulation.
    struct Rng(u64);
    impl Rng {
        fn next_u64(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn next_u32(&mut self) -> u32 {
            (self.next_u64() >> 32) as u32
        }
    }

    #[test]
    fn byte_counts_parse_with_units() {
        assert_eq!(parse_bytes("524288"), Ok(524_288));
        assert_eq!(parse_bytes("512K"), Ok(524_288));
        assert_eq!(parse_bytes("512KiB"), Ok(524_288));
        assert_eq!(parse_bytes("4m"), Ok(4 << 20));
        assert!(parse_bytes("12Q").is_err());
        assert!(parse_bytes("K").is_err());
        assert!(parse_sample_bytes("0").unwrap_err().contains("at least 1"));
        assert!(parse_sample_bytes("2G").is_err());
    }

    #[test]
    fn intervals_have_the_requested_mean() {
        let s = Sampling { n: 512 * 1024 };
        let t = s.table();
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let draws = 2_000_000;
        let mut sum = 0f64;
        let mut over_3n = 0u64;
        for _ in 0..draws {
            let v = sampling::draw(rng.next_u32(), rng.next_u32(), |i| t[i as usize]);
            assert!(v >= 1);
            sum += v as f64;
            over_3n += u64::from(v > 3 * s.n);
        }
        let mean = sum / draws as f64;
        assert!((mean / s.n as f64 - 1.0).abs() < 0.005, "mean {mean}");
        // An exponential exceeds 3 means with probability e^-3 = 0.0498.
        let tail = over_3n as f64 / draws as f64;
        assert!((tail - (-3f64).exp()).abs() < 0.002, "tail {tail}");
    }

    #[test]
    fn kernel_weights_match_the_exact_weights() {
        for n in [4096u64, 512 * 1024, 1 << 30] {
            let s = Sampling { n };
            let t = s.table();
            for size in [1u64, 7, 64, 500, 4096, 100_000, 524_288, 3_000_000, 1 << 34] {
                let (kb, kc) = kernel_weights(&t, size, n);
                let (wb, wc) = s.weight(size);
                // Within the fixed point's rounding: 1e-4 relative, or a byte.
                assert!(
                    (kb as f64 - wb).abs() <= (wb * 1e-4).max(1.0),
                    "n {n} size {size}: {kb} vs {wb}"
                );
                let kc = kc as f64 / COUNT_SCALE as f64;
                assert!(
                    // The count is bytes / size: a byte off is 1/size of a count.
                    (kc - wc).abs() <= wc * 1e-4 + 1.0 / size as f64 + 1.0 / COUNT_SCALE as f64,
                    "n {n} size {size}: {kc} vs {wc}"
                );
            }
        }
        assert_eq!(kernel_weights(&[], 100, 0), (100, 1), "exact mode");
    }

    /// A million allocations of mixed sizes through the kernel's own decision and weight
    /// arithmetic: the estimates are within a few percent of the truth, per size class and in
    /// all, for bytes and for counts.
    #[test]
    fn sampled_estimates_are_unbiased() {
        let s = Sampling { n: 512 * 1024 };
        let t = s.table();
        let lookup = |i: u32| t[i as usize];
        let mut rng = Rng(42);
        let mut countdown = 0u64;
        // (size, share of calls): small objects dominate, as in a Python service.
        let classes: [(u64, u64); 6] = [
            (24, 40),
            (600, 30),
            (4000, 15),
            (40_000, 10),
            (300_000, 4),
            (3_000_000, 1),
        ];
        let mut truth = [(0f64, 0f64); 6];
        let mut kernel_est = [(0f64, 0f64); 6];
        let mut user_est = [(0f64, 0f64); 6];
        for _ in 0..1_000_000 {
            let mut pick = rng.next_u64() % 100;
            let mut class = 0;
            while pick >= classes[class].1 {
                pick -= classes[class].1;
                class += 1;
            }
            // Sizes spread within each class, so the table's interpolation is exercised.
            let size = classes[class].0 / 2 + rng.next_u64() % classes[class].0;
            truth[class].0 += size as f64;
            truth[class].1 += 1.0;
            let mut next = || sampling::draw(rng.next_u32(), rng.next_u32(), lookup);
            if sampling::decide(&mut countdown, size, &mut next) {
                let (b, c) = sampling::weights(size, s.n, lookup);
                kernel_est[class].0 += b as f64;
                kernel_est[class].1 += c as f64 / COUNT_SCALE as f64;
                let (b, c) = s.weight(size);
                user_est[class].0 += b;
                user_est[class].1 += c;
            }
        }
        let total = |v: &[(f64, f64)]| v.iter().fold((0.0, 0.0), |a, x| (a.0 + x.0, a.1 + x.1));
        let (tb, tc) = total(&truth);
        for est in [&kernel_est, &user_est] {
            let (eb, ec) = total(est);
            assert!((eb / tb - 1.0).abs() < 0.03, "bytes {eb} vs {tb}");
            assert!((ec / tc - 1.0).abs() < 0.05, "count {ec} vs {tc}");
            // Classes with enough sampled bytes (>= 200 expected samples) within 15%.
            for (i, (e, t)) in est.iter().zip(&truth).enumerate() {
                if t.0 / s.n as f64 >= 200.0 {
                    assert!(
                        (e.0 / t.0 - 1.0).abs() < 0.15,
                        "class {i}: {} vs {}",
                        e.0,
                        t.0
                    );
                }
            }
        }
    }
}
