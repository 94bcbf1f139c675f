//! Entry probes of the malloc family and the one return probe that completes them all.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use tracer_common::{AllocKind, Counter, MapEventKind};

use crate::{
    maps::{count, enter, forget, record, take_pending},
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

#[uprobe]
pub fn malloc_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, AllocKind::Malloc as u32, arg(&ctx, 0), 0, 0);
    0
}

#[uprobe]
pub fn calloc_enter(ctx: ProbeContext) -> u32 {
    match mul(arg(&ctx, 0), arg(&ctx, 1)) {
        Some(size) => enter(&ctx, AllocKind::Calloc as u32, size, 0, 0),
        // glibc returns NULL with ENOMEM: nothing to track.
        None => count(Counter::SizeOverflow),
    }
    0
}

#[uprobe]
pub fn realloc_enter(ctx: ProbeContext) -> u32 {
    enter(
        &ctx,
        AllocKind::Realloc as u32,
        arg(&ctx, 1),
        arg(&ctx, 0),
        0,
    );
    0
}

#[uprobe]
pub fn reallocarray_enter(ctx: ProbeContext) -> u32 {
    match mul(arg(&ctx, 1), arg(&ctx, 2)) {
        Some(size) => enter(&ctx, AllocKind::ReallocArray as u32, size, arg(&ctx, 0), 0),
        None => count(Counter::SizeOverflow),
    }
    0
}

#[uprobe]
pub fn posix_memalign_enter(ctx: ProbeContext) -> u32 {
    // int posix_memalign(void **memptr, size_t alignment, size_t size)
    enter(
        &ctx,
        AllocKind::PosixMemalign as u32,
        arg(&ctx, 2),
        arg(&ctx, 0),
        0,
    );
    0
}

#[uprobe]
pub fn aligned_alloc_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, AllocKind::AlignedAlloc as u32, arg(&ctx, 1), 0, 0);
    0
}

#[uprobe]
pub fn memalign_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, AllocKind::Memalign as u32, arg(&ctx, 1), 0, 0);
    0
}

#[uprobe]
pub fn valloc_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, AllocKind::Valloc as u32, arg(&ctx, 0), 0, 0);
    0
}

#[uprobe]
pub fn pvalloc_enter(ctx: ProbeContext) -> u32 {
    // pvalloc rounds the request up to whole pages.
    let size = arg(&ctx, 0).saturating_add(PAGE - 1) & !(PAGE - 1);
    enter(&ctx, AllocKind::Pvalloc as u32, size, 0, 0);
    0
}

// CPython's object allocator (`--pymalloc`). The `ctx` variants are pymalloc's own
// functions, `_PyObject_Malloc(void *ctx, size_t n)` and friends, which every PyObject_* and
// PyMem_* call reaches; the plain ones are the exported entry points, for stripped builds.

#[uprobe]
pub fn pymalloc_ctx_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, AllocKind::PyMalloc as u32, arg(&ctx, 1), 0, 0);
    0
}

#[uprobe]
pub fn pycalloc_ctx_enter(ctx: ProbeContext) -> u32 {
    match mul(arg(&ctx, 1), arg(&ctx, 2)) {
        Some(size) => enter(&ctx, AllocKind::PyCalloc as u32, size, 0, 0),
        None => count(Counter::SizeOverflow),
    }
    0
}

#[uprobe]
pub fn pyrealloc_ctx_enter(ctx: ProbeContext) -> u32 {
    enter(
        &ctx,
        AllocKind::PyRealloc as u32,
        arg(&ctx, 2),
        arg(&ctx, 1),
        0,
    );
    0
}

#[uprobe]
pub fn pymalloc_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, AllocKind::PyMalloc as u32, arg(&ctx, 0), 0, 0);
    0
}

#[uprobe]
pub fn pycalloc_enter(ctx: ProbeContext) -> u32 {
    match mul(arg(&ctx, 0), arg(&ctx, 1)) {
        Some(size) => enter(&ctx, AllocKind::PyCalloc as u32, size, 0, 0),
        None => count(Counter::SizeOverflow),
    }
    0
}

#[uprobe]
pub fn pyrealloc_enter(ctx: ProbeContext) -> u32 {
    enter(
        &ctx,
        AllocKind::PyRealloc as u32,
        arg(&ctx, 1),
        arg(&ctx, 0),
        0,
    );
    0
}

/// Attached as a uretprobe to every allocating function; the pending entry says which.
#[uretprobe]
pub fn alloc_return(ctx: RetProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: `regs` points at the task's saved registers for the program's lifetime.
    let sp = unsafe { (*ctx.regs).rsp };
    let Some(p) = take_pending(pid_tgid, sp) else {
        return 0;
    };
    let ret: u64 = ctx.ret();
    const REALLOC: u32 = AllocKind::Realloc as u32;
    const REALLOCARRAY: u32 = AllocKind::ReallocArray as u32;
    const POSIX_MEMALIGN: u32 = AllocKind::PosixMemalign as u32;
    const MMAP: u32 = AllocKind::Mmap as u32;
    const MREMAP: u32 = AllocKind::Mremap as u32;
    const PYREALLOC: u32 = AllocKind::PyRealloc as u32;
    match p.stack.kind {
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
    0
}
