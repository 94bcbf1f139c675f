//! Offsets for CPython 3.9: same shape as 3.8 (`_PyRuntimeState` moved to `pycore_runtime.h`, shrinking
//! it), `f_lasti` in bytes, `co_lnotab`.
//!
//! Generated from `tools/pyoffsets/offsets.c` against the 3.9 headers; checked by
//! `python::layout::tests::tables_match_headers`.

use super::Layout;

/// CPython 3.9 x86_64 release-build layout.
pub const LAYOUT: Layout = Layout {
    runtime_interpreters_head: 32,
    runtime_interpreters_main: 40,
    runtime_tstate_current: 568,
    runtime_gil: 352,
    interp_next: 0,
    interp_threads_head: 8,
    interp_ceval_gil: Layout::ABSENT,
    interp_gil: Layout::ABSENT,
    gil_last_holder: 8,
    gil_locked: 16,
    tstate_next: 8,
    tstate_interp: 16,
    tstate_thread_id: 176,
    tstate_native_thread_id: Layout::ABSENT,
    tstate_frame: 24,
    tstate_cframe: Layout::ABSENT,
    cframe_current_frame: Layout::ABSENT,
    tstate_current_frame: Layout::ABSENT,
    frame_back: 24,
    frame_code: 32,
    frame_lasti: 104,
    frame_lasti_size: 4,
    frame_lasti_scale: 1,
    iframe_code: Layout::ABSENT,
    iframe_instr: Layout::ABSENT,
    iframe_previous: Layout::ABSENT,
    iframe_owner: Layout::ABSENT,
    iframe_is_entry: Layout::ABSENT,
    owner_shim_min: Layout::ABSENT,
    iframe_code_tag_mask: Layout::ABSENT,
    code_filename: 104,
    code_name: 112,
    code_qualname: Layout::ABSENT,
    code_firstlineno: 40,
    code_linetable: 120,
    code_code: 48,
    code_code_adaptive: Layout::ABSENT,
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
