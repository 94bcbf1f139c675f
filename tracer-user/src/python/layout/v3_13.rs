//! Offsets for CPython 3.13: `tstate->current_frame`, `_PyInterpreterFrame.f_executable` (a code
//! object, or `None` for C-stack shim frames), `instr_ptr` (the instruction executing or about
//! to run), and the self-describing `_Py_DebugOffsets` block at the start of `_PyRuntime`.
//!
//! [`LAYOUT`] is generated from `tools/pyoffsets/offsets.c` against the 3.13 headers and checked
//! by `python::layout::tests::tables_match_headers`.
//!
//! # `_Py_DebugOffsets`
//!
//! From 3.13 on, `_PyRuntime` (an exported symbol in `.data`, statically initialized) begins
//! with a `_Py_DebugOffsets` struct meant for out-of-process tools. Every entry is a
//! little-endian `u64`. For 3.13 its layout (byte offset into `_PyRuntime`: meaning) is:
//!
//! | offset | entry |
//! |---|---|
//! | 0 | `cookie`, 8 bytes `"xdebugpy"` |
//! | 8 | `version`: `PY_VERSION_HEX` (e.g. `0x030d00f0` for 3.13.0 final) |
//! | 16 | `free_threaded`: 1 for a `Py_GIL_DISABLED` build |
//! | 24..48 | `runtime_state`: size, finalizing, interpreters_head |
//! | 48..152 | `interpreter_state`: size, id, next, threads_head, gc, imports_modules, sysdict, builtins, ceval_gil, gil_runtime_state, gil_runtime_state_enabled, gil_runtime_state_locked, gil_runtime_state_holder |
//! | 152..224 | `thread_state`: size, prev, next, interp, current_frame, thread_id, native_thread_id, datastack_chunk, status |
//! | 224..272 | `interpreter_frame`: size, previous, executable, instr_ptr, localsplus, owner |
//! | 272..352 | `code_object`: size, filename, name, qualname, linetable, firstlineno, argcount, localsplusnames, localspluskinds, co_code_adaptive |
//! | 352..368 | `pyobject`: size, ob_type |
//! | 368..400 | `type_object`: size, tp_name, tp_repr, tp_flags |
//! | 400..424 | `tuple_object`: size, ob_item, ob_size |
//! | 424..448 | `list_object`: size, ob_item, ob_size |
//! | 448..472 | `dict_object`: size, ma_keys, ma_values |
//! | 472..488 | `float_object`: size, ob_fval |
//! | 488..512 | `long_object`: size, lv_tag, ob_digit |
//! | 512..536 | `bytes_object`: size, ob_size, ob_sval |
//! | 536..568 | `unicode_object`: size, state, length, asciiobject_size |
//! | 568..584 | `gc`: size, collecting |
//!
//! Notes: the `gil_runtime_state_*` entries are offsets from the start of `PyInterpreterState`
//! (of its embedded `_gil`), not from the start of `struct _gil_runtime_state`;
//! `gil_runtime_state_enabled` is 0 in GIL builds (in 3.13t it is the offset of `enabled`: the
//! GIL can be switched back on at run time there). The struct is only stable within one minor
//! version (3.14 inserts entries), so [`parse_debug_offsets`] accepts 3.13.x only.
//!
//! Fields of [`Layout`] the struct does not carry are filled from facts that hold for every
//! 3.13 GIL build: `interpreters.main` directly follows `interpreters.head` (+8);
//! `sizeof(PyCompactUnicodeObject)` is `sizeof(PyASCIIObject)` + 16 (`utf8_length`, `utf8`);
//! the `state` bit positions (kind at bit 2, 3 bits; compact bit 5; ascii bit 6);
//! `FRAME_OWNED_BY_CSTACK` = 3; `_gil_runtime_state` offsets derived from the
//! interpreter-relative entries.

use super::Layout;

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
    owner_cstack: 3,
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

/// The cookie `_PyRuntime` starts with.
pub const DEBUG_COOKIE: &[u8; 8] = b"xdebugpy";

/// Byte offset inside `_Py_DebugOffsets` of each entry [`parse_debug_offsets`] reads (plus
/// `sizeof`, and the two derived relations it assumes), as `offsets.c` prints them under
/// `debug.*`; checked against the headers by `python::layout::tests::tables_match_headers`.
pub const DEBUG_OFFSETS_TABLE: &[(&str, u64)] = &[
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
];

fn entry(name: &str) -> usize {
    DEBUG_OFFSETS_TABLE
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| *v as usize)
        .unwrap_or(usize::MAX)
}

/// Builds a [`Layout`] from the `_Py_DebugOffsets` at the start of a 3.13 `_PyRuntime`.
///
/// `bytes` are the first bytes of `_PyRuntime` (at least `sizeof(_Py_DebugOffsets)` = 584),
/// read from the target's memory or from the `.data` section of its binary. Returns `None` if
/// the cookie is wrong, the buffer is short, the version is not 3.13.x, or an offset is
/// implausible (not inside its structure's stated size).
///
/// A free-threaded build (`free_threaded` = 1, 3.13t) is accepted: the struct has the same
/// entries in both builds, only their values differ (a 32-byte `PyObject` header, so every
/// object field sits 16 bytes further; a larger `PyThreadState`), and the facts assumed above
/// hold for 3.13t too (checked by `python::layout::tests::free_threaded_3_13t`). What a
/// free-threaded build changes beyond these offsets is described in [`super::super::freethreaded`].
pub fn parse_debug_offsets(bytes: &[u8]) -> Option<Layout> {
    let u = |name: &str| -> Option<u64> {
        let at = entry(name);
        let raw = bytes.get(at..at.checked_add(8)?)?;
        Some(u64::from_le_bytes(raw.try_into().ok()?))
    };
    if bytes.len() < entry("sizeof") || bytes.get(..8)? != DEBUG_COOKIE {
        return None;
    }
    let version = u("version")?;
    if (version >> 24) & 0xff != 3 || (version >> 16) & 0xff != 13 {
        return None;
    }
    if u("free_threaded")? > 1 {
        return None;
    }
    // An offset of `size` bytes at `off` must lie inside a structure of `limit` bytes.
    let within = |off: u64, len: u64, limit: u64| -> Option<u64> {
        (off.checked_add(len)? <= limit).then_some(off)
    };
    let runtime_size = u("runtime_state.size")?;
    let interp_size = u("interpreter_state.size")?;
    let tstate_size = u("thread_state.size")?;
    let frame_size = u("interpreter_frame.size")?;
    let code_size = u("code_object.size")?;

    let head = within(u("runtime_state.interpreters_head")?, 16, runtime_size)?;
    let gil = within(u("interpreter_state.gil_runtime_state")?, 24, interp_size)?;
    let holder = within(
        u("interpreter_state.gil_runtime_state_holder")?,
        8,
        interp_size,
    )?;
    let locked = within(
        u("interpreter_state.gil_runtime_state_locked")?,
        4,
        interp_size,
    )?;
    let ascii = u("unicode_object.asciiobject_size")?;
    if ascii > 4096 {
        return None;
    }
    Some(Layout {
        runtime_interpreters_head: head,
        runtime_interpreters_main: head + entry("main_minus_head") as u64,
        runtime_tstate_current: Layout::ABSENT,
        runtime_gil: Layout::ABSENT,
        interp_next: within(u("interpreter_state.next")?, 8, interp_size)?,
        interp_threads_head: within(u("interpreter_state.threads_head")?, 8, interp_size)?,
        interp_ceval_gil: within(u("interpreter_state.ceval_gil")?, 8, interp_size)?,
        interp_gil: gil,
        gil_last_holder: holder.checked_sub(gil)?,
        gil_locked: locked.checked_sub(gil)?,
        tstate_next: within(u("thread_state.next")?, 8, tstate_size)?,
        tstate_interp: within(u("thread_state.interp")?, 8, tstate_size)?,
        tstate_thread_id: within(u("thread_state.thread_id")?, 8, tstate_size)?,
        tstate_native_thread_id: within(u("thread_state.native_thread_id")?, 8, tstate_size)?,
        tstate_frame: Layout::ABSENT,
        tstate_cframe: Layout::ABSENT,
        tstate_current_frame: within(u("thread_state.current_frame")?, 8, tstate_size)?,
        cframe_current_frame: Layout::ABSENT,
        frame_back: Layout::ABSENT,
        frame_code: Layout::ABSENT,
        frame_lasti: Layout::ABSENT,
        frame_lasti_size: Layout::ABSENT,
        frame_lasti_scale: Layout::ABSENT,
        iframe_code: within(u("interpreter_frame.executable")?, 8, frame_size)?,
        iframe_instr: within(u("interpreter_frame.instr_ptr")?, 8, frame_size)?,
        iframe_previous: within(u("interpreter_frame.previous")?, 8, frame_size)?,
        iframe_owner: within(u("interpreter_frame.owner")?, 1, frame_size)?,
        iframe_is_entry: Layout::ABSENT,
        owner_cstack: 3,
        code_filename: within(u("code_object.filename")?, 8, code_size)?,
        code_name: within(u("code_object.name")?, 8, code_size)?,
        code_qualname: within(u("code_object.qualname")?, 8, code_size)?,
        code_firstlineno: within(u("code_object.firstlineno")?, 4, code_size)?,
        code_linetable: within(u("code_object.linetable")?, 8, code_size)?,
        code_code: Layout::ABSENT,
        code_code_adaptive: within(u("code_object.co_code_adaptive")?, 0, code_size)?,
        object_type: within(u("pyobject.ob_type")?, 8, 64)?,
        bytes_size: within(u("bytes_object.ob_size")?, 8, 64)?,
        bytes_sval: within(u("bytes_object.ob_sval")?, 1, 64)?,
        unicode_length: within(u("unicode_object.length")?, 8, ascii)?,
        unicode_state: within(u("unicode_object.state")?, 4, ascii)?,
        unicode_ascii_data: ascii,
        unicode_compact_data: ascii + entry("compact_minus_ascii") as u64,
        unicode_kind_shift: 2,
        unicode_kind_mask: 7,
        unicode_compact_bit: 5,
        unicode_ascii_bit: 6,
    })
}
