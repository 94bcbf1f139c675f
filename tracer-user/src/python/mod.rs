//! Stage 2, CPython support: struct layouts for walking interpreter frames out of process (from
//! eBPF or `/proc/<pid>/mem`), line-table decoders, interpreter version detection, and the live
//! interpreter in a traced process (where it is, its threads).
//!
//! Supported: CPython 3.8 through 3.13 on x86_64, release (non-debug) builds with the GIL (not
//! the 3.13 free-threaded build).
//!
//! * [`layout`]: byte offsets of the fields needed to find threads, frames and code objects.
//! * [`linetable`]: maps an instruction's byte offset in a code object to a source line.
//! * [`version`]: tells which Python a binary or shared library is.
//! * [`runtime`]: finds the interpreter in a running process and lists its threads.
//!
//! May call: `error`, `target` (ELF files, mappings). Turning code objects into frames is
//! `resolve::python`; publishing threads to the kernel is `probes::targets`.

pub mod layout;
pub mod linetable;
pub mod runtime;
pub mod version;

pub use layout::{layout_for, Layout, UnsupportedVersion};
