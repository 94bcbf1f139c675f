//! Where each CPython keeps its garbage collector's lists, and the few object layouts the census
//! reads beyond [`crate::python::Layout`] (dict keys, lists, sets, types).
//!
//! Numbers from the compiler on each version's own headers (`tools/pyoffsets/heap.c`, built
//! with `Py_BUILD_CORE`; 3.8-3.13 from pyenv's headers, 3.14/3.15 from Debian's `-dev`
//! packages in the sid root). The fields of `PyTypeObject`, `PyDictObject`, `PyListObject`,
//! `PySetObject` and `PyModuleObject` the census reads sit at the same offsets on every one of
//! them (checked by the same program), so only the GC lists, the dict keys and the tuple's
//! items differ.

use crate::python::Layout;

/// `PyTypeObject.tp_name` (`const char *`).
pub const TP_NAME: u64 = 24;
/// `PyTypeObject.tp_basicsize`.
pub const TP_BASICSIZE: u64 = 32;
/// `PyTypeObject.tp_itemsize`.
pub const TP_ITEMSIZE: u64 = 40;
/// `PyTypeObject.tp_flags` (`unsigned long`).
pub const TP_FLAGS: u64 = 168;
/// `PyTypeObject.tp_dict`.
pub const TP_DICT: u64 = 264;
/// Bytes of a type object read at once (through `tp_dict`).
pub const TYPE_READ: usize = 272;
/// `Py_TPFLAGS_HEAPTYPE`.
pub const HEAPTYPE: u64 = 1 << 9;
/// `Py_TPFLAGS_TYPE_SUBCLASS`: the object is a class.
pub const TYPE_SUBCLASS: u64 = 1 << 31;

/// `PyVarObject.ob_size` (`Py_ssize_t`; `lv_tag` of an `int` on 3.12+).
pub const OB_SIZE: u64 = 16;
/// `PyDictObject.ma_used`, `.ma_keys`, `.ma_values`.
pub const DICT_USED: u64 = 16;
pub const DICT_KEYS: u64 = 32;
pub const DICT_VALUES: u64 = 40;
/// `PyListObject.ob_item`, `.allocated`.
pub const LIST_ITEM: u64 = 24;
pub const LIST_ALLOCATED: u64 = 32;
/// `PySetObject.used`, `.mask`, `.table`, `.smalltable` (entries of 16 bytes: key, hash).
pub const SET_USED: u64 = 24;
pub const SET_MASK: u64 = 32;
pub const SET_TABLE: u64 = 40;
pub const SET_SMALL: u64 = 64;
/// `PyModuleObject.md_dict`.
pub const MODULE_DICT: u64 = 16;
/// `sizeof(PyGC_Head)`: the object follows its GC header.
pub const GC_HEAD: u64 = 16;
/// Bytes of an object's start read with its GC header (through `ma_values`/`table`).
pub const OBJ_READ: usize = 48;

/// Where the GC's list heads are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeapLayout {
    pub minor: u32,
    /// The heads live in `_PyRuntime` (3.8: `_PyRuntime.gc`), else in the main
    /// `PyInterpreterState` (`interp->gc`).
    pub gc_in_runtime: bool,
    /// Offsets of every `PyGC_Head` list head (generations, and the permanent generation)
    /// from `_PyRuntime` or the interpreter.
    pub gc_heads: Vec<u64>,
    /// The 3.11+ dict keys (`dk_log2_size`, `dk_kind`, unicode entries of 16 bytes) rather
    /// than 3.8-3.10's (`dk_size`, entries of 24 bytes).
    pub compact_keys: bool,
    /// `PyTupleObject.ob_item` (inline): 24, or 32 on 3.14+ (after the cached `ob_hash`).
    pub tuple_item: u64,
    /// `int` keeps its digit count in `lv_tag >> 3` (3.12+) rather than `|ob_size|`.
    pub int_lv_tag: bool,
    /// The frame walker's layout, for the string fields (`str` objects are sized and read
    /// as the walker reads names).
    pub py: Layout,
}

/// `sizeof(struct gc_generation)` on every version: a `PyGC_Head` and two `int`s.
const GEN: u64 = 24;

/// The census layout of CPython 3.`minor` with the frame walker's `l`, or `None` for a version
/// without a table.
pub fn heap_layout(minor: u32, l: &Layout) -> Option<HeapLayout> {
    // `generations[3]`, then `PyGC_Head *generation0`, then `permanent_generation`:
    // (generations, permanent_generation).
    let (gc_in_runtime, gens, permanent) = match minor {
        // In `_PyRuntime.gc` on 3.8, in `interp->gc` from 3.9 on.
        8 => (true, 368, 448),
        9 | 10 => (false, 640, 720),
        11 => (false, 672, 752),
        12 => (false, 136, 216),
        13 => (false, 7424, 7504),
        // No `generation0` pointer any more (Debian's 3.14.10 and 3.15.2 GIL builds keep
        // `generations[3]`; the `young`/`old[2]` lists are free-threaded only).
        14 => (false, 7432, 7504),
        15 => (false, 7408, 7480),
        _ => return None,
    };
    let gc_heads = vec![gens, gens + GEN, gens + 2 * GEN, permanent];
    Some(HeapLayout {
        minor,
        gc_in_runtime,
        gc_heads,
        compact_keys: minor >= 11,
        tuple_item: if minor >= 14 { 32 } else { 24 },
        int_lv_tag: minor >= 12,
        py: *l,
    })
}
