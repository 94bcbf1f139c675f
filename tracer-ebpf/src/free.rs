//! `free`: the hottest probe. One map lookup and, for a tracked block, a delete.

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::uprobe, programs::ProbeContext};
use tracer_common::Counter;

use crate::maps::{count, forget, tgid_of};

#[inline(always)]
fn free_ptr(ptr: u64) {
    if ptr != 0 && !forget(tgid_of(bpf_get_current_pid_tgid()), ptr) {
        count(Counter::FreeUnknown);
    }
}

#[uprobe]
pub fn free_enter(ctx: ProbeContext) -> u32 {
    free_ptr(ctx.arg(0).unwrap_or(0));
    0
}

/// pymalloc's `_PyObject_Free(void *ctx, void *p)` (`--pymalloc`).
#[uprobe]
pub fn pyfree_ctx_enter(ctx: ProbeContext) -> u32 {
    free_ptr(ctx.arg(1).unwrap_or(0));
    0
}
