//! leaktrace's kernel side: uprobes and uretprobes on the allocator entry points of a target,
//! and, for `--mode growth`, page-fault and memory-syscall tracepoints (growth.rs).
//!
//! Every uprobe here is attached per process (`UProbeScope::OneProcess`), so it only ever runs
//! in a traced process; the tracepoints run everywhere and return after one map lookup for
//! processes that are not traced. The hot path is short on purpose: no logging, a handful of map
//! operations, and early returns for everything that is not an allocation we can track.
#![no_std]
#![no_main]
// atomic_xadd: the bpfel target has no Atomic*::fetch_add.
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "core_intrinsics is the only atomic add on bpfel"
)]

mod alloc;
mod free;
mod growth;
mod maps;
mod mmap;
mod python;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
