//! The mmap family. Anonymous mappings are reported to user space through a ring buffer
//! (they are rare next to malloc), where address ranges can be split by partial unmaps.

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::uprobe, programs::ProbeContext};
use tracer_common::{AllocKind, Counter, MapEvent, MapEventKind, StackKey};

use crate::maps::{count, enter, tgid_of, EVENTS};

const MAP_ANONYMOUS: u64 = 0x20;
const PROT_NONE: u64 = 0;
const PAGE: u64 = 4096;

#[inline(always)]
fn page_round(len: u64) -> u64 {
    len.saturating_add(PAGE - 1) & !(PAGE - 1)
}

#[inline(always)]
pub fn emit(
    kind: MapEventKind,
    addr: u64,
    len: u64,
    old_addr: u64,
    old_len: u64,
    ts_ns: u64,
    stack: &StackKey,
) {
    let event = MapEvent {
        kind: kind as u32,
        _pad: 0,
        addr,
        len: page_round(len),
        old_addr,
        old_len: page_round(old_len),
        ts_ns,
        stack: *stack,
    };
    if EVENTS.output::<MapEvent>(&event, 0).is_err() {
        count(Counter::EventsLost);
    }
}

#[uprobe]
pub fn mmap_enter(ctx: ProbeContext) -> u32 {
    // void *mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset)
    let flags: u64 = ctx.arg(3).unwrap_or(0);
    if flags & MAP_ANONYMOUS == 0 {
        // File mappings (shared libraries, mapped files) are not allocations.
        return 0;
    }
    let prot: u64 = ctx.arg(2).unwrap_or(0);
    if prot == PROT_NONE {
        // An address-space reservation (glibc's thread arenas and stacks map PROT_NONE and
        // mprotect pieces later): no memory yet.
        return 0;
    }
    let len: u64 = ctx.arg(1).unwrap_or(0);
    enter(&ctx, AllocKind::Mmap as u32, len, 0, 0);
    0
}

#[uprobe]
pub fn mremap_enter(ctx: ProbeContext) -> u32 {
    // void *mremap(void *old_address, size_t old_size, size_t new_size, int flags, ...)
    let old: u64 = ctx.arg(0).unwrap_or(0);
    let old_len: u64 = ctx.arg(1).unwrap_or(0);
    let new_len: u64 = ctx.arg(2).unwrap_or(0);
    enter(&ctx, AllocKind::Mremap as u32, new_len, old, old_len);
    0
}

#[uprobe]
pub fn munmap_enter(ctx: ProbeContext) -> u32 {
    let addr: u64 = ctx.arg(0).unwrap_or(0);
    let len: u64 = ctx.arg(1).unwrap_or(0);
    let stack = StackKey {
        tgid: tgid_of(bpf_get_current_pid_tgid()),
        kind: AllocKind::Other as u32,
        native_stack: 0,
        caller: 0,
        py_stack: 0,
    };
    emit(MapEventKind::Unmap, addr, len, 0, 0, 0, &stack);
    0
}
