//! leaktrace: attach to a live process and flamegraph its surviving allocations.
//!
//! The binary is a thin layer over [`run`]; the modules below are usable on their own. Pure
//! logic (parsing, aggregation, rendering) has no privileged I/O and is unit-tested without a
//! kernel; everything that touches the kernel is in [`probes`].

pub mod analysis;
pub mod cli;
pub mod error;
pub mod heap;
pub mod output;
pub mod probes;
pub mod python;
pub mod resolve;
pub mod session;
pub mod target;

pub use cli::{run, Cli};
