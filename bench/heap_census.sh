#!/usr/bin/env bash
# `leaktrace heap` on a target with about 1M objects on its GC lists (bench/lib/heap_objects.py
# with N = 500000: 500k dicts + 500k Items, and 500k strings reached through them), rounds
# interleaved: the census's wall time and the tracer's peak RSS (GNU time), next to the time the
# interpreter itself takes to count its objects by type from inside (gc.get_objects() and
# sys.getsizeof, objgraph's way). Goals (issue 12): < 5 s, < 300 MB. Needs root and a release
# build. With OTHER=<another leaktrace binary>, each round also runs that one (B) right after
# this one (A) on the same target, for a side-by-side comparison.
# usage: [OTHER=path] bench/heap_census.sh [ROUNDS] [N] [PYTHON]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
N=${2:-500000}
PY=${3:-$(pyenv root)/versions/3.12.1/bin/python3}
LT=${LEAKTRACE_BIN:-target/release/leaktrace}
[ -x "$LT" ] || { echo "build leaktrace first: cargo build --release" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "GNU time is missing: apt-get install time" >&2; exit 1; }
work=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
"$PY" bench/lib/heap_objects.py "$N" >"$work/target.out" &
pid=$!
touch "$work/target.out"
until grep -q ready "$work/target.out"; do
    kill -0 "$pid" 2>/dev/null || { cat "$work/target.out" >&2; exit 1; }
    sleep 0.2
done
inside=$(awk '/^inside/ {print $2}' "$work/target.out")
echo "target: $("$PY" -V) pid $pid, $(grep '^inside' "$work/target.out" | cut -d' ' -f4-)"
printf '%-6s %-5s %10s %10s %12s %10s %12s %10s\n' round build census_s rss_MB objects reads inside_s ratio
builds=(A) bins=("$LT")
[ -n "${OTHER:-}" ] && builds+=(B) bins+=("$OTHER")
declare -A times rsss
for r in $(seq 1 "$ROUNDS"); do
    for i in "${!bins[@]}"; do
        b=${builds[$i]}
        /usr/bin/time -f '%e %M' -o "$work/time" "${bins[$i]}" heap "$pid" --format json -o "$work/h.json" 2>"$work/err"
        read -r secs kb <"$work/time"
        objects=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["objects"])' "$work/h.json")
        reads=$(sed -n 's/.*(\([0-9]*\) reads).*/\1/p' "$work/err")
        rss=$((kb / 1024))
        times[$b]+="$secs " rsss[$b]+="$rss "
        printf '%-6s %-5s %10s %10s %12s %10s %12s %10s\n' "$r" "$b" "$secs" "$rss" "$objects" "${reads:--}" "$inside" \
            "$(python3 -c "print('%.2f' % ($secs / $inside))")"
    done
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for b in "${builds[@]}"; do
    # shellcheck disable=SC2086
    echo "$b: median census $(median ${times[$b]}) s (goal < 5 s), peak RSS $(median ${rsss[$b]}) MB (goal < 300 MB); ratio = census time / the interpreter's own count from inside"
done
