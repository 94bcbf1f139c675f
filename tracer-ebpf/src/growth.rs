//! `--mode growth`: resident memory growth from page faults, without allocator uprobes.
//!
//! Tracepoints fire for every process on the host, so every program starts with one lookup in
//! [`TARGETS`] and returns at once for anything else. In a traced process:
//! - a not-present fault (`exceptions:page_fault_user`, and `page_fault_kernel` on a user
//!   address: the kernel's own `copy_to_user` into a fresh buffer) on an anonymous private
//!   mapping records the page in `ALLOCS` as a 4 KiB block with the faulting thread's native
//!   and Python stack, and adds it to `STACK_TOTALS` (kind [`AllocKind::PageFault`]);
//! - `munmap`, `madvise` (DONTNEED, FREE, REMOVE), `mmap(MAP_FIXED)` over old pages and brk
//!   shrinking release the recorded pages of their range; `mremap` moves or releases them.
//!
//! Ranges are walked in the kernel, synchronously (so a range unmapped and mapped again at
//! once is never confused with its successor), with `bpf_loop`: first over the range's 2 MiB
//! chunks, looking each up in [`PAGE_CHUNKS`], then over the pages of the chunks that hold
//! recorded pages. A 1 GiB munmap of untouched memory costs 512 lookups.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        generated::{bpf_find_vma, bpf_get_current_task_btf, bpf_loop},
    },
    macros::{map, tracepoint},
    maps::{Array, HashMap, PerCpuArray},
    programs::TracePointContext,
    EbpfContext,
};
use tracer_common::{
    growth::{
        chunk_key, ChunkInfo, GrowthConfig, GrowthCounter, MremapArgs, CHUNK_SHIFT,
        GROWTH_COUNTER_SLOTS, MAX_MREMAP_PENDING, MAX_PAGE_CHUNKS, MAX_TARGETS, PAGE_SHIFT,
        PAGE_SIZE, THP_ALWAYS, THP_NEVER,
    },
    AllocInfo, AllocKey, AllocKind, Pending, StackKey,
};

use crate::maps::{add_totals, forget, native_stack, record, tgid_of, ALLOCS};

#[map]
pub static TARGETS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_TARGETS, 0);

#[map]
pub static PAGE_CHUNKS: HashMap<u64, ChunkInfo> =
    HashMap::with_max_entries(MAX_PAGE_CHUNKS, BPF_F_NO_PREALLOC);

#[map]
pub static BRK: HashMap<u32, u64> = HashMap::with_max_entries(MAX_TARGETS, 0);

#[map]
pub static MREMAP_PENDING: HashMap<u64, MremapArgs> =
    HashMap::with_max_entries(MAX_MREMAP_PENDING, 0);

#[map]
pub static GROWTH_CONFIG: Array<GrowthConfig> = Array::with_max_entries(1, 0);

#[map]
pub static GROWTH_COUNTERS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(GROWTH_COUNTER_SLOTS, 0);

/// First address above user space (x86_64, 4-level and 5-level paging alike keep user
/// addresses below 2^56; anything from here is a kernel address).
const USER_TOP: u64 = 1 << 56;
const CHUNK_SIZE: u64 = 1 << CHUNK_SHIFT;
/// A transparent huge page.
const HUGE_SIZE: u64 = 2 << 20;
/// vm_flags bits (include/linux/mm.h; stable since 2.6.38).
const VM_HUGEPAGE: u64 = 0x2000_0000;
const VM_NOHUGEPAGE: u64 = 0x4000_0000;
const PAGE_MASK: u64 = !(PAGE_SIZE - 1);
/// x86 page-fault error code: the page was present (a protection fault, e.g. the first write
/// to a zero page or to a copy-on-write page, which the not-present fault already counted).
const PF_PROT: u64 = 1;
/// bpf_loop's own limit on iterations.
const MAX_LOOPS: u64 = 1 << 23;

const MAP_FIXED: u64 = 0x10;
const MADV_DONTNEED: u64 = 4;
const MADV_FREE: u64 = 8;
const MADV_REMOVE: u64 = 9;
const MADV_DONTNEED_LOCKED: u64 = 24;

#[inline(always)]
fn gcount(c: GrowthCounter) {
    if let Some(slot) = GROWTH_COUNTERS.get_ptr_mut(c as u32) {
        // SAFETY: per-CPU slot; tracepoint programs do not nest on one CPU.
        unsafe { *slot += 1 };
    }
}

/// The traced process the current task belongs to, if any.
#[inline(always)]
fn target() -> Option<(u64, u32)> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = tgid_of(pid_tgid);
    TARGETS.get_ptr(&tgid)?;
    Some((pid_tgid, tgid))
}

/// A field of the tracepoint record at a constant offset (see the event's `format` file).
#[inline(always)]
fn field(ctx: &TracePointContext, offset: usize) -> u64 {
    // SAFETY: tracepoint records are readable at constant, aligned offsets within the record;
    // every offset used here is that of an 8-byte field of the event's format.
    unsafe { core::ptr::read(ctx.as_ptr().cast::<u8>().add(offset).cast::<u64>()) }
}

#[inline(always)]
fn page_up(x: u64) -> u64 {
    x.saturating_add(PAGE_SIZE - 1) & PAGE_MASK
}

// ---------------------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------------------

#[repr(C)]
struct VmaCtx {
    cfg: GrowthConfig,
    /// 0: not found; 1: file-backed or shared; 2: anonymous private.
    kind: u64,
    /// The mapping's range, and whether THP applies to it (anonymous only).
    start: u64,
    end: u64,
    huge_ok: u64,
}

/// The u64 at byte `offset` of the kernel structure at `base`. The offset is bounded (every
/// structure read here is far smaller than 4 KiB): the verifier refuses pointer arithmetic
/// with an unbounded scalar.
#[inline(always)]
fn kernel_u64(base: *mut c_void, offset: u64) -> Option<u64> {
    let at = (base as u64).wrapping_add(offset & 0xff8);
    // SAFETY: fault-tolerant helper.
    unsafe { bpf_probe_read_kernel(at as *const u64) }.ok()
}

extern "C" fn vma_kind(_task: *mut c_void, vma: *mut c_void, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the caller's VmaCtx on its stack.
    let ctx = unsafe { &mut *ctx.cast::<VmaCtx>() };
    // Offsets come from the kernel's BTF (user space).
    if kernel_u64(vma, ctx.cfg.vma_vm_file) != Some(0) {
        ctx.kind = 1;
        return 0;
    }
    ctx.kind = 2;
    ctx.start = kernel_u64(vma, ctx.cfg.vma_vm_start).unwrap_or(0);
    ctx.end = kernel_u64(vma, ctx.cfg.vma_vm_end).unwrap_or(0);
    if ctx.cfg.thp != THP_NEVER {
        let flags = kernel_u64(vma, ctx.cfg.vma_vm_flags).unwrap_or(0);
        let applies = if ctx.cfg.thp == THP_ALWAYS {
            flags & VM_NOHUGEPAGE == 0
        } else {
            flags & VM_HUGEPAGE != 0
        };
        ctx.huge_ok = u64::from(applies);
    }
    0
}

/// Records a first-touch fault at `address` by the current thread.
#[inline(always)]
fn on_fault(ctx: &TracePointContext) -> u32 {
    let Some((pid_tgid, tgid)) = target() else {
        return 0;
    };
    // page_fault_user / page_fault_kernel: address at 8, ip at 16, error_code at 24.
    let error_code = field(ctx, 24);
    let address = field(ctx, 8);
    if error_code & PF_PROT != 0 || address >= USER_TOP {
        return 0;
    }
    let page = address & PAGE_MASK;
    let chunk = chunk_key(tgid, page);
    let cached = PAGE_CHUNKS.get_ptr_mut(&chunk);
    // SAFETY: `cached` points into the map value for this program run.
    let mut info = cached.map(|p| unsafe { *p }).unwrap_or_default();
    if !(info.anon_start <= page && page < info.anon_end) {
        // Not known to be anonymous: ask the kernel for the mapping (the slow path).
        let Some(cfg) = GROWTH_CONFIG.get(0) else {
            return 0;
        };
        let mut vctx = VmaCtx {
            cfg: *cfg,
            kind: 0,
            start: 0,
            end: 0,
            huge_ok: 0,
        };
        // SAFETY: helper calls; the callback only touches `vctx`.
        let found = unsafe {
            bpf_find_vma(
                bpf_get_current_task_btf(),
                page,
                vma_kind as *mut c_void,
                (&raw mut vctx).cast(),
                0,
            )
        };
        if found != 0 || vctx.kind == 0 {
            gcount(GrowthCounter::FaultVmaUnknown);
            return 0;
        }
        if vctx.kind == 1 {
            gcount(GrowthCounter::FaultFileBacked);
            return 0;
        }
        info = ChunkInfo {
            anon_start: vctx.start,
            anon_end: vctx.end,
            huge_ok: vctx.huge_ok,
        };
        match cached {
            // SAFETY: as above.
            Some(p) => unsafe { *p = info },
            None => {
                // The chunk must be marked before the page is recorded, or an unmap could
                // miss it.
                if PAGE_CHUNKS
                    .insert(&chunk, &info, BPF_NOEXIST as u64)
                    .is_err()
                    && PAGE_CHUNKS.get_ptr(&chunk).is_none()
                {
                    gcount(GrowthCounter::ChunkMapFull);
                    return 0;
                }
            }
        }
    }
    if info.huge_ok != 0 {
        let block = page & !(HUGE_SIZE - 1);
        if info.anon_start <= block && block.wrapping_add(HUGE_SIZE) <= info.anon_end {
            gcount(GrowthCounter::FaultMaybeHuge);
        }
    }
    let ip = field(ctx, 16);
    let native_stack = native_stack(ctx);
    let pending = Pending {
        sp: 0,
        size: PAGE_SIZE,
        arg: 0,
        arg2: 0,
        // SAFETY: plain helper call.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        stack: StackKey {
            tgid,
            kind: AllocKind::PageFault as u32,
            native_stack,
            // The faulting instruction, when it is in user space (a fault taken by the kernel
            // inside a syscall has the syscall's user address at the top of the native stack).
            caller: if ip < USER_TOP { ip } else { 0 },
            py_stack: crate::python::python_stack(pid_tgid),
        },
    };
    // A page still recorded here was released behind our back: record() retires it first.
    record(page, PAGE_SIZE, &pending);
    0
}

/// Attached to both `exceptions:page_fault_user` and `exceptions:page_fault_kernel` (same
/// record layout), so the Python walk inside is verified once.
#[tracepoint]
pub fn growth_fault(ctx: TracePointContext) -> u32 {
    on_fault(&ctx)
}

// ---------------------------------------------------------------------------------------
// Releasing and moving ranges
// ---------------------------------------------------------------------------------------

const OP_RELEASE: u64 = 0;
const OP_MOVE: u64 = 1;
/// Only forget the cached mappings of the range's chunks.
const OP_INVALIDATE: u64 = 2;

#[repr(C)]
struct RangeCtx {
    tgid: u64,
    start: u64,
    end: u64,
    /// OP_MOVE: added to each page's address.
    delta: u64,
    op: u64,
}

#[repr(C)]
struct PagesCtx {
    tgid: u64,
    base: u64,
    delta: u64,
    op: u64,
    /// Destination chunk known to be marked (OP_MOVE).
    marked: u64,
}

#[inline(always)]
fn move_page(tgid: u32, from: u64, to: u64, marked: &mut u64) {
    let old = AllocKey {
        tgid,
        _pad: 0,
        addr: from,
    };
    // SAFETY: copied out before removal.
    let Some(info) = (unsafe { ALLOCS.get(&old) }).copied() else {
        return;
    };
    if ALLOCS.remove(&old).is_err() {
        return;
    }
    let chunk = chunk_key(tgid, to);
    if *marked != chunk {
        if PAGE_CHUNKS.get_ptr(&chunk).is_none()
            && PAGE_CHUNKS
                .insert(&chunk, &ChunkInfo::default(), BPF_NOEXIST as u64)
                .is_err()
            && PAGE_CHUNKS.get_ptr(&chunk).is_none()
        {
            lose(&info);
            return;
        }
        *marked = chunk;
    }
    let new = AllocKey {
        tgid,
        _pad: 0,
        addr: to,
    };
    if ALLOCS.insert(&new, &info, 0).is_err() {
        lose(&info);
        return;
    }
    gcount(GrowthCounter::PagesMoved);
}

#[inline(always)]
fn lose(info: &AllocInfo) {
    add_totals(&info.stack, info.size, -1);
    gcount(GrowthCounter::PageMoveLost);
}

extern "C" fn page_step(i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the caller's PagesCtx on its stack.
    let c = unsafe { &mut *ctx.cast::<PagesCtx>() };
    let addr = c.base.wrapping_add(i << PAGE_SHIFT);
    let tgid = c.tgid as u32;
    if c.op == OP_MOVE {
        move_page(tgid, addr, addr.wrapping_add(c.delta), &mut c.marked);
    } else if forget(tgid, addr) {
        gcount(GrowthCounter::PagesReleased);
    }
    0
}

extern "C" fn chunk_step(i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the caller's RangeCtx on its stack.
    let c = unsafe { &*ctx.cast::<RangeCtx>() };
    let chunk_start = (c.start & !(CHUNK_SIZE - 1)).wrapping_add(i << CHUNK_SHIFT);
    let key = chunk_key(c.tgid as u32, chunk_start);
    let Some(info) = PAGE_CHUNKS.get_ptr_mut(&key) else {
        return 0;
    };
    // What is mapped here changes: forget the anonymous mapping seen in this chunk.
    // SAFETY: points into the map value for this program run.
    unsafe {
        (*info).anon_start = 0;
        (*info).anon_end = 0;
    }
    if c.op == OP_INVALIDATE {
        return 0;
    }
    let chunk_end = chunk_start.wrapping_add(CHUNK_SIZE);
    let from = if c.start > chunk_start {
        c.start
    } else {
        chunk_start
    };
    let to = if c.end < chunk_end { c.end } else { chunk_end };
    if to <= from {
        return 0;
    }
    let mut pages = PagesCtx {
        tgid: c.tgid,
        base: from,
        delta: c.delta,
        op: c.op,
        marked: 0,
    };
    let n = ((to - from) >> PAGE_SHIFT) as u32;
    // SAFETY: helper call; the callback only touches `pages` and maps.
    unsafe { bpf_loop(n, page_step as *mut c_void, (&raw mut pages).cast(), 0) };
    if from == chunk_start && to == chunk_end {
        // The whole chunk left the address space: nothing can fault in it until it is mapped
        // again, so its mark can go.
        let _ = PAGE_CHUNKS.remove(&key);
    }
    0
}

/// Releases (or, with OP_MOVE, moves by `delta`) the recorded pages of `[start, end)`.
#[inline(always)]
fn walk_range(tgid: u32, start: u64, end: u64, op: u64, delta: u64) {
    let start = start & PAGE_MASK;
    let end = page_up(end);
    if end <= start || end > USER_TOP {
        return;
    }
    let chunks = ((end - 1) >> CHUNK_SHIFT) - (start >> CHUNK_SHIFT) + 1;
    let chunks = if chunks > MAX_LOOPS {
        MAX_LOOPS
    } else {
        chunks
    };
    let mut range = RangeCtx {
        tgid: tgid as u64,
        start,
        end,
        delta,
        op,
    };
    // SAFETY: helper call; the callback only touches `range` and maps.
    unsafe {
        bpf_loop(
            chunks as u32,
            chunk_step as *mut c_void,
            (&raw mut range).cast(),
            0,
        )
    };
}

#[inline(never)]
fn release(tgid: u32, start: u64, len: u64) {
    walk_range(tgid, start, start.saturating_add(len), OP_RELEASE, 0);
}

/// sys_enter_munmap: addr at 16, len at 24.
#[tracepoint]
pub fn growth_munmap(ctx: TracePointContext) -> u32 {
    if let Some((_, tgid)) = target() {
        release(tgid, field(&ctx, 16), field(&ctx, 24));
    }
    0
}

/// sys_enter_madvise: start at 16, len_in at 24, behavior at 32.
#[tracepoint]
pub fn growth_madvise(ctx: TracePointContext) -> u32 {
    if let Some((_, tgid)) = target() {
        let advice = field(&ctx, 32) & 0xffff_ffff;
        if matches!(
            advice,
            MADV_DONTNEED | MADV_FREE | MADV_REMOVE | MADV_DONTNEED_LOCKED
        ) {
            release(tgid, field(&ctx, 16), field(&ctx, 24));
        }
    }
    0
}

/// sys_enter_mmap: addr at 16, len at 24, flags at 40. MAP_FIXED replaces what was there.
#[tracepoint]
pub fn growth_mmap(ctx: TracePointContext) -> u32 {
    if let Some((_, tgid)) = target() {
        if field(&ctx, 40) & MAP_FIXED != 0 {
            release(tgid, field(&ctx, 16), field(&ctx, 24));
        }
    }
    0
}

/// sys_enter_brk: brk at 16. A break below the current one frees the pages above it.
#[tracepoint]
pub fn growth_brk_enter(ctx: TracePointContext) -> u32 {
    if let Some((_, tgid)) = target() {
        let wanted = field(&ctx, 16);
        // SAFETY: copied out.
        let current = unsafe { BRK.get(&tgid) }.copied().unwrap_or(0);
        if wanted != 0 && current != 0 && wanted < current {
            let from = page_up(wanted);
            let to = page_up(current);
            if to > from {
                release(tgid, from, to - from);
            }
        }
    }
    0
}

/// sys_exit_brk: ret at 16, the break now.
#[tracepoint]
pub fn growth_brk_exit(ctx: TracePointContext) -> u32 {
    if let Some((_, tgid)) = target() {
        let _ = BRK.insert(&tgid, &field(&ctx, 16), 0);
    }
    0
}

/// sys_enter_mremap: addr at 16, old_len at 24, new_len at 32.
#[tracepoint]
pub fn growth_mremap_enter(ctx: TracePointContext) -> u32 {
    if let Some((pid_tgid, _)) = target() {
        let args = MremapArgs {
            addr: field(&ctx, 16),
            old_len: field(&ctx, 24),
            new_len: field(&ctx, 32),
        };
        let _ = MREMAP_PENDING.insert(&pid_tgid, &args, 0);
    }
    0
}

/// sys_exit_mremap: ret at 16, the new address or -errno.
#[tracepoint]
pub fn growth_mremap_exit(ctx: TracePointContext) -> u32 {
    let Some((pid_tgid, tgid)) = target() else {
        return 0;
    };
    // SAFETY: copied out before removal.
    let Some(args) = (unsafe { MREMAP_PENDING.get(&pid_tgid) }).copied() else {
        gcount(GrowthCounter::MremapUnmatched);
        return 0;
    };
    let _ = MREMAP_PENDING.remove(&pid_tgid);
    let ret = field(&ctx, 16);
    if ret > u64::MAX - 4096 {
        return 0; // -errno: nothing changed
    }
    let old = args.addr & PAGE_MASK;
    let old_len = page_up(args.old_len);
    let new_len = page_up(args.new_len);
    if new_len < old_len {
        // Shrunk: the tail is gone (moved or not).
        release(tgid, old.wrapping_add(new_len), old_len - new_len);
    }
    if ret != old {
        // Whatever was mapped at the destination (MREMAP_FIXED) was replaced.
        walk_range(tgid, ret, ret.wrapping_add(new_len), OP_INVALIDATE, 0);
    } else if new_len > old_len {
        // Grown in place over what was free.
        walk_range(tgid, ret, ret.wrapping_add(new_len), OP_INVALIDATE, 0);
    }
    if ret != old && old_len != 0 {
        let kept = if new_len < old_len { new_len } else { old_len };
        walk_range(
            tgid,
            old,
            old.wrapping_add(kept),
            OP_MOVE,
            ret.wrapping_sub(old),
        );
    }
    0
}
