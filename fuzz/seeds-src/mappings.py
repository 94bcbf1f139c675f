"""Prints this interpreter's /proc/self/maps after mapping the awkward kinds of entries a
target can have: a path with spaces, a deleted file, a memfd, an anonymous mapping."""
import mmap
import os
import sys
import tempfile

d = tempfile.mkdtemp()
keep = []
spaced = os.path.join(d, "lib with  spaces (1).so")
deleted = os.path.join(d, "gone.so")
for path in (spaced, deleted):
    with open(path, "wb") as f:
        f.write(b"\0" * 8192)
    f = open(path, "rb")
    keep.append(mmap.mmap(f.fileno(), 8192, prot=mmap.PROT_READ))
    keep.append(f)
os.unlink(deleted)
fd = os.memfd_create("jit code")
os.ftruncate(fd, 4096)
keep.append(mmap.mmap(fd, 4096))
keep.append(mmap.mmap(-1, 1 << 20))
sys.stdout.write(open("/proc/self/maps").read())
os.unlink(spaced)
os.rmdir(d)
