#!/usr/bin/env bash
# Probe cost on the hottest path, measured side by side in one run (interleaved rounds):
#   untraced            malloc+free with no probe
#   traced              leaktrace attached (free's probe placed past `test %rdi,%rdi`)
#   traced, at entry    leaktrace attached with every probe at the function's first byte
#   sampled             --mode sampled (default 512 KiB): a 64-byte malloc is almost never recorded;
#                       with session uprobes (kernel 6.13+) an unsampled call takes no return trap
#   sampled-nosess      the same with separate entry and return probes
#                       (LEAKTRACE_UPROBE_SESSION=0): every unsampled call takes the return trap
#   placed-nosess       placed, without sessions (exact mode tracks every call: same traps)
#   sampled, no ret     the same without the uretprobe (benchmark-only switch): what the
#                       return trap costs
#   placed-perf, sampled-perf
#                       the same as placed / sampled on perf-event uprobes
#                       (LEAKTRACE_UPROBE_MULTI=0) rather than uprobe_multi links
#   floor               empty programs (`r0 = 0; exit`, --bench-empty-probes) on leaktrace's own
#                       links at malloc's entry and at free+N (--bench-no-return-probe): one
#                       entry trap plus one free trap, what an unsampled pair costs at best
#   floor-ret           floor plus an empty return probe on malloc: the three traps of an exact
#                       pair. (Empty bpftrace programs were the floor until Debian's bpftrace
#                       0.17 on these machines measured 12 us a pair: its own overhead.)
#   floor-sess          an empty session program (returns 1: no return probe) on malloc and an
#                       empty free probe: what sampled mode's unsampled pair costs at best
# MODES picks a subset (default: all).
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
    # A previous round's "ready" must not be mistaken for this one's.
    rm -f "$out" "$err"
    "$work/probe_cost" "$PAIRS" >"$out" &
    pid=$!
    until grep -q ready "$out" 2>/dev/null; do sleep 0.01; done
    if [ "$mode" != untraced ]; then
        local extra=() env=()
        case $mode in
            entry) extra=(--probe-at-entry) ;;
            sampled | sampled-perf | sampled-nosess) extra=(--mode sampled) ;;
            sampled-noret) extra=(--mode sampled --bench-no-return-probe) ;;
            floor) extra=(--bench-empty-probes --bench-no-return-probe) ;;
            floor-ret) extra=(--bench-empty-probes) env=(LEAKTRACE_UPROBE_SESSION=0) ;;
            floor-sess) extra=(--bench-empty-probes) ;;
        esac
        case $mode in
            *-perf) env=(LEAKTRACE_UPROBE_MULTI=0) ;;
            *-nosess) env=(LEAKTRACE_UPROBE_SESSION=0) ;;
        esac
        env "${env[@]}" "$LT" attach "$pid" --no-python --interval 3600 --min-age 0 -o "$work/r.json" "${extra[@]}" >/dev/null 2>"$err" &
        tracer=$!
        until grep -q "leaktrace: attached" "$err" 2>/dev/null; do
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

MODES=${MODES:-untraced placed placed-nosess placed-perf entry sampled sampled-nosess sampled-perf sampled-noret floor floor-sess floor-ret}
declare -A results
for mode in $MODES; do results[$mode]=""; done
for round in $(seq "$ROUNDS"); do
    for mode in $MODES; do
        results[$mode]+="$(measure "$mode")"$'\n'
    done
    echo "round $round/$ROUNDS done" >&2
done
u=$(printf '%s' "${results[untraced]}" | median)
echo "machine: $(uname -r), $(nproc) cpus; $ROUNDS interleaved rounds of $PAIRS malloc(64)+free pairs (median)"
for mode in $MODES; do
    r=$(printf '%s' "${results[$mode]}" | median)
    printf '%-16s %10s ns/pair  (%.1fx untraced, probes %.0f ns/pair)\n' "$mode" "$r" \
        "$(echo "$r / $u" | bc -l)" "$(echo "$r - $u" | bc -l)"
done
# Side-by-side ratios of the probe cost (ns/pair above untraced).
cost() { echo "$(printf '%s' "${results[$1]}" | median) - $u" | bc -l; }
ratio() {
    [ -n "${results[$1]+x}" ] && [ -n "${results[$2]+x}" ] || return 0
    printf '%-34s %.2fx\n' "$1 / $2" "$(echo "$(cost "$1") / $(cost "$2")" | bc -l)"
}
ratio placed placed-perf
ratio placed placed-nosess
ratio sampled sampled-nosess
ratio sampled sampled-perf
ratio sampled floor
ratio sampled floor-sess
ratio sampled floor-ret
ratio sampled-noret floor
ratio floor-sess floor
ratio floor-ret floor
ratio placed floor-ret
