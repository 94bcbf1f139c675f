/* An executable linked against a shared libpython: version detection reads its DT_NEEDED
 * entry. Not run (built with -nostdlib, no real entry point). */
extern int Py_BytesMain(int, char **);
void _start(void) { Py_BytesMain(0, 0); }
