#!/usr/bin/env bash
# Rebuilds the committed seed corpora in fuzz/seeds/<target>/ from real inputs. Run from
# anywhere, on a machine with gcc and the pyenv interpreters (./dev setup's machine kind).
# The seeds are committed so that `./dev fuzz` needs none of this.
set -euo pipefail
cd "$(dirname "$0")"
FUZZ=$PWD
ROOT=$(cd .. && pwd)
PYENV=${PYENV_ROOT:-$HOME/.pyenv}/versions
SEEDS=$FUZZ/seeds
rm -rf "$SEEDS"
mkdir -p "$SEEDS"/{elf_symbols,python_version,procmaps,linetable,report_json,heap_census}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# Small ELF files (a real libc or libpython is megabytes): no C runtime, small pages.
SMALL=(-Os -nostdlib -fno-asynchronous-unwind-tables -Wl,--build-id=none
       -Wl,-z,max-page-size=0x1000 -Wl,-z,noseparate-code -Wl,-z,norelro)
gcc "${SMALL[@]}" -shared -fPIC -o "$TMP/tiny_alloc.so" seeds-src/tiny_alloc.c
gcc "${SMALL[@]}" -shared -fPIC -o "$TMP/rodata_strings.so" seeds-src/rodata_strings.c
py311=$(ls -d "$PYENV"/3.11.* | tail -1)
gcc "${SMALL[@]}" -o "$TMP/needs_libpython" seeds-src/needs_libpython.c \
    -Wl,--no-as-needed -L"$py311/lib" -lpython3.11
# The integration tests' own C fixture, as they build it (debug info, frame pointers).
gcc -w -O0 -g -fno-omit-frame-pointer -pthread -o "$TMP/allocs" "$ROOT/tests/fixtures/allocs.c"
# Debug info left out (size), symbol table kept: local functions are what it adds.
strip --strip-debug -o "$TMP/allocs-stripped" "$TMP/allocs"
cp "$TMP/tiny_alloc.so" "$TMP/allocs-stripped" "$SEEDS/elf_symbols/"
cp "$TMP/tiny_alloc.so" "$TMP/rodata_strings.so" "$TMP/needs_libpython" "$SEEDS/python_version/"
printf 'libpython3.13t.so.1.0' >"$SEEDS/python_version/name-libpython"
printf 'python3.10' >"$SEEDS/python_version/name-python"

# /proc/PID/maps of real processes: a C program, pyenv's shared-libpython interpreter,
# Debian's static one, each with odd mappings.
cat /proc/self/maps >"$SEEDS/procmaps/cat"
"$py311/bin/python3" seeds-src/mappings.py >"$SEEDS/procmaps/pyenv-python"
if [ -x /usr/bin/python3.11 ]; then
    /usr/bin/python3.11 seeds-src/mappings.py >"$SEEDS/procmaps/debian-python"
fi

# Line tables dumped by each interpreter (tests/data/python/lines-3.X.json, written by
# dump_lines.py), in the linetable target's input layout: format selector, co_firstlineno
# (i32 LE), a byte offset the interpreter reported a line for (i64 LE), the table.
python3 - "$ROOT/tests/data/python" "$SEEDS/linetable" <<'PY'
import json, os, struct, sys
src, out = sys.argv[1:]
for minor, selector in ((8, 0), (9, 0), (10, 1), (11, 2), (12, 2), (13, 2)):
    doc = json.load(open(os.path.join(src, "lines-3.%d.json" % minor)))
    for i, code in enumerate(doc["code_objects"]):
        lines = code["lines"]
        offset = lines[len(lines) // 2][0] if lines else 0
        table = bytes.fromhex(code["table"])
        head = struct.pack("<Biq", selector, code["firstlineno"], offset)
        with open(os.path.join(out, "3.%d-%02d-%s" % (minor, i, code["name"].strip("<>"))), "wb") as f:
            f.write(head + table)
PY

# The golden JSON report, and one with every optional field left out (a minimal v1 reader).
cp "$ROOT/tests/data/report.json" "$SEEDS/report_json/golden.json"
python3 - "$ROOT/tests/data/report.json" "$SEEDS/report_json/minimal.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
for k in ("min_age_s", "complete", "counters", "notes"):
    r.pop(k, None)
for s in r["stacks"]:
    for k in ("alloc_bytes", "alloc_count", "trend", "added_bytes"):
        s.pop(k, None)
json.dump(r, open(sys.argv[2], "w"), separators=(",", ":"))
PY
# heap_census: byte 0 = 4 (3.12), then memory from 0x10000: two empty GC list heads; and a list
# holding one dict whose type is named "dict", with a small unicode keys table.
python3 - "$SEEDS/heap_census" <<'PY'
import struct, sys
d, base = sys.argv[1], 0x10000
open(d + "/empty-3.12", "wb").write(bytes([4]) + struct.pack("<QQQQ", base, base, base + 24, base + 24) + bytes(16))
m = bytearray(0x400)
struct.pack_into("<QQ", m, 0, base + 0x40, base + 0x40)
struct.pack_into("<QQ", m, 24, base + 24, base + 24)
struct.pack_into("<QQ", m, 0x40, base, base)
struct.pack_into("<QQQQQQ", m, 0x50, 1, base + 0x100, 1, 0, base + 0x200, 0)
struct.pack_into("<QQQQ", m, 0x110, 0, base + 0x300, 48, 0)
m[0x300:0x305] = b"dict\0"
struct.pack_into("<QBBBxIQQ", m, 0x200, 1, 3, 3, 1, 0, 4, 1)
open(d + "/one-dict-3.12", "wb").write(bytes([4]) + bytes(m))
# One pending asyncio task whose coroutine is named "poll_gateway" (the memory of named.rs's
# unit test one_task): the task, coroutine and str readers run.
m = bytearray(0xC00)
q = lambda at, v: struct.pack_into("<Q", m, at, v)
q(0, base + 0x40); q(8, base + 0x40); q(0x40, base); q(0x48, base)
q(0x50, 1); q(0x58, base + 0x400); q(0x50 + 136, base + 0x200)
q(0x200, 1); q(0x208, base + 0x800); q(0x200 + 32, base + 0x300)
q(0x300, 1); q(0x308, base + 0xA00); q(0x310, 12); q(0x320, (1 << 5) | (1 << 6) | (1 << 2))
m[0x328:0x334] = b"poll_gateway"
for ty, name, at, size in ((0x400, b"_asyncio.Task", 0x600, 176), (0x800, b"coroutine", 0x700, 96), (0xA00, b"str", 0x780, 40)):
    q(ty + 24, base + at); q(ty + 32, size); m[at:at + len(name)] = name
open(d + "/one-task-3.12", "wb").write(bytes([4]) + bytes(m))
# A list on the GC list held only by the static variable at 0x400 (the fuzz target's
# `registry`), and a C object (type "ext.Holder", GC) at 0x4a0 held by the next word, whose
# field at 0x18 is the list: the static-variable scan and the C-field reader run.
m = bytearray(0x600)
q = lambda at, v: struct.pack_into("<Q", m, at, v)
q(0, base + 0x40); q(8, base + 0x490); q(24, base + 24); q(32, base + 24)
q(0x40, base + 0x490); q(0x48, base)
q(0x50, 1); q(0x58, base + 0x100)
q(0x100 + 24, base + 0x300); q(0x100 + 32, 40); q(0x100 + 168, 1 << 14)
m[0x300:0x305] = b"list\0"
q(0x200 + 24, base + 0x310); q(0x200 + 32, 32); q(0x200 + 168, 1 << 14)
m[0x310:0x31B] = b"ext.Holder\0"
q(0x400, base + 0x50); q(0x408, base + 0x4A0)
q(0x490, base); q(0x498, base + 0x40)
q(0x4A0, 1); q(0x4A8, base + 0x200); q(0x4B0, 7); q(0x4B8, base + 0x50)
open(d + "/static-holder-3.12", "wb").write(bytes([4]) + bytes(m))
PY
du -sh "$SEEDS"/*
