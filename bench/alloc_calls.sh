#!/usr/bin/env bash
# Allocator calls per request of the demo FastAPI app's endpoints (issue 13, "where the model
# and the server disagree"): counts, with bpftrace (not leaktrace), every call of the entry
# points leaktrace probes (the C library's malloc family, free, and the mmap, munmap, mremap
# system calls) and of CPython's object allocator (PyObject_Malloc and friends), in the server
# process only, by thread, while wrk loads one endpoint for SECONDS; then divides by the
# requests wrk completed. Counts, not times: a loaded machine gives the same numbers (the
# server is slower under the counting probes, the calls per request are not).
# Needs root, ./dev setup (.venv), wrk and bpftrace (Debian; installed when missing).
# PYALLOC=0 leaves CPython's allocator out (its probes slow the server a hundredfold, so few
# requests complete on a heavy endpoint; the C library's counts are then over more requests).
# usage: bench/alloc_calls.sh [SECONDS] [PATH ...]   (default: 5 /health /catalog)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
shift || true
PATHS=("$@")
[ ${#PATHS[@]} -gt 0 ] || PATHS=(/health /catalog)
PORT=${BENCH_PORT:-8744}
URLPATH=${PATHS[0]}
command -v bpftrace >/dev/null || { apt-get update -qq && apt-get install -y -qq bpftrace >/dev/null; }
# The server (start_app), the work folder and the cleanup of what was started.
. bench/lib/app.sh

# The files as the server maps them: its C library and the module holding the interpreter.
mapped() { awk -v pat="$2" '$6 ~ pat {print $6; exit}' "/proc/$1/maps"; }

count() {
    local path=$1 libc libpy bt
    URLPATH=$path
    start_app
    libc=$(mapped "$app" '/libc\.so')
    libpy=$(mapped "$app" '/libpython3[^/]*\.so')
    [ -n "$libpy" ] || libpy=$(readlink -f "/proc/$app/exe")
    bt="$work/count.bt"
    {
        echo 'BEGIN { printf("attached\n"); }'
        for f in malloc calloc realloc reallocarray posix_memalign aligned_alloc memalign valloc pvalloc free; do
            echo "uprobe:$libc:$f /pid == $app/ { @calls[\"$f\"] = count(); @threads[tid] = count(); }"
        done
        [ "${PYALLOC:-1}" = 0 ] || for f in PyObject_Malloc PyObject_Calloc PyObject_Realloc PyObject_Free PyMem_Malloc PyMem_Calloc PyMem_Realloc PyMem_Free PyMem_RawMalloc PyMem_RawFree; do
            echo "uprobe:$libpy:$f /pid == $app/ { @calls[\"$f\"] = count(); }"
        done
        for f in mmap munmap mremap brk; do
            echo "tracepoint:syscalls:sys_enter_$f /pid == $app/ { @calls[\"$f (syscall)\"] = count(); }"
        done
    } >"$bt"
    bpftrace -q "$bt" >"$work/bt.out" 2>"$work/bt.err" &
    local tracer=$!
    echo "$tracer" >"$work/tracer.pid"
    # BEGIN runs once every probe is attached.
    until grep -q attached "$work/bt.out" 2>/dev/null; do
        kill -0 "$tracer" 2>/dev/null || { cat "$work/bt.err" >&2; exit 1; }
        sleep 0.1
    done
    local out requests
    out=$(wrk -t1 -c8 -d"${SECS}s" "http://127.0.0.1:$PORT$path")
    requests=$(awk '/requests in/ {print $1}' <<<"$out")
    kill -INT "$tracer"; wait "$tracer" || true
    kill "$app"; wait "$app" 2>/dev/null || true; app=""
    rm -f "$work/app.pid" "$work/tracer.pid"
    echo "GET $path: $requests requests in ${SECS}s under the counting probes ($(basename "$libc"), $(basename "$libpy"))"
    python3 - "$work/bt.out" "$requests" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
n = int(sys.argv[2])
calls = {m[1]: int(m[2]) for m in re.finditer(r'@calls\["?([^\]"]+)"?\]: (\d+)', text)}
threads = sorted((int(m[2]) for m in re.finditer(r'@threads\[(\d+)\]: (\d+)', text)), reverse=True)
order = ["malloc", "calloc", "realloc", "reallocarray", "posix_memalign", "aligned_alloc", "memalign",
         "valloc", "pvalloc", "free", "mmap (syscall)", "munmap (syscall)", "mremap (syscall)", "brk (syscall)",
         "PyObject_Malloc", "PyObject_Calloc", "PyObject_Realloc", "PyObject_Free",
         "PyMem_Malloc", "PyMem_Calloc", "PyMem_Realloc", "PyMem_Free", "PyMem_RawMalloc", "PyMem_RawFree"]
for k in order:
    if k in calls:
        print(f"  {k:<18} {calls[k] / n:9.1f} per request  ({calls[k]} calls)")
libc = sum(calls.get(k, 0) for k in order[:9])
print(f"  libc allocations   {libc / n:9.1f} per request; free {calls.get('free', 0) / n:.1f}")
if threads:
    total = sum(threads)
    print(f"  libc allocator calls by thread: {', '.join(f'{t / total:.0%}' for t in threads[:4])} of {total} ({len(threads)} threads)")
PY
}

echo "machine: $(uname -r), $(nproc) cpus, load $(cut -d' ' -f1-3 /proc/loadavg); wrk -t1 -c8, ${SECS}s per endpoint"
for p in "${PATHS[@]}"; do
    count "$p"
done
