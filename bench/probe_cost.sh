#!/usr/bin/env bash
# Probe cost on the hottest path, measured side by side in one run (interleaved rounds):
#   untraced            malloc+free with no probe
#   traced              leaktrace attached (free's probe placed past `test %rdi,%rdi`)
#   traced, at entry    leaktrace attached with every probe at the function's first byte
# Prints the median ns per malloc+free pair of each and the ratios. Needs root and a build of
# leaktrace (./dev setup && cargo build --release). usage: bench/probe_cost.sh [ROUNDS] [PAIRS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
PAIRS=${2:-200000}
LT=${LEAKTRACE_BIN:-target/release/leaktrace}
[ -x "$LT" ] || { echo "build leaktrace first: cargo build --release" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cc -O2 -o "$work/probe_cost" bench/probe_cost.c

# One measurement; $1 = mode (untraced | placed | entry). Prints ns per pair.
measure() {
    local mode=$1 pid tracer out="$work/out.$mode" err="$work/err.$mode"
    "$work/probe_cost" "$PAIRS" >"$out" &
    pid=$!
    until grep -q ready "$out"; do sleep 0.01; done
    if [ "$mode" != untraced ]; then
        local extra=()
        [ "$mode" = entry ] && extra=(--probe-at-entry)
        "$LT" attach "$pid" --no-python --interval 3600 --min-age 0 -o "$work/r.json" "${extra[@]}" >/dev/null 2>"$err" &
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
    awk '/ns_per_pair/ {print $2}' "$out"
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

declare -A results
for mode in untraced placed entry; do results[$mode]=""; done
for round in $(seq "$ROUNDS"); do
    for mode in untraced placed entry; do
        results[$mode]+="$(measure "$mode")"$'\n'
    done
    echo "round $round/$ROUNDS done" >&2
done
u=$(printf '%s' "${results[untraced]}" | median)
p=$(printf '%s' "${results[placed]}" | median)
e=$(printf '%s' "${results[entry]}" | median)
echo "machine: $(uname -r), $(nproc) cpus; $ROUNDS interleaved rounds of $PAIRS malloc+free pairs (median)"
printf '%-34s %10s ns/pair\n' "untraced" "$u"
printf '%-34s %10s ns/pair  (%.1fx untraced)\n' "traced, free probe at free+3" "$p" "$(echo "$p / $u" | bc -l)"
printf '%-34s %10s ns/pair  (%.1fx untraced)\n' "traced, every probe at entry" "$e" "$(echo "$e / $u" | bc -l)"
printf 'probe cost per pair: placed %.0f ns, at entry %.0f ns: placement saves %.1fx\n' \
    "$(echo "$p - $u" | bc -l)" "$(echo "$e - $u" | bc -l)" "$(echo "($e - $u) / ($p - $u)" | bc -l)"
