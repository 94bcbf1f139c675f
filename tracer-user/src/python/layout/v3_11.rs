//! Offsets for CPython 3.11: `_PyInterpreterFrame` via `tstate->cframe->current_frame`, `prev_instr` into
//! the inline `co_code_adaptive`, PEP 657 location table, `is_entry` (no shim frames).
//!
//! Generated from `tools/pyoffsets/offsets.c` against the 3.11 headers; checked by
//! `python::layout::tests::tables_match_headers`.

use super::Layout;

/// CPython 3.11 x86_64 release-build layout.
pub const LAYOUT: Layout = Layout {
    runtime_interpreters_head: 40,
    runtime_interpreters_main: 48,
    runtime_tstate_current: 576,
    runtime_gil: 360,
    interp_next: 0,
    interp_threads_head: 16,
    interp_ceval_gil: Layout::ABSENT,
    interp_gil: Layout::ABSENT,
    gil_last_holder: 8,
    gil_locked: 16,
    tstate_next: 8,
    tstate_interp: 16,
    tstate_thread_id: 152,
    tstate_native_thread_id: 160,
    tstate_frame: Layout::ABSENT,
    tstate_cframe: 56,
    cframe_current_frame: 8,
    tstate_current_frame: Layout::ABSENT,
    frame_back: Layout::ABSENT,
    frame_code: Layout::ABSENT,
    frame_lasti: Layout::ABSENT,
    frame_lasti_size: Layout::ABSENT,
    frame_lasti_scale: Layout::ABSENT,
    iframe_code: 32,
    iframe_instr: 56,
    iframe_previous: 48,
    iframe_owner: 69,
    iframe_is_entry: 68,
    owner_shim_min: Layout::ABSENT,
    iframe_code_tag_mask: 0,
    code_filename: 112,
    code_name: 120,
    code_qualname: 128,
    code_firstlineno: 72,
    code_linetable: 136,
    code_code: Layout::ABSENT,
    code_code_adaptive: 184,
    object_type: 8,
    bytes_size: 16,
    bytes_sval: 32,
    unicode_length: 16,
    unicode_state: 32,
    unicode_ascii_data: 48,
    unicode_compact_data: 72,
    unicode_kind_shift: 2,
    unicode_kind_mask: 7,
    unicode_compact_bit: 5,
    unicode_ascii_bit: 6,
};
