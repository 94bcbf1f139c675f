//! Byte-based Poisson sampling (`--mode sampled`), in integer arithmetic both sides share.
//!
//! The allocation stream of each CPU is cut at sample points whose distances are independent
//! exponential draws with mean `N` bytes (`--sample-bytes`), as jemalloc and Go's heap profiler
//! do: an allocation of `s` bytes contains a sample point, and is recorded, with probability
//! `1 - exp(-s/N)`, whatever came before it. A recorded allocation then stands for
//! `1/(1-exp(-s/N))` allocations and `s/(1-exp(-s/N))` bytes, which makes the sums unbiased.
//!
//! BPF has no floating point: user space computes two tables into [`MAP_SAMPLING`] at load
//! (see [`layout`]) and the kernel only adds, multiplies, shifts and divides integers. The
//! functions here take the table as a lookup closure so that the kernel (a map lookup) and the
//! unit tests (a slice) run exactly the same arithmetic.

/// Array map of `u64`: the exponential quantile table, then the weight table.
pub const MAP_SAMPLING: &str = "SAMPLING";
/// Per-CPU countdown: bytes left to the next sample point on this CPU.
pub const MAP_SAMPLER: &str = "SAMPLER";
/// Name of the eBPF global holding `N` (0: exact mode, every call is recorded).
pub const GLOBAL_SAMPLE_BYTES: &str = "SAMPLE_BYTES";

/// Cells of the exponential quantile table (a power of two; the top bits of a random u32).
pub const EXP_CELLS: u32 = 1024;
const EXP_CELL_BITS: u32 = 10;
const EXP_FRAC_BITS: u32 = 32 - EXP_CELL_BITS;

/// Weight table steps per `N`: entry `k` is `f(k / WEIGHT_STEPS)` with `f(x) = x/(1-e^-x)`.
pub const WEIGHT_STEPS: u64 = 64;
/// Beyond `WEIGHT_MAX_X * N` bytes the weight is the size itself (`e^-16` < 1.2e-7).
pub const WEIGHT_MAX_X: u64 = 16;
/// Entries of the weight table.
pub const WEIGHT_ENTRIES: u32 = (WEIGHT_STEPS * WEIGHT_MAX_X) as u32 + 1;
/// Fixed-point scale of the weight table.
pub const WEIGHT_ONE: u64 = 1 << 16;
/// In sampled mode the kernel's per-stack allocation counts are kept in this fixed point.
pub const COUNT_SCALE: u64 = 1024;
/// `--sample-bytes` at most: keeps every product below 2^63.
pub const MAX_SAMPLE_BYTES: u64 = 1 << 30;
/// Unsampled calls of at least this many bytes still leave a (stackless) pending entry, so
/// that an mmap or mremap the allocator makes for them is recognised as nested and not counted
/// on its own (glibc serves requests from 128 KiB up with mmap by default).
pub const NESTED_WATCH_BYTES: u64 = 64 * 1024;

/// Where the tables sit in [`MAP_SAMPLING`].
pub mod layout {
    use super::{EXP_CELLS, WEIGHT_ENTRIES};
    /// `EXP_CELLS + 1` entries: `N * -ln(c / EXP_CELLS)` in bytes (entry 0 unused).
    pub const EXP_BASE: u32 = 0;
    /// [`WEIGHT_ENTRIES`] entries: `f(k / WEIGHT_STEPS) * WEIGHT_ONE`.
    pub const WEIGHT_BASE: u32 = EXP_CELLS + 1;
    pub const ENTRIES: u32 = WEIGHT_BASE + WEIGHT_ENTRIES;
}

/// Distance to the next sample point, in bytes (at least 1), from two random u32s: an
/// inverse-CDF lookup with linear interpolation inside each of [`EXP_CELLS`] cells. The tail
/// cell (u < 1/EXP_CELLS) uses the exponential's memorylessness: `-ln(u) = ln(CELLS) +
/// -ln(u * CELLS)`, drawn again from the second number.
#[inline(always)]
pub fn draw(r1: u32, r2: u32, table: impl Fn(u32) -> u64) -> u64 {
    let cell =
        |r: u32| -> (u32, u64) { (r >> EXP_FRAC_BITS, (r & ((1 << EXP_FRAC_BITS) - 1)) as u64) };
    let interp = |c: u32, frac: u64| -> u64 {
        let hi = table(layout::EXP_BASE + c);
        let lo = table(layout::EXP_BASE + c + 1);
        hi - ((hi.saturating_sub(lo) * frac) >> EXP_FRAC_BITS)
    };
    // Entry 1 is N * -ln(1/CELLS) = N * ln(CELLS).
    let tail = table(layout::EXP_BASE + 1);
    let (c1, f1) = cell(r1);
    let v = if c1 != 0 {
        interp(c1, f1)
    } else {
        let (c2, f2) = cell(r2);
        // Twice in the tail (probability 2^-20): stop at two means of ln(CELLS) each.
        tail + if c2 != 0 { interp(c2, f2) } else { tail }
    };
    if v == 0 {
        1
    } else {
        v
    }
}

/// Whether an allocation of `size` bytes is sampled, given this CPU's `countdown` (0: not
/// started yet), which it updates. `next` draws a fresh distance.
#[inline(always)]
pub fn decide(countdown: &mut u64, size: u64, mut next: impl FnMut() -> u64) -> bool {
    if *countdown == 0 {
        *countdown = next();
    }
    if *countdown > size {
        *countdown -= size;
        false
    } else {
        *countdown = next();
        true
    }
}

/// What a sampled allocation of `size` bytes stands for: (bytes, allocations *
/// [`COUNT_SCALE`]). With `n == 0` (exact mode): (size, 1).
#[inline(always)]
pub fn weights(size: u64, n: u64, table: impl Fn(u32) -> u64) -> (u64, u64) {
    if n == 0 {
        return (size, 1);
    }
    if size == 0 {
        return (0, 0);
    }
    if size >= WEIGHT_MAX_X * n {
        return (size, COUNT_SCALE);
    }
    let q = size * WEIGHT_STEPS;
    let k = q / n;
    let rem = q - k * n;
    if k >= WEIGHT_STEPS * WEIGHT_MAX_X {
        return (size, COUNT_SCALE);
    }
    let k = k as u32;
    let f0 = table(layout::WEIGHT_BASE + k);
    let f1 = table(layout::WEIGHT_BASE + k + 1);
    // bytes = N * f(x), f linear between the table's points; f0 * n < 2^21 * 2^30.
    let fp = n * f0 + f1.saturating_sub(f0) * rem;
    let bytes = (fp + WEIGHT_ONE / 2) >> 16;
    let count = (bytes * COUNT_SCALE + size / 2) / size;
    (bytes, count)
}
