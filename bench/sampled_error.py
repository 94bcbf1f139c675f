#!/usr/bin/env python3
"""The sampled estimator's error, measured over many runs against its predicted spread.

Two targets, each traced with `leaktrace attach --mode sampled` again and again:

- C: tests/fixtures/sampled.c (2048 blocks of 16 B to 100 kB at one site, 32.1 MiB; the
  truth is known exactly). One run per rate in turn (interleaved), RUNS runs per rate.
- FastAPI: tests/fixtures/fastapi_leak.py under uvicorn on 127.0.0.1, whose /leak endpoint
  keeps a 10240-byte bytes object per request (one malloc of 10273 bytes: checked by a first
  run in exact mode). A load thread paces GET /leak for the whole traced window; the truth is
  the requests answered while traced times that size (within a few requests: those in flight
  when the trace starts and stops), and the growth truth is the request rate times it.

For each: the relative error of live_bytes (and, for FastAPI, of growth_bytes_per_s) per run,
its mean, standard deviation and worst case, against the README's sqrt(N/B) rule and the
estimator's exact standard deviation, sqrt(sum s^2 (1-p)/p) / B with p = 1 - exp(-s/N).

Bounded: every leaktrace runs with a timeout, servers bind 127.0.0.1 only and are killed by
PID. Needs root, a release build and .venv (./dev setup). Run it under the test lock:
  flock /tmp/leaktrace-itest.lock bench/sampled_error.py [--runs 20] [--web-runs 6]
"""

import argparse
import http.client
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LT = os.environ.get("LEAKTRACE_BIN", os.path.join(ROOT, "target/release/leaktrace"))
SIZES = [16, 100, 1000, 5000, 20000, 100000, 48, 3000]
ROUNDS = 256
WEB_BLOCK = 10273


def parse_bytes(s):
    s = s.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20}.get(s[-1:], 1)
    return int(s.rstrip("KM")) * mult


def predicted(blocks, n):
    """(exact relative sd, sqrt(N/B) rule) for these block sizes at mean N."""
    total = sum(blocks)
    var = 0.0
    for s in blocks:
        p = -math.expm1(-s / n)
        var += s * s * (1 - p) / p
    return math.sqrt(var) / total, math.sqrt(n / total)


def wait_line(stream_lines, needle, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in list(stream_lines):
            if needle in line:
                return line
        time.sleep(0.01)
    raise SystemExit(f"timed out waiting for {needle!r}: {stream_lines[-5:]}")


class Reader(threading.Thread):
    """Collects a pipe's lines (and when each arrived)."""

    def __init__(self, pipe):
        super().__init__(daemon=True)
        self.pipe, self.lines, self.times = pipe, [], []
        self.start()

    def run(self):
        for raw in self.pipe:
            self.times.append(time.monotonic())
            self.lines.append(raw.decode(errors="replace"))


def attach(pid, out, extra, timeout=60):
    cmd = [LT, "attach", str(pid), "-o", out, *extra]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return p, Reader(p.stdout), Reader(p.stderr)


def finish(p, timeout=60):
    try:
        return p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        raise SystemExit("leaktrace did not finish in time")


def stack_at(report, caller, leaf):
    """Stacks allocating through `leaf` whose caller frame (C) is `caller`."""
    for s in report["stacks"]:
        f = [x["function"] for x in s["frames"]]
        if len(f) >= 2 and f[-2] == caller and f[-1] == leaf:
            yield s


def python_stack_at(report, function, leaf):
    """Stacks allocating through `leaf` whose innermost Python frame is `function`."""
    for s in report["stacks"]:
        py = [x["function"] for x in s["frames"] if x["kind"] == "python"]
        if py and py[-1] == function and s["frames"][-1]["function"] == leaf:
            yield s


def c_run(binary, n, work):
    fx = subprocess.Popen([binary], stdout=subprocess.PIPE)
    out = Reader(fx.stdout)
    try:
        wait_line(out.lines, "ready", 10)
        path = os.path.join(work, "c.json")
        p, _, err = attach(fx.pid, path, ["--mode", "sampled", "--sample-bytes", str(n),
                                         "--interval", "1", "--min-age", "0"])
        wait_line(err.lines, "leaktrace: tracing", 30)
        fx.send_signal(signal.SIGUSR1)
        done = wait_line(out.lines, "done", 30)
        time.sleep(0.3)
        p.send_signal(signal.SIGINT)
        if finish(p) != 0:
            raise SystemExit("".join(err.lines))
        truth = int(done.split()[1])
        report = json.load(open(path))
        leak = list(stack_at(report, "mixed_leak_here", "malloc"))
        est = sum(s["live_bytes"] for s in leak)
        samples = sum(s.get("live_samples", 0) for s in leak)
        return est / truth - 1, samples
    finally:
        fx.kill()
        fx.wait()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Load(threading.Thread):
    """GET /leak at `rate` per second on one keep-alive connection; records (time, kept)."""

    def __init__(self, port, rate):
        super().__init__(daemon=True)
        self.port, self.rate, self.stop, self.log = port, rate, threading.Event(), []
        self.start()

    def run(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        t0 = time.monotonic()
        i = 0
        while not self.stop.is_set():
            conn.request("GET", "/leak")
            body = json.loads(conn.getresponse().read())
            self.log.append((time.monotonic(), body["kept"]))
            i += 1
            delay = t0 + i / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        conn.close()

    def kept_at(self, t):
        before = [k for (ts, k) in self.log if ts <= t]
        return before[-1] if before else 0


def web_run(server_pid, port, mode, n, seconds, rate, work):
    load = Load(port, rate)
    try:
        time.sleep(1.0)  # steady before the trace starts
        path = os.path.join(work, "web.json")
        extra = ["--interval", "1", "--duration", str(seconds), "--min-age", "0"]
        if mode == "sampled":
            extra += ["--mode", "sampled", "--sample-bytes", str(n)]
        p, out, err = attach(server_pid, path, extra)
        line = wait_line(err.lines, "leaktrace: tracing", 60)
        t_start = err.times[err.lines.index(line)]
        code = finish(p, seconds + 60)
        if code != 0:
            raise SystemExit("".join(err.lines))
        # The heap is read when the duration is reached (within a 100 ms tick).
        t_stop = t_start + seconds + 0.05
    finally:
        load.stop.set()
        load.join()
    report = json.load(open(path))
    leak = list(python_stack_at(report, "leak_endpoint", "malloc"))
    est = sum(s["live_bytes"] for s in leak)
    growth = sum(s["growth_bytes_per_s"] or 0 for s in leak)
    samples = sum(s.get("live_samples", 0) for s in leak)
    requests = load.kept_at(t_stop) - load.kept_at(t_start)
    in_window = [(t, k) for (t, k) in load.log if t_start <= t <= t_stop]
    req_rate = (in_window[-1][1] - in_window[0][1]) / (in_window[-1][0] - in_window[0][0])
    trends = sorted({s.get("trend") for s in leak})
    return est, requests, growth, req_rate, samples, trends


def summary(errors):
    mean = statistics.mean(errors)
    sd = statistics.stdev(errors) if len(errors) > 1 else 0.0
    worst = max(errors, key=abs)
    return f"mean {mean:+.2%}, sd {sd:.2%}, worst {worst:+.2%}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=20, help="runs per rate on the C fixture")
    ap.add_argument("--rates", default="4K,64K,512K", help="--sample-bytes values (C fixture)")
    ap.add_argument("--web-runs", type=int, default=6, help="sampled runs on FastAPI")
    ap.add_argument("--web-rate", default="512K", help="--sample-bytes on FastAPI")
    ap.add_argument("--web-seconds", type=int, default=10, help="traced window per web run")
    ap.add_argument("--requests-per-s", type=float, default=150.0)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (eBPF): run with sudo")
    if not os.access(LT, os.X_OK):
        raise SystemExit(f"build leaktrace first (cargo build --release): {LT}")
    work = tempfile.mkdtemp(prefix="sampled-error-")
    print(f"machine: {os.uname().release}, {os.cpu_count()} cpus; leaktrace {LT}")

    binary = os.path.join(work, "sampled")
    subprocess.run(["cc", "-O0", "-g", "-fno-omit-frame-pointer", "-o", binary,
                    os.path.join(ROOT, "tests/fixtures/sampled.c")], check=True)
    rates = [parse_bytes(r) for r in args.rates.split(",")] if args.runs > 0 else []
    blocks = [s for s in SIZES for _ in range(ROUNDS)]
    errors = {n: [] for n in rates}
    samples = {n: [] for n in rates}
    for run in range(args.runs):
        for n in rates:
            e, k = c_run(binary, n, work)
            errors[n].append(e)
            samples[n].append(k)
        print(f"C run {run + 1}/{args.runs}: " + ", ".join(
            f"N={n}: {errors[n][-1]:+.2%}" for n in rates), file=sys.stderr)
    if rates:
        print(f"\nC fixture (tests/fixtures/sampled.c, B = {sum(blocks)} bytes in {len(blocks)} "
              f"blocks of {min(SIZES)}-{max(SIZES)} B), {args.runs} runs per rate:")
        print("| --sample-bytes | samples (median) | predicted sd (exact) | sqrt(N/B) rule | measured | within 2 sd |")
        print("|---|---|---|---|---|---|")
    for n in rates:
        exact_sd, rule = predicted(blocks, n)
        inside = sum(abs(e) <= 2 * exact_sd for e in errors[n])
        print(f"| {n} | {statistics.median(samples[n]):.0f} | {exact_sd:.2%} | {rule:.2%} | "
              f"{summary(errors[n])} | {inside}/{len(errors[n])} |")

    if args.web_runs <= 0:
        return
    py = os.path.join(ROOT, ".venv/bin/python")
    port = free_port()
    server = subprocess.Popen(
        [py, "-m", "uvicorn", "fastapi_leak:app", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "warning"],
        cwd=os.path.join(ROOT, "tests/fixtures"), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", "/ok")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("uvicorn did not start")
            time.sleep(0.2)
        n = parse_bytes(args.web_rate)
        est, req, _, _, _, _ = web_run(server.pid, port, "exact", 0, args.web_seconds,
                                       args.requests_per_s, work)
        print(f"\nFastAPI (tests/fixtures/fastapi_leak.py, /leak at {args.requests_per_s:.0f} "
              f"req/s, {args.web_seconds} s windows): exact mode first: {est} bytes for {req} "
              f"requests = {est / max(req, 1):.1f} per request (expected {WEB_BLOCK})")
        live_err, growth_err = [], []
        rows = []
        for run in range(args.web_runs):
            est, req, growth, req_rate, k, trends = web_run(
                server.pid, port, "sampled", n, args.web_seconds, args.requests_per_s, work)
            truth, truth_rate = req * WEB_BLOCK, req_rate * WEB_BLOCK
            live_err.append(est / truth - 1)
            growth_err.append(growth / truth_rate - 1)
            exact_sd, rule = predicted([WEB_BLOCK] * req, n)
            rows.append((req, k, exact_sd, rule, live_err[-1], growth_err[-1], trends))
            print(f"web run {run + 1}/{args.web_runs}: live {live_err[-1]:+.2%}, growth "
                  f"{growth_err[-1]:+.2%}, {k} samples, trend {trends}", file=sys.stderr)
        print(f"--sample-bytes {n}, {args.web_runs} runs:")
        print("| run | requests traced | samples | predicted sd (exact) | sqrt(N/B) | live error | growth error | trend |")
        print("|---|---|---|---|---|---|---|---|")
        for i, (req, k, sd, rule, le, ge, trends) in enumerate(rows):
            print(f"| {i + 1} | {req} | {k} | {sd:.1%} | {rule:.1%} | {le:+.1%} | {ge:+.1%} | "
                  f"{', '.join(str(t) for t in trends)} |")
        print(f"live bytes: {summary(live_err)}; growth: {summary(growth_err)}")
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    main()
