/*
 * Prints the CPython struct offsets leaktrace needs, one "name value" pair per line, computed
 * by the compiler from the headers of the interpreter being built against. The names are the
 * field names of `leaktrace::python::layout::Layout`; "absent" marks a field the version lacks
 * (the Rust table holds `Layout::ABSENT` there).
 *
 * Build (see check.sh):
 *   gcc -I$PREFIX/include/python3.X -I$PREFIX/include/python3.X/internal offsets.c
 */
#define Py_BUILD_CORE 1
#include <Python.h>
#include <frameobject.h>
#include <stddef.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>

#if PY_MINOR_VERSION == 8
#include "internal/pycore_pystate.h"
#else
#include "internal/pycore_runtime.h"
#include "internal/pycore_interp.h"
#endif
#if PY_MINOR_VERSION >= 11
#include "internal/pycore_frame.h"
#endif
#if PY_MINOR_VERSION >= 12
#include "internal/pycore_gil.h"
#endif
#if PY_MINOR_VERSION >= 14
#include "internal/pycore_interpframe_structs.h"
#include "internal/pycore_stackref.h"
#endif

#define P(name, value) printf("%s %llu\n", name, (unsigned long long)(value))
#define ABSENT(name) printf("%s absent\n", name)

/* Bit index of the lowest set bit of the 32-bit word holding PyASCIIObject.state after
 * `assign` has been applied to a zeroed object. */
#define STATE_BITS(assign, out)                                                           \
    do {                                                                                  \
        PyASCIIObject o;                                                                  \
        uint32_t sw_ = 0;                                                                 \
        memset(&o, 0, sizeof o);                                                          \
        assign;                                                                           \
        memcpy(&sw_, (char *)&o + offsetof(PyASCIIObject, state), sizeof sw_);             \
        out = sw_;                                                                        \
    } while (0)

static unsigned lowest_bit(uint32_t w) {
    unsigned i = 0;
    while (i < 32 && !(w & (1u << i)))
        i++;
    return i;
}

int main(void) {
    printf("version %d.%d\n", PY_MAJOR_VERSION, PY_MINOR_VERSION);

    /* _PyRuntimeState */
    P("runtime_interpreters_head", offsetof(_PyRuntimeState, interpreters.head));
    P("runtime_interpreters_main", offsetof(_PyRuntimeState, interpreters.main));
#if PY_MINOR_VERSION <= 11
    P("runtime_tstate_current", offsetof(_PyRuntimeState, gilstate.tstate_current));
    P("runtime_gil", offsetof(_PyRuntimeState, ceval.gil));
#else
    ABSENT("runtime_tstate_current");
    ABSENT("runtime_gil");
#endif

    /* PyInterpreterState */
    P("interp_next", offsetof(PyInterpreterState, next));
#if PY_MINOR_VERSION <= 10
    P("interp_threads_head", offsetof(PyInterpreterState, tstate_head));
#else
    P("interp_threads_head", offsetof(PyInterpreterState, threads.head));
#endif
#if PY_MINOR_VERSION >= 12
    P("interp_ceval_gil", offsetof(PyInterpreterState, ceval.gil));
    P("interp_gil", offsetof(PyInterpreterState, _gil));
#else
    ABSENT("interp_ceval_gil");
    ABSENT("interp_gil");
#endif

    /* struct _gil_runtime_state */
    P("gil_last_holder", offsetof(struct _gil_runtime_state, last_holder));
    P("gil_locked", offsetof(struct _gil_runtime_state, locked));

    /* PyThreadState */
    P("tstate_next", offsetof(PyThreadState, next));
    P("tstate_interp", offsetof(PyThreadState, interp));
    P("tstate_thread_id", offsetof(PyThreadState, thread_id));
#if PY_MINOR_VERSION >= 11
    P("tstate_native_thread_id", offsetof(PyThreadState, native_thread_id));
#else
    ABSENT("tstate_native_thread_id");
#endif
#if PY_MINOR_VERSION <= 10
    P("tstate_frame", offsetof(PyThreadState, frame));
#else
    ABSENT("tstate_frame");
#endif
#if PY_MINOR_VERSION == 11 || PY_MINOR_VERSION == 12
    P("tstate_cframe", offsetof(PyThreadState, cframe));
    P("cframe_current_frame", offsetof(_PyCFrame, current_frame));
#else
    ABSENT("tstate_cframe");
    ABSENT("cframe_current_frame");
#endif
#if PY_MINOR_VERSION >= 13
    P("tstate_current_frame", offsetof(PyThreadState, current_frame));
#else
    ABSENT("tstate_current_frame");
#endif

    /* PyFrameObject (<= 3.10) */
#if PY_MINOR_VERSION <= 10
    P("frame_back", offsetof(PyFrameObject, f_back));
    P("frame_code", offsetof(PyFrameObject, f_code));
    P("frame_lasti", offsetof(PyFrameObject, f_lasti));
    P("frame_lasti_size", sizeof(((PyFrameObject *)0)->f_lasti));
#if PY_MINOR_VERSION <= 9
    P("frame_lasti_scale", 1);
#else
    P("frame_lasti_scale", sizeof(_Py_CODEUNIT));
#endif
#else
    ABSENT("frame_back");
    ABSENT("frame_code");
    ABSENT("frame_lasti");
    ABSENT("frame_lasti_size");
    ABSENT("frame_lasti_scale");
#endif

    /* _PyInterpreterFrame (>= 3.11) */
#if PY_MINOR_VERSION >= 11
#if PY_MINOR_VERSION >= 13
    P("iframe_code", offsetof(_PyInterpreterFrame, f_executable));
    P("iframe_instr", offsetof(_PyInterpreterFrame, instr_ptr));
#else
    P("iframe_code", offsetof(_PyInterpreterFrame, f_code));
    P("iframe_instr", offsetof(_PyInterpreterFrame, prev_instr));
#endif
    P("iframe_previous", offsetof(_PyInterpreterFrame, previous));
    P("iframe_owner", offsetof(_PyInterpreterFrame, owner));
#if PY_MINOR_VERSION == 11
    P("iframe_is_entry", offsetof(_PyInterpreterFrame, is_entry));
    ABSENT("owner_shim_min");
#else
    ABSENT("iframe_is_entry");
#if PY_MINOR_VERSION >= 14
    /* 3.14 adds FRAME_OWNED_BY_INTERPRETER (3, entry frames) below FRAME_OWNED_BY_CSTACK (4);
     * 3.15 drops FRAME_OWNED_BY_CSTACK. Every owner from INTERPRETER up is not Python code. */
    P("owner_shim_min", FRAME_OWNED_BY_INTERPRETER);
#else
    P("owner_shim_min", FRAME_OWNED_BY_CSTACK);
#endif
#endif
#if PY_MINOR_VERSION >= 14
    /* f_executable is a _PyStackRef: a PyObject* whose low Py_TAG_BITS carry flags. */
    P("iframe_code_tag_mask", Py_TAG_BITS);
#else
    P("iframe_code_tag_mask", 0);
#endif
#else
    ABSENT("iframe_code");
    ABSENT("iframe_instr");
    ABSENT("iframe_previous");
    ABSENT("iframe_owner");
    ABSENT("iframe_is_entry");
    ABSENT("owner_shim_min");
    ABSENT("iframe_code_tag_mask");
#endif

    /* PyCodeObject */
    P("code_filename", offsetof(PyCodeObject, co_filename));
    P("code_name", offsetof(PyCodeObject, co_name));
#if PY_MINOR_VERSION >= 11
    P("code_qualname", offsetof(PyCodeObject, co_qualname));
#else
    ABSENT("code_qualname");
#endif
    P("code_firstlineno", offsetof(PyCodeObject, co_firstlineno));
#if PY_MINOR_VERSION <= 9
    P("code_linetable", offsetof(PyCodeObject, co_lnotab));
#else
    P("code_linetable", offsetof(PyCodeObject, co_linetable));
#endif
#if PY_MINOR_VERSION <= 10
    P("code_code", offsetof(PyCodeObject, co_code));
    ABSENT("code_code_adaptive");
#else
    ABSENT("code_code");
    P("code_code_adaptive", offsetof(PyCodeObject, co_code_adaptive));
#endif

    /* PyObject / PyBytesObject */
    P("object_type", offsetof(PyObject, ob_type));
    P("bytes_size", offsetof(PyVarObject, ob_size));
    P("bytes_sval", offsetof(PyBytesObject, ob_sval));

    /* Unicode */
    P("unicode_length", offsetof(PyASCIIObject, length));
    P("unicode_state", offsetof(PyASCIIObject, state));
    P("unicode_ascii_data", sizeof(PyASCIIObject));
    P("unicode_compact_data", sizeof(PyCompactUnicodeObject));
    {
        uint32_t w;
        STATE_BITS(o.state.kind = 7, w);
        P("unicode_kind_shift", lowest_bit(w));
        P("unicode_kind_mask", w >> lowest_bit(w));
        STATE_BITS(o.state.compact = 1, w);
        P("unicode_compact_bit", lowest_bit(w));
        STATE_BITS(o.state.ascii = 1, w);
        P("unicode_ascii_bit", lowest_bit(w));
    }

#if PY_MINOR_VERSION >= 12
    /* _PyRuntime.allocators: pymalloc's function pointers (python/allocators.rs). */
    P("alloc.raw", offsetof(_PyRuntimeState, allocators.standard.raw));
    P("alloc.obj", offsetof(_PyRuntimeState, allocators.standard.obj));
    P("alloc.obj_arena", offsetof(_PyRuntimeState, allocators.obj_arena));
#endif

#if PY_MINOR_VERSION >= 13
    /* Where each entry sits inside _Py_DebugOffsets (the start of _PyRuntime), and the
     * relations the Rust parser relies on to fill fields the struct lacks. */
    P("debug.cookie", offsetof(_Py_DebugOffsets, cookie));
    P("debug.version", offsetof(_Py_DebugOffsets, version));
    P("debug.free_threaded", offsetof(_Py_DebugOffsets, free_threaded));
    P("debug.runtime_state.size", offsetof(_Py_DebugOffsets, runtime_state.size));
    P("debug.runtime_state.interpreters_head", offsetof(_Py_DebugOffsets, runtime_state.interpreters_head));
    P("debug.interpreter_state.size", offsetof(_Py_DebugOffsets, interpreter_state.size));
    P("debug.interpreter_state.next", offsetof(_Py_DebugOffsets, interpreter_state.next));
    P("debug.interpreter_state.threads_head", offsetof(_Py_DebugOffsets, interpreter_state.threads_head));
    P("debug.interpreter_state.ceval_gil", offsetof(_Py_DebugOffsets, interpreter_state.ceval_gil));
    P("debug.interpreter_state.gil_runtime_state", offsetof(_Py_DebugOffsets, interpreter_state.gil_runtime_state));
    P("debug.interpreter_state.gil_runtime_state_locked", offsetof(_Py_DebugOffsets, interpreter_state.gil_runtime_state_locked));
    P("debug.interpreter_state.gil_runtime_state_holder", offsetof(_Py_DebugOffsets, interpreter_state.gil_runtime_state_holder));
    P("debug.thread_state.size", offsetof(_Py_DebugOffsets, thread_state.size));
    P("debug.thread_state.next", offsetof(_Py_DebugOffsets, thread_state.next));
    P("debug.thread_state.interp", offsetof(_Py_DebugOffsets, thread_state.interp));
    P("debug.thread_state.current_frame", offsetof(_Py_DebugOffsets, thread_state.current_frame));
    P("debug.thread_state.thread_id", offsetof(_Py_DebugOffsets, thread_state.thread_id));
    P("debug.thread_state.native_thread_id", offsetof(_Py_DebugOffsets, thread_state.native_thread_id));
    P("debug.interpreter_frame.size", offsetof(_Py_DebugOffsets, interpreter_frame.size));
    P("debug.interpreter_frame.previous", offsetof(_Py_DebugOffsets, interpreter_frame.previous));
    P("debug.interpreter_frame.executable", offsetof(_Py_DebugOffsets, interpreter_frame.executable));
    P("debug.interpreter_frame.instr_ptr", offsetof(_Py_DebugOffsets, interpreter_frame.instr_ptr));
    P("debug.interpreter_frame.owner", offsetof(_Py_DebugOffsets, interpreter_frame.owner));
    P("debug.code_object.size", offsetof(_Py_DebugOffsets, code_object.size));
    P("debug.code_object.filename", offsetof(_Py_DebugOffsets, code_object.filename));
    P("debug.code_object.name", offsetof(_Py_DebugOffsets, code_object.name));
    P("debug.code_object.qualname", offsetof(_Py_DebugOffsets, code_object.qualname));
    P("debug.code_object.linetable", offsetof(_Py_DebugOffsets, code_object.linetable));
    P("debug.code_object.firstlineno", offsetof(_Py_DebugOffsets, code_object.firstlineno));
    P("debug.code_object.co_code_adaptive", offsetof(_Py_DebugOffsets, code_object.co_code_adaptive));
    P("debug.pyobject.ob_type", offsetof(_Py_DebugOffsets, pyobject.ob_type));
    P("debug.bytes_object.ob_size", offsetof(_Py_DebugOffsets, bytes_object.ob_size));
    P("debug.bytes_object.ob_sval", offsetof(_Py_DebugOffsets, bytes_object.ob_sval));
    P("debug.unicode_object.state", offsetof(_Py_DebugOffsets, unicode_object.state));
    P("debug.unicode_object.length", offsetof(_Py_DebugOffsets, unicode_object.length));
    P("debug.unicode_object.asciiobject_size", offsetof(_Py_DebugOffsets, unicode_object.asciiobject_size));
#if PY_MINOR_VERSION >= 15
    P("debug.unicode_object.compactunicodeobject_size", offsetof(_Py_DebugOffsets, unicode_object.compactunicodeobject_size));
#endif
    P("debug.sizeof", sizeof(_Py_DebugOffsets));
    P("debug.main_minus_head", offsetof(_PyRuntimeState, interpreters.main) - offsetof(_PyRuntimeState, interpreters.head));
#if PY_MINOR_VERSION <= 14
    P("debug.compact_minus_ascii", sizeof(PyCompactUnicodeObject) - sizeof(PyASCIIObject));
#endif
#endif
    return 0;
}
