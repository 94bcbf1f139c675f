#!/usr/bin/env bash
# Native stacks keyed by their own hash vs the kernel's stack-trace map (bpf_get_stackid), two
# leaktrace builds side by side: A (default target/release/leaktrace) and B ($OTHER, e.g. a
# build of a commit before the change). For each, interleaved over ROUNDS:
#   - stacks lost on tests/fixtures/many_stacks.c (1024 distinct native stacks, default
#     --max-native-stacks 8192): the report's stack_map_collision_or_full counter, and how
#     many of the 1024 leaf stacks the report has;
#   - exact-mode ns per malloc(64)+free pair on bench/probe_cost.c (--no-python).
# Bounded: every tracer runs at most 30 s. Needs root. usage:
#   OTHER=/path/to/old/leaktrace bench/native_stacks.sh [ROUNDS] [PAIRS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
PAIRS=${2:-200000}
A=${LEAKTRACE_BIN:-target/release/leaktrace}
B=${OTHER:?set OTHER to the leaktrace build to compare with}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cc -O0 -g -fno-omit-frame-pointer -o "$work/many" tests/fixtures/many_stacks.c
cc -O2 -o "$work/probe_cost" bench/probe_cost.c

wait_for() { # file needle
    until grep -q "$2" "$1" 2>/dev/null; do sleep 0.02; done
}

# Stacks lost with binary $1: prints "counter leaf_stacks".
lost() {
    local lt=$1 out="$work/many.out" err="$work/many.err" pid tracer
    rm -f "$out" "$err"
    "$work/many" >"$out" & pid=$!
    wait_for "$out" ready
    timeout 30 "$lt" attach "$pid" --interval 1 --min-age 0 -o "$work/many.json" >/dev/null 2>"$err" & tracer=$!
    wait_for "$err" "leaktrace: attached"
    kill -USR1 "$pid"
    wait_for "$out" done
    sleep 0.5
    kill -INT "$tracer"; wait "$tracer" || true
    kill "$pid"; wait "$pid" 2>/dev/null || true
    python3 - "$work/many.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
leaves = [s for s in r["stacks"] if len(s["frames"]) >= 2 and s["frames"][-2]["function"] == "leaf"]
print(r["counters"]["stack_map_collision_or_full"], len(leaves))
PY
}

# ns per pair with binary $1.
cost() {
    local lt=$1 out="$work/pc.out" err="$work/pc.err" pid tracer
    rm -f "$out" "$err"
    "$work/probe_cost" "$PAIRS" >"$out" & pid=$!
    wait_for "$out" ready
    timeout 30 "$lt" attach "$pid" --no-python --interval 3600 --min-age 0 -o "$work/pc.json" >/dev/null 2>"$err" & tracer=$!
    wait_for "$err" "leaktrace: attached"
    kill -USR1 "$pid"; wait "$pid"
    kill -INT "$tracer"; wait "$tracer" || true
    awk '/ns_per_pair/ {print $2}' "$out"
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

declare -A ns lostc leaves
for round in $(seq "$ROUNDS"); do
    for which in A B; do
        lt=${!which}
        read -r c l < <(lost "$lt")
        lostc[$which]+="$c "; leaves[$which]+="$l "
        ns[$which]+="$(cost "$lt")"$'\n'
    done
    echo "round $round/$ROUNDS done" >&2
done
echo "machine: $(uname -r), $(nproc) cpus; $ROUNDS interleaved rounds"
for which in A B; do
    printf '%s (%s): stack_map_collision_or_full per run: %s| leaf stacks of 1024: %s| exact ns/pair (median of %s): %s\n' \
        "$which" "${!which}" "${lostc[$which]}" "${leaves[$which]}" "$ROUNDS" \
        "$(printf '%s' "${ns[$which]}" | median)"
done
