//! Stage 2, CPython support: struct layouts for walking interpreter frames out of process (from
//! eBPF or `/proc/<pid>/mem`), line-table decoders, interpreter version detection, and the live
//! interpreter in a traced process (where it is, its threads).
//!
//! Supported: CPython 3.8 through 3.15 on x86_64, release (non-debug) builds with the GIL, and
//! the free-threaded 3.13t (3.14t/3.15t are refused in one line: see [`freethreaded`]). See
//! README.md next to this file for what each version changed and how a new minor version is
//! added.
//!
//! * [`freethreaded`]: what a `--disable-gil` build changes (object header, mimalloc).
//! * [`layout`]: byte offsets of the fields needed to find threads, frames and code objects.
//! * [`linetable`]: maps an instruction's byte offset in a code object to a source line.
//! * [`version`]: tells which Python a binary or shared library is.
//! * [`runtime`]: finds the interpreter in a running process and lists its threads.
//!
//! May call: `error`, `target` (ELF files, mappings). Turning code objects into frames is
//! `resolve::python`; publishing threads to the kernel is `probes::targets`.

pub mod allocators;
pub mod freethreaded;
pub mod layout;
pub mod linetable;
pub mod runtime;
pub mod version;

pub use layout::{layout_for, Layout, UnsupportedVersion};
