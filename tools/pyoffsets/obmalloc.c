/* The offsets tracer-user/src/heap/arenas.rs uses to find pymalloc's arena table (3.12+:
 * PyInterpreterState.obmalloc, embedded on 3.12 and a pointer from 3.13 on, and the fields of
 * struct _obmalloc_state's mgmt), with the arena and pool geometry, printed by the compiler
 * from one CPython's own headers ("name value" lines).
 * 3.12/3.13, pyenv's headers:
 *   gcc -w -I$P/include/python3.X -I$P/include/python3.X/internal obmalloc.c -o ob && ./ob
 * 3.14/3.15, Debian's python3.X-dev in the sid root (copy this file into it first):
 *   chroot .roots/sid gcc -w -I/usr/include/python3.X -I/usr/include/python3.X/internal \
 *       /tmp/obmalloc.c -o /tmp/ob && chroot .roots/sid /tmp/ob
 * 3.8-3.11 keep the state in static variables of Objects/obmalloc.c (not in any header):
 * arenas.rs finds `arenas` and `maxarenas` by symbol. Not part of check.sh yet: compare its
 * output with arenas.rs by hand. */
#define Py_BUILD_CORE 1
#include <Python.h>
#include <stddef.h>
#include <stdio.h>
#include "internal/pycore_interp.h"
#include "internal/pycore_runtime.h"
#include "internal/pycore_obmalloc.h"
#define P(n, v) printf("%s %llu\n", n, (unsigned long long)(v))
int main(void) {
#if PY_MINOR_VERSION == 12
    P("interp_obmalloc_embedded", offsetof(PyInterpreterState, obmalloc));
#else
    P("interp_obmalloc_ptr", offsetof(PyInterpreterState, obmalloc));
#endif
    P("mgmt_arenas", offsetof(struct _obmalloc_state, mgmt.arenas));
    P("mgmt_maxarenas", offsetof(struct _obmalloc_state, mgmt.maxarenas));
    P("mgmt_narenas", offsetof(struct _obmalloc_state, mgmt.narenas_currently_allocated));
    P("arena_object", sizeof(struct arena_object));
    P("pool_header", sizeof(struct pool_header));
    P("ARENA_SIZE", ARENA_SIZE);
    P("POOL_SIZE", POOL_SIZE);
    P("ALIGNMENT", ALIGNMENT);
    P("NB_SMALL", NB_SMALL_SIZE_CLASSES);
    P("arenaindex", offsetof(struct pool_header, arenaindex));
    P("szidx", offsetof(struct pool_header, szidx));
    P("ao_pool_address", offsetof(struct arena_object, pool_address));
    P("ao_nfree", offsetof(struct arena_object, nfreepools));
    P("ao_ntotal", offsetof(struct arena_object, ntotalpools));
    return 0;
}
