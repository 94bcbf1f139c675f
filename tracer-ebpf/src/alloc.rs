//! Entry probes of the malloc family and the one return probe that completes them all, and the
//! session program that is both (uprobe_multi session links, kernel 6.13+): its entry half
//! returns 1 for a call it does not track, and the kernel then skips the return trap.

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{bpf_get_attach_cookie, bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
    EbpfContext,
};
use tracer_common::{cookie, sampling::NESTED_WATCH_BYTES, AllocKind, Counter, MapEventKind};

use crate::{
    maps::{
        count, enter, enter_unrecorded, forget, record, sample_bytes, sampled, take_pending,
        tgid_of,
    },
    mmap::emit,
};

const PAGE: u64 = 4096;

#[inline(always)]
fn arg(ctx: &ProbeContext, n: usize) -> u64 {
    ctx.arg::<u64>(n).unwrap_or(0)
}

/// `a * b`, or None on overflow. `checked_mul` (and `a > MAX / b`, which LLVM folds back into
/// it) lower to a 128-bit multiply that BPF lacks, so split into 32-bit halves.
#[inline(always)]
fn mul(a: u64, b: u64) -> Option<u64> {
    let (a_hi, b_hi) = (a >> 32, b >> 32);
    if a_hi != 0 && b_hi != 0 {
        return None;
    }
    // Now one factor fits in 32 bits: call it `small`, the other `big = hi * 2^32 + lo`.
    let (big, small) = if a_hi != 0 { (a, b) } else { (b, a) };
    let cross = (big >> 32) * small; // both < 2^32: no overflow
    if cross >> 32 != 0 {
        return None;
    }
    (cross << 32).checked_add((big & 0xffff_ffff) * small)
}

/// Entry of every malloc-family function (malloc, calloc, realloc, reallocarray,
/// posix_memalign, aligned_alloc, memalign, valloc, pvalloc, and pymalloc's functions with
/// `--pymalloc`). The attach cookie says which function and where its arguments are, so this
/// program, and the Python walk inside it, is verified once.
#[uprobe]
pub fn alloc_enter(ctx: ProbeContext) -> u32 {
    on_entry(&ctx);
    0
}

/// [`alloc_enter`] and [`alloc_return`] in one program, for a session link: the kernel runs it
/// at the entry and, unless the entry returned 1, at the return of the same call
/// (`bpf_session_is_return` tells which). An untracked call (sampled mode's unsampled calls,
/// nested calls) so costs one trap instead of two.
///
/// Written out rather than with `#[uprobe]`: that macro's wrapper returns 0 whatever the
/// function returns, and a session entry returning 0 asks for the return trap, so every call
/// paid it (a benchmark with empty programs showed it: `bench/probe_cost.sh`'s `floor-sess`).
/// The section name is the one the macro gives a uprobe.
#[unsafe(no_mangle)]
#[unsafe(link_section = "uprobe")]
pub fn alloc_session(ctx: *mut core::ffi::c_void) -> u32 {
    let ctx = ProbeContext::new(ctx);
    if session_is_return() {
        on_return(ctx.regs);
        0
    } else if on_entry(&ctx) {
        0
    } else {
        1
    }
}

/// The kernel function `bool bpf_session_is_return(void)`, called through the marker number
/// that user space turns into a kfunc call before loading (see
/// [`tracer_common::KFUNC_MARKER_SESSION_IS_RETURN`]).
#[inline(always)]
fn session_is_return() -> bool {
    // SAFETY: called like a helper; the loader rewrites the call into the kfunc call, whose
    // prototype (no argument, bool in r0) is this one. A program holding the unrewritten call
    // is refused by the verifier (unknown helper), never run.
    let f: unsafe extern "C" fn() -> u64 =
        unsafe { core::mem::transmute(tracer_common::KFUNC_MARKER_SESSION_IS_RETURN as usize) };
    // The verifier tracks r0 as a bool: compare it, do not trust its high bits.
    unsafe { f() & 1 != 0 }
}

/// The entry half: whether this call was left pending for the return half.
#[inline(always)]
fn on_entry(ctx: &ProbeContext) -> bool {
    // SAFETY: plain helper call on this program's context.
    let c = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    // The verifier forbids reading the context at a variable offset: load the arguments at
    // constant offsets, then pick among the values.
    let args = [arg(ctx, 0), arg(ctx, 1), arg(ctx, 2)];
    let pick = |i: u64| match i {
        0 => args[0],
        1 => args[1],
        2 => args[2],
        _ => 0,
    };
    let mut size = pick(cookie::size_arg(c));
    let factor = cookie::factor_arg(c);
    if factor != cookie::ARG_NONE {
        match mul(size, pick(factor)) {
            Some(n) => size = n,
            None => {
                // glibc returns NULL with ENOMEM: nothing to track.
                count(Counter::SizeOverflow);
                return false;
            }
        }
    }
    if c & cookie::PAGE_ROUND != 0 {
        size = size.saturating_add(PAGE - 1) & !(PAGE - 1);
    }
    // `--mode sampled`: decide before any other map operation, stack capture or Python walk.
    if sample_bytes() != 0 {
        // Unsampled calls are only pending when large (watched for nested mmaps).
        if let Some(watched) = sample_decision(ctx, c, size, pick(cookie::ptr_arg(c))) {
            return watched;
        }
    }
    enter(ctx, cookie::kind(c), size, pick(cookie::ptr_arg(c)), 0)
}

/// `--mode sampled`: None to record this call; for an unsampled one, whether it was left
/// pending all the same. An unsampled call creates no pending entry (the return probe then
/// finds none), except for large requests (see [`enter_unrecorded`]).
#[inline(always)]
fn sample_decision(ctx: &ProbeContext, c: u64, size: u64, ptr: u64) -> Option<bool> {
    const REALLOC: u32 = AllocKind::Realloc as u32;
    const REALLOCARRAY: u32 = AllocKind::ReallocArray as u32;
    const PYREALLOC: u32 = AllocKind::PyRealloc as u32;
    let kind = cookie::kind(c);
    if kind == REALLOCARRAY {
        // glibc's reallocarray calls realloc, whose probe decides: deciding twice would give
        // these bytes two chances.
        return Some(false);
    }
    if sampled(size) {
        count(Counter::Sampled);
        return None;
    }
    count(Counter::Unsampled);
    if (kind == REALLOC || kind == PYREALLOC) && ptr != 0 {
        // The old block is gone (freed or resized into an unsampled one): one lookup. A failed
        // realloc keeps it, which this loses (ENOMEM only).
        forget(tgid_of(bpf_get_current_pid_tgid()), ptr);
    }
    Some(size >= NESTED_WATCH_BYTES && enter_unrecorded(ctx))
}

/// Attached as a uretprobe to every allocating function; the pending entry says which.
#[uretprobe]
pub fn alloc_return(ctx: RetProbeContext) -> u32 {
    on_return(ctx.regs);
    0
}

/// The return half: completes this thread's pending call, if this is its return.
#[inline(always)]
fn on_return(regs: *mut pt_regs) {
    count(Counter::ReturnRuns);
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: `regs` points at the task's saved registers for the program's lifetime.
    let (sp, ret) = unsafe { ((*regs).rsp, (*regs).rax) };
    let Some(p) = take_pending(pid_tgid, sp) else {
        return;
    };
    const REALLOC: u32 = AllocKind::Realloc as u32;
    const REALLOCARRAY: u32 = AllocKind::ReallocArray as u32;
    const POSIX_MEMALIGN: u32 = AllocKind::PosixMemalign as u32;
    const MMAP: u32 = AllocKind::Mmap as u32;
    const MREMAP: u32 = AllocKind::Mremap as u32;
    const PYREALLOC: u32 = AllocKind::PyRealloc as u32;
    const OTHER: u32 = AllocKind::Other as u32;
    match p.stack.kind {
        // `--mode sampled`: an unsampled large call, watched for nested mmaps only.
        OTHER => {}
        REALLOC | REALLOCARRAY => {
            // realloc(NULL, n) is malloc; realloc(p, 0) frees p and returns NULL; a failed
            // realloc leaves p alone; a moved block frees p.
            let old = p.arg;
            if ret != 0 {
                if old != 0 {
                    forget(p.stack.tgid, old);
                }
                record(ret, p.size, &p);
            } else if p.size == 0 && old != 0 {
                forget(p.stack.tgid, old);
            }
        }
        PYREALLOC => {
            // PyObject_Realloc(p, 0) returns a minimal block, it does not free; NULL leaves p.
            if ret != 0 {
                if p.arg != 0 {
                    forget(p.stack.tgid, p.arg);
                }
                record(ret, p.size, &p);
            }
        }
        POSIX_MEMALIGN => {
            if ret as u32 == 0 {
                // SAFETY: bpf_probe_read_user tolerates any address.
                if let Ok(addr) = unsafe { bpf_probe_read_user(p.arg as *const u64) } {
                    record(addr, p.size, &p);
                }
            }
        }
        MMAP => {
            if ret as i64 != -1 {
                emit(MapEventKind::Map, ret, p.size, 0, 0, p.ts_ns, &p.stack);
            }
        }
        MREMAP => {
            if ret as i64 != -1 {
                emit(
                    MapEventKind::Remap,
                    ret,
                    p.size,
                    p.arg,
                    p.arg2,
                    p.ts_ns,
                    &p.stack,
                );
            }
        }
        _ => {
            if ret != 0 {
                record(ret, p.size, &p);
            }
        }
    }
}
