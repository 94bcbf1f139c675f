#!/usr/bin/env bash
# Attach time of every probe, uprobe_multi links against perf-event uprobes
# (LEAKTRACE_UPROBE_MULTI=0), measured side by side in one run (interleaved rounds): leaktrace
# attaches to a fresh C loop (bench/probe_cost.c: the C library's allocator) and to a Python
# process with --pymalloc (the C library and pymalloc), and this reads the "attached N probes in
# X ms" line, which covers loading the programs, the feature check and every link. Also times
# the detach (SIGINT to exit, report included, on an empty trace).
# OTHER=<another leaktrace build> adds its uprobe_multi attach to each round (`other`), e.g. the
# build of main before a change; PATHS="multi other" leaves the perf-event path out.
# Needs root and a release build. usage: bench/attach_time.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
LT=${LEAKTRACE_BIN:-target/release/leaktrace}
PY=${PYTHON:-python3}
OTHER=${OTHER:-}
PATHS=${PATHS:-multi perf${OTHER:+ other}}
[ -z "$OTHER" ] || [ -x "$OTHER" ] || { echo "OTHER=$OTHER is not an executable" >&2; exit 1; }
[ -x "$LT" ] || { echo "build leaktrace first: cargo build --release" >&2; exit 1; }
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
cc -O2 -o "$work/probe_cost" bench/probe_cost.c

# $1 = path (multi | perf | other: $OTHER with uprobe_multi), $2 = target (c | python).
# Prints "attach_ms exit_ms".
measure() {
    local path=$1 target=$2 pid tracer err="$work/err" extra=(--no-python)
    rm -f "$err" "$work/out"
    if [ "$target" = c ]; then
        "$work/probe_cost" 1000 >"$work/out" &
    else
        "$PY" -c 'import time; print("ready", flush=True); time.sleep(120)' >"$work/out" &
        extra=(--pymalloc)
    fi
    pid=$!
    pids+=("$pid")
    until grep -q ready "$work/out" 2>/dev/null; do sleep 0.01; done
    local env=() lt=$LT
    [ "$path" = perf ] && env=(LEAKTRACE_UPROBE_MULTI=0)
    [ "$path" = other ] && lt=$OTHER
    env "${env[@]}" "$lt" attach "$pid" --interval 3600 --min-age 0 -o "$work/r.json" "${extra[@]}" >/dev/null 2>"$err" &
    tracer=$!
    until grep -q "leaktrace: attached" "$err" 2>/dev/null; do
        kill -0 "$tracer" 2>/dev/null || { cat "$err" >&2; exit 1; }
        sleep 0.01
    done
    grep -q "($( [ "$path" = perf ] && echo perf-event || echo uprobe_multi)" "$err" \
        || { echo "unexpected probe path:" >&2; cat "$err" >&2; exit 1; }
    local ms t0 t1
    ms=$(sed -n 's/.* in \([0-9]*\) ms.*/\1/p' "$err" | head -1)
    t0=$(date +%s%N)
    kill -INT "$tracer"
    wait "$tracer" || true
    t1=$(date +%s%N)
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    echo "$ms $(( (t1 - t0) / 1000000 ))"
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

declare -A att ext
for round in $(seq "$ROUNDS"); do
    for target in c python; do
        for path in $PATHS; do
            read -r a e < <(measure "$path" "$target")
            att[$path.$target]+="$a"$'\n'
            ext[$path.$target]+="$e"$'\n'
        done
    done
    echo "round $round/$ROUNDS done" >&2
done
echo "machine: $(uname -r), $(nproc) cpus; $ROUNDS interleaved rounds (median ms)"
first=${PATHS%% *}
for target in c python; do
    a0=$(printf '%s' "${att[$first.$target]}" | median)
    e0=$(printf '%s' "${ext[$first.$target]}" | median)
    for path in $PATHS; do
        a=$(printf '%s' "${att[$path.$target]}" | median)
        e=$(printf '%s' "${ext[$path.$target]}" | median)
        printf '%-7s %-6s attach %6s ms (%.2fx %s); detach+exit %6s ms (%.2fx)  rounds: %s\n' \
            "$target" "$path" "$a" "$(echo "$a / $a0" | bc -l)" "$first" "$e" "$(echo "$e / $e0" | bc -l)" \
            "$(printf '%s' "${att[$path.$target]}" | tr '\n' ' ')"
    done
done
