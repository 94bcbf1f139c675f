//! Offsets for CPython 3.15: like 3.14 (tagged `_PyStackRef` `f_executable`, owner at byte
//! 74), with `FRAME_OWNED_BY_CSTACK` gone (`FRAME_OWNED_BY_INTERPRETER` = 3 is the highest
//! owner), `thread_id`/`native_thread_id` moved (176/184: `base_frame` and the
//! `last_profiled_frame*` fields precede them) and a `_Py_DebugOffsets` grown again (it now
//! carries `sizeof(PyCompactUnicodeObject)` itself).
//!
//! [`LAYOUT`] is generated from `tools/pyoffsets/offsets.c` against the 3.15 headers (Debian's
//! `python3.15-dev` 3.15.2) and checked by `python::layout::tests::tables_match_headers`;
//! leaktrace reads the target's own `_Py_DebugOffsets` through [`DEBUG`] and uses [`LAYOUT`]
//! only to check that parse.
//!
//! Facts the struct does not carry, for 3.15 (each checked by `offsets.c`):
//! `interpreters.main` follows `interpreters.head` (+8); owners from
//! `FRAME_OWNED_BY_INTERPRETER` (3) up are not Python frames; `Py_TAG_BITS` is 3.

use super::{debug_offsets::DebugTable, Layout};

/// CPython 3.15 x86_64 release-build (GIL) layout.
pub const LAYOUT: Layout = Layout {
    runtime_interpreters_head: 936,
    runtime_interpreters_main: 944,
    runtime_tstate_current: Layout::ABSENT,
    runtime_gil: Layout::ABSENT,
    interp_next: 7264,
    interp_threads_head: 7336,
    interp_ceval_gil: 16,
    interp_gil: 7736,
    gil_last_holder: 8,
    gil_locked: 16,
    tstate_next: 8,
    tstate_interp: 16,
    tstate_thread_id: 176,
    tstate_native_thread_id: 184,
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

/// Where each entry sits in 3.15's `_Py_DebugOffsets` (byte offsets into `_PyRuntime`), as
/// `tools/pyoffsets/offsets.c` prints them under `debug.*`.
pub const DEBUG: DebugTable = DebugTable {
    minor: 15,
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
        ("thread_state.thread_id", 240),
        ("thread_state.native_thread_id", 248),
        ("interpreter_frame.size", 312),
        ("interpreter_frame.previous", 320),
        ("interpreter_frame.executable", 328),
        ("interpreter_frame.instr_ptr", 336),
        ("interpreter_frame.owner", 352),
        ("code_object.size", 376),
        ("code_object.filename", 384),
        ("code_object.name", 392),
        ("code_object.qualname", 400),
        ("code_object.linetable", 408),
        ("code_object.firstlineno", 416),
        ("code_object.co_code_adaptive", 448),
        ("pyobject.ob_type", 472),
        ("bytes_object.ob_size", 696),
        ("bytes_object.ob_sval", 704),
        ("unicode_object.state", 720),
        ("unicode_object.length", 728),
        ("unicode_object.asciiobject_size", 736),
        ("unicode_object.compactunicodeobject_size", 744),
        ("sizeof", 888),
        ("main_minus_head", 8),
    ],
    owner_shim_min: 3,
    code_tag_mask: 3,
};

/// Where `allocators` sits in `_PyRuntimeState` (see `python::allocators`).
pub const ALLOCATORS: crate::python::allocators::AllocatorOffsets =
    crate::python::allocators::AllocatorOffsets {
        raw: 1008,
        obj: 1088,
        obj_arena: 1280,
    };
