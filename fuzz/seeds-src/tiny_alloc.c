/* A tiny shared object shaped like what leaktrace looks for in a target: allocator entry
 * points (text symbols) and interpreter data symbols. Not run, only parsed. */
#include <stddef.h>
static char arena[4096];
static size_t used;
char _PyRuntime[64];
const unsigned long Py_Version = 0x030b07f0;
void *malloc(size_t n) { if (n > sizeof arena - used) return NULL; used += n; return arena + used - n; }
void free(void *p) { if (p == NULL) return; used = 0; }
void *calloc(size_t n, size_t m) { return malloc(n * m); }
void *realloc(void *p, size_t n) { free(p); return malloc(n); }
