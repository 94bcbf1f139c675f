//! Maps and the small helpers every probe family shares.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_F_USER_STACK, BPF_NOEXIST},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_prandom_u32, bpf_get_stack, bpf_ktime_get_ns,
        bpf_probe_read_user,
    },
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::ProbeContext,
    EbpfContext,
};
use tracer_common::{
    sampling::{self, layout},
    AllocInfo, AllocKey, Counter, NativeStack, Pending, StackKey, StackTotals, TextRange,
    COUNTER_SLOTS, DEFAULT_MAX_ALLOCS, DEFAULT_MAX_STACKS, DEFAULT_MAX_STACK_TOTALS, EVENTS_BYTES,
    MAX_NATIVE_FRAMES, MAX_PENDING, MAX_PY_TARGETS,
};

// The names of these statics are the map names user space looks up (tracer_common::MAP_*).
#[map]
pub static ALLOCS: HashMap<AllocKey, AllocInfo> =
    HashMap::with_max_entries(DEFAULT_MAX_ALLOCS, BPF_F_NO_PREALLOC);

#[map]
pub static STACK_TOTALS: HashMap<StackKey, StackTotals> =
    HashMap::with_max_entries(DEFAULT_MAX_STACK_TOTALS, BPF_F_NO_PREALLOC);

#[map]
pub static STACKS: HashMap<u64, NativeStack> =
    HashMap::with_max_entries(DEFAULT_MAX_STACKS, BPF_F_NO_PREALLOC);

#[map]
pub static STACK_SCRATCH: PerCpuArray<NativeStack> = PerCpuArray::with_max_entries(1, 0);

/// The kernel's `EEXIST`, as map updates return it (negated).
const EEXIST: i32 = 17;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Python processes whose interpreter has no frame pointers (see [`tracer_common::MAP_NATIVE_CUT`]).
#[map]
pub static NATIVE_CUT: HashMap<u32, TextRange> = HashMap::with_max_entries(MAX_PY_TARGETS, 0);

/// The current task's user stack (frame pointers), stored once under its own hash: its key
/// in [`STACKS`], or 0 (counted) when there is none or the map is full. Two different stacks
/// share a key only if their 64-bit FNV-1a hashes collide.
#[inline(always)]
pub fn native_stack(ctx: &impl EbpfContext) -> u64 {
    let Some(buf) = STACK_SCRATCH.get_ptr_mut(0) else {
        count(Counter::StackError);
        return 0;
    };
    if capture_stack(ctx, buf).is_none() {
        return 0;
    }
    store_stack(buf)
}

/// The largest step between two frame pointers the entry walk follows: a frame of more
/// than 1 MiB of locals ends the stack there.
const MAX_FRAME_BYTES: u64 = 1 << 20;

/// The probed task's user stack at an allocator's entry in process `tgid`, whose caller is
/// `caller`, stored as in [`native_stack`]: the probed instruction, then the return address
/// of each frame-pointer frame.
///
/// Walked here rather than with `bpf_get_stack`, each frame pointer checked before it is
/// read: it must lie above the previous one (the first, above the stack pointer), by at most
/// [`MAX_FRAME_BYTES`], 8-aligned. Code built without frame pointers leaves junk in the
/// register, and `bpf_get_stack` follows it to an unmapped address: that fault cost about
/// 0.8 us per call in the C loop of `bench/probe_cost.sh`, whose stack is one frame. Here
/// junk ends the stack without a read.
///
/// Where the process's interpreter has no frame pointers ([`NATIVE_CUT`]) the stack also
/// ends at its first frame in the interpreter; when the caller is interpreter code, nothing
/// is walked (the caller comes from `[sp]`).
#[inline(always)]
pub fn native_stack_at_entry(ctx: &ProbeContext, tgid: u32, caller: u64) -> u64 {
    // SAFETY: `regs` points at the probed task's saved registers for the program's lifetime.
    let (ip, sp, fp) = unsafe { ((*ctx.regs).rip, (*ctx.regs).rsp, (*ctx.regs).rbp) };
    native_stack_of(tgid, caller, ip, sp, fp)
}

/// [`native_stack_at_entry`] from the values it takes from the registers: the probed
/// instruction `ip`, the stack pointer `sp` at the function's entry, the frame pointer `fp`.
/// A session's return run passes the same values (its function's address, its entry stack
/// pointer, and `rbp`, which the function saved and restored).
///
/// A function of its own, the cut a plain range (empty without one): the verifier checks its
/// loop once per caller, with one state per frame, not once per state of the caller.
#[inline(never)]
pub fn native_stack_of(tgid: u32, caller: u64, ip: u64, sp: u64, fp: u64) -> u64 {
    // SAFETY: copied out at once.
    let (start, end) = match unsafe { NATIVE_CUT.get(&tgid) } {
        Some(cut) => (cut.start, cut.end),
        None => (0, 0),
    };
    let Some(buf) = STACK_SCRATCH.get_ptr_mut(0) else {
        count(Counter::StackError);
        return 0;
    };
    // SAFETY: per-CPU scratch slot, used by one program at a time on this CPU.
    unsafe {
        (*buf).ips[0] = ip;
        (*buf).len = 1;
    }
    if caller < start || caller >= end {
        let (mut below, mut fp) = (sp, fp);
        for i in 1..MAX_NATIVE_FRAMES {
            if fp <= below || fp - below > MAX_FRAME_BYTES || fp & 7 != 0 {
                break;
            }
            // SAFETY: bpf_probe_read_user tolerates any address.
            let Ok(frame) = (unsafe { bpf_probe_read_user(fp as *const [u64; 2]) }) else {
                break;
            };
            let ret = frame[1];
            if ret == 0 {
                break;
            }
            // SAFETY: as above; `i` is within `ips`.
            unsafe {
                (*buf).ips[i] = ret;
                (*buf).len = (i + 1) as u32;
            }
            if ret >= start && ret < end {
                break;
            }
            below = fp;
            fp = frame[0];
        }
    }
    store_stack(buf)
}

/// Unwinds the current task's user stack into `buf`, its length included: the number of
/// frames, or None (counted).
#[inline(always)]
fn capture_stack(ctx: &impl EbpfContext, buf: *mut NativeStack) -> Option<usize> {
    // SAFETY: per-CPU scratch slot, used by one program at a time on this CPU; the helper
    // writes at most the size given, which is that of `ips`.
    let n = unsafe {
        bpf_get_stack(
            ctx.as_ptr(),
            (&raw mut (*buf).ips).cast(),
            (8 * MAX_NATIVE_FRAMES) as u32,
            BPF_F_USER_STACK as u64,
        )
    };
    if n <= 0 {
        count(Counter::StackError);
        return None;
    }
    let len = (n as u64 / 8) as usize;
    // SAFETY: as above.
    unsafe { (*buf).len = len as u32 };
    Some(len)
}

/// Stores the first `buf.len` frames of `buf` in [`STACKS`] under their hash; returns the key,
/// or 0 (counted) when the map is full. The length is read back from the map, where the
/// verifier knows no value: it checks this loop once, not once for each length a caller's cut
/// can end at (that was most of attach's verification time).
#[inline(always)]
fn store_stack(buf: *mut NativeStack) -> u64 {
    // SAFETY: per-CPU scratch slot (as in capture_stack).
    let len = unsafe { core::ptr::read_volatile(&raw const (*buf).len) } as usize;
    let mut hash = FNV_OFFSET;
    for i in 0..MAX_NATIVE_FRAMES {
        if i >= len {
            break;
        }
        // SAFETY: as above; `i` is within `ips`.
        hash = (hash ^ unsafe { (*buf).ips[i] }).wrapping_mul(FNV_PRIME);
    }
    let key = hash | 1;
    if STACKS.get_ptr(&key).is_none() {
        // SAFETY: as above.
        if STACKS.insert(&key, unsafe { &*buf }, 0).is_err() {
            count(Counter::StackCollision);
            return 0;
        }
    }
    key
}

#[map]
pub static PENDING: HashMap<u64, Pending> = HashMap::with_max_entries(MAX_PENDING, 0);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// `--mode sampled`: the tables of [`tracer_common::sampling`], written by user space at load.
#[map]
pub static SAMPLING: Array<u64> = Array::with_max_entries(layout::ENTRIES, 0);

/// `--mode sampled`: bytes left to the next sample point, per CPU (0: not started).
#[map]
pub static SAMPLER: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Mean bytes between samples (`--sample-bytes`), or 0 in exact mode. Set by user space at load
/// (read-only data: the verifier prunes the sampled paths in exact mode).
#[unsafe(no_mangle)]
static SAMPLE_BYTES: u64 = 0;

#[inline(always)]
pub fn sample_bytes() -> u64 {
    // SAFETY: a plain read of a global; volatile so the compiler does not fold the initial 0.
    unsafe { core::ptr::read_volatile(&SAMPLE_BYTES) }
}

#[inline(always)]
fn table(i: u32) -> u64 {
    SAMPLING.get(i).copied().unwrap_or(0)
}

/// `--mode sampled`: whether this call of `size` bytes is recorded. One per-CPU map lookup,
/// plus two random numbers and two table reads when a sample point is reached.
#[inline(always)]
pub fn sampled(size: u64) -> bool {
    let Some(countdown) = SAMPLER.get_ptr_mut(0) else {
        return true;
    };
    let next = || {
        // SAFETY: plain helper calls.
        let (r1, r2) = unsafe { (bpf_get_prandom_u32(), bpf_get_prandom_u32()) };
        sampling::draw(r1, r2, table)
    };
    // SAFETY: per-CPU slot; uprobe programs do not nest on one CPU.
    unsafe { sampling::decide(&mut *countdown, size, next) }
}

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot; uprobe programs do not nest on one CPU.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
pub fn tgid_of(pid_tgid: u64) -> u32 {
    (pid_tgid >> 32) as u32
}

#[inline(always)]
pub fn stack_pointer(ctx: &ProbeContext) -> u64 {
    // SAFETY: `regs` points at the probed task's saved registers for the program's lifetime.
    unsafe { (*ctx.regs).rsp }
}

/// `--mode sampled`, an unsampled call of at least [`sampling::NESTED_WATCH_BYTES`]: a pending
/// entry without stack (kind `Other`, which the return probe ignores), only so that an mmap or
/// mremap made inside it is seen as nested.
#[inline(always)]
pub fn enter_unrecorded(ctx: &ProbeContext) -> bool {
    let pid_tgid = bpf_get_current_pid_tgid();
    let sp = stack_pointer(ctx);
    // SAFETY: copied out at once.
    if let Some(outer) = unsafe { PENDING.get(&pid_tgid) } {
        if sp <= outer.sp {
            return false;
        }
    }
    let pending = Pending {
        sp,
        size: 0,
        arg: 0,
        arg2: 0,
        ts_ns: 0,
        stack: StackKey {
            tgid: tgid_of(pid_tgid),
            kind: tracer_common::AllocKind::Other as u32,
            native_stack: 0,
            caller: 0,
            py_stack: 0,
        },
    };
    if PENDING.insert(&pid_tgid, &pending, 0).is_err() {
        count(Counter::PendingFull);
        return false;
    }
    true
}

/// A tracked call pending for longer than this is taken as abandoned (its return missed) by
/// the thread's next tracked call, even a deeper one. Allocator calls made inside another
/// (glibc's malloc calling mmap, realloc calling mremap) come within microseconds of it; the
/// margin covers a thread descheduled in between on a loaded machine.
const STALE_PENDING_NS: u64 = 250_000_000;

/// Starts tracking an allocator call on this thread, unless it is made from inside another
/// tracked allocator call (glibc's malloc calls mmap, reallocarray tail-calls realloc, ...).
#[inline(always)]
pub fn enter(ctx: &ProbeContext, kind: u32, size: u64, arg: u64, arg2: u64) -> bool {
    let Some((pid_tgid, mut pending)) = pending_at_entry(ctx, kind, size, arg, arg2) else {
        return false;
    };
    pending.stack.native_stack =
        native_stack_at_entry(ctx, pending.stack.tgid, pending.stack.caller);
    pending.stack.py_stack = crate::python::python_stack(pid_tgid);
    if PENDING.insert(&pid_tgid, &pending, 0).is_err() {
        count(Counter::PendingFull);
        return false;
    }
    true
}

/// The thread's `pid_tgid` and what [`enter`] keeps of a call, but for its stacks (left 0);
/// None for a call made from inside another tracked allocator call.
#[inline(always)]
pub fn pending_at_entry(
    ctx: &ProbeContext,
    kind: u32,
    size: u64,
    arg: u64,
    arg2: u64,
) -> Option<(u64, Pending)> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let sp = stack_pointer(ctx);
    if inside_outer_call(pid_tgid, sp, false) {
        return None;
    }
    // At the first instruction(s) of the function `[sp]` holds the return address: the
    // caller's frame, which frame-pointer unwinding from here would skip.
    // SAFETY: bpf_probe_read_user tolerates any address.
    let caller = unsafe { bpf_probe_read_user(sp as *const u64) }.unwrap_or(0);
    let pending = Pending {
        sp,
        size,
        arg,
        arg2,
        // SAFETY: plain helper call.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        stack: StackKey {
            tgid: tgid_of(pid_tgid),
            kind,
            native_stack: 0,
            caller,
            py_stack: 0,
        },
    };
    Some((pid_tgid, pending))
}

/// Whether this thread's call at stack pointer `sp` is made from inside another tracked
/// allocator call (counted), which accounts for this memory itself. A pending call that is not
/// an outer one was abandoned (its return missed): counted, and with `drop_stale` removed (a
/// caller that leaves no pending entry of its own, which would replace it).
#[inline(always)]
pub fn inside_outer_call(pid_tgid: u64, sp: u64, drop_stale: bool) -> bool {
    // SAFETY: the value is copied out before the map can change under it.
    let Some(outer) = (unsafe { PENDING.get(&pid_tgid) }).copied() else {
        return false;
    };
    // A deeper stack pointer (or the same one, for a tail call) means we are inside the outer
    // call; unless the outer call is older than any allocator call lasts: its return was
    // missed (a longjmp out of it) and this call, deeper than the abandoned one, is the
    // thread's next own call.
    // SAFETY: plain helper call, made only on this rare path.
    if sp <= outer.sp
        && (outer.ts_ns == 0
            || unsafe { bpf_ktime_get_ns() }.wrapping_sub(outer.ts_ns) < STALE_PENDING_NS)
    {
        count(Counter::Nested);
        return true;
    }
    count(Counter::MissedReturn);
    if drop_stale {
        let _ = PENDING.remove(&pid_tgid);
    }
    false
}

/// Takes this thread's pending call if `ret_sp` is its matching return.
#[inline(always)]
pub fn take_pending(pid_tgid: u64, ret_sp: u64) -> Option<Pending> {
    // SAFETY: copied out before removal.
    let pending = *unsafe { PENDING.get(&pid_tgid) }?;
    let expected = pending.sp.wrapping_add(8);
    if ret_sp < expected {
        // Return of a nested call made by the allocator itself.
        return None;
    }
    let _ = PENDING.remove(&pid_tgid);
    if ret_sp > expected {
        count(Counter::MissedReturn);
        return None;
    }
    Some(pending)
}

/// Adds (`sign` 1) or removes (-1) a block of `size` bytes to its stack's totals. In sampled
/// mode the totals are estimates: each recorded block counts for its weight (bytes, and
/// allocations in [`sampling::COUNT_SCALE`] units), the same on the way in and out.
#[inline(always)]
pub fn add_totals(stack: &StackKey, size: u64, sign: i64) {
    let (bytes, allocs) = sampling::weights(size, sample_bytes(), table);
    add_weighted(stack, bytes, allocs, sign);
}

#[inline(always)]
fn add_weighted(stack: &StackKey, bytes: u64, allocs: u64, sign: i64) {
    let mut slot = STACK_TOTALS.get_ptr_mut(stack);
    if slot.is_none() {
        let _ = STACK_TOTALS.insert(stack, &StackTotals::default(), BPF_NOEXIST as u64);
        slot = STACK_TOTALS.get_ptr_mut(stack);
    }
    let Some(totals) = slot else {
        count(Counter::StackTotalsFull);
        return;
    };
    // SAFETY: `totals` points into the map value, which stays valid for this program run;
    // the fields are 8-byte aligned and shared between CPUs, hence atomics.
    // The bpfel target has no `Atomic*::fetch_add`; the intrinsic lowers to BPF's atomic add.
    unsafe {
        atomic_xadd::<i64, i64, { AtomicOrdering::Relaxed }>(
            &raw mut (*totals).live_bytes,
            (bytes as i64).wrapping_mul(sign),
        );
        atomic_xadd::<i64, i64, { AtomicOrdering::Relaxed }>(
            &raw mut (*totals).live_allocs,
            (allocs as i64).wrapping_mul(sign),
        );
        atomic_xadd::<i64, i64, { AtomicOrdering::Relaxed }>(&raw mut (*totals).live_samples, sign);
        if sign > 0 {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
                &raw mut (*totals).total_samples,
                1,
            );
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
                &raw mut (*totals).total_bytes,
                bytes,
            );
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
                &raw mut (*totals).total_allocs,
                allocs,
            );
        }
    }
}

/// Records a live heap block.
#[inline(always)]
pub fn record(addr: u64, size: u64, pending: &Pending) {
    let key = AllocKey {
        tgid: pending.stack.tgid,
        _pad: 0,
        addr,
    };
    let info = AllocInfo {
        size,
        ts_ns: pending.ts_ns,
        stack: pending.stack,
    };
    // One map operation when the address is new (almost always). A block we still hold at
    // this address was freed behind our back: retire it, then insert.
    if let Err(e) = ALLOCS.insert(&key, &info, BPF_NOEXIST as u64) {
        if e != -EEXIST {
            count(Counter::AllocMapFull);
            return;
        }
        forget_key(&key);
        if ALLOCS.insert(&key, &info, BPF_NOEXIST as u64).is_err() {
            count(Counter::AllocMapFull);
            return;
        }
    }
    add_totals(&pending.stack, size, 1);
    count(Counter::AllocsSeen);
}

/// Stops tracking the block at `key`; returns whether it was tracked.
#[inline(always)]
pub fn forget_key(key: &AllocKey) -> bool {
    // SAFETY: copied out before removal.
    let Some(info) = (unsafe { ALLOCS.get(key) }).copied() else {
        return false;
    };
    if ALLOCS.remove(key).is_err() {
        // Another CPU freed it first.
        return false;
    }
    add_totals(&info.stack, info.size, -1);
    count(Counter::FreesSeen);
    true
}

#[inline(always)]
pub fn forget(tgid: u32, addr: u64) -> bool {
    forget_key(&AllocKey {
        tgid,
        _pad: 0,
        addr,
    })
}
