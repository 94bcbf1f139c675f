//! Byte offsets into CPython's internal structures, per minor version.
//!
//! Each supported version has a table in `layout/v3_X.rs`; [`layout_for`] picks one. The numbers
//! were produced by the C compiler from each version's own headers (`tools/pyoffsets/offsets.c`,
//! built with `Py_BUILD_CORE`), and a test re-checks them whenever the pyenv interpreters are
//! installed. They hold for x86_64 release builds; a `--with-pydebug` build (extra `_ob_next` /
//! `_ob_prev` pointers in every object) or a free-threaded build (3.13t, 3.14t) differs.
//!
//! # Finding the runtime
//!
//! `_PyRuntime` (a `_PyRuntimeState`) is an exported `.dynsym` object in both libpython and
//! a statically linked `python3.X` (Debian's `/usr/bin/python3.11` included). It lives in
//! `.bss` on 3.8/3.9 and in its own initialized `.PyRuntime` section from 3.10 on (not `.data`).
//!
//! # Finding the current thread state
//!
//! * 3.8–3.11: `_PyRuntime.gilstate.tstate_current` ([`Layout::runtime_tstate_current`]) is the
//!   thread state of the thread holding the GIL, or NULL while nobody holds it.
//! * 3.12–3.13: that field is gone. The current thread's state lives in the thread-local
//!   `_Py_tss_tstate`, a `LOCAL` symbol in `.symtab` (so gone once stripped, never in
//!   `.dynsym`) reached through `__tls_get_addr` (general-dynamic model, `R_X86_64_DTPMOD64`
//!   relocations): its offset from the thread pointer is chosen by the dynamic loader at run
//!   time and is not in the file. The GIL holder is instead `interp->ceval.gil->last_holder`
//!   ([`Layout::interp_ceval_gil`] + [`Layout::gil_last_holder`]), meaningful while
//!   `locked` ([`Layout::gil_locked`], an `int`) is 1. For the main interpreter `ceval.gil`
//!   points at the interpreter's own embedded `_gil` ([`Layout::interp_gil`]).
//! * All versions, per thread and without TLS: walk `interp->threads` and compare
//!   [`Layout::tstate_native_thread_id`] (the kernel TID, 3.11+) with the task's pid, or on
//!   3.8–3.10 [`Layout::tstate_thread_id`] (`pthread_self()`, which on x86_64 glibc is the
//!   thread's `fs` base) with the task's `thread.fsbase`.
//!
//! # From a frame to a line
//!
//! * 3.8–3.10: `tstate->frame` is a `PyFrameObject*`; follow [`Layout::frame_back`]. The byte
//!   offset of the current instruction is `f_lasti * frame_lasti_scale` (`f_lasti` is an `int`
//!   counting bytes on 3.8/3.9 and 2-byte code units on 3.10; -1 before the first instruction).
//! * 3.11–3.12: `tstate->cframe->current_frame`; 3.13: `tstate->current_frame`. These are
//!   `_PyInterpreterFrame*`, linked by [`Layout::iframe_previous`]. The byte offset is
//!   `*(frame + iframe_instr) - (code + code_code_adaptive)` (the instruction words are stored
//!   inline in the code object from 3.11 on). On 3.11/3.12 the pointer is `prev_instr` (the
//!   code unit before the next instruction, possibly a CACHE entry, and one unit before the
//!   start for a frame that has not run yet, giving -2); on 3.13 it is `instr_ptr`, the
//!   instruction executing or about to run. CPython itself feeds exactly these offsets to
//!   `PyCode_Addr2Line`, and a negative offset means `co_firstlineno`.
//! * 3.12+: frames whose `owner` byte is at least [`Layout::owner_shim_min`] are shims the
//!   interpreter pushes on C-to-Python entry; skip them (on 3.12 their `f_code` is a static shim
//!   code object, on 3.13+ `f_executable` may be `None`, so check `ob_type` before treating it
//!   as a code object). 3.11 has no shim frames; `is_entry` marks the first frame of each C
//!   call. 3.14 calls its entry frames `FRAME_OWNED_BY_INTERPRETER` (3) and keeps
//!   `FRAME_OWNED_BY_CSTACK` (4); 3.15 has only the former.
//! * 3.14+: `f_executable` is a `_PyStackRef`, a tagged pointer: clear
//!   [`Layout::iframe_code_tag_mask`] to get the code object.
//! * 3.13+: the layout is read from the target's own `_Py_DebugOffsets`
//!   ([`debug_offsets`]); the per-version `LAYOUT` tables check that parse.

use std::fmt;

pub mod debug_offsets;
pub mod v3_10;
pub mod v3_11;
pub mod v3_12;
pub mod v3_13;
pub mod v3_14;
pub mod v3_15;
pub mod v3_8;
pub mod v3_9;

pub use debug_offsets::{DebugOffsets, DebugOffsetsError};

/// The versions leaktrace reads, as its messages name them.
pub const SUPPORTED: &str = "leaktrace supports 3.8-3.15";

/// Byte offsets (and a few small constants) describing one CPython minor version's layout.
///
/// A field a version does not have holds [`Layout::ABSENT`] (`u64::MAX`). Offsets are relative
/// to the start of the named structure unless stated otherwise.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    // --- _PyRuntimeState (the exported `_PyRuntime` symbol) ---
    /// `_PyRuntime.interpreters.head`: first `PyInterpreterState*` in the list.
    pub runtime_interpreters_head: u64,
    /// `_PyRuntime.interpreters.main`: the main interpreter.
    pub runtime_interpreters_main: u64,
    /// `_PyRuntime.gilstate.tstate_current`: `PyThreadState*` of the thread holding the GIL
    /// (NULL when released). 3.8–3.11 only; ABSENT on 3.12+.
    pub runtime_tstate_current: u64,
    /// `_PyRuntime.ceval.gil`: the (single, process-wide) `struct _gil_runtime_state`, embedded.
    /// 3.8–3.11 only; ABSENT on 3.12+ where the GIL moved into the interpreter.
    pub runtime_gil: u64,

    // --- PyInterpreterState ---
    /// `next` interpreter in the list.
    pub interp_next: u64,
    /// First `PyThreadState*`: `tstate_head` (3.8–3.10), `threads.head` (3.11+).
    pub interp_threads_head: u64,
    /// `ceval.gil`: pointer to the `struct _gil_runtime_state` this interpreter uses. 3.12+
    /// only; ABSENT before.
    pub interp_ceval_gil: u64,
    /// `_gil`: the interpreter's own embedded `struct _gil_runtime_state` (the one `ceval.gil`
    /// points at when the interpreter owns its GIL, always true for the main one). 3.12+ only.
    pub interp_gil: u64,

    // --- struct _gil_runtime_state ---
    /// `last_holder`: `PyThreadState*` that last took the GIL (an atomic address before 3.13).
    pub gil_last_holder: u64,
    /// `locked`: `int`, 1 while the GIL is held, 0 when free, -1 if never initialized.
    pub gil_locked: u64,

    // --- PyThreadState ---
    /// `next` thread state of the same interpreter.
    pub tstate_next: u64,
    /// `interp`: owning `PyInterpreterState*`.
    pub tstate_interp: u64,
    /// `thread_id`: `unsigned long` from `PyThread_get_thread_ident()`, i.e. `pthread_self()`.
    pub tstate_thread_id: u64,
    /// `native_thread_id`: `unsigned long`, the kernel TID. 3.11+ only; ABSENT before.
    pub tstate_native_thread_id: u64,
    /// `frame`: the executing `PyFrameObject*`. 3.8–3.10 only.
    pub tstate_frame: u64,
    /// `cframe`: `_PyCFrame*`. 3.11–3.12 only.
    pub tstate_cframe: u64,
    /// `current_frame`: the executing `_PyInterpreterFrame*`. 3.13+ only.
    pub tstate_current_frame: u64,
    /// `_PyCFrame.current_frame`: the executing `_PyInterpreterFrame*`. 3.11–3.12 only.
    pub cframe_current_frame: u64,

    // --- PyFrameObject (3.8–3.10) ---
    /// `f_back`: caller's `PyFrameObject*`. 3.8–3.10 only.
    pub frame_back: u64,
    /// `f_code`: `PyCodeObject*`. 3.8–3.10 only.
    pub frame_code: u64,
    /// `f_lasti`: index of the last instruction started. 3.8–3.10 only.
    pub frame_lasti: u64,
    /// Size in bytes of `f_lasti` (a C `int`, so 4). 3.8–3.10 only.
    pub frame_lasti_size: u64,
    /// Multiply `f_lasti` by this to get a byte offset into `co_code`: 1 on 3.8/3.9 (bytes),
    /// 2 on 3.10 (code units). ABSENT on 3.11+.
    pub frame_lasti_scale: u64,

    // --- _PyInterpreterFrame (3.11+) ---
    /// `f_code` (3.11/3.12) or `f_executable` (3.13): the code object. 3.11+ only.
    pub iframe_code: u64,
    /// `prev_instr` (3.11/3.12) or `instr_ptr` (3.13): `_Py_CODEUNIT*` into the code object's
    /// `co_code_adaptive`. 3.11+ only.
    pub iframe_instr: u64,
    /// `previous`: the caller's `_PyInterpreterFrame*`. 3.11+ only.
    pub iframe_previous: u64,
    /// `owner`: one `char` (0 thread, 1 generator, 2 frame object; then the frames that are
    /// not Python code, see [`Layout::owner_shim_min`]). 3.11+ only.
    pub iframe_owner: u64,
    /// `is_entry`: one `bool`, set on the first frame of a C-level eval call. 3.11 only.
    pub iframe_is_entry: u64,
    /// Lowest `owner` of frames that are not Python code, skipped by the walk: 3 on 3.12/3.13
    /// (`FRAME_OWNED_BY_CSTACK`, C-stack shims), 3 on 3.14 (`FRAME_OWNED_BY_INTERPRETER`, entry
    /// frames, and `FRAME_OWNED_BY_CSTACK` = 4) and on 3.15 (`FRAME_OWNED_BY_INTERPRETER`, the
    /// last owner). 3.12+ only.
    pub owner_shim_min: u64,
    /// Bits to clear in the code field of a frame: 0 while it is a `PyObject *` (3.11-3.13),
    /// `Py_TAG_BITS` (3) on 3.14+ where `f_executable` is a tagged `_PyStackRef`. 3.11+ only.
    pub iframe_code_tag_mask: u64,

    // --- PyCodeObject ---
    /// `co_filename`: `str`.
    pub code_filename: u64,
    /// `co_name`: `str`.
    pub code_name: u64,
    /// `co_qualname`: `str`. 3.11+ only.
    pub code_qualname: u64,
    /// `co_firstlineno`: C `int`.
    pub code_firstlineno: u64,
    /// The line table, a `bytes` object: `co_lnotab` on 3.8/3.9, `co_linetable` on 3.10+
    /// (formats differ, see [`super::linetable`]).
    pub code_linetable: u64,
    /// `co_code`: the bytecode as a `bytes` object. 3.8–3.10 only.
    pub code_code: u64,
    /// `co_code_adaptive`: start of the inline bytecode array. 3.11+ only.
    pub code_code_adaptive: u64,

    // --- objects ---
    /// `PyObject.ob_type`.
    pub object_type: u64,
    /// `PyBytesObject.ob_base.ob_size`: length (`Py_ssize_t`).
    pub bytes_size: u64,
    /// `PyBytesObject.ob_sval`: first byte of the NUL-terminated data.
    pub bytes_sval: u64,
    /// `PyASCIIObject.length`: length in code points (`Py_ssize_t`).
    pub unicode_length: u64,
    /// `PyASCIIObject.state`: 32-bit word of bit fields.
    pub unicode_state: u64,
    /// `sizeof(PyASCIIObject)`: where the characters of a compact ASCII string start.
    pub unicode_ascii_data: u64,
    /// `sizeof(PyCompactUnicodeObject)`: where the characters of a compact non-ASCII string start.
    pub unicode_compact_data: u64,
    /// Bit position of `state.kind` (1, 2 or 4 bytes per character; 0 = legacy `wchar_t`
    /// before 3.12).
    pub unicode_kind_shift: u64,
    /// Mask of `state.kind` after shifting (3 bits).
    pub unicode_kind_mask: u64,
    /// Bit position of `state.compact` (data follows the header inline).
    pub unicode_compact_bit: u64,
    /// Bit position of `state.ascii` (data starts at `unicode_ascii_data`, else at
    /// `unicode_compact_data`).
    pub unicode_ascii_bit: u64,
}

/// What a `str` object's 32-bit `state` word says about where its characters are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StrState {
    /// The characters follow the header inline (every string but legacy ones).
    pub compact: bool,
    /// Every character is ASCII (one byte each, after the shorter header).
    pub ascii: bool,
    /// Bytes per character as stored: 1, 2 or 4 (anything else in a torn or foreign object).
    pub kind: u64,
    /// Offset of the characters from the object: after `PyASCIIObject` for an ASCII string,
    /// after `PyCompactUnicodeObject` otherwise (meaningful only when `compact`).
    pub data: u64,
}

impl Layout {
    /// Marks a field the version does not have.
    pub const ABSENT: u64 = u64::MAX;

    /// Decodes a `str` object's `state` word (read at `unicode_state`).
    pub fn str_state(&self, state: u64) -> StrState {
        let ascii = (state >> self.unicode_ascii_bit) & 1 == 1;
        StrState {
            compact: (state >> self.unicode_compact_bit) & 1 == 1,
            ascii,
            kind: (state >> self.unicode_kind_shift) & self.unicode_kind_mask,
            data: if ascii {
                self.unicode_ascii_data
            } else {
                self.unicode_compact_data
            },
        }
    }

    /// Whether `value` (one of this struct's fields) is present.
    pub const fn has(value: u64) -> bool {
        value != Self::ABSENT
    }

    /// Every field by name, in declaration order (names match `tools/pyoffsets/offsets.c`).
    pub fn fields(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("runtime_interpreters_head", self.runtime_interpreters_head),
            ("runtime_interpreters_main", self.runtime_interpreters_main),
            ("runtime_tstate_current", self.runtime_tstate_current),
            ("runtime_gil", self.runtime_gil),
            ("interp_next", self.interp_next),
            ("interp_threads_head", self.interp_threads_head),
            ("interp_ceval_gil", self.interp_ceval_gil),
            ("interp_gil", self.interp_gil),
            ("gil_last_holder", self.gil_last_holder),
            ("gil_locked", self.gil_locked),
            ("tstate_next", self.tstate_next),
            ("tstate_interp", self.tstate_interp),
            ("tstate_thread_id", self.tstate_thread_id),
            ("tstate_native_thread_id", self.tstate_native_thread_id),
            ("tstate_frame", self.tstate_frame),
            ("tstate_cframe", self.tstate_cframe),
            ("tstate_current_frame", self.tstate_current_frame),
            ("cframe_current_frame", self.cframe_current_frame),
            ("frame_back", self.frame_back),
            ("frame_code", self.frame_code),
            ("frame_lasti", self.frame_lasti),
            ("frame_lasti_size", self.frame_lasti_size),
            ("frame_lasti_scale", self.frame_lasti_scale),
            ("iframe_code", self.iframe_code),
            ("iframe_instr", self.iframe_instr),
            ("iframe_previous", self.iframe_previous),
            ("iframe_owner", self.iframe_owner),
            ("iframe_is_entry", self.iframe_is_entry),
            ("owner_shim_min", self.owner_shim_min),
            ("iframe_code_tag_mask", self.iframe_code_tag_mask),
            ("code_filename", self.code_filename),
            ("code_name", self.code_name),
            ("code_qualname", self.code_qualname),
            ("code_firstlineno", self.code_firstlineno),
            ("code_linetable", self.code_linetable),
            ("code_code", self.code_code),
            ("code_code_adaptive", self.code_code_adaptive),
            ("object_type", self.object_type),
            ("bytes_size", self.bytes_size),
            ("bytes_sval", self.bytes_sval),
            ("unicode_length", self.unicode_length),
            ("unicode_state", self.unicode_state),
            ("unicode_ascii_data", self.unicode_ascii_data),
            ("unicode_compact_data", self.unicode_compact_data),
            ("unicode_kind_shift", self.unicode_kind_shift),
            ("unicode_kind_mask", self.unicode_kind_mask),
            ("unicode_compact_bit", self.unicode_compact_bit),
            ("unicode_ascii_bit", self.unicode_ascii_bit),
        ]
    }
}

/// A Python version this crate has no layout for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnsupportedVersion {
    pub major: u32,
    pub minor: u32,
}

impl fmt::Display for UnsupportedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unsupported Python version {}.{} ({SUPPORTED})",
            self.major, self.minor
        )
    }
}

impl std::error::Error for UnsupportedVersion {}

/// The layout for CPython `major.minor`.
pub fn layout_for(major: u32, minor: u32) -> Result<Layout, UnsupportedVersion> {
    match (major, minor) {
        (3, 8) => Ok(v3_8::LAYOUT),
        (3, 9) => Ok(v3_9::LAYOUT),
        (3, 10) => Ok(v3_10::LAYOUT),
        (3, 11) => Ok(v3_11::LAYOUT),
        (3, 12) => Ok(v3_12::LAYOUT),
        (3, 13) => Ok(v3_13::LAYOUT),
        (3, 14) => Ok(v3_14::LAYOUT),
        (3, 15) => Ok(v3_15::LAYOUT),
        _ => Err(UnsupportedVersion { major, minor }),
    }
}

#[cfg(test)]
pub(crate) mod tests;
