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
    MAX_PY_TARGETS, MAX_PY_THREADS, NO_FIELD, PY_FRAME_WINDOW, PY_WALK_WINDOW,
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

/// What a walk last read of the target: [`PY_WALK_WINDOW`] bytes from `start`; and values
/// the walk passes through map memory, which the verifier does not track: the frame's offset
/// in the window, the masks below, and the walk's lowest shim `owner`. So a frame taken from
/// the window and one read afresh, or a shim and a Python frame, leave the same state behind
/// and the verifier checks what follows once, not once each, in every frame of the walk (the
/// offset's bounds come from masks). Values computed without a branch also go through here:
/// the compiler would otherwise turn a sign mask back into a branch.
#[repr(C)]
pub struct FrameWindow {
    start: u64,
    off: u64,
    mask: u64,
    shim_min: u64,
    bytes: [u8; PY_WALK_WINDOW],
}

/// `v` back from map memory, where the verifier and the compiler know nothing of it.
#[inline(always)]
fn opaque(slot: &mut u64, v: u64) -> u64 {
    *slot = v;
    // SAFETY: a plain read of a map value just written.
    unsafe { core::ptr::read_volatile(slot) }
}

/// All ones when `v` is not 0, else 0: no branch.
#[inline(always)]
fn nonzero(v: u64) -> u64 {
    sign_mask(v | v.wrapping_neg())
}

/// All ones when `v` is negative as a signed number, else 0: no branch.
#[inline(always)]
fn sign_mask(v: u64) -> u64 {
    (v as i64 >> 63) as u64
}

/// A `start` no frame is within a window of: frames are user addresses, below [`USER_END`].
const NO_WINDOW: u64 = 1 << 63;
/// Above every user address on x86_64, five-level paging included.
const USER_END: u64 = 1 << 57;
/// A shim_min above every owner byte, small enough that `byte - NEVER_SHIM` is negative.
const NEVER_SHIM: u64 = 1 << 62;

#[map]
pub static PY_FRAME_BUF: PerCpuArray<FrameWindow> = PerCpuArray::with_max_entries(1, 0);

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

#[inline(always)]
fn read_u64(addr: u64) -> Option<u64> {
    // SAFETY: bpf_probe_read_user tolerates any address.
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

/// The u64 at byte `off` of the walk's window. Frames are 8-byte aligned (the walk stops at
/// one that is not) and so are their fields (user space checks), so the window is indexed as
/// words: `(off / 8) % (PY_WALK_WINDOW / 8)` is provably in bounds for the verifier.
#[inline(always)]
fn window_u64(buf: &[u8; PY_WALK_WINDOW], off: u64) -> u64 {
    let i = (off as usize >> 3) & (PY_WALK_WINDOW / 8 - 1);
    // SAFETY: i * 8 + 8 <= PY_WALK_WINDOW, and map values are 8-byte aligned.
    unsafe { *buf.as_ptr().cast::<u64>().add(i) }
}

#[inline(always)]
fn window_u8(buf: &[u8; PY_WALK_WINDOW], off: u64) -> u8 {
    buf[off as usize & (PY_WALK_WINDOW - 1)]
}

/// (code, instruction, previous frame) of the frame at `frame`, code 0 for a frame that is not
/// Python code (a C-stack shim, which user space skips); None when it cannot be read. A frame whose first [`PY_FRAME_WINDOW`] bytes lie in the window read for
/// an earlier frame of this walk is taken from it; any other is read with the bytes before it
/// in its page, up to the window's size, where its caller often is. So a read never reaches a
/// page the frame's own bytes do not. A frame whose fields are readable but which ends less
/// than [`PY_FRAME_WINDOW`] bytes before an unmapped page (the last block of a pymalloc arena,
/// say) is so lost with its callers, counted as a read error. Reading such a frame field by
/// field, as this once did, or retrying at its page's end, more than doubled the verifier's
/// work on every program that walks Python frames, for a case that hardly ever happens.
#[inline(always)]
fn read_frame(cfg: &PyConfig, frame: u64, win: &mut FrameWindow) -> Option<(u64, u64, u64)> {
    const WIN: u64 = PY_WALK_WINDOW as u64;
    const NEED: u64 = PY_FRAME_WINDOW as u64;
    if frame & 7 != 0 || frame >= USER_END {
        return None;
    }
    let mut off = frame.wrapping_sub(win.start);
    if off > WIN - NEED {
        // start = frame - min(frame's offset in its page, WIN - NEED).
        let t = (frame & 0xfff).wrapping_sub(WIN - NEED);
        let start = frame - (WIN - NEED).wrapping_add(t & opaque(&mut win.mask, sign_mask(t)));
        // SAFETY: bpf_probe_read_user_buf tolerates any source address.
        unsafe { bpf_probe_read_user_buf(start as *const u8, &mut win.bytes) }.ok()?;
        win.start = start;
        off = frame - start;
    }
    let off = opaque(&mut win.off, off);
    let buf = &win.bytes;
    // A shim frame (owner >= shim_min) is recorded with code 0: `python` is all ones when the
    // owner byte is below shim_min (a Python frame), 0 otherwise.
    let owner = window_u8(buf, off.wrapping_add(field(&cfg.frame_owner)));
    let python = opaque(
        &mut win.mask,
        sign_mask(u64::from(owner).wrapping_sub(win.shim_min)),
    );
    let code = window_u64(buf, off.wrapping_add(field(&cfg.frame_code)));
    Some((
        code & !field(&cfg.frame_code_tag_mask) & python,
        window_u64(buf, off.wrapping_add(field(&cfg.frame_instr))),
        window_u64(buf, off.wrapping_add(field(&cfg.frame_back))),
    ))
}

/// A field of the walk's [`PyConfig`], loaded where it is used: `cfg` points into
/// [`PY_TARGETS`], whose values the verifier does not track, so a comparison in one frame (the
/// shim test) leaves no bounds on a kept copy that would tell one path's state from another's
/// in every later frame and keep the verifier from pruning.
#[inline(always)]
fn field(f: &u64) -> u64 {
    // SAFETY: a plain read of a map value.
    unsafe { core::ptr::read_volatile(f) }
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
    let Some(cfg) = PY_TARGETS.get_ptr(&tgid) else {
        return 0;
    };
    // SAFETY: a map value stays valid while the program runs; user space may rewrite it
    // meanwhile, which changes only where the bounded reads of the walk look.
    let cfg = unsafe { &*cfg };
    let Some(tstate) = (unsafe { PY_TSTATES.get(&tid) }).copied() else {
        count(Counter::PyNoThreadState);
        return 0;
    };
    walk(cfg, tstate)
}

#[inline(never)]
fn walk(cfg: &PyConfig, tstate: u64) -> u64 {
    let Some(scratch) = PY_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU scratch slot, used by one program at a time on this CPU.
    let scratch = unsafe { &mut *scratch };
    let Some(win) = PY_FRAME_BUF.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: as above.
    let win = unsafe { &mut *win };
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
    // skips it) rather than skipped here, which would make the index path-dependent. Nothing
    // in the loop branches on the configuration (see FrameWindow and `field`).
    scratch.len = 0;
    let mut hash = FNV_OFFSET;
    win.start = NO_WINDOW;
    // Without an owner field, or with a shim_min no owner byte reaches, no frame is a shim:
    // shim_min becomes NEVER_SHIM, without a branch (it would split the whole walk in two).
    let min = field(&cfg.owner_shim_min);
    let applies = !nonzero(field(&cfg.frame_owner) ^ NO_FIELD) | nonzero(min >> 8);
    let applies = opaque(&mut win.mask, !applies);
    win.shim_min = (min & applies) | (NEVER_SHIM & !applies);
    for i in 0..MAX_PY_FRAMES {
        if frame == 0 || i >= max {
            break;
        }
        let Some((code, instr, back)) = read_frame(cfg, frame, win) else {
            count(Counter::PyReadError);
            break;
        };
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
