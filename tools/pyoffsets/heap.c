/* The offsets tracer-user/src/heap/layout.rs uses (GC list heads, type, dict, list, set and
 * module fields), printed by the compiler from one CPython's own headers ("name value" lines).
 * 3.8-3.13, pyenv's headers:
 *   gcc -w -I$P/include/python3.X -I$P/include/python3.X/internal heap.c -o heap && ./heap
 * 3.14/3.15, Debian's python3.X-dev in the sid root (copy this file into it first):
 *   chroot .roots/sid gcc -w -I/usr/include/python3.X -I/usr/include/python3.X/internal \
 *       /tmp/heap.c -o /tmp/heap && chroot .roots/sid /tmp/heap
 * Not part of check.sh yet: compare its output with heap_layout() by hand (ht_cached_keys,
 * dk_usable and dictvalues_values were last compared on 2026-12-02: 3.8-3.15). */
#define Py_BUILD_CORE 1
#include <Python.h>
#include <stddef.h>
#include <stdio.h>
#if PY_MINOR_VERSION == 8
#include "internal/pycore_pystate.h"
#else
#include "internal/pycore_interp.h"
#endif
#if PY_MINOR_VERSION >= 9
#include "internal/pycore_runtime.h"
#endif
#if PY_MINOR_VERSION >= 12
#include "internal/pycore_dict.h"
#include "internal/pycore_moduleobject.h"
#endif
#define P(n, v) printf("%s %llu\n", n, (unsigned long long)(v))
int main(void) {
#if PY_MINOR_VERSION == 8
    P("gc_generations", offsetof(_PyRuntimeState, gc.generations));
    P("gc_permanent", offsetof(_PyRuntimeState, gc.permanent_generation));
#else
    P("gc_generations", offsetof(PyInterpreterState, gc.generations));
    P("gc_permanent", offsetof(PyInterpreterState, gc.permanent_generation));
#endif
    P("gen_size", sizeof(struct gc_generation));
    P("gen_head", offsetof(struct gc_generation, head));
    P("gc_head_size", sizeof(PyGC_Head));
    P("tp_name", offsetof(PyTypeObject, tp_name));
    P("tp_basicsize", offsetof(PyTypeObject, tp_basicsize));
    P("tp_itemsize", offsetof(PyTypeObject, tp_itemsize));
    P("tp_flags", offsetof(PyTypeObject, tp_flags));
    P("tp_dict", offsetof(PyTypeObject, tp_dict));
    P("tp_dictoffset", offsetof(PyTypeObject, tp_dictoffset));
    P("ht_qualname", offsetof(PyHeapTypeObject, ht_qualname));
    P("ht_module_attr", offsetof(PyHeapTypeObject, ht_name));
    P("tp_base", offsetof(PyTypeObject, tp_base));
    P("dict_used", offsetof(PyDictObject, ma_used));
    P("dict_keys", offsetof(PyDictObject, ma_keys));
    P("dict_values", offsetof(PyDictObject, ma_values));
    P("list_item", offsetof(PyListObject, ob_item));
    P("list_allocated", offsetof(PyListObject, allocated));
    P("tuple_item", offsetof(PyTupleObject, ob_item));
    P("set_used", offsetof(PySetObject, used));
    P("set_mask", offsetof(PySetObject, mask));
    P("set_table", offsetof(PySetObject, table));
    P("set_small", offsetof(PySetObject, smalltable));
#if PY_MINOR_VERSION >= 12
    P("module_dict", offsetof(PyModuleObject, md_dict));
    P("dk_nentries", offsetof(PyDictKeysObject, dk_nentries));
    P("dk_indices", offsetof(PyDictKeysObject, dk_indices));
#if PY_MINOR_VERSION >= 11
    P("dk_log2_size", offsetof(PyDictKeysObject, dk_log2_size));
    P("dk_log2_index_bytes", offsetof(PyDictKeysObject, dk_log2_index_bytes));
    P("dk_kind", offsetof(PyDictKeysObject, dk_kind));
#else
    P("dk_size", offsetof(PyDictKeysObject, dk_size));
#endif
#endif
    P("ht_cached_keys", offsetof(PyHeapTypeObject, ht_cached_keys));
#if PY_MINOR_VERSION >= 11
    P("dk_usable", offsetof(PyDictKeysObject, dk_usable));
    P("dictvalues_values", offsetof(PyDictValues, values));
#endif
    P("float_size", sizeof(PyFloatObject));

    return 0;
}
