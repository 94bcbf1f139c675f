#!/usr/bin/env bash
# What a heap census costs the traced server: requests/s of the demo FastAPI app (demo/app.py,
# uvicorn, 127.0.0.1 only) untraced, while `leaktrace heap` takes censuses back to back for the
# whole load window (`census`: the worst case, a census always running), under growth mode
# without censuses (`growth`), and under growth mode with a census every second
# (`growth-heap`: `attach --mode growth --heap-interval 1`), rounds interleaved in one run.
# Load: wrk, 1 thread, 8 connections, bounded by time. Prints requests/s per mode (median of
# ROUNDS), the ratio to untraced, and how long one census of the app took.
# Needs root, ./dev setup (.venv), a release build, and wrk (Debian).
# usage: bench/heap_overhead.sh [ROUNDS] [SECONDS] [PATH]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
SECS=${2:-8}
URLPATH=${3:-/health}
LT=${LEAKTRACE_BIN:-target/release/leaktrace}
PORT=${BENCH_PORT:-8743}
[ -x "$LT" ] || { echo "build leaktrace first: cargo build --release" >&2; exit 1; }
# The server (start_app), the work folder and the cleanup of what was started.
. bench/lib/app.sh

# One measurement; $1 = mode. Prints requests/s.
measure() {
    local mode=$1 tracer="" rps ready=""
    start_app
    case $mode in
        untraced) ;;
        census)
            # Censuses back to back (--interval shorter than one census) for longer than the load.
            "$LT" heap "$app" --duration $((SECS + 30)) --interval 0.05 --format json -o "$work/h.json" \
                >/dev/null 2>"$work/lt.err" &
            ready="census 1 taken" ;;
        growth)
            "$LT" attach "$app" --mode growth --no-heap --interval 3600 -o "$work/r.json" >/dev/null 2>"$work/lt.err" &
            ready="recording Python frames" ;;
        growth-heap)
            "$LT" attach "$app" --mode growth --heap-interval 1 --interval 3600 -o "$work/r.json" >/dev/null 2>"$work/lt.err" &
            ready="heap census 1:" ;;
    esac
    if [ -n "$ready" ]; then
        tracer=$!
        echo "$tracer" >"$work/tracer.pid"
        until grep -q "$ready" "$work/lt.err"; do
            kill -0 "$tracer" 2>/dev/null || { cat "$work/lt.err" >&2; exit 1; }
            sleep 0.05
        done
    fi
    rps=$(wrk -t1 -c8 -d"${SECS}s" "http://127.0.0.1:$PORT$URLPATH" | awk '/Requests\/sec/ {print $2}')
    if [ -n "$tracer" ]; then
        # Censuses taken while the load ran, and the time of each.
        grep -o "census [0-9]*[: ].* in [0-9.]* s" "$work/lt.err" >>"$work/census-$mode.log" || true
        kill -INT "$tracer"; wait "$tracer" || true
    fi
    kill "$app"; wait "$app" 2>/dev/null || true; app=""
    rm -f "$work/app.pid" "$work/tracer.pid"
    echo "$rps"
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
MODES=${MODES:-untraced census growth growth-heap}
declare -A results
for round in $(seq "$ROUNDS"); do
    for mode in $MODES; do
        results[$mode]+="$(measure "$mode")"$'\n'
    done
    echo "round $round/$ROUNDS done" >&2
done
u=$(printf '%s' "${results[untraced]}" | median)
echo "machine: $(uname -r), $(nproc) cpus, load $(cut -d' ' -f1-3 /proc/loadavg); GET $URLPATH, wrk -t1 -c8, $ROUNDS interleaved rounds of ${SECS}s (median)"
for mode in $MODES; do
    r=$(printf '%s' "${results[$mode]}" | median)
    printf '%-12s %10.1f req/s  (%.3f of untraced)  rounds: %s\n' "$mode" "$r" "$(echo "$r / $u" | bc -l)" \
        "$(printf '%s' "${results[$mode]}" | tr '\n' ' ')"
done
for mode in census growth-heap; do
    f="$work/census-$mode.log"
    [ -s "$f" ] || continue
    n=$(wc -l <"$f")
    med=$(grep -o "in [0-9.]* s" "$f" | awk '{print $2}' | median)
    objs=$(grep -o "[0-9]* objects" "$f" | head -1)
    echo "$mode: $n censuses during the load windows, median $med s each ($objs)"
done
