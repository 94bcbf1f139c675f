//! Stage 1, the target: which process to trace and what it is made of. Reading
//! `/proc/PID/{maps,stat,status,task}` (through `/proc/PID/root` for containers), parsing ELF
//! files, finding the allocator's library and the process's descendants (workers), starting a
//! command for `leaktrace run`, and the checks made before anything is loaded.
//!
//! May call: `error`. Nothing here loads eBPF or knows about Python.

pub mod elf;
pub mod preflight;
pub mod process;
pub mod procmaps;
pub mod spawn;
