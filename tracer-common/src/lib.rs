//! Types and constants shared by leaktrace's eBPF programs and its user space.
//!
//! Every type here is `#[repr(C)]`, `Copy`, with explicit padding and a compile-time size
//! check, because both sides read the same bytes out of BPF maps. Map names and their default
//! limits live here and only here: user space never spells a map name as a string literal.
#![no_std]

use core::mem::size_of;

pub mod growth;
pub mod sampling;

/// Outstanding heap allocations: [`AllocKey`] -> [`AllocInfo`].
pub const MAP_ALLOCS: &str = "ALLOCS";
/// Live totals per allocation stack: [`StackKey`] -> [`StackTotals`].
pub const MAP_STACK_TOTALS: &str = "STACK_TOTALS";
/// Native stacks (frame-pointer unwound, `bpf_get_stack`), keyed by their own 64-bit hash:
/// [`StackKey::native_stack`] -> [`NativeStack`]. Unlike a `BPF_MAP_TYPE_STACK_TRACE` map,
/// which hashes each stack into one of its slots and refuses a stack whose slot another one
/// holds (a collision, long before the map is full), a stack is lost here only when the map
/// is full.
pub const MAP_STACKS: &str = "STACKS";
/// Per-CPU buffer where a native stack is captured before it is hashed.
pub const MAP_STACK_SCRATCH: &str = "STACK_SCRATCH";
/// Per-thread request between an allocator's entry and its return: tid -> [`Pending`].
pub const MAP_PENDING: &str = "PENDING";
/// Per-CPU loss and activity counters, indexed by [`Counter`].
pub const MAP_COUNTERS: &str = "COUNTERS";
/// Ring buffer of [`MapEvent`]s (mmap family), which user space turns into address ranges.
pub const MAP_EVENTS: &str = "EVENTS";
/// Python targets: tgid -> [`PyConfig`]. A process absent here gets native stacks only.
pub const MAP_PY_TARGETS: &str = "PY_TARGETS";
/// Python thread states: tid -> address of that thread's `PyThreadState`, kept by user space.
pub const MAP_PY_TSTATES: &str = "PY_TSTATES";
/// Deduplicated Python stacks: hash -> [`PyStack`].
pub const MAP_PY_STACKS: &str = "PY_STACKS";
/// Per-CPU scratch space where a [`PyStack`] is built before it is hashed.
pub const MAP_PY_SCRATCH: &str = "PY_SCRATCH";
/// Per-CPU buffer holding the frame being read.
pub const MAP_PY_FRAME_BUF: &str = "PY_FRAME_BUF";
/// Python processes whose interpreter has no frame pointers: tgid -> [`TextRange`] of the
/// interpreter's code. Their native stacks end at the first frame in that range (the
/// allocator's caller, when it is there): past it a frame-pointer walk only finds junk, and
/// the Python frames say where the interpreter was. Capacity [`MAX_PY_TARGETS`].
pub const MAP_NATIVE_CUT: &str = "NATIVE_CUT";

/// Session uprobes: the helper number the eBPF side calls where it means the kernel function
/// `bpf_session_is_return`. No kernel helper has this number (they stop below 300); before
/// loading, user space rewrites each such call into a kfunc call (`BPF_PSEUDO_KFUNC_CALL`
/// with the function's BTF id in the running kernel), which aya 0.14 cannot express.
pub const KFUNC_MARKER_SESSION_IS_RETURN: u32 = 0x4c54_0001;
/// Session uprobes: the marker for the kernel function `__u64 *bpf_session_cookie(void)`, the
/// 8 bytes a session's entry run leaves for its return run (rewritten as
/// [`KFUNC_MARKER_SESSION_IS_RETURN`] is).
pub const KFUNC_MARKER_SESSION_COOKIE: u32 = 0x4c54_0002;

/// Default capacity of [`MAP_ALLOCS`] (`--max-allocs`).
pub const DEFAULT_MAX_ALLOCS: u32 = 500_000;
/// Default capacity of [`MAP_STACK_TOTALS`].
pub const DEFAULT_MAX_STACK_TOTALS: u32 = 32_768;
/// Default capacity of [`MAP_STACKS`] (distinct native stacks).
pub const DEFAULT_MAX_STACKS: u32 = 8192;
/// Default capacity of [`MAP_PENDING`]: threads that can be inside an allocator at once.
pub const MAX_PENDING: u32 = 16_384;
/// Size of [`MAP_EVENTS`] in bytes (a power of two, a multiple of the page size).
pub const EVENTS_BYTES: u32 = 1 << 20;
/// Frames kept per native stack (innermost first; the kernel's PERF_MAX_STACK_DEPTH is 127):
/// 120 makes a [`NativeStack`] map entry exactly 1 KiB (element header, key, value).
pub const MAX_NATIVE_FRAMES: usize = 120;
/// Bytes of a Python frame read at once by the walker: every frame field it needs must lie
/// within them (user space checks the layout against it).
pub const PY_FRAME_WINDOW: usize = 128;
/// Bytes the walker reads at once when it needs a frame not in what it read last: the frame's
/// [`PY_FRAME_WINDOW`] bytes and up to this much less that before them, within the frame's page.
/// A caller frame there (3.11+ frames of one thread sit next to each other in its data stack,
/// the caller below) then costs no read of its own. A power of two, at most a page.
pub const PY_WALK_WINDOW: usize = 1024;
/// Python frames kept per stack at most (`--max-python-depth` may lower it).
pub const MAX_PY_FRAMES: usize = 128;
/// Default capacity of [`MAP_PY_STACKS`].
pub const DEFAULT_MAX_PY_STACKS: u32 = 8192;
/// Capacity of [`MAP_PY_TSTATES`] (threads of all traced Python processes).
pub const MAX_PY_THREADS: u32 = 16_384;
/// Capacity of [`MAP_PY_TARGETS`].
pub const MAX_PY_TARGETS: u32 = 1024;

/// Which allocator call produced an allocation. Stored as `u32` in the maps.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AllocKind {
    Malloc = 0,
    Calloc = 1,
    Realloc = 2,
    ReallocArray = 3,
    PosixMemalign = 4,
    AlignedAlloc = 5,
    Valloc = 6,
    Pvalloc = 7,
    Mmap = 8,
    Mremap = 9,
    Memalign = 10,
    /// CPython's object allocator (`--pymalloc`).
    PyMalloc = 11,
    PyCalloc = 12,
    PyRealloc = 13,
    /// `--mode growth`: a page of anonymous memory first touched (one page per record).
    PageFault = 14,
    /// Used only in [`Pending`]: `free`, `munmap` and friends never allocate.
    Other = 15,
}

impl AllocKind {
    pub const ALL: [AllocKind; 15] = [
        AllocKind::Malloc,
        AllocKind::Calloc,
        AllocKind::Realloc,
        AllocKind::ReallocArray,
        AllocKind::PosixMemalign,
        AllocKind::AlignedAlloc,
        AllocKind::Valloc,
        AllocKind::Pvalloc,
        AllocKind::Mmap,
        AllocKind::Mremap,
        AllocKind::Memalign,
        AllocKind::PyMalloc,
        AllocKind::PyCalloc,
        AllocKind::PyRealloc,
        AllocKind::PageFault,
    ];

    pub fn from_u32(v: u32) -> Option<AllocKind> {
        Self::ALL.iter().copied().find(|k| *k as u32 == v)
    }

    /// The name of the C function, as shown as the leaf frame of a stack.
    pub fn function_name(self) -> &'static str {
        match self {
            AllocKind::Malloc => "malloc",
            AllocKind::Calloc => "calloc",
            AllocKind::Realloc => "realloc",
            AllocKind::ReallocArray => "reallocarray",
            AllocKind::PosixMemalign => "posix_memalign",
            AllocKind::AlignedAlloc => "aligned_alloc",
            AllocKind::Valloc => "valloc",
            AllocKind::Pvalloc => "pvalloc",
            AllocKind::Mmap => "mmap",
            AllocKind::Mremap => "mremap",
            AllocKind::Memalign => "memalign",
            AllocKind::PyMalloc => "PyObject_Malloc",
            AllocKind::PyCalloc => "PyObject_Calloc",
            AllocKind::PyRealloc => "PyObject_Realloc",
            AllocKind::PageFault => "[page fault]",
            AllocKind::Other => "?",
        }
    }
}

/// The attach cookie of the generic `alloc_enter` program: which allocator function it sits
/// on and where that function's arguments are, so one program (verified once) serves them all.
///
/// Bits 0-7: [`AllocKind`]; 8-11: argument index of the size; 12-15: argument index of a
/// second size factor (calloc's element size) or [`ARG_NONE`]; 16-19: argument index of a
/// pointer (realloc's old block, posix_memalign's out-pointer) or [`ARG_NONE`]; bit 20: round
/// the size up to whole pages (pvalloc).
pub mod cookie {
    use super::AllocKind;

    pub const ARG_NONE: u64 = 0xf;
    pub const PAGE_ROUND: u64 = 1 << 20;

    pub const fn new(kind: AllocKind, size: u64, factor: u64, ptr: u64) -> u64 {
        kind as u64 | (size & 0xf) << 8 | (factor & 0xf) << 12 | (ptr & 0xf) << 16
    }

    pub const fn kind(c: u64) -> u32 {
        (c & 0xff) as u32
    }

    pub const fn size_arg(c: u64) -> u64 {
        (c >> 8) & 0xf
    }

    pub const fn factor_arg(c: u64) -> u64 {
        (c >> 12) & 0xf
    }

    pub const fn ptr_arg(c: u64) -> u64 {
        (c >> 16) & 0xf
    }
}

/// Indexes into [`MAP_COUNTERS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Allocations recorded.
    AllocsSeen = 0,
    /// Frees of a tracked pointer.
    FreesSeen = 1,
    /// Allocation not tracked because [`MAP_ALLOCS`] was full.
    AllocMapFull = 2,
    /// Allocation tracked without a native stack: `bpf_get_stack` found none.
    StackError = 3,
    /// Allocation tracked without a native stack: [`MAP_STACKS`] was full. (Its JSON name,
    /// `stack_map_collision_or_full`, dates from the stack-trace map, which also refused
    /// stacks on hash collisions; stacks keyed by their own hash do not collide.)
    StackCollision = 4,
    /// `free` of a pointer not tracked (allocated before attach, or untracked).
    FreeUnknown = 5,
    /// An allocator entry whose return was never seen (longjmp, thread killed, ...).
    MissedReturn = 6,
    /// Allocator entry not tracked because [`MAP_PENDING`] was full.
    PendingFull = 7,
    /// Per-stack totals not updated because [`MAP_STACK_TOTALS`] was full.
    StackTotalsFull = 8,
    /// mmap-family event lost because the ring buffer was full.
    EventsLost = 9,
    /// calloc/reallocarray whose element count times size overflows.
    SizeOverflow = 10,
    /// Allocator call made from inside another traced allocator call (not double counted).
    Nested = 11,
    /// Allocation in a Python process on a thread with no known Python thread state.
    PyNoThreadState = 12,
    /// Python stack longer than the depth limit: the outermost frames were cut.
    PyTruncated = 13,
    /// Python stack not stored because [`MAP_PY_STACKS`] was full.
    PyStacksFull = 14,
    /// Python stack cut short because a frame could not be read.
    PyReadError = 15,
    /// `--mode sampled`: allocator calls recorded (a sample point fell in their bytes).
    Sampled = 16,
    /// `--mode sampled`: allocator calls passed over without recording.
    Unsampled = 17,
    /// Runs of the malloc family's return probe (the return half of a session, or the
    /// uretprobe). With session links only tracked calls take it: in sampled mode about the
    /// sampled calls, not every call.
    ReturnRuns = 18,
}

/// Number of slots in [`MAP_COUNTERS`].
pub const COUNTER_SLOTS: u32 = 19;

/// Key of [`MAP_ALLOCS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AllocKey {
    pub tgid: u32,
    pub _pad: u32,
    pub addr: u64,
}
const _: () = assert!(size_of::<AllocKey>() == 16);

/// Identifies an allocation stack: the native stack id plus the return address into the
/// allocator's caller (frame-pointer unwinding from a function's first instruction misses that
/// frame, so the probe reads it from `[sp]` itself), and which allocator was called.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StackKey {
    pub tgid: u32,
    /// [`AllocKind`] as u32.
    pub kind: u32,
    /// Key in [`MAP_STACKS`] (the stack's own hash, never 0), 0 when none was captured.
    pub native_stack: u64,
    /// Return address into the caller of the allocator, 0 if unreadable.
    pub caller: u64,
    /// Key in [`MAP_PY_STACKS`], 0 when there is no Python stack.
    pub py_stack: u64,
}
const _: () = assert!(size_of::<StackKey>() == 32);

/// Value of [`MAP_STACKS`]: instruction pointers, innermost (the probed instruction) first.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NativeStack {
    pub len: u32,
    pub _pad: u32,
    pub ips: [u64; MAX_NATIVE_FRAMES],
}
const _: () = assert!(size_of::<NativeStack>() == 8 + 8 * MAX_NATIVE_FRAMES);

/// Value of [`MAP_ALLOCS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocInfo {
    pub size: u64,
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) at the allocation.
    pub ts_ns: u64,
    pub stack: StackKey,
}
const _: () = assert!(size_of::<AllocInfo>() == 48);

/// Value of [`MAP_STACK_TOTALS`]. Updated with atomic adds from every CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackTotals {
    /// Bytes allocated from this stack and not yet freed.
    pub live_bytes: i64,
    /// Allocations from this stack not yet freed.
    pub live_allocs: i64,
    /// Bytes ever allocated from this stack while tracing.
    pub total_bytes: u64,
    /// Allocations ever made from this stack while tracing.
    pub total_allocs: u64,
    /// Recorded blocks from this stack not yet freed: the samples behind `live_bytes` in
    /// sampled mode (the same as `live_allocs` in exact mode).
    pub live_samples: i64,
    /// Blocks ever recorded from this stack while tracing.
    pub total_samples: u64,
}
const _: () = assert!(size_of::<StackTotals>() == 48);

/// Value of [`MAP_PENDING`]: what an allocator was asked for, kept from entry to return.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Pending {
    /// Stack pointer at entry. The matching return sees `sp + 8`; a call made from inside the
    /// allocator sees a smaller stack pointer, which is how nesting is detected.
    pub sp: u64,
    pub size: u64,
    /// realloc/reallocarray/mremap: old address; posix_memalign: the out-pointer.
    pub arg: u64,
    /// mremap: old length.
    pub arg2: u64,
    pub ts_ns: u64,
    pub stack: StackKey,
}
const _: () = assert!(size_of::<Pending>() == 72);

/// What a [`MapEvent`] reports.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapEventKind {
    /// An anonymous mapping `[addr, addr+len)` was created.
    Map = 1,
    /// `[addr, addr+len)` was unmapped (may cover parts of several mappings).
    Unmap = 2,
    /// The mapping at `old_addr` of `old_len` bytes now lives at `addr` with `len` bytes.
    Remap = 3,
}

/// Ring-buffer record for the mmap family. Address ranges are kept in user space, where
/// partial unmaps can split them.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MapEvent {
    pub kind: u32,
    pub _pad: u32,
    pub addr: u64,
    pub len: u64,
    pub old_addr: u64,
    pub old_len: u64,
    pub ts_ns: u64,
    pub stack: StackKey,
}
const _: () = assert!(size_of::<MapEvent>() == 80);

/// How a CPython version links its frames, as the eBPF walker sees it.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameModel {
    /// 3.8-3.10: `tstate->frame` is a `PyFrameObject`; `f_back`, `f_code`, `int f_lasti`.
    FrameObject = 0,
    /// 3.11/3.12: `tstate->cframe->current_frame` is a `_PyInterpreterFrame`; `previous`,
    /// code, and a pointer to the current instruction.
    CFrame = 1,
    /// 3.13+: `tstate->current_frame` is a `_PyInterpreterFrame` (3.14+: its code field is a
    /// tagged `_PyStackRef`, see [`PyConfig::frame_code_tag_mask`]).
    CurrentFrame = 2,
}

/// Sentinel offset for a field a version does not have.
pub const NO_FIELD: u64 = u64::MAX;

/// Value of [`MAP_PY_TARGETS`]: what the eBPF walker needs to know about one interpreter.
/// Offsets are bytes into the named structure.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PyConfig {
    /// [`FrameModel`] as u32.
    pub model: u32,
    /// Frames recorded at most (<= [`MAX_PY_FRAMES`]).
    pub max_depth: u32,
    /// `PyThreadState`: `frame` (FrameObject), `cframe` (CFrame) or `current_frame`.
    pub tstate_frame: u64,
    /// `_PyCFrame.current_frame` (CFrame model only).
    pub cframe_current_frame: u64,
    /// Frame: code object (`f_code` / `f_executable`).
    pub frame_code: u64,
    /// Frame: the calling frame (`f_back` / `previous`).
    pub frame_back: u64,
    /// Frame: instruction position (`f_lasti` / `prev_instr` / `instr_ptr`); 8 bytes are read.
    pub frame_instr: u64,
    /// Frame: `owner` byte, or [`NO_FIELD`].
    pub frame_owner: u64,
    /// Lowest `owner` value of frames that are not Python code (C-stack shims, interpreter
    /// entry frames): recorded with code 0, skipped by user space. Used when `frame_owner` is set.
    pub owner_shim_min: u64,
    /// Code object: `co_name`, read as an identity tag for the code object.
    pub code_name: u64,
    /// Bits cleared from the frame's code field before it is used: the tag bits of a
    /// `_PyStackRef` (3.14+), 0 where the field is a plain pointer.
    pub frame_code_tag_mask: u64,
}
const _: () = assert!(size_of::<PyConfig>() == 80);

/// One Python frame as recorded in the kernel: the code object's address, the raw
/// instruction position (an `int f_lasti`, or an instruction pointer), decoded in user space,
/// and the code object's `co_name` pointer when the stack was first stored. Code objects can
/// be freed before user space reads them, and their address reused: a different `co_name`
/// then tells. The stack's key hashes code and instruction only, so a later walk through a
/// new code object at a freed one's address, at the same instructions, counts under the
/// stored stack, whose frame then reads as freed: never under the new object's name.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PyFrame {
    pub code: u64,
    pub instr: u64,
    pub name: u64,
}

/// Value of [`MAP_PY_STACKS`]: innermost frame first.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PyStack {
    pub len: u32,
    /// 1 when frames beyond `max_depth` were cut.
    pub truncated: u32,
    pub frames: [PyFrame; MAX_PY_FRAMES],
}
const _: () = assert!(size_of::<PyStack>() == 8 + 24 * MAX_PY_FRAMES);

/// Value of [`MAP_NATIVE_CUT`]: `[start, end)` of a process's interpreter code.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TextRange {
    pub start: u64,
    pub end: u64,
}
const _: () = assert!(size_of::<TextRange>() == 16);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: plain-old-data, `#[repr(C)]`, no implicit padding (checked by the size asserts).
    unsafe impl aya::Pod for PyConfig {}
    unsafe impl aya::Pod for PyFrame {}
    unsafe impl aya::Pod for PyStack {}
    unsafe impl aya::Pod for AllocKey {}
    unsafe impl aya::Pod for StackKey {}
    unsafe impl aya::Pod for NativeStack {}
    unsafe impl aya::Pod for AllocInfo {}
    unsafe impl aya::Pod for StackTotals {}
    unsafe impl aya::Pod for Pending {}
    unsafe impl aya::Pod for MapEvent {}
    unsafe impl aya::Pod for TextRange {}
}
