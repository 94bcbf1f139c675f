//! Entry probes of the malloc family and the one return probe that completes them all, and the
//! session program that is both (uprobe_multi session links, kernel 6.13+): its entry half
//! returns 1 for a call it does not track, and the kernel then skips the return trap.

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{
        bpf_get_attach_cookie, bpf_get_current_pid_tgid, bpf_get_func_ip, bpf_ktime_get_ns,
        bpf_probe_read_user,
    },
    macros::{map, uprobe, uretprobe},
    maps::PerCpuArray,
    programs::{ProbeContext, RetProbeContext},
    EbpfContext,
};
use tracer_common::{
    cookie, sampling::NESTED_WATCH_BYTES, AllocKind, Counter, MapEventKind, Pending, StackKey,
};

use crate::{
    maps::{
        count, enter, enter_unrecorded, forget, inside_outer_call, native_stack_of,
        pending_at_entry, record, sample_bytes, sampled, stack_pointer, take_pending, tgid_of,
        PENDING,
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
    on_entry(&ctx, None);
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
    let cookie = session_cookie();
    let Some(job) = SESSION_JOB.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU slot, used by one program run at a time on this CPU.
    let job = unsafe { &mut *job };
    if session_is_return() {
        // SAFETY: the kernel's 8 bytes of this session, written by its entry run.
        match unsafe { *cookie } {
            0 => {
                on_return(ctx.regs);
                return 0;
            }
            size_plus_one => {
                if !cookie_job(&ctx, size_plus_one - 1, job) {
                    return 0;
                }
            }
        }
    } else {
        let entry = on_entry(&ctx, Some(&mut *job));
        let (cookie_value, ret) = match entry {
            Entry::Untracked => (0, 1),
            Entry::Pending | Entry::Job => (0, 0),
            // Below NESTED_WATCH_BYTES: no overflow.
            Entry::Cookie(size) => (size + 1, 0),
        };
        // SAFETY: as above.
        unsafe { *cookie = cookie_value };
        if !matches!(entry, Entry::Job) {
            return ret;
        }
    }
    finish_job(job)
}

/// The one place [`alloc_session`] captures stacks, for both of its jobs: a session's small
/// call completed at its return ([`JOB_RECORD`]) and a call left pending at its entry
/// ([`JOB_PENDING`]). Everything it needs comes from map memory, whose values the verifier
/// does not track, so both paths reach the native and Python walks in the same state and the
/// verifier checks them once, not once per path (the walk was most of attach's verification).
#[inline(always)]
fn finish_job(job: &mut SessionJob) -> u32 {
    // SAFETY: plain reads of the per-CPU slot, written by this run.
    let (tgid, caller, ip, sp, fp, pid_tgid) = unsafe {
        (
            core::ptr::read_volatile(&job.pending.stack.tgid),
            core::ptr::read_volatile(&job.pending.stack.caller),
            core::ptr::read_volatile(&job.ip),
            core::ptr::read_volatile(&job.sp),
            core::ptr::read_volatile(&job.fp),
            core::ptr::read_volatile(&job.pid_tgid),
        )
    };
    job.pending.stack.native_stack = native_stack_of(tgid, caller, ip, sp, fp);
    job.pending.stack.py_stack = crate::python::python_stack(pid_tgid);
    // SAFETY: as above.
    if unsafe { core::ptr::read_volatile(&job.what) } == JOB_RECORD {
        record(job.ret, job.pending.size, &job.pending);
        return 0;
    }
    if PENDING.insert(&job.pid_tgid, &job.pending, 0).is_err() {
        count(Counter::PendingFull);
        // No pending entry: the return run would find nothing.
        return 1;
    }
    0
}

/// [`SessionJob::what`]: record the block at `ret` (a session's small call, at its return).
const JOB_RECORD: u64 = 1;
/// [`SessionJob::what`]: insert `pending` into `PENDING` under `pid_tgid` (a call tracked from
/// its entry).
const JOB_PENDING: u64 = 2;

/// What a run of [`alloc_session`] hands to [`finish_job`], through map memory.
#[repr(C)]
pub struct SessionJob {
    pending: Pending,
    pid_tgid: u64,
    /// The native stack's first frame (the probed function), the stack pointer at its entry,
    /// and the frame pointer.
    ip: u64,
    sp: u64,
    fp: u64,
    /// [`JOB_RECORD`]: the block's address.
    ret: u64,
    /// [`JOB_RECORD`] or [`JOB_PENDING`].
    what: u64,
}

#[map]
pub static SESSION_JOB: PerCpuArray<SessionJob> = PerCpuArray::with_max_entries(1, 0);

/// What an entry run left for the return run.
#[derive(Clone, Copy)]
enum Entry {
    /// Nothing: the call is not tracked.
    Untracked,
    /// The thread's entry in `PENDING`.
    Pending,
    /// Nothing but the size, in the session cookie: a session's small malloc-like call, which
    /// the return run completes alone ([`cookie_job`]). Those make up most calls, and
    /// the pending entry's insert, lookup and delete were a third of an exact pair's map work.
    Cookie(u64),
    /// A session's call to track from its entry, prepared in [`SESSION_JOB`]: stacks, then
    /// the pending entry, are [`finish_job`]'s.
    Job,
}

/// Kinds whose return needs nothing of the entry but the size (the pointer is the return
/// value, nothing is freed): realloc, posix_memalign and the mmap family keep their pending
/// entry, and so do pymalloc's functions, whose own large calls are served by malloc and must
/// stay known as outer calls.
#[inline(always)]
fn completes_from_cookie(kind: u32) -> bool {
    const MALLOC: u32 = AllocKind::Malloc as u32;
    const CALLOC: u32 = AllocKind::Calloc as u32;
    const ALIGNED_ALLOC: u32 = AllocKind::AlignedAlloc as u32;
    const MEMALIGN: u32 = AllocKind::Memalign as u32;
    const VALLOC: u32 = AllocKind::Valloc as u32;
    const PVALLOC: u32 = AllocKind::Pvalloc as u32;
    matches!(
        kind,
        MALLOC | CALLOC | ALIGNED_ALLOC | MEMALIGN | VALLOC | PVALLOC
    )
}

/// The return run of an [`Entry::Cookie`] call, prepared in `job` for [`finish_job`] (false
/// when there is nothing to record): everything the entry would have computed, computed here
/// from the same values. The caller is the address returned to; the probed
/// function's address is `bpf_get_func_ip`; `rbp` is the entry's (callee-saved); the entry's
/// stack pointer is 8 below (the return address was popped); the thread's Python frames have
/// not moved (an allocator runs no Python).
#[inline(always)]
fn cookie_job(ctx: &ProbeContext, size: u64, job: &mut SessionJob) -> bool {
    count(Counter::ReturnRuns);
    // SAFETY: `regs` points at the task's saved registers for the program's lifetime.
    let (ret, caller, sp, fp) = unsafe {
        let r = &*ctx.regs;
        (r.rax, r.rip, r.rsp, r.rbp)
    };
    if ret == 0 {
        return false;
    }
    // SAFETY: plain helper calls on this program's context.
    let (c, ip, ts_ns) = unsafe {
        (
            bpf_get_attach_cookie(ctx.as_ptr()),
            bpf_get_func_ip(ctx.as_ptr()),
            bpf_ktime_get_ns(),
        )
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    job.pending = Pending {
        sp: 0,
        size,
        arg: 0,
        arg2: 0,
        ts_ns,
        stack: StackKey {
            tgid: tgid_of(pid_tgid),
            kind: cookie::kind(c),
            native_stack: 0,
            caller,
            py_stack: 0,
        },
    };
    job.pid_tgid = pid_tgid;
    job.ip = ip;
    job.sp = sp.wrapping_sub(8);
    job.fp = fp;
    job.ret = ret;
    job.what = JOB_RECORD;
    true
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

/// The kernel function `__u64 *bpf_session_cookie(void)`, linked as
/// [`session_is_return`] is (see [`tracer_common::KFUNC_MARKER_SESSION_COOKIE`]).
#[inline(always)]
fn session_cookie() -> *mut u64 {
    // SAFETY: as in session_is_return; the kfunc returns a pointer to this session's 8 bytes,
    // never null.
    let f: unsafe extern "C" fn() -> *mut u64 =
        unsafe { core::mem::transmute(tracer_common::KFUNC_MARKER_SESSION_COOKIE as usize) };
    unsafe { f() }
}

/// The entry half: what this call left for the return half. `session`: run by
/// [`alloc_session`], whose return run can complete a call from the session cookie, and
/// which finishes a tracked call's entry itself ([`Entry::Job`]).
#[inline(always)]
fn on_entry(ctx: &ProbeContext, session: Option<&mut SessionJob>) -> Entry {
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
                return Entry::Untracked;
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
            return if watched {
                Entry::Pending
            } else {
                Entry::Untracked
            };
        }
    }
    let kind = cookie::kind(c);
    if session.is_some() && size < NESTED_WATCH_BYTES && completes_from_cookie(kind) {
        // Large calls keep a pending entry: glibc serves them with mmap, which must be seen
        // as nested.
        let sp = stack_pointer(ctx);
        return if inside_outer_call(bpf_get_current_pid_tgid(), sp, true) {
            Entry::Untracked
        } else {
            Entry::Cookie(size)
        };
    }
    if let Some(job) = session {
        return if prepare_entry_job(ctx, kind, size, pick(cookie::ptr_arg(c)), job) {
            Entry::Job
        } else {
            Entry::Untracked
        };
    }
    if enter(ctx, kind, size, pick(cookie::ptr_arg(c)), 0) {
        Entry::Pending
    } else {
        Entry::Untracked
    }
}

/// [`crate::maps::enter`] up to its stacks, for [`finish_job`]: false (nothing prepared)
/// for a call made from inside another tracked call.
#[inline(always)]
fn prepare_entry_job(
    ctx: &ProbeContext,
    kind: u32,
    size: u64,
    arg: u64,
    job: &mut SessionJob,
) -> bool {
    let Some((pid_tgid, pending)) = pending_at_entry(ctx, kind, size, arg, 0) else {
        return false;
    };
    // SAFETY: `regs` points at the probed task's saved registers for the program's lifetime.
    let (ip, fp) = unsafe { ((*ctx.regs).rip, (*ctx.regs).rbp) };
    job.sp = pending.sp;
    job.pending = pending;
    job.pid_tgid = pid_tgid;
    job.ip = ip;
    job.fp = fp;
    job.what = JOB_PENDING;
    true
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
