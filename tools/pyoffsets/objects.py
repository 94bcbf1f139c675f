"""Offsets of the C structs `leaktrace heap` reads beyond the headers' (tracer-user/src/heap/
census/named.rs): `_asyncio.Task` (its `fut_state` and `task_coro`, defined in
Modules/_asynciomodule.c, not in any header), a coroutine's `cr_qualname`, and
`functools._lru_cache_wrapper`'s `cache` and `func` (Modules/_functoolsmodule.c). Measured by
the interpreter on its own objects: each field is the one word (or int) of the object that
holds a value known from Python, and must be the only one. Prints "name value" lines.

    $(pyenv root)/versions/3.X.*/bin/python objects.py
    chroot .roots/sid python3.X /tmp/objects.py          (3.14, 3.15: copy it into the root)
"""

import asyncio
import ctypes
import functools
import gc
import sys


def u64s(obj, size):
    return list((ctypes.c_uint64 * (size // 8)).from_address(id(obj)))


def i32s(obj, size):
    return list((ctypes.c_int32 * (size // 4)).from_address(id(obj)))


def only(hits, what):
    if len(hits) != 1:
        sys.exit("%s: %d candidate offsets %r" % (what, len(hits), hits))
    return hits[0]


def word_of(obj, target, size, what):
    return only([i * 8 for i, w in enumerate(u64s(obj, size)) if w == id(target)], what)


def outer():
    async def inner():
        await asyncio.sleep(3600)

    return inner


async def measure():
    loop = asyncio.get_running_loop()
    task_type = asyncio.Task
    if task_type.__module__ != "_asyncio":
        sys.exit("asyncio.Task is not the C task (%r)" % task_type.__module__)
    size = task_type.__basicsize__
    coro = outer()()
    task = loop.create_task(coro)
    print("task_basicsize", size)
    print("task_coro", word_of(task, coro, size, "task_coro"))
    # fut_state: PENDING 0, CANCELLED 1, FINISHED 2, the same int in three tasks.
    done = loop.create_task(asyncio.sleep(0))
    cancelled = loop.create_task(asyncio.sleep(3600))
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert done.done() and cancelled.cancelled() and not task.done()
    states = [i32s(t, size) for t in (task, cancelled, done)]
    print(
        "task_fut_state",
        only(
            [i * 4 for i in range(size // 4) if [s[i] for s in states] == [0, 1, 2]],
            "fut_state",
        ),
    )
    task.cancel()
    qualname = coro.__qualname__
    print("coro_qualname", word_of(coro, qualname, 64, "cr_qualname"))
    print("coro_type", type(coro).__name__)


asyncio.run(measure())


@functools.lru_cache(maxsize=None)
def cached(x):
    return x


for i in range(50):
    cached(i)
wrapper_type = type(cached)
size = wrapper_type.__basicsize__
cache = only(
    [r for r in gc.get_referents(cached) if type(r) is dict and len(r) == 50], "cache dict"
)
print("lru_type", wrapper_type.__module__ + "." + wrapper_type.__name__)
print("lru_basicsize", size)
print("lru_cache", word_of(cached, cache, size, "lru cache"))
print("lru_func", word_of(cached, cached.__wrapped__, size, "lru func"))
print("lru_dictoffset", wrapper_type.__dictoffset__)
