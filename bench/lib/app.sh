# Sourced by the bench scripts that load the demo FastAPI app (demo/app.py under uvicorn on
# 127.0.0.1:$PORT): a work folder, start_app, and the cleanup of every PID written to
# "$work/*.pid" (measurements run in command substitutions, i.e. subshells, so the PIDs to stop
# go through files). Needs: set -euo pipefail, the repository root as the current folder,
# PORT and URLPATH set. Sets: work, app (the server's PID while it runs).
[ -x .venv/bin/python ] || { echo "run ./dev setup first" >&2; exit 1; }
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
work=$(mktemp -d)
app=""
cleanup() {
    for f in "$work"/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null; done
    rm -rf "$work"
}
trap cleanup EXIT

# Starts the server, waits until it answers, warms it up (imports done, caches filled) with
# one second of load on $URLPATH.
start_app() {
    if curl -s "http://127.0.0.1:$PORT/" >/dev/null 2>&1; then
        echo "port $PORT is already in use: set BENCH_PORT" >&2
        exit 1
    fi
    (cd demo && exec ../.venv/bin/python -m uvicorn app:app --host 127.0.0.1 --port "$PORT" --log-level warning) >"$work/app.log" 2>&1 &
    app=$!
    echo "$app" >"$work/app.pid"
    until curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; do
        kill -0 "$app" || { cat "$work/app.log" >&2; exit 1; }
        sleep 0.1
    done
    wrk -t1 -c8 -d1s "http://127.0.0.1:$PORT$URLPATH" >/dev/null
}
