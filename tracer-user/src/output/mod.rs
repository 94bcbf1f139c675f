//! Stage 6, output: what people and tools read. The `leaktrace/v1` report and its formats
//! (JSON, folded, SVG, pprof), diffs between two reports, the periodic tables and `top`'s live
//! view, and the summary printed at the end. Everything here renders values it is given and
//! works as well on a report read back from a file.
//!
//! May call: `error`, `resolve` (the frame type), `analysis` (the stacks and rows it renders).
//! Never `probes`: nothing here reads the kernel.

pub mod compare;
pub mod format;
pub mod pprof;
pub mod report;
pub mod summary;
pub mod view;
