//! `free`: the hottest probe. One map lookup and, for a tracked block, a delete.

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::uprobe, programs::ProbeContext};
use tracer_common::Counter;

use crate::maps::{count, forget, tgid_of};

#[uprobe]
pub fn free_enter(ctx: ProbeContext) -> u32 {
    let ptr: u64 = ctx.arg(0).unwrap_or(0);
    if ptr != 0 && !forget(tgid_of(bpf_get_current_pid_tgid()), ptr) {
        count(Counter::FreeUnknown);
    }
    0
}
