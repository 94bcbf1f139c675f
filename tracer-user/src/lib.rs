//! leaktrace: attach to a live process and flamegraph its surviving allocations.
//!
//! The binary is a thin layer over [`run`]; the modules below are usable on their own. Pure
//! logic (parsing, aggregation, rendering) has no privileged I/O and is unit-tested without a
//! kernel; everything that touches the kernel is in [`bpf`].

pub mod aggregate;
pub mod bpf;
pub mod cli;
pub mod compare;
pub mod elf;
pub mod error;
pub mod features;
pub mod growth;
pub mod limits;
pub mod mode;
pub mod preflight;
pub mod procmaps;
pub mod profile;
pub mod pyruntime;
pub mod python;
pub mod regions;
pub mod report;
pub mod session;
pub mod spawn;
pub mod symbolize;
pub mod target;
pub mod trend;
pub mod view;

pub use cli::{run, Cli};
