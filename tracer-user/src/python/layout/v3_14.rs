//! Offsets for CPython 3.14: like 3.13, with `f_executable` a tagged `_PyStackRef` (the low
//! two bits, `Py_TAG_BITS` = 3, carry reference flags: mask them to get the code object), the new
//! `FRAME_OWNED_BY_INTERPRETER` (3, entry frames pushed when C calls into the interpreter)
//! below `FRAME_OWNED_BY_CSTACK` (4), `owner` moved to byte 74 (after `stackpointer`), and a
//! `_Py_DebugOffsets` grown by entries inserted in the middle of its groups.
//!
//! [`LAYOUT`] is generated from `tools/pyoffsets/offsets.c` against the 3.14 headers (Debian's
//! `python3.14-dev` 3.14.10 ships `include/python3.14/internal`) and checked by
//! `python::layout::tests::tables_match_headers`; leaktrace reads the target's own
//! `_Py_DebugOffsets` through [`DEBUG`] and uses [`LAYOUT`] only to check that parse.
//!
//! Facts the struct does not carry, for 3.14 (each checked by `offsets.c`):
//! `interpreters.main` follows `interpreters.head` (+8); `sizeof(PyCompactUnicodeObject)` is
//! `sizeof(PyASCIIObject)` + 16; owners from `FRAME_OWNED_BY_INTERPRETER` (3) up are not Python
//! frames; `Py_TAG_BITS` is 3 in a GIL build (1 in a free-threaded one: masking 3 bits is right
//! for both, objects are 8-byte aligned).

use super::{debug_offsets::DebugTable, Layout};

/// CPython 3.14 x86_64 release-build (GIL) layout.
pub const LAYOUT: Layout = Layout {
    runtime_interpreters_head: 808,
    runtime_interpreters_main: 816,
    runtime_tstate_current: Layout::ABSENT,
    runtime_gil: Layout::ABSENT,
    interp_next: 7272,
    interp_threads_head: 7344,
    interp_ceval_gil: 16,
    interp_gil: 7784,
    gil_last_holder: 8,
    gil_locked: 16,
    tstate_next: 8,
    tstate_interp: 16,
    tstate_thread_id: 152,
    tstate_native_thread_id: 160,
    tstate_frame: Layout::ABSENT,
    tstate_cframe: Layout::ABSENT,
    cframe_current_frame: Layout::ABSENT,
    tstate_current_frame: 72,
    frame_back: Layout::ABSENT,
    frame_code: Layout::ABSENT,
    frame_lasti: Layout::ABSENT,
    frame_lasti_size: Layout::ABSENT,
    frame_lasti_scale: Layout::ABSENT,
    iframe_code: 0,
    iframe_instr: 56,
    iframe_previous: 8,
    iframe_owner: 74,
    iframe_is_entry: Layout::ABSENT,
    owner_shim_min: 3,
    iframe_code_tag_mask: 3,
    code_filename: 112,
    code_name: 120,
    code_qualname: 128,
    code_firstlineno: 68,
    code_linetable: 136,
    code_code: Layout::ABSENT,
    code_code_adaptive: 208,
    object_type: 8,
    bytes_size: 16,
    bytes_sval: 32,
    unicode_length: 16,
    unicode_state: 32,
    unicode_ascii_data: 40,
    unicode_compact_data: 56,
    unicode_kind_shift: 2,
    unicode_kind_mask: 7,
    unicode_compact_bit: 5,
    unicode_ascii_bit: 6,
};

/// Where each entry sits in 3.14's `_Py_DebugOffsets` (byte offsets into `_PyRuntime`), as
/// `tools/pyoffsets/offsets.c` prints them under `debug.*`.
pub const DEBUG: DebugTable = DebugTable {
    minor: 14,
    entries: &[
        ("cookie", 0),
        ("version", 8),
        ("free_threaded", 16),
        ("runtime_state.size", 24),
        ("runtime_state.interpreters_head", 40),
        ("interpreter_state.size", 48),
        ("interpreter_state.next", 64),
        ("interpreter_state.threads_head", 72),
        ("interpreter_state.ceval_gil", 120),
        ("interpreter_state.gil_runtime_state", 128),
        ("interpreter_state.gil_runtime_state_locked", 144),
        ("interpreter_state.gil_runtime_state_holder", 152),
        ("thread_state.size", 176),
        ("thread_state.next", 192),
        ("thread_state.interp", 200),
        ("thread_state.current_frame", 208),
        ("thread_state.thread_id", 216),
        ("thread_state.native_thread_id", 224),
        ("interpreter_frame.size", 248),
        ("interpreter_frame.previous", 256),
        ("interpreter_frame.executable", 264),
        ("interpreter_frame.instr_ptr", 272),
        ("interpreter_frame.owner", 288),
        ("code_object.size", 312),
        ("code_object.filename", 320),
        ("code_object.name", 328),
        ("code_object.qualname", 336),
        ("code_object.linetable", 344),
        ("code_object.firstlineno", 352),
        ("code_object.co_code_adaptive", 384),
        ("pyobject.ob_type", 408),
        ("bytes_object.ob_size", 600),
        ("bytes_object.ob_sval", 608),
        ("unicode_object.state", 624),
        ("unicode_object.length", 632),
        ("unicode_object.asciiobject_size", 640),
        ("sizeof", 760),
        ("main_minus_head", 8),
        ("compact_minus_ascii", 16),
    ],
    owner_shim_min: 3,
    code_tag_mask: 3,
};

/// Where `allocators` sits in `_PyRuntimeState` (see `python::allocators`).
pub const ALLOCATORS: crate::python::allocators::AllocatorOffsets =
    crate::python::allocators::AllocatorOffsets {
        raw: 880,
        obj: 960,
        obj_arena: 1152,
    };
