#!/usr/bin/env bash
# Request throughput of the demo FastAPI app (demo/app.py, uvicorn, 127.0.0.1 only) untraced,
# traced by leaktrace (exact mode), traced without Python frames (--no-python: what the frame
# walk costs), traced with --pymalloc, sampled (--mode sampled, default 512 KiB), and growth
# mode (--mode growth: page-fault tracepoints, no uprobes), interleaved in one run; the trap
# floor: empty programs on leaktrace's links (floor-sess: a session program that skips the
# return, sampled mode's unsampled calls; floor-ret: entry, return and free, every call of
# exact mode), with --no-python. MODES picks
# a subset. A mode with the suffix `-other` (e.g. `exact-other`) runs the same mode with
# OTHER=<another leaktrace build>: two builds side by side in one run.
# Load: wrk, 1 thread, 8 connections, bounded by time. Prints requests/s per mode (median of
# ROUNDS) and the ratio to untraced. Needs root, ./dev setup, a release build, and wrk (Debian).
# usage: [MODES="..."] [OTHER=build] bench/fastapi_overhead.sh [ROUNDS] [SECONDS] [PATH]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
SECS=${2:-8}
URLPATH=${3:-/health}
LT=${LEAKTRACE_BIN:-target/release/leaktrace}
PORT=${BENCH_PORT:-8741}
[ -x "$LT" ] || { echo "build leaktrace first: cargo build --release" >&2; exit 1; }
# The server (start_app), the work folder and the cleanup of what was started.
. bench/lib/app.sh

# One measurement; $1 = mode (untraced | exact | nopython | pymalloc | growth). Prints requests/s.
measure() {
    local mode=$1 tracer="" rps lt=$LT
    if [ "${mode%-other}" != "$mode" ]; then
        [ -x "${OTHER:-}" ] || { echo "mode $mode needs OTHER=<a leaktrace build>" >&2; exit 1; }
        lt=$OTHER mode=${mode%-other}
    fi
    start_app
    if [ "$mode" != untraced ]; then
        local extra=() ready="recording Python frames"
        [ "$mode" = pymalloc ] && extra=(--pymalloc)
        [ "$mode" = nopython ] && extra=(--no-python) && ready="leaktrace: attached"
        [ "$mode" = sampled ] && extra=(--mode sampled)
        [ "$mode" = sampled-noret ] && extra=(--mode sampled --bench-no-return-probe)
        [ "$mode" = growth ] && extra=(--mode growth)
        local env=()
        # The trap floor on the server: empty programs on the same links (bench/probe_cost.sh).
        [ "$mode" = floor-sess ] && extra=(--no-python --bench-empty-probes) && ready="leaktrace: attached"
        [ "$mode" = floor-ret ] && extra=(--no-python --bench-empty-probes) && ready="leaktrace: attached" && env=(LEAKTRACE_UPROBE_SESSION=0)
        env "${env[@]}" "$lt" attach "$app" --interval 3600 -o "$work/r.json" "${extra[@]}" >/dev/null 2>"$work/lt.err" &
        tracer=$!
        echo "$tracer" >"$work/tracer.pid"
        until grep -q "$ready" "$work/lt.err"; do
            kill -0 "$tracer" 2>/dev/null || { cat "$work/lt.err" >&2; exit 1; }
            sleep 0.05
        done
    fi
    rps=$(wrk -t1 -c8 -d"${SECS}s" "http://127.0.0.1:$PORT$URLPATH" | awk '/Requests\/sec/ {print $2}')
    if [ -n "$tracer" ]; then kill -INT "$tracer"; wait "$tracer" || true; fi
    kill "$app"; wait "$app" 2>/dev/null || true; app=""
    rm -f "$work/app.pid" "$work/tracer.pid"
    echo "$rps"
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
MODES=${MODES:-untraced exact nopython pymalloc sampled growth}
declare -A results
for round in $(seq "$ROUNDS"); do
    for mode in $MODES; do
        results[$mode]+="$(measure "$mode")"$'\n'
    done
    echo "round $round/$ROUNDS done" >&2
done
u=$(printf '%s' "${results[untraced]}" | median)
echo "machine: $(uname -r), $(nproc) cpus; GET $URLPATH, wrk -t1 -c8, $ROUNDS interleaved rounds of ${SECS}s (median)"
for mode in $MODES; do
    r=$(printf '%s' "${results[$mode]}" | median)
    printf '%-10s %10.1f req/s  (%.3f of untraced)\n' "$mode" "$r" "$(echo "$r / $u" | bc -l)"
done
