"""Runs Debian's bcc `memleak-bpfcc` with one fix: bcc 0.26's Python binding declares
bpf_attach_uprobe() without its last parameter (ref_ctr_offset), so ctypes passes whatever
is in that register; a non-zero value makes the kernel refuse or silently skip the uprobe
(https://github.com/iovisor/bcc/issues/5236). Here the call gets an explicit 0.
usage: /usr/bin/python3 bench/lib/bcc_memleak.py [memleak-bpfcc arguments...]
"""
import ctypes
import runpy
import sys

from bcc import libbcc

_attach = libbcc.lib.bpf_attach_uprobe
_attach.restype = ctypes.c_int
_attach.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p,
                    ctypes.c_ulonglong, ctypes.c_int, ctypes.c_uint32]


def _attach_with_zero_ref_ctr(prog_fd, kind, name, path, addr, pid, ref_ctr_offset=0):
    return _attach(prog_fd, kind, name, path, addr, pid, ref_ctr_offset)


libbcc.lib.bpf_attach_uprobe = _attach_with_zero_ref_ctr
TOOL = "/usr/sbin/memleak-bpfcc"
sys.argv = [TOOL] + sys.argv[1:]
runpy.run_path(TOOL, run_name="__main__")
