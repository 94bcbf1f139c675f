"""bench/heap_census.sh's target: N small dicts in a module global, each holding one Item, so
about 2N objects on the GC's lists; prints how long the interpreter itself takes to count its
objects by type (`gc.get_objects()`, what objgraph does from inside), then "ready", then sleeps.
"""

import collections
import gc
import sys
import time

N = int(sys.argv[1])


class Item:
    __slots__ = ("i",)

    def __init__(self, i):
        self.i = i


REGISTRY = {i: {"item": Item(i), "name": "r%d" % i} for i in range(N)}
t = time.perf_counter()
by_type = collections.Counter(type(o).__name__ for o in gc.get_objects())
sizes = sum(sys.getsizeof(o) for o in gc.get_objects())
print("inside %.3f s %d objects" % (time.perf_counter() - t, sum(by_type.values())), flush=True)
print("ready", flush=True)
while True:
    time.sleep(1)
