#!/usr/bin/env python3
"""Report time and tracer memory, two leaktrace builds side by side in one run.

A is this checkout's build (LEAKTRACE_BIN, default target/release/leaktrace), B another one
(OTHER=/path/to/leaktrace, e.g. a build of main: see --build-base). Rounds interleave A B A B.

`million` (default): bench/lib/million.c makes N (default 1,000,000) malloc(64) calls after
the tracer attached and keeps them all; the tracer runs with --max-allocs 2N --min-age 0
-o report.json and is stopped with SIGINT. Measured per run: seconds from SIGINT to the report
written (the report file's last modification) and to the tracer's exit, the tracer's peak RSS
(its VmHWM), and the live allocations in the report (must be N). A also runs as
`A entry-by-entry` (LEAKTRACE_NO_BATCH=1: maps read without BPF_MAP_LOOKUP_BATCH).

`demo`: demo/app.py under uvicorn on 127.0.0.1 with demo/load.py driving it (bounded), the
tracer attached for --seconds and stopped with SIGINT, as `./dev demo` does with --duration.
Measured per run: seconds from SIGINT to report written and to exit, the distinct native
stacks in the kernel's stack map just before the stop (bpftool), the allocations that found
that map full or had no stack (the report's counters), and the report's live allocations
whose stack has more native frames than the allocator and its caller.

usage: [OTHER=B] bench/report_time.py [--build-base REF] [--rounds R] [--allocs N]
                                      [--demo] [--seconds S]
Needs root and a release build; takes the test lock (/tmp/leaktrace-itest.lock) itself.
"""
import argparse
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
A = os.environ.get("LEAKTRACE_BIN", os.path.join(ROOT, "target/release/leaktrace"))
VENV_PY = os.path.join(ROOT, ".venv/bin/python")


def say(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def wait_for(path, pattern, proc, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                m = re.search(pattern, f.read(), re.M)
            if m:
                return m
        except FileNotFoundError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}) before {pattern!r}")
        time.sleep(0.01)
    raise RuntimeError(f"{what}: no {pattern!r} within {timeout} s")


def vm_hwm_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            m = re.search(r"^VmHWM:\s*(\d+) kB", f.read(), re.M)
        return int(m.group(1)) if m else None
    except OSError:
        return None


def stop(proc, sig, timeout):
    """Sends `sig`, waits (bounded): (seconds to exit, peak RSS in MiB, time of the signal).
    The peak is the process's own VmHWM, read until it exits (wait4's ru_maxrss would also
    count the memory of this script, which the child shared until its exec)."""
    t0 = time.time()
    proc.send_signal(sig)
    deadline = time.monotonic() + timeout
    peak = vm_hwm_kib(proc.pid) or 0
    while time.monotonic() < deadline:
        peak = max(peak, vm_hwm_kib(proc.pid) or 0)
        pid, status, _ = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return time.time() - t0, peak / 1024, t0
        time.sleep(0.002)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"pid {proc.pid} did not exit within {timeout} s of signal {sig}")


def build_base(ref):
    """Builds `ref`'s leaktrace in a temporary directory, reusing this checkout's compiled
    dependencies (a copy of target/release): only the workspace's crates are rebuilt."""
    work = tempfile.mkdtemp(prefix="leaktrace-base-")
    src = os.path.join(work, "src")
    os.makedirs(src)
    say(f"building {ref} in {work}")
    archive = subprocess.run(["git", "-C", ROOT, "archive", ref], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", src], input=archive, check=True)
    target = os.path.join(work, "target")
    os.makedirs(target)
    if os.path.isdir(os.path.join(ROOT, "target/release")):
        subprocess.run(["cp", "-a", os.path.join(ROOT, "target/release"), target], check=True)
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", ref], check=True,
                            capture_output=True, text=True).stdout.strip()
    env = dict(os.environ, CARGO_TARGET_DIR=target, LEAKTRACE_GIT_COMMIT=commit)
    subprocess.run(["nice", "-n", "10", "cargo", "build", "--release", "-q", "-p", "tracer-user"],
                   cwd=src, env=env, check=True)
    return os.path.join(target, "release/leaktrace"), commit


def supports_verbose(lt):
    out = subprocess.run([lt, "attach", "--help"], capture_output=True, text=True).stdout
    return "--verbose" in out


def verbose_line(err_path):
    with open(err_path) as f:
        m = re.findall(r"^leaktrace: report written .*$", f.read(), re.M)
    return m[-1] if m else None


# ---------------------------------------------------------------- a million live allocations

def million_run(lt, env, n, work):
    exe = os.path.join(work, "million")
    out, err, report = (os.path.join(work, x) for x in ("m.out", "m.err", "m.json"))
    for p in (out, err, report):
        if os.path.exists(p):
            os.remove(p)
    target = subprocess.Popen([exe, str(n)], stdout=open(out, "w"))
    tracer = None
    try:
        wait_for(out, "^ready", target, 10, "million")
        args = [lt, "attach", str(target.pid), "--interval", "3600", "--min-age", "0",
                "--max-allocs", str(2 * n), "-o", report]
        if supports_verbose(lt):
            args.append("-v")
        tracer = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(err, "w"),
                                  env=dict(os.environ, **env))
        wait_for(err, r"^leaktrace: tracing ", tracer, 60, "tracer")
        target.send_signal(signal.SIGUSR1)
        wait_for(out, "^allocated", target, 300, "million")
        time.sleep(1)
        exit_s, rss_mib, t0 = stop(tracer, signal.SIGINT, 300)
        tracer = None
        written_s = os.stat(report).st_mtime - t0
        with open(report) as f:
            live = json.load(f)["totals"]["live_allocs"]
        if live != n:
            raise RuntimeError(f"the report has {live} live allocations, not {n}")
        return {"written_s": written_s, "exit_s": exit_s, "rss_mib": rss_mib,
                "line": verbose_line(err)}
    finally:
        if tracer is not None:
            tracer.kill()
            tracer.wait()
        target.kill()
        target.wait()


# ---------------------------------------------------------------- the demo

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stack_map_entries(tracer_pid):
    """Entries of the STACKS map held open by process `tracer_pid` (its fdinfo, then
    bpftool), or None."""
    ids = set()
    fdinfo = f"/proc/{tracer_pid}/fdinfo"
    for fd in os.listdir(fdinfo):
        try:
            with open(os.path.join(fdinfo, fd)) as f:
                m = re.search(r"^map_id:\s*(\d+)", f.read(), re.M)
        except OSError:
            continue
        if m:
            ids.add(int(m.group(1)))
    for map_id in ids:
        r = subprocess.run(["bpftool", "-j", "map", "show", "id", str(map_id)], capture_output=True, text=True)
        if r.returncode == 0 and json.loads(r.stdout).get("name") == "STACKS":
            # Counted in a pipe: a thousand 1 KiB entries as text would grow this script.
            d = subprocess.run(f"bpftool map dump id {map_id} | tail -n 1", shell=True,
                               capture_output=True, text=True)
            m = re.search(r"Found (\d+) element", d.stdout)
            return int(m.group(1)) if m else None
    return None


def demo_run(lt, env, seconds, work):
    port = free_port()
    err, report, app_log = (os.path.join(work, x) for x in ("d.err", "d.json", "app.log"))
    for p in (err, report):
        if os.path.exists(p):
            os.remove(p)
    app = subprocess.Popen([VENV_PY, "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port",
                            str(port), "--log-level", "warning"], cwd=os.path.join(ROOT, "demo"),
                           stdout=open(app_log, "w"), stderr=subprocess.STDOUT)
    tracer = load = None
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or app.poll() is not None:
                    raise RuntimeError("the demo app did not start")
                time.sleep(0.1)
        load = subprocess.Popen([VENV_PY, os.path.join(ROOT, "demo/load.py"), str(port),
                                 str(seconds + 30)], stdout=subprocess.DEVNULL)
        args = [lt, "attach", str(app.pid), "--interval", "5", "--top", "5", "-o", report]
        if supports_verbose(lt):
            args.append("-v")
        tracer = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(err, "w"),
                                  env=dict(os.environ, **env))
        wait_for(err, r"recording Python frames", tracer, 60, "tracer")
        time.sleep(seconds)
        stacks = stack_map_entries(tracer.pid)
        exit_s, rss_mib, t0 = stop(tracer, signal.SIGINT, 120)
        tracer = None
        written_s = os.stat(report).st_mtime - t0
        with open(report) as f:
            r = json.load(f)
        live = r["totals"]["live_allocs"]
        deep = sum(s["live_allocs"] for s in r["stacks"]
                   if sum(1 for f in s["frames"] if f["kind"] == "native") > 2)
        c = r["counters"]
        return {"written_s": written_s, "exit_s": exit_s, "rss_mib": rss_mib,
                "native_stacks": stacks, "map_full": c.get("stack_map_collision_or_full"),
                "unwind_failed": c.get("stack_unwind_failed"), "allocs_seen": c.get("allocs_seen"),
                "live": live, "live_deep_native": deep, "report_stacks": len(r["stacks"]),
                "line": verbose_line(err)}
    finally:
        for p in (tracer, load):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        app.terminate()
        try:
            app.wait(10)
        except subprocess.TimeoutExpired:
            app.kill()
            app.wait()


# ---------------------------------------------------------------- main

def med(rows, key):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--allocs", type=int, default=1_000_000)
    ap.add_argument("--demo", action="store_true", help="the demo app instead of million.c")
    ap.add_argument("--seconds", type=float, default=20, help="--demo: seconds traced")
    ap.add_argument("--build-base", metavar="REF", help="build B from this git ref (e.g. main)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/report_time.py: needs root (it attaches eBPF probes)")
    b, b_label = os.environ.get("OTHER"), None
    if args.build_base:
        b, commit = build_base(args.build_base)
        b_label = f"B ({args.build_base} at {commit})"
    if not b:
        sys.exit("bench/report_time.py: set OTHER to the leaktrace build to compare with, or --build-base REF")
    configs = [("A", A, {}), ("B", b, {})]
    if not args.demo:
        configs.insert(1, ("A entry-by-entry", A, {"LEAKTRACE_NO_BATCH": "1"}))
    work = tempfile.mkdtemp(prefix="leaktrace-report-time-")
    if not args.demo:
        subprocess.run(["cc", "-O2", "-o", os.path.join(work, "million"),
                        os.path.join(ROOT, "bench/lib/million.c")], check=True)
    rows = {name: [] for name, _, _ in configs}
    lock = open("/tmp/leaktrace-itest.lock", "w")
    try:
        for rnd in range(args.rounds):
            for name, lt, env in configs:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    r = demo_run(lt, env, args.seconds, work) if args.demo else million_run(lt, env, args.allocs, work)
                    rows[name].append(r)
                    say(f"round {rnd + 1}/{args.rounds} {name}: " + ", ".join(
                        f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items() if k != "line"))
                    if r.get("line"):
                        say(f"  {r['line']}")
                except RuntimeError as e:
                    say(f"round {rnd + 1} {name}: failed: {e}")
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    print(f"\nmachine: {os.uname().machine}, {os.cpu_count()} cpus, kernel {os.uname().release}, "
          f"load average {load} at the end, {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"A = {A}; B = {b_label or b}; medians of {args.rounds} interleaved rounds\n")
    base = rows["B"]
    if args.demo:
        keys = [("written_s", "stop to report written, s", ".2f"), ("exit_s", "stop to exit, s", ".2f"),
                ("native_stacks", "native stacks in the map", ".0f"),
                ("map_full", "allocations: stack map full", ".0f"),
                ("unwind_failed", "allocations: no stack", ".0f"), ("allocs_seen", "allocations seen", ".0f"),
                ("live", "live allocations", ".0f"),
                ("live_deep_native", "live with >2 native frames", ".0f"),
                ("report_stacks", "stacks in the report", ".0f"), ("rss_mib", "peak RSS MiB", ".1f")]
    else:
        keys = [("written_s", "stop to report written, s", ".2f"), ("exit_s", "stop to exit, s", ".2f"),
                ("rss_mib", "tracer peak RSS MiB", ".1f")]
    print("| build | " + " | ".join(k[1] for k in keys) + " |")
    print("|---|" + "---:|" * len(keys))
    for name, _, _ in configs:
        cells = []
        for key, _, spec in keys:
            v, bv = med(rows[name], key), med(base, key)
            cell = "-" if v is None else format(v, spec)
            if v is not None and bv and name != "B" and key.endswith(("_s", "rss_mib")):
                cell += f" ({v / bv:.2f}x B)"
            cells.append(cell)
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
