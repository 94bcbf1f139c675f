#!/usr/bin/env bash
# Growth mode's cost per first-touch page fault, side by side in one run (interleaved rounds):
#   untraced   fresh pages touched and unmapped, nothing attached
#   growth     leaktrace --mode growth attached (native stacks: a C target has no Python)
# Prints the median ns per page of each and the difference. Needs root and a release build.
# usage: bench/fault_cost.sh [ROUNDS] [ITERATIONS of 256 pages]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
ITERS=${2:-2000}
LT=${LEAKTRACE_BIN:-target/release/leaktrace}
[ -x "$LT" ] || { echo "build leaktrace first: cargo build --release" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cc -O2 -o "$work/fault_cost" bench/fault_cost.c

# One measurement; $1 = mode (untraced | growth). Prints ns per page.
measure() {
    local mode=$1 pid tracer out="$work/out.$mode" err="$work/err.$mode"
    "$work/fault_cost" "$ITERS" >"$out" &
    pid=$!
    until grep -q ready "$out"; do sleep 0.01; done
    if [ "$mode" != untraced ]; then
        "$LT" attach "$pid" --mode growth --interval 3600 --min-age 0 -o "$work/r.json" >/dev/null 2>"$err" &
        tracer=$!
        until grep -q "leaktrace: attached" "$err"; do
            kill -0 "$tracer" 2>/dev/null || { cat "$err" >&2; exit 1; }
            sleep 0.02
        done
    fi
    kill -USR1 "$pid"
    wait "$pid"
    if [ "$mode" != untraced ]; then
        kill -INT "$tracer"
        wait "$tracer" || true
    fi
    awk '/ns_per_page/ {print $2}' "$out"
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

declare -A results
for round in $(seq "$ROUNDS"); do
    for mode in untraced growth; do
        results[$mode]+="$(measure "$mode")"$'\n'
    done
    echo "round $round/$ROUNDS done" >&2
done
u=$(printf '%s' "${results[untraced]}" | median)
g=$(printf '%s' "${results[growth]}" | median)
echo "machine: $(uname -r), $(nproc) cpus; $ROUNDS interleaved rounds of $ITERS x 256 fresh pages (median)"
printf '%-10s %10s ns/page\n' "untraced" "$u"
printf '%-10s %10s ns/page  (%.2fx untraced; +%.0f ns per page)\n' "growth" "$g" \
    "$(echo "$g / $u" | bc -l)" "$(echo "$g - $u" | bc -l)"
