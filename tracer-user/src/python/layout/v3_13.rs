//! Offsets for CPython 3.13: `tstate->current_frame`, `_PyInterpreterFrame.f_executable` (a code
//! object, or `None` for C-stack shim frames), `instr_ptr` (the instruction executing or about
//! to run), and the self-describing `_Py_DebugOffsets` block at the start of `_PyRuntime`.
//!
//! [`LAYOUT`] is generated from `tools/pyoffsets/offsets.c` against the 3.13 headers and checked
//! by `python::layout::tests::tables_match_headers`.
//!
//! # `_Py_DebugOffsets`
//!
//! 3.13 is the first version whose `_PyRuntime` starts with a `_Py_DebugOffsets` (see
//! [`super::debug_offsets`]); leaktrace reads the target's own struct through [`DEBUG`] and
//! uses [`LAYOUT`] only to check the parse. Facts the struct does not carry, for 3.13:
//! `interpreters.main` directly follows `interpreters.head` (+8, both in `struct pyinterpreters`);
//! `sizeof(PyCompactUnicodeObject)` is `sizeof(PyASCIIObject)` + 16 (`utf8_length`, `utf8`);
//! `FRAME_OWNED_BY_CSTACK` = 3 is the highest owner (`enum _frameowner`); `f_executable` is a
//! plain `PyObject *` (no tag bits). `offsets.c` checks each against the headers.

use super::{debug_offsets::DebugTable, Layout};

/// CPython 3.13 x86_64 release-build (GIL) layout.
pub const LAYOUT: Layout = Layout {
    runtime_interpreters_head: 632,
    runtime_interpreters_main: 640,
    runtime_tstate_current: Layout::ABSENT,
    runtime_gil: Layout::ABSENT,
    interp_next: 7264,
    interp_threads_head: 7344,
    interp_ceval_gil: 16,
    interp_gil: 7752,
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
    iframe_owner: 70,
    iframe_is_entry: Layout::ABSENT,
    owner_shim_min: 3,
    iframe_code_tag_mask: 0,
    code_filename: 112,
    code_name: 120,
    code_qualname: 128,
    code_firstlineno: 68,
    code_linetable: 136,
    code_code: Layout::ABSENT,
    code_code_adaptive: 200,
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

/// Where each entry sits in 3.13's `_Py_DebugOffsets` (byte offsets into `_PyRuntime`), as
/// `tools/pyoffsets/offsets.c` prints them under `debug.*`.
pub const DEBUG: DebugTable = DebugTable {
    minor: 13,
    entries: &[
        ("cookie", 0),
        ("version", 8),
        ("free_threaded", 16),
        ("runtime_state.size", 24),
        ("runtime_state.interpreters_head", 40),
        ("interpreter_state.size", 48),
        ("interpreter_state.next", 64),
        ("interpreter_state.threads_head", 72),
        ("interpreter_state.ceval_gil", 112),
        ("interpreter_state.gil_runtime_state", 120),
        ("interpreter_state.gil_runtime_state_locked", 136),
        ("interpreter_state.gil_runtime_state_holder", 144),
        ("thread_state.size", 152),
        ("thread_state.next", 168),
        ("thread_state.interp", 176),
        ("thread_state.current_frame", 184),
        ("thread_state.thread_id", 192),
        ("thread_state.native_thread_id", 200),
        ("interpreter_frame.size", 224),
        ("interpreter_frame.previous", 232),
        ("interpreter_frame.executable", 240),
        ("interpreter_frame.instr_ptr", 248),
        ("interpreter_frame.owner", 264),
        ("code_object.size", 272),
        ("code_object.filename", 280),
        ("code_object.name", 288),
        ("code_object.qualname", 296),
        ("code_object.linetable", 304),
        ("code_object.firstlineno", 312),
        ("code_object.co_code_adaptive", 344),
        ("pyobject.ob_type", 360),
        ("bytes_object.ob_size", 520),
        ("bytes_object.ob_sval", 528),
        ("unicode_object.state", 544),
        ("unicode_object.length", 552),
        ("unicode_object.asciiobject_size", 560),
        ("sizeof", 584),
        ("main_minus_head", 8),
        ("compact_minus_ascii", 16),
    ],
    owner_shim_min: 3,
    code_tag_mask: 0,
};

/// Where `allocators` sits in `_PyRuntimeState` (see `python::allocators`).
pub const ALLOCATORS: crate::python::allocators::AllocatorOffsets =
    crate::python::allocators::AllocatorOffsets {
        raw: 704,
        obj: 784,
        obj_arena: 976,
    };
