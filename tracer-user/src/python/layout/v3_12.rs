//! Offsets for CPython 3.12: like 3.11 plus C-stack shim frames (`owner == 3`); the GIL moved into the
//! interpreter and `gilstate.tstate_current` was replaced by the thread-local `_Py_tss_tstate`.
//!
//! Generated from `tools/pyoffsets/offsets.c` against the 3.12 headers; checked by
//! `python::layout::tests::tables_match_headers`.

use super::Layout;

/// CPython 3.12 x86_64 release-build layout.
pub const LAYOUT: Layout = Layout {
    runtime_interpreters_head: 40,
    runtime_interpreters_main: 48,
    runtime_tstate_current: Layout::ABSENT,
    runtime_gil: Layout::ABSENT,
    interp_next: 0,
    interp_threads_head: 72,
    interp_ceval_gil: 384,
    interp_gil: 1040,
    gil_last_holder: 8,
    gil_locked: 16,
    tstate_next: 8,
    tstate_interp: 16,
    tstate_thread_id: 136,
    tstate_native_thread_id: 144,
    tstate_frame: Layout::ABSENT,
    tstate_cframe: 56,
    cframe_current_frame: 0,
    tstate_current_frame: Layout::ABSENT,
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
    code_code_adaptive: 192,
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

/// Where `allocators` sits in `_PyRuntimeState` (see `python::allocators`).
pub const ALLOCATORS: crate::python::allocators::AllocatorOffsets =
    crate::python::allocators::AllocatorOffsets {
        raw: 96,
        obj: 176,
        obj_arena: 360,
    };
