//! Stage 3, the probes: everything that touches the kernel. Loading the eBPF object with the map
//! sizes and mode from the command line, attaching uprobes (exact, sampled) or tracepoints
//! (growth) to each traced process, writing per-process settings (Python layouts, published
//! threads), and reading the maps back (live allocations, stack totals, stacks, counters,
//! mmap events). [`targets`] holds the set of traced processes: the target, the workers it
//! follows, and their interpreters.
//!
//! May call: `error`, `target`, `python`.

pub mod batch;
pub mod bpf;
pub mod features;
pub mod growth;
pub mod kfunc;
pub mod limits;
pub mod mode;
pub mod targets;
pub mod uprobe_multi;
