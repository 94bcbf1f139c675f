/* Read-only strings as a CPython build embeds them (stdlib directory names), with no
 * Py_Version symbol and no DT_NEEDED: version detection falls back to these. Not run. */
const char *const prefixes[] = {
    "/usr/local/lib/python3.12",
    "lib/python3.12",
    "python3.12",
    "/opt/other/python3.9",
    "3.12.1",
};
