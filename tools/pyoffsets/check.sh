#!/usr/bin/env bash
# Compiles offsets.c against each CPython's headers and diffs the numbers with the Rust
# tables in tracer-user/src/python/layout/v3_X.rs.
#
#   check.sh              check every supported version (3.8 .. 3.15)
#   check.sh 3.11 3.13    check only these
#   check.sh --print 3.X  only print the compiler's numbers ("name value" lines)
#
# 3.8-3.13: headers of $(pyenv root)/versions/3.X.* (or $PYENV_ROOT/versions), built with the
# host's gcc. 3.14+: Debian's python3.X-dev (internal headers included) in the sid root that
# ./dev setup makes ($LEAKTRACE_SID_ROOT, default .roots/sid), built with the root's own gcc
# under chroot. Exit status is non-zero on any mismatch or missing interpreter.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
tables="$here/../../tracer-user/src/python/layout"
root=${PYENV_ROOT:-$( (pyenv root 2>/dev/null) || echo "$HOME/.pyenv")}
cc=${CC:-gcc}

print_only=0
if [[ ${1:-} == --print ]]; then
    print_only=1
    shift
fi
versions=("$@")
if [[ ${#versions[@]} -eq 0 ]]; then
    versions=(3.8 3.9 3.10 3.11 3.12 3.13 3.14 3.15)
fi
sid=${LEAKTRACE_SID_ROOT:-$here/../../.roots/sid}

# Newest installed patch release of minor version $1.
prefix_for() {
    local v=$1 best=""
    for d in "$root"/versions/"$v".*; do
        [[ -d $d/include/python$v ]] && best=$d
    done
    if [[ -z $best ]]; then
        echo "no CPython $v headers under $root/versions/$v.*/include/python$v" >&2
        return 1
    fi
    echo "$best"
}

compiled_numbers() {
    local v=$1 prefix tmp
    if [[ ${v#3.} -ge 14 ]]; then
        if [[ ! -d $sid/usr/include/python$v/internal ]]; then
            echo "no CPython $v headers in $sid/usr/include/python$v (./dev setup makes the root)" >&2
            return 1
        fi
        tmp=$(mktemp -d "$sid/tmp/pyoffsets.XXXXXX")
        trap 'rm -rf "$tmp"' RETURN
        cp "$here/offsets.c" "$tmp/"
        chroot "$sid" gcc -O0 -w -o "${tmp#"$sid"}/offsets" -I"/usr/include/python$v" \
            -I"/usr/include/python$v/internal" "${tmp#"$sid"}/offsets.c" || return 1
        chroot "$sid" "${tmp#"$sid"}/offsets"
        return
    fi
    prefix=$(prefix_for "$v") || return 1
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' RETURN
    "$cc" -O0 -w -o "$tmp/offsets" -I"$prefix/include/python$v" \
        -I"$prefix/include/python$v/internal" "$here/offsets.c" || return 1
    "$tmp/offsets"
}

# "name value" lines from the Rust table (LAYOUT; 3.12+, ALLOCATORS; 3.13+, the entries of
# DEBUG), in the order offsets.c prints them.
rust_numbers() {
    local v=$1 file="$tables/v${1/./_}.rs"
    echo "version $v"
    awk '/^pub const LAYOUT: Layout = Layout \{/ {on=1; next} on && /^\};/ {on=0}
         on { sub(/:$/, "", $1); sub(/,$/, "", $2); if ($2 == "Layout::ABSENT") $2 = "absent"; print $1, $2 }' "$file"
    awk '/^pub const ALLOCATORS:/ {on=1; next} on && /^    \};/ {on=0}
         on && /^        [a-z_]+: [0-9]+,$/ { sub(/:$/, "", $1); sub(/,$/, "", $2); print "alloc." $1, $2 }' "$file"
    awk '/^pub const DEBUG: DebugTable/ {on=1; next} on && /^\};/ {on=0}
         on && /^        \("/ { gsub(/[(),"]/, ""); print "debug." $1, $2 }' "$file"
}

status=0
for v in "${versions[@]}"; do
    if [[ $print_only == 1 ]]; then
        compiled_numbers "$v"
        continue
    fi
    if ! c=$(compiled_numbers "$v"); then
        echo "FAIL $v: could not build offsets.c" >&2
        status=1
        continue
    fi
    if diff -u --label "rust v${v/./_}.rs" --label "headers $v" <(rust_numbers "$v") <(echo "$c"); then
        echo "ok   $v"
    else
        echo "FAIL $v: table differs from headers" >&2
        status=1
    fi
done
exit $status
