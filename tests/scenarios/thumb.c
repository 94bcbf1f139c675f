/* The scenario suite's native library (scenario 5, a C-level leak): thumb_render() returns a
 * malloc'd buffer that the caller must give back to thumb_free(). Built by run.py with frame
 * pointers, loaded by app.py through ctypes. */
#include <stdlib.h>
#include <string.h>

char *thumb_render(const unsigned char *src, size_t n, size_t *out_len)
{
    size_t len = n / 4 + 1024;
    unsigned char *out = malloc(len);
    if (out == NULL) {
        *out_len = 0;
        return NULL;
    }
    for (size_t i = 0; i < len; i++) {
        size_t j = (i * 4) % (n ? n : 1);
        out[i] = n ? (unsigned char)((src[j] + i) & 0xff) : 0;
    }
    *out_len = len;
    return (char *)out;
}

void thumb_free(char *p)
{
    free(p);
}
