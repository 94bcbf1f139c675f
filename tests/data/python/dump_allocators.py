"""Dumps the golden bytes of `python::allocators`' tests: for each of Debian's 3.14/3.15 in the
sid root (static and shared), the 512 bytes at `_PyRuntime.allocators` of a running interpreter
(read from /proc/PID/mem, from outside), preceded by the 8-byte load bias of the file they point
into. Run as root from the repository: python3 tests/data/python/dump_allocators.py
Writes tests/data/python/allocators/3.X-{static,shared}.bin.
"""
import struct
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2] / ".roots" / "sid"
# `alloc.raw` of tools/pyoffsets (offsetof(_PyRuntimeState, allocators.standard.raw)).
RAW = {14: 880, 15: 1008}
READ = 512
PROBE = "import ctypes,time; print(ctypes.addressof(ctypes.c_char.in_dll(ctypes.pythonapi,'_PyRuntime')), flush=True); time.sleep(30)"

out = HERE / "allocators"
out.mkdir(exist_ok=True)
for minor in (14, 15):
    for kind, exe in (("static", f"/usr/bin/python3.{minor}"), ("shared", f"/opt/leaktrace/python3.{minor}-shared")):
        p = subprocess.Popen(["chroot", str(ROOT), exe, "-c", PROBE], stdout=subprocess.PIPE, text=True)
        try:
            runtime = int(p.stdout.readline())
            maps = [l.split() for l in open(f"/proc/{p.pid}/maps")]
            module = next(m[-1] for m in maps if int(m[0].split("-")[0], 16) <= runtime < int(m[0].split("-")[1], 16))
            # The file's lowest mapping (offset 0) against its first PT_LOAD's address.
            start = min(int(m[0].split("-")[0], 16) for m in maps if m[-1] == module)
            first_vaddr = 0x400000 if kind == "static" else 0
            bias = start - first_vaddr
            with open(f"/proc/{p.pid}/mem", "rb") as mem:
                mem.seek(runtime + RAW[minor])
                data = mem.read(READ)
            (out / f"3.{minor}-{kind}.bin").write_bytes(struct.pack("<Q", bias) + data)
            print(f"3.{minor}-{kind}: {module} bias {bias:#x}", file=sys.stderr)
        finally:
            p.kill()
            p.wait()
