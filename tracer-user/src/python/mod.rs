//! CPython support: struct layouts for walking interpreter frames out of process (from eBPF or
//! `/proc/<pid>/mem`), line-table decoders, and interpreter version detection.
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

pub mod freethreaded;
pub mod layout;
pub mod linetable;
pub mod version;

pub use layout::{layout_for, Layout, UnsupportedVersion};
