# -*- coding: utf-8 -*-
"""Walks this interpreter's own thread and frame structures through raw memory, using only the
byte offsets given on the command line (a JSON object of leaktrace Layout fields), the way
the tracer does from outside the process.

Usage: python3.X walk_frames.py '{"runtime_interpreters_head": 32, ...}'

Prints JSON: the raw facts read by offset for every frame of the current thread (code object
names, first line, line table as hex, instruction byte offset), the frames CPython itself
reports (sys._getframe), and any consistency check that failed. The Rust test decodes the line
tables and compares.
"""
import ctypes
import json
import sys
import threading
import types

L = json.loads(sys.argv[1])
ABSENT = 2 ** 64 - 1
problems = []


def has(name):
    return L[name] != ABSENT


def u64(addr):
    return ctypes.c_uint64.from_address(addr).value


def i64(addr):
    return ctypes.c_int64.from_address(addr).value


def i32(addr):
    return ctypes.c_int32.from_address(addr).value


def u32(addr):
    return ctypes.c_uint32.from_address(addr).value


def u8(addr):
    return ctypes.c_uint8.from_address(addr).value


def check(cond, what):
    if not cond:
        problems.append(what)


def read_str(obj):
    state = u32(obj + L["unicode_state"])
    kind = (state >> L["unicode_kind_shift"]) & L["unicode_kind_mask"]
    compact = (state >> L["unicode_compact_bit"]) & 1
    ascii_ = (state >> L["unicode_ascii_bit"]) & 1
    check(compact == 1, "string not compact")
    length = i64(obj + L["unicode_length"])
    data = obj + (L["unicode_ascii_data"] if ascii_ else L["unicode_compact_data"])
    raw = ctypes.string_at(data, length * kind)
    return raw.decode({1: "latin-1", 2: "utf-16-le", 4: "utf-32-le"}[kind])


def read_bytes(obj):
    size = i64(obj + L["bytes_size"])
    return ctypes.string_at(obj + L["bytes_sval"], size)


def read_code(code, offset):
    if has("object_type"):
        check(u64(code + L["object_type"]) == id(types.CodeType), "frame code is not a code object")
    return {
        "name": read_str(u64(code + L["code_name"])),
        "qualname": read_str(u64(code + L["code_qualname"])) if has("code_qualname") else None,
        "filename": read_str(u64(code + L["code_filename"])),
        "firstlineno": i32(code + L["code_firstlineno"]),
        "table": read_bytes(u64(code + L["code_linetable"])).hex(),
        "offset": offset,
    }


def walk():
    runtime = ctypes.addressof(ctypes.c_char.in_dll(ctypes.pythonapi, "_PyRuntime"))
    interp = u64(runtime + L["runtime_interpreters_head"])
    check(interp == u64(runtime + L["runtime_interpreters_main"]), "head != main interpreter")
    check(u64(interp + L["interp_next"]) == 0, "more than one interpreter")
    mine = None
    count = 0
    tstate = u64(interp + L["interp_threads_head"])
    while tstate and count < 100:
        count += 1
        check(u64(tstate + L["tstate_interp"]) == interp, "tstate->interp mismatch")
        if u64(tstate + L["tstate_thread_id"]) == threading.get_ident():
            mine = tstate
            if has("tstate_native_thread_id"):
                check(u64(tstate + L["tstate_native_thread_id"]) == threading.get_native_id(),
                      "native_thread_id mismatch")
        tstate = u64(tstate + L["tstate_next"])
    check(count == 2, "expected 2 thread states, found %d" % count)
    if mine is None:
        problems.append("current thread state not found")
        return []
    # Who holds the GIL (we do).
    if has("runtime_tstate_current"):
        check(u64(runtime + L["runtime_tstate_current"]) == mine, "gilstate.tstate_current")
        gil = runtime + L["runtime_gil"]
    else:
        gil = u64(interp + L["interp_ceval_gil"])
        check(gil == interp + L["interp_gil"], "ceval.gil does not point at interp->_gil")
    check(u64(gil + L["gil_last_holder"]) == mine, "gil last_holder")
    check(i32(gil + L["gil_locked"]) == 1, "gil locked")

    frames = []
    shims = 0
    if has("tstate_frame"):
        frame = u64(mine + L["tstate_frame"])
        while frame and len(frames) < 100:
            lasti = i32(frame + L["frame_lasti"])
            frames.append(read_code(u64(frame + L["frame_code"]), lasti * L["frame_lasti_scale"]))
            frame = u64(frame + L["frame_back"])
    else:
        if has("tstate_cframe"):
            frame = u64(u64(mine + L["tstate_cframe"]) + L["cframe_current_frame"])
        else:
            frame = u64(mine + L["tstate_current_frame"])
        while frame and len(frames) < 100:
            if has("owner_shim_min") and u8(frame + L["iframe_owner"]) >= L["owner_shim_min"]:
                shims += 1
            else:
                # 3.14+: f_executable is a _PyStackRef whose low bits are tags.
                code = u64(frame + L["iframe_code"]) & ~L["iframe_code_tag_mask"]
                instr = u64(frame + L["iframe_instr"])
                frames.append(read_code(code, instr - (code + L["code_code_adaptive"])))
            frame = u64(frame + L["iframe_previous"])
    if has("owner_shim_min"):
        check(shims >= 2, "expected C-stack shim frames, found %d" % shims)
    expected = []
    f = sys._getframe()
    while f is not None:
        expected.append({
            "name": f.f_code.co_name,
            "qualname": getattr(f.f_code, "co_qualname", None),
            "filename": f.f_code.co_filename,
            "firstlineno": f.f_code.co_firstlineno,
            "line": f.f_lineno,
        })
        f = f.f_back
    return {"frames": frames, "expected": expected}


def fünf(n):
    return 函数(n)


def 函数(n):
    if n:
        return 函数(n - 1)
    # Enter Python from C (map), which 3.12+ marks with a shim frame.
    return list(map(lambda _: walk(), [0]))[0]


def main():
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        result = fünf(2)
    finally:
        stop.set()
        other.join()
    result["problems"] = problems
    result["version"] = list(sys.version_info[:2])
    print(json.dumps(result))


main()
