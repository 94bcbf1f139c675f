//! `_Py_DebugOffsets`: the layout description CPython 3.13+ keeps at the start of `_PyRuntime`.
//!
//! From 3.13 on, `_PyRuntime` (an exported, statically initialized symbol in its own
//! `.PyRuntime` section) begins with a `_Py_DebugOffsets` struct meant for out-of-process tools:
//! the cookie `"xdebugpy"`, `PY_VERSION_HEX`, a `free_threaded` flag, then groups of
//! little-endian `u64` entries (`sizeof` and `offsetof` values of the interpreter's own
//! structures). Its first three entries sit at bytes 0, 8 and 16 in every version; the rest of
//! the struct changes from one minor version to the next (3.14 inserted entries in the middle of
//! groups, 3.15 more), so where each entry sits comes from one [`DebugTable`] per minor version
//! (`v3_13::DEBUG`, `v3_14::DEBUG`, ...), generated from that version's
//! `Include/internal/pycore_debug_offsets.h` by `tools/pyoffsets/offsets.c` and checked against
//! those headers by `python::layout::tests::tables_match_headers`.
//!
//! The values themselves are always read from the target (its binary or its memory), never
//! from a table: a build with other options (free-threaded, debug) describes itself. The few
//! [`Layout`] fields the struct does not carry are facts the table states per version, each
//! with the reason it holds.
//!
//! [`parse`] refuses rather than guesses: a missing cookie, a truncated struct, a minor version
//! without a table (the first 3.16 alpha, say), or an offset outside the structure it belongs
//! to is an error naming what was wrong.

use std::fmt;

use super::Layout;

/// The cookie `_PyRuntime` starts with.
pub const DEBUG_COOKIE: &[u8; 8] = b"xdebugpy";
/// Where `version` and `free_threaded` sit: the same in every version (the struct's header).
const VERSION_AT: usize = 8;
const FREE_THREADED_AT: usize = 16;

/// Bytes to read from the start of `_PyRuntime` to hold the struct of every known version.
pub const READ_BYTES: usize = 4096;

/// One minor version's `_Py_DebugOffsets`: where each entry sits, and the facts the struct
/// does not carry.
#[derive(Clone, Copy, Debug)]
pub struct DebugTable {
    /// The minor version (`3.minor`) this table describes.
    pub minor: u32,
    /// Byte offset inside `_Py_DebugOffsets` of each entry read (names as `offsets.c` prints
    /// them under `debug.*`), plus `sizeof` (of the whole struct) and derived relations:
    /// `main_minus_head` (`interpreters.main` - `interpreters.head`) and, where the struct has
    /// no `compactunicodeobject_size` entry, `compact_minus_ascii`.
    pub entries: &'static [(&'static str, u64)],
    /// Lowest `_PyInterpreterFrame.owner` of frames that are not Python code (C-stack shims,
    /// interpreter entry frames): an enum value, not an offset, so not in the struct.
    pub owner_shim_min: u64,
    /// Tag bits of `f_executable` (`Py_TAG_BITS` where it is a `_PyStackRef`, else 0): a
    /// macro, not in the struct.
    pub code_tag_mask: u64,
}

impl DebugTable {
    fn entry(&self, name: &str) -> Option<usize> {
        self.entries
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v as usize)
    }

    /// Size of the whole struct in this version.
    pub fn size(&self) -> usize {
        self.entry("sizeof").expect("every table has sizeof")
    }
}

/// What the target's `_Py_DebugOffsets` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DebugOffsets {
    /// `PY_VERSION_HEX` of the interpreter (e.g. `0x030e0af0` for 3.14.10 final).
    pub version_hex: u64,
    pub minor: u32,
    /// A `Py_GIL_DISABLED` (free-threaded) build.
    pub free_threaded: bool,
    /// The layout built from the struct and the version's table.
    pub layout: Layout,
}

/// Why a `_Py_DebugOffsets` was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DebugOffsetsError {
    /// The bytes do not start with `"xdebugpy"`.
    NoCookie,
    /// The struct of this version is `need` bytes, only `got` were there.
    Truncated { need: usize, got: usize },
    /// The version entry is not a CPython 3.x `PY_VERSION_HEX`.
    NotPython3 { version_hex: u64 },
    /// A 3.x version without a table: leaktrace does not know where its entries sit.
    UnknownMinor { minor: u32, version_hex: u64 },
    /// An entry (named) holds an offset outside its structure: not the struct we know.
    Implausible { entry: &'static str },
}

impl fmt::Display for DebugOffsetsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoCookie => write!(f, "its _PyRuntime does not start with `xdebugpy`"),
            Self::Truncated { need, got } => write!(
                f,
                "its _Py_DebugOffsets is truncated ({got} of {need} bytes)"
            ),
            Self::NotPython3 { version_hex } => write!(
                f,
                "its _Py_DebugOffsets names no CPython 3 version ({version_hex:#x})"
            ),
            Self::UnknownMinor { minor, .. } => write!(
                f,
                "unsupported Python version 3.{minor} ({})",
                super::SUPPORTED
            ),
            Self::Implausible { entry } => write!(
                f,
                "its _Py_DebugOffsets entry `{entry}` lies outside its structure (not a layout leaktrace knows)"
            ),
        }
    }
}

impl std::error::Error for DebugOffsetsError {}

/// The table for 3.`minor`, if leaktrace has one.
pub fn table_for(minor: u32) -> Option<&'static DebugTable> {
    match minor {
        13 => Some(&super::v3_13::DEBUG),
        14 => Some(&super::v3_14::DEBUG),
        15 => Some(&super::v3_15::DEBUG),
        _ => None,
    }
}

fn word(bytes: &[u8], at: usize) -> Option<u64> {
    let raw = bytes.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(raw.try_into().ok()?))
}

/// Parses the `_Py_DebugOffsets` at the start of `bytes` (the first bytes of `_PyRuntime`, read
/// from the target's memory or from its binary's `.PyRuntime` section).
pub fn parse(bytes: &[u8]) -> Result<DebugOffsets, DebugOffsetsError> {
    if bytes.get(..8) != Some(DEBUG_COOKIE.as_slice()) {
        return Err(DebugOffsetsError::NoCookie);
    }
    let header = FREE_THREADED_AT + 8;
    let version_hex = word(bytes, VERSION_AT).ok_or(DebugOffsetsError::Truncated {
        need: header,
        got: bytes.len(),
    })?;
    let (major, minor) = ((version_hex >> 24) & 0xff, (version_hex >> 16) & 0xff);
    if major != 3 || version_hex >> 32 != 0 {
        return Err(DebugOffsetsError::NotPython3 { version_hex });
    }
    let minor = minor as u32;
    let table = table_for(minor).ok_or(DebugOffsetsError::UnknownMinor { minor, version_hex })?;
    if bytes.len() < table.size() {
        return Err(DebugOffsetsError::Truncated {
            need: table.size(),
            got: bytes.len(),
        });
    }
    let free_threaded = match word(bytes, FREE_THREADED_AT) {
        Some(0) => false,
        Some(1) => true,
        _ => {
            return Err(DebugOffsetsError::Implausible {
                entry: "free_threaded",
            })
        }
    };
    let layout = layout_from(bytes, table)?;
    Ok(DebugOffsets {
        version_hex,
        minor,
        free_threaded,
        layout,
    })
}

/// Builds a [`Layout`] from the struct in `bytes` (at least `table.size()` long).
fn layout_from(bytes: &[u8], table: &DebugTable) -> Result<Layout, DebugOffsetsError> {
    // The value of an entry, by name.
    let u = |name: &'static str| -> Result<u64, DebugOffsetsError> {
        table
            .entry(name)
            .and_then(|at| word(bytes, at))
            .ok_or(DebugOffsetsError::Implausible { entry: name })
    };
    // A field of `len` bytes at the offset held by `name` must lie inside `limit` bytes.
    let within = |name: &'static str, len: u64, limit: u64| -> Result<u64, DebugOffsetsError> {
        let off = u(name)?;
        match off.checked_add(len) {
            Some(end) if end <= limit => Ok(off),
            _ => Err(DebugOffsetsError::Implausible { entry: name }),
        }
    };
    let fact = |name: &'static str| -> Result<u64, DebugOffsetsError> {
        table
            .entry(name)
            .map(|v| v as u64)
            .ok_or(DebugOffsetsError::Implausible { entry: name })
    };
    // Sizes of the structures: bounded, so a foreign struct cannot pass as a huge one.
    let size = |name: &'static str, max: u64| -> Result<u64, DebugOffsetsError> {
        let v = u(name)?;
        if v == 0 || v > max {
            return Err(DebugOffsetsError::Implausible { entry: name });
        }
        Ok(v)
    };
    let runtime_size = size("runtime_state.size", 16 << 20)?;
    let interp_size = size("interpreter_state.size", 16 << 20)?;
    let tstate_size = size("thread_state.size", 1 << 20)?;
    let frame_size = size("interpreter_frame.size", 4096)?;
    let code_size = size("code_object.size", 4096)?;
    // `sizeof(PyObject)` is not an entry of 3.13's struct; no object header is near 64 bytes.
    const OBJECT_HEADER_MAX: u64 = 64;

    let head = within("runtime_state.interpreters_head", 16, runtime_size)?;
    let gil = within("interpreter_state.gil_runtime_state", 24, interp_size)?;
    let holder = within("interpreter_state.gil_runtime_state_holder", 8, interp_size)?;
    let locked = within("interpreter_state.gil_runtime_state_locked", 4, interp_size)?;
    let ascii = u("unicode_object.asciiobject_size")?;
    if ascii == 0 || ascii > 4096 {
        return Err(DebugOffsetsError::Implausible {
            entry: "unicode_object.asciiobject_size",
        });
    }
    let compact = match table.entry("unicode_object.compactunicodeobject_size") {
        Some(_) => u("unicode_object.compactunicodeobject_size")?,
        None => ascii + fact("compact_minus_ascii")?,
    };
    if compact < ascii || compact > 4096 {
        return Err(DebugOffsetsError::Implausible {
            entry: "unicode_object.compactunicodeobject_size",
        });
    }
    let rel = |off: u64, base: u64, entry: &'static str| {
        off.checked_sub(base)
            .ok_or(DebugOffsetsError::Implausible { entry })
    };
    Ok(Layout {
        runtime_interpreters_head: head,
        runtime_interpreters_main: head + fact("main_minus_head")?,
        runtime_tstate_current: Layout::ABSENT,
        runtime_gil: Layout::ABSENT,
        interp_next: within("interpreter_state.next", 8, interp_size)?,
        interp_threads_head: within("interpreter_state.threads_head", 8, interp_size)?,
        interp_ceval_gil: within("interpreter_state.ceval_gil", 8, interp_size)?,
        interp_gil: gil,
        gil_last_holder: rel(holder, gil, "interpreter_state.gil_runtime_state_holder")?,
        gil_locked: rel(locked, gil, "interpreter_state.gil_runtime_state_locked")?,
        tstate_next: within("thread_state.next", 8, tstate_size)?,
        tstate_interp: within("thread_state.interp", 8, tstate_size)?,
        tstate_thread_id: within("thread_state.thread_id", 8, tstate_size)?,
        tstate_native_thread_id: within("thread_state.native_thread_id", 8, tstate_size)?,
        tstate_frame: Layout::ABSENT,
        tstate_cframe: Layout::ABSENT,
        tstate_current_frame: within("thread_state.current_frame", 8, tstate_size)?,
        cframe_current_frame: Layout::ABSENT,
        frame_back: Layout::ABSENT,
        frame_code: Layout::ABSENT,
        frame_lasti: Layout::ABSENT,
        frame_lasti_size: Layout::ABSENT,
        frame_lasti_scale: Layout::ABSENT,
        iframe_code: within("interpreter_frame.executable", 8, frame_size)?,
        iframe_instr: within("interpreter_frame.instr_ptr", 8, frame_size)?,
        iframe_previous: within("interpreter_frame.previous", 8, frame_size)?,
        iframe_owner: within("interpreter_frame.owner", 1, frame_size)?,
        iframe_is_entry: Layout::ABSENT,
        owner_shim_min: table.owner_shim_min,
        iframe_code_tag_mask: table.code_tag_mask,
        code_filename: within("code_object.filename", 8, code_size)?,
        code_name: within("code_object.name", 8, code_size)?,
        code_qualname: within("code_object.qualname", 8, code_size)?,
        code_firstlineno: within("code_object.firstlineno", 4, code_size)?,
        code_linetable: within("code_object.linetable", 8, code_size)?,
        code_code: Layout::ABSENT,
        code_code_adaptive: within("code_object.co_code_adaptive", 0, code_size)?,
        object_type: within("pyobject.ob_type", 8, OBJECT_HEADER_MAX)?,
        bytes_size: within("bytes_object.ob_size", 8, OBJECT_HEADER_MAX)?,
        bytes_sval: within("bytes_object.ob_sval", 1, OBJECT_HEADER_MAX)?,
        unicode_length: within("unicode_object.length", 8, ascii)?,
        unicode_state: within("unicode_object.state", 4, ascii)?,
        unicode_ascii_data: ascii,
        unicode_compact_data: compact,
        // Bit positions inside `PyASCIIObject.state` (interned:2, kind:3, compact:1, ascii:1
        // from bit 0 in every version since 3.12) are bit fields, not in the struct;
        // `tools/pyoffsets/offsets.c` checks them against each version's headers.
        unicode_kind_shift: 2,
        unicode_kind_mask: 7,
        unicode_compact_bit: 5,
        unicode_ascii_bit: 6,
    })
}
