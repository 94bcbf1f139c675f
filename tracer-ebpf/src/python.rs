//! Walking the current thread's Python frames at an allocation.
//!
//! User space publishes, per traced interpreter, the offsets of the few fields the walk needs
//! ([`PyConfig`]) and, per thread, the address of its `PyThreadState` (refreshed as threads
//! come and go). Here we follow the frame chain from the thread state, record (code object,
//! instruction position) per frame, and store the stack once under its hash. Names, files and
//! lines are resolved in user space. A walk reads the frames only; the code objects' `co_name`
//! pointers, user space's check that a code object was not freed and its address reused, are
//! read once per new stack, when it is stored.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    helpers::{bpf_probe_read_user, bpf_probe_read_user_buf},
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use tracer_common::{
    Counter, FrameModel, PyConfig, PyFrame, PyStack, DEFAULT_MAX_PY_STACKS, MAX_PY_FRAMES,
    MAX_PY_TARGETS, MAX_PY_THREADS, NO_FIELD, PY_FRAME_WINDOW,
};

use crate::maps::count;

#[map]
pub static PY_TARGETS: HashMap<u32, PyConfig> = HashMap::with_max_entries(MAX_PY_TARGETS, 0);

#[map]
pub static PY_TSTATES: HashMap<u32, u64> = HashMap::with_max_entries(MAX_PY_THREADS, 0);

#[map]
pub static PY_STACKS: HashMap<u64, PyStack> =
    HashMap::with_max_entries(DEFAULT_MAX_PY_STACKS, BPF_F_NO_PREALLOC);

#[map]
pub static PY_SCRATCH: PerCpuArray<PyStack> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static PY_FRAME_BUF: PerCpuArray<[u8; PY_FRAME_WINDOW]> = PerCpuArray::with_max_entries(1, 0);

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

#[inline(always)]
fn read_u64(addr: u64) -> Option<u64> {
    // SAFETY: bpf_probe_read_user tolerates any address.
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

/// The u64 at `off` in a frame window. The fields are 8-byte aligned (user space checks), so
/// the window is indexed as words: `(off / 8) % 16` is provably in bounds for the verifier.
#[inline(always)]
fn window_u64(buf: &[u8; PY_FRAME_WINDOW], off: u64) -> u64 {
    let i = (off as usize >> 3) & (PY_FRAME_WINDOW / 8 - 1);
    // SAFETY: i * 8 + 8 <= PY_FRAME_WINDOW, and map values are 8-byte aligned.
    unsafe { *buf.as_ptr().cast::<u64>().add(i) }
}

#[inline(always)]
fn window_u8(buf: &[u8; PY_FRAME_WINDOW], off: u64) -> u8 {
    buf[off as usize & (PY_FRAME_WINDOW - 1)]
}

/// (code, instruction, previous frame, is not Python code) of the frame at `frame`, from one
/// read of its first bytes; None when that read fails. A frame whose fields are readable but
/// which ends less than a window before an unmapped page (the last block of a pymalloc arena,
/// say) is so lost with its callers, counted as a read error. Reading such a frame field by
/// field, as this once did, or retrying at its page's end, more than doubled the verifier's
/// work on every program that walks Python frames, for a case that hardly ever happens.
#[inline(always)]
fn read_frame(
    cfg: &PyConfig,
    frame: u64,
    buf: &mut [u8; PY_FRAME_WINDOW],
) -> Option<(u64, u64, u64, bool)> {
    // SAFETY: bpf_probe_read_user_buf tolerates any source address.
    unsafe { bpf_probe_read_user_buf(frame as *const u8, buf) }.ok()?;
    let shim = cfg.frame_owner != NO_FIELD
        && u64::from(window_u8(buf, cfg.frame_owner)) >= cfg.owner_shim_min;
    Some((
        window_u64(buf, cfg.frame_code) & !cfg.frame_code_tag_mask,
        window_u64(buf, cfg.frame_instr),
        window_u64(buf, cfg.frame_back),
        shim,
    ))
}

/// The first frame of a thread.
#[inline(always)]
fn top_frame(cfg: &PyConfig, tstate: u64) -> Option<u64> {
    const CFRAME: u32 = FrameModel::CFrame as u32;
    let first = read_u64(tstate.wrapping_add(cfg.tstate_frame))?;
    if cfg.model == CFRAME {
        if first == 0 {
            return Some(0);
        }
        return read_u64(first.wrapping_add(cfg.cframe_current_frame));
    }
    Some(first)
}

/// Key of the current thread's Python stack in [`PY_STACKS`], or 0 when there is none.
#[inline(always)]
pub fn python_stack(pid_tgid: u64) -> u64 {
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    // SAFETY: values are copied out of the maps.
    let Some(cfg) = (unsafe { PY_TARGETS.get(&tgid) }).copied() else {
        return 0;
    };
    let Some(tstate) = (unsafe { PY_TSTATES.get(&tid) }).copied() else {
        count(Counter::PyNoThreadState);
        return 0;
    };
    walk(&cfg, tstate)
}

#[inline(never)]
fn walk(cfg: &PyConfig, tstate: u64) -> u64 {
    let Some(scratch) = PY_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU scratch slot, used by one program at a time on this CPU.
    let scratch = unsafe { &mut *scratch };
    let Some(buf) = PY_FRAME_BUF.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: as above.
    let buf = unsafe { &mut *buf };
    let Some(mut frame) = top_frame(cfg, tstate) else {
        count(Counter::PyReadError);
        return 0;
    };
    let max = if (cfg.max_depth as usize) < MAX_PY_FRAMES {
        cfg.max_depth as usize
    } else {
        MAX_PY_FRAMES
    };
    // The frame index is the loop counter on every path, so the verifier can prune states
    // from one iteration to the next; a C-stack shim frame is recorded with code 0 (user space
    // skips it) rather than skipped here, which would make the index path-dependent.
    scratch.len = 0;
    let mut hash = FNV_OFFSET;
    for i in 0..MAX_PY_FRAMES {
        if frame == 0 || i >= max {
            break;
        }
        let Some((code, instr, back, shim)) = read_frame(cfg, frame, buf) else {
            count(Counter::PyReadError);
            break;
        };
        let code = if shim { 0 } else { code };
        scratch.frames[i] = PyFrame {
            code,
            instr,
            name: 0,
        };
        hash = (hash ^ code).wrapping_mul(FNV_PRIME);
        hash = (hash ^ instr).wrapping_mul(FNV_PRIME);
        scratch.len = (i + 1) as u32;
        frame = back;
    }
    // The length is read back from the map, where the verifier knows no value: it checks
    // what follows once, not once for each frame the walk can stop at.
    // SAFETY: a plain read of the per-CPU scratch slot.
    let len = unsafe { core::ptr::read_volatile(&scratch.len) } as usize;
    if len == 0 {
        return 0;
    }
    let truncated = frame != 0 && len >= max;
    if truncated {
        count(Counter::PyTruncated);
    }
    // 0 means "no Python stack".
    let key = hash | 1;
    if PY_STACKS.get_ptr(&key).is_some() {
        return key;
    }
    scratch.truncated = truncated as u32;
    store_new(cfg.code_name, key)
}

/// Stores the walk in [`PY_SCRATCH`] under `key`, a stack not stored yet, after reading each
/// of its code objects' `co_name` (once per stack, not once per frame of every walk): `key`,
/// or 0 (counted) when the map is full. A function of its own, reading the length back from
/// the map, so that the verifier checks its loop once, not once per length the walk can end at.
#[inline(never)]
fn store_new(code_name: u64, key: u64) -> u64 {
    let Some(scratch) = PY_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU scratch slot, filled by the walk that called this.
    let scratch = unsafe { &mut *scratch };
    let len = scratch.len as usize;
    for i in 0..MAX_PY_FRAMES {
        if i >= len {
            break;
        }
        let code = scratch.frames[i].code;
        if code != 0 {
            scratch.frames[i].name = read_u64(code.wrapping_add(code_name)).unwrap_or(0);
        }
    }
    if PY_STACKS.insert(&key, scratch, 0).is_err() {
        count(Counter::PyStacksFull);
        return 0;
    }
    key
}
