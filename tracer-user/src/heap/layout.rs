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
/// `PyTypeObject.tp_members` (`PyMemberDef *`): a class's `__slots__` (and a C type's object
/// fields), an array ended by a NULL name.
pub const TP_MEMBERS: u64 = 240;
/// `sizeof(PyMemberDef)`: name, type (`int`), offset (`Py_ssize_t`), flags (`int`), doc.
pub const MEMBER_SIZE: u64 = 40;
/// `PyMemberDef.type` of an object field: `T_OBJECT` (6) and `T_OBJECT_EX` (16, what
/// `__slots__` make), the same on 3.8-3.15 (`Py_T_OBJECT`, `Py_T_OBJECT_EX` from 3.12).
pub const MEMBER_OBJECT: [i32; 2] = [6, 16];
/// `PyTypeObject.tp_base`.
pub const TP_BASE: u64 = 256;
/// `PyTypeObject.tp_dict`.
pub const TP_DICT: u64 = 264;
/// `PyTypeObject.tp_dictoffset` (`Py_ssize_t`): where an instance keeps its `__dict__`
/// pointer (3.8-3.10; negative counts from the end of a variable-size object).
pub const TP_DICTOFFSET: u64 = 288;
/// Bytes of a type object read at once (through `tp_dictoffset`).
pub const TYPE_READ: usize = 296;
/// `Py_TPFLAGS_HEAPTYPE`.
pub const HEAPTYPE: u64 = 1 << 9;
/// `Py_TPFLAGS_INLINE_VALUES` (3.13+): instances hold their attribute values inline, at
/// `tp_basicsize`, keyed by the class's shared keys (`ht_cached_keys`).
pub const INLINE_VALUES: u64 = 1 << 2;
/// `Py_TPFLAGS_MANAGED_WEAKREF` (3.12+): a weakref list word before the GC header.
pub const MANAGED_WEAKREF: u64 = 1 << 3;
/// `Py_TPFLAGS_MANAGED_DICT` (3.11+): the `__dict__` (3.11: and values) pointer lives before
/// the GC header (`_PyObject_ManagedDictPointer`).
pub const MANAGED_DICT: u64 = 1 << 4;
/// `Py_TPFLAGS_HAVE_GC`: instances are on the GC's lists and may hold references.
pub const HAVE_GC: u64 = 1 << 14;
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

/// Where an instance of a class with `Py_TPFLAGS_MANAGED_DICT` keeps its attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManagedDict {
    /// 3.8-3.10: no managed dicts; `tp_dictoffset` locates the `__dict__` pointer.
    None,
    /// 3.11: `[values, dict]` two and three words before the object (`PyDictValues *`,
    /// `PyObject *`): the dict if it exists, else split values keyed by `ht_cached_keys`.
    ValuesThenDict,
    /// 3.12: one `PyDictOrValues` three words before the object: a dict, or values with
    /// bit 0 set.
    Tagged,
    /// 3.13+: the dict three words before (`PyManagedDictPointer`), else the inline values
    /// at `tp_basicsize` (`Py_TPFLAGS_INLINE_VALUES`).
    DictOrInline,
}

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
    /// How instances keep a managed `__dict__`.
    pub managed_dict: ManagedDict,
    /// `PyHeapTypeObject.ht_cached_keys`: a class's shared keys (split dicts, inline values).
    pub ht_cached_keys: u64,
    /// `PyDictValues.values`: 0, or 8 on 3.13+ (after `capacity`, `size`, `embedded`, `valid`).
    pub values_off: u64,
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
    // `offsetof(PyHeapTypeObject, ht_cached_keys)` (tools/pyoffsets/heap.c).
    let ht_cached_keys = match minor {
        9 => 864,
        8 | 10 | 11 => 872,
        12..=14 => 880,
        _ => 888,
    };
    Some(HeapLayout {
        minor,
        gc_in_runtime,
        gc_heads,
        compact_keys: minor >= 11,
        tuple_item: if minor >= 14 { 32 } else { 24 },
        int_lv_tag: minor >= 12,
        managed_dict: match minor {
            ..=10 => ManagedDict::None,
            11 => ManagedDict::ValuesThenDict,
            12 => ManagedDict::Tagged,
            _ => ManagedDict::DictOrInline,
        },
        ht_cached_keys,
        values_off: if minor >= 13 { 8 } else { 0 },
        py: *l,
    })
}

/// Bytes of a split dict's values array holding `n` slots (`new_values` per version): 3.8-3.10
/// a bare array, 3.11/3.12 with a prefix of `n + 2` bytes rounded to words, 3.13+ a header
/// word and an insertion-order prefix of `n` bytes rounded to words.
pub fn values_bytes(minor: u32, n: u64) -> u64 {
    match minor {
        ..=10 => n * 8,
        11 | 12 => (n + 2).div_ceil(8) * 8 + n * 8,
        _ => n.div_ceil(8) * 8 + (n + 1) * 8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_arrays_per_version() {
        // 3.10: 5 slots, 40 bytes; 3.12: prefix of 7 bytes -> 8, 48 bytes; 3.13: 30 slots,
        // prefix 32 + header 8 + 240 (`_PyInlineValuesSize` for a class with 30 attributes).
        assert_eq!(values_bytes(10, 5), 40);
        assert_eq!(values_bytes(12, 5), 48);
        assert_eq!(values_bytes(13, 30), 32 + 8 + 240);
    }

    #[test]
    fn managed_dicts_by_version() {
        let l = crate::python::layout::layout_for(3, 11).unwrap();
        assert_eq!(
            heap_layout(11, &l).unwrap().managed_dict,
            ManagedDict::ValuesThenDict
        );
        assert_eq!(heap_layout(11, &l).unwrap().ht_cached_keys, 872);
        assert_eq!(heap_layout(13, &l).unwrap().values_off, 8);
        assert_eq!(heap_layout(9, &l).unwrap().managed_dict, ManagedDict::None);
    }
}
