//! Stage 5, analysis: pure computation over what the probes hold, no I/O. Grouping live
//! allocations by stack with the minimum age, sampled mode's weights, tracked mmap regions, the
//! per-stack time series, growth slopes and trends, merging stacks that resolve to the same
//! frames, and the rows of each interval's table.
//!
//! May call: `error`, `probes` (its settings and limits, not the kernel), `resolve` (frames).

pub mod aggregate;
pub mod interval;
pub mod live;
pub mod regions;
pub mod trend;
