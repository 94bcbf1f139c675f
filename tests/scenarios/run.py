"""The leak scenario suite's accuracy runner.

For every pyenv CPython 3.8-3.13 that has a venv in .venvs/X.Y, and Debian's 3.14 and 3.15 in
the sid root, static and shared (3.X-shared), with their /opt/venv-X.Y (all made by
./dev setup; the sid ones run through chroot, app.py copied into the root's
/opt/leaktrace/scenarios): start app.py under uvicorn on 127.0.0.1, warm it up, attach `leaktrace attach PID --format json`,
drive every endpoint with load.py for a fixed time, and check the report scenario by scenario
(see README.md next to this file). Prints a version x scenario table, writes
target/scenarios/results.{md,json} and every report, and exits 1 when any check misses.

usage: run.py [--leaktrace BIN] [--versions 3.8,3.12] [--duration S] [--interval S]
              [--pymalloc] [--out DIR]
Needs root (eBPF, and the PostgreSQL cluster runs as the `postgres` user).
"""
import argparse
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
VERSIONS = ["3.8", "3.9", "3.10", "3.11", "3.12", "3.13"]
# Debian sid's interpreters, in the root ./dev setup makes (LEAKTRACE_SID_ROOT, default .roots/sid).
# "3.X-shared" is the root's launcher linked against libpython3.X.so (/opt/leaktrace), with the
# packages of /opt/venv-3.X on its PYTHONPATH.
SID_VERSIONS = ["3.14", "3.15", "3.14-shared", "3.15-shared"]
SID_ROOT = Path(os.environ.get("LEAKTRACE_SID_ROOT", ROOT / ".roots" / "sid"))

# name, kind, the scenario's functions in app.py (a stack is the scenario's when one of its
# Python frames in app.py is one of them), the culprits that its top stack must name, and the
# fewest requests that make the run meaningful (the LRU cache, 64 entries, must fill in the first
# third of the window: 3 x 64 requests at least).
SCENARIOS = [
    ("registry", "leak", ["ingest_event"], ["ingest_event"], 30),
    ("sqlite", "leak", ["sqlite_order", "open_sqlite"], ["sqlite_order"], 30),
    ("postgres", "leak", ["postgres_order", "open_postgres"], ["postgres_order"], 30),
    ("tasks", "leak", ["subscribe", "relay_updates"], ["relay_updates"], 30),
    ("depends", "leak", ["profile", "get_request_context"], ["get_request_context"], 30),
    ("c-leak", "leak", ["thumbnail", "make_thumbnail"], ["make_thumbnail", "thumb_render"], 30),
    ("lru", "control", ["product_page", "render_product_page"], [], 192),
    ("export", "control", ["export_report"], [], 10),
    # Small objects only: the stacks see pymalloc arenas at most; only the census names it.
    ("sessions", "small", ["touch_session"], [], 30),
]
# The module global that holds each leak, which the heap census of the report (its `heap`
# member: censuses at the start and the end of the trace) must list with retained bytes that
# grew. c-leak has none: its memory is native, which only the stacks name.
HOLDERS = {
    "registry": "app:PAYLOAD_REGISTRY",
    "sqlite": "app:OPEN_CONNECTIONS",
    "postgres": "app:OPEN_CONNECTIONS",
    "tasks": "app:RELAY_TASKS",
    "depends": "app:CONTEXT_CACHE",
    "sessions": "app:SESSION_STATE",
}
# Per leak, what the census's names must count, grown between the first and the last census:
# (where in the heap member, the row's key, its value, the growth fields that must be > 0).
NAMED = {
    "sqlite": ("connections", "type", "sqlite3.Connection", ["count_growth", "open_growth"]),
    "postgres": ("connections", "type", "psycopg.Connection", ["count_growth", "open_growth"]),
    "tasks": ("tasks", "coroutine", "relay_updates", ["count_growth"]),
}
# A control must be seen, not only not grow: the full LRU cache (64 pages of ~5.7 KiB, all made
# inside the window) must show at least half its size in its stacks.
MIN_LIVE_BYTES = {"lru": 64 * 5700 // 2}
sys.path.insert(0, str(HERE))
from load import POSTGRES_CAP  # noqa: E402  (most requests on /postgres: each may leak a connection)


def die(msg):
    print(f"scenarios: error: {msg}", file=sys.stderr)
    sys.exit(1)


def say(msg):
    print(f"scenarios: {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Procs:
    """Processes this run started, stopped by PID (never by name) when it ends."""

    def __init__(self):
        self.procs = []

    def start(self, *args, **kw):
        p = subprocess.Popen(*args, **kw)
        self.procs.append(p)
        return p

    def stop(self, p, grace=5.0):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self):
        for p in list(self.procs):
            self.stop(p)


# ---------------------------------------------------------------- fixtures: C library, databases


def build_thumb(tmp):
    out = tmp / "libthumb.so"
    cmd = ["gcc", "-O2", "-g", "-fno-omit-frame-pointer", "-shared", "-fPIC", "-o", str(out), str(HERE / "thumb.c")]
    if subprocess.run(cmd).returncode != 0:
        die("compiling tests/scenarios/thumb.c failed: is gcc installed? (./dev setup installs it)")
    return out


def make_sqlite(tmp):
    import sqlite3

    path = tmp / "orders.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT, total REAL)")
    conn.executemany("INSERT INTO orders VALUES (?, ?, ?)", [(i, f"customer-{i}", i * 1.5) for i in range(1, 101)])
    conn.commit()
    conn.close()
    return path


def pg_bindir():
    cands = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parent.parent.name))
    if not cands:
        die("PostgreSQL is not installed: run ./dev setup (it installs Debian's postgresql)")
    return cands[-1].parent


class Postgres:
    """A throw-away cluster in a temp dir, run as the `postgres` user on 127.0.0.1 only."""

    def __init__(self, max_connections):
        try:
            self.user = pwd.getpwnam("postgres")
        except KeyError:
            die("no `postgres` user: run ./dev setup (Debian's postgresql package creates it)")
        self.bin = pg_bindir()
        self.dir = Path(tempfile.mkdtemp(prefix="leaktrace-pg-"))
        os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
        self.data = self.dir / "data"
        self.port = free_port()
        self.max_connections = max_connections
        self.started = False

    def _as_postgres(self, args, **kw):
        return subprocess.run(["runuser", "-u", "postgres", "--", *args], cwd=self.dir, **kw)

    def start(self):
        r = self._as_postgres(
            [str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            die(f"initdb failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
        opts = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.dir} "
            f"-c max_connections={self.max_connections} -c fsync=off -c shared_buffers=16MB"
        )
        r = self._as_postgres(
            [str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.dir / "log"), "-w", "-t", "60", "start"],
            capture_output=True,
            text=True,
        )
        self.started = True
        if r.returncode != 0:
            log = (self.dir / "log").read_text(errors="replace") if (self.dir / "log").exists() else ""
            die(f"PostgreSQL did not start: {log.strip().splitlines()[-1:] or r.stderr.strip()}")
        sql = (
            "CREATE TABLE orders (id integer PRIMARY KEY, customer text, total numeric);"
            "INSERT INTO orders SELECT i, 'customer-' || i, i * 1.5 FROM generate_series(1, 100) i;"
        )
        r = self._as_postgres(
            ["psql", "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "postgres", "-c", sql],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            die(f"creating the orders table failed: {r.stderr.strip()}")

    @property
    def dsn(self):
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres connect_timeout=10"

    def stop(self):
        if self.started:
            self._as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"], capture_output=True)
            self.started = False
        shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------- one traced run


def http_status(port, path):
    import http.client

    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        c.request("GET", path)
        status = c.getresponse().status
        c.close()
        return status
    except OSError:
        return None


def minor_of(version):
    return version.removesuffix("-shared")


def venv_python(version):
    if version in SID_VERSIONS:
        return SID_ROOT / "opt" / f"venv-{minor_of(version)}" / "bin" / "python"
    return ROOT / ".venvs" / version / "bin" / "python"


def server_command(version, port):
    """uvicorn serving app.py: with the host's venv, or through chroot in the sid root."""
    tail = ["-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    if version.endswith("-shared"):
        return ["chroot", str(SID_ROOT), f"/opt/leaktrace/python{minor_of(version)}-shared", *tail, "--app-dir", "/opt/leaktrace/scenarios"]
    if version in SID_VERSIONS:
        return ["chroot", str(SID_ROOT), f"/opt/venv-{version}/bin/python", *tail, "--app-dir", "/opt/leaktrace/scenarios"]
    return [str(venv_python(version)), *tail]


def available_versions():
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    found = []
    for v in VERSIONS:
        if list((pyenv_root / "versions").glob(f"{v}.*/bin/python{v}")):
            if not venv_python(v).exists():
                die(f"pyenv has Python {v} but .venvs/{v} is missing: run ./dev setup")
            found.append(v)
    # Debian's 3.14/3.15 in the sid root, static and shared, when the root has their venvs.
    for v in SID_VERSIONS:
        if (SID_ROOT / "usr" / "bin" / f"python{minor_of(v)}").exists():
            if v.endswith("-shared") and not (SID_ROOT / "opt" / "leaktrace" / f"python{minor_of(v)}-shared").exists():
                die(f"the sid root has no /opt/leaktrace/python{minor_of(v)}-shared launcher: run ./dev setup")
            if not venv_exists(v):
                die(f"the sid root has Python {minor_of(v)} but /opt/venv-{minor_of(v)} is missing: run ./dev setup")
            found.append(v)
    return found


def venv_exists(version):
    # A sid venv's bin/python links to the root's /usr/bin/python3.X: not resolvable from here.
    return (venv_python(version).parent.parent / "pyvenv.cfg").exists()


def run_version(version, args, env_extra, procs, out_dir):
    port = free_port()
    env = dict(os.environ, **env_extra)
    server_log = open(out_dir / f"uvicorn-{version}.log", "w")
    if version in SID_VERSIONS:
        # Paths the app opens, as the chrooted process sees them.
        env = {k: v.replace(str(SID_ROOT), "", 1) if v.startswith(str(SID_ROOT)) else v for k, v in env.items()}
    if version.endswith("-shared"):
        m = minor_of(version)
        env["PYTHONPATH"] = f"/opt/venv-{m}/lib/python{m}/site-packages"
    server = procs.start(
        server_command(version, port),
        cwd=HERE,
        env=env,
        stdout=server_log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while http_status(port, "/health") != 200:
            if server.poll() is not None or time.monotonic() > deadline:
                die(f"uvicorn on Python {version} did not start: see {out_dir / f'uvicorn-{version}.log'}")
            time.sleep(0.2)
        # Warm up: first imports and lazy set-up happen before the window, not in it (but the
        # LRU cache starts empty, so that it fills during the window).
        warm = subprocess.run(
            [sys.executable, str(HERE / "load.py"), str(port), "3", "--rate-scale", "0.5", "--skip", "lru", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if warm.returncode != 0:
            die(f"warm-up load failed on Python {version}: {warm.stderr.strip()}")
        report = out_dir / f"report-{version}{'-pymalloc' if args.pymalloc else ''}.json"
        cmd = [
            str(args.leaktrace),
            "attach",
            str(server.pid),
            "--duration",
            str(args.duration),
            "--interval",
            str(args.interval),
            "--format",
            "json",
            "-o",
            str(report),
        ]
        if args.pymalloc:
            cmd.append("--pymalloc")
        tracer_log = out_dir / f"leaktrace-{version}{'-pymalloc' if args.pymalloc else ''}.log"
        with open(tracer_log, "w") as tlog:
            tracer = procs.start(cmd, stdout=tlog, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while "attached" not in tracer_log.read_text(errors="replace"):
            if tracer.poll() is not None or time.monotonic() > deadline:
                die(f"leaktrace did not attach on Python {version}: see {tracer_log}")
            time.sleep(0.1)
        t_attached = time.monotonic()
        load = procs.start(
            [sys.executable, str(HERE / "load.py"), str(port), str(args.duration), "--rate-scale", str(args.rate_scale), "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        load_out, load_err = load.communicate(timeout=args.duration + 60)
        procs.procs.remove(load)
        if load.returncode != 0:
            die(f"load.py failed on Python {version}: {load_err.strip()}")
        try:
            tracer.wait(timeout=args.duration + 120)
        except subprocess.TimeoutExpired:
            die(f"leaktrace did not finish on Python {version}: see {tracer_log}")
        t_attached_to_exit = time.monotonic() - t_attached
        procs.procs.remove(tracer)
        say(f"Python {version}: leaktrace exited {t_attached_to_exit - args.duration:.1f} s after the {args.duration} s window")
        if tracer.returncode != 0:
            die(f"leaktrace exited {tracer.returncode} on Python {version}: see {tracer_log}")
        return json.loads(report.read_text()), json.loads(load_out)
    finally:
        procs.stop(server)
        server_log.close()


# ---------------------------------------------------------------- checking a report


def app_functions(stack):
    """Names of the frames of the stack that are functions of app.py (3.11+ qualnames too)."""
    names = set()
    for f in stack["frames"]:
        if f["kind"] == "python" and (f.get("file") or "").endswith("scenarios/app.py"):
            names.add(f["function"].rsplit(".", 1)[-1])
    return names


def all_functions(stack):
    return {f["function"].rsplit(".", 1)[-1] for f in stack["frames"]}


def is_arena(stack):
    """A pymalloc arena (an mmap made by the object allocator), blamed on the allocation that grew it."""
    natives = [f["function"] for f in stack["frames"] if f["kind"] == "native"]
    return any("Arena" in n or n == "new_arena" for n in natives)


def growth(stack):
    g = stack.get("growth_bytes_per_s")
    return g if g is not None else float("-inf")


def short(stack):
    """innermost app.py frame:line > innermost Python frame > the last two native frames."""
    frames = stack["frames"]
    py = [f for f in frames if f["kind"] == "python"]
    nat = [f for f in frames if f["kind"] == "native"]
    parts = []
    app_idx = [i for i, f in enumerate(py) if (f.get("file") or "").endswith("scenarios/app.py")]
    if app_idx:
        tail = py[app_idx[-1]:]
        parts = [f"{tail[0]['function']}:{tail[0].get('line')}"]
        if len(tail) > 1:
            parts.append(f"..{tail[-1]['function']}")
    if nat:
        parts.append(" > ".join(f["function"] for f in nat[-2:]))
    return " > ".join(parts)


def check_holder(report, path, row):
    """The census must name the leak's holder: `path` among the heap member's owners, its
    retained bytes grown between the first and the last census."""
    heap = report.get("heap")
    if heap is None:
        row["misses"].append("the report has no heap member: no census was taken")
        return
    owner = next((o for o in heap["owners"] if o["path"] == path), None)
    if owner is None:
        listed = ", ".join(o["path"] for o in heap["owners"][:5])
        row["misses"].append(f"the census does not name the holder {path} (its owners: {listed})")
        return
    grown = owner.get("retained_growth")
    row["holder"] = f"{path} (+{grown} B)"
    if grown is None or grown <= 0:
        row["misses"].append(f"the census names {path} but its retained bytes did not grow ({grown})")


def check_named(report, name, row):
    """The census's names must count the leaked objects: the row of NAMED[name] present, with
    its growth fields above zero (tasks: the pending group held by the leak's holder)."""
    heap = report.get("heap")
    if heap is None:
        return  # check_holder said so
    where, key, value, fields = NAMED[name]
    rows = heap["tasks"] if where == "tasks" else heap["names"][where]
    mine = [r for r in rows if r.get(key) == value]
    if where == "tasks":
        mine = [r for r in mine if r["state"] == "pending" and r["holder"] == HOLDERS[name]]
    if not mine:
        row["misses"].append(f"the census's {where} have no {value} row (they list: {[r.get(key) for r in rows][:6]})")
        return
    r = mine[0]
    row["named"] = {f: r.get(f) for f in ["count", "open", *fields]}
    if name == "postgres" and not (r.get("open") is not None and r["count"] > r["open"]):
        # app:RECENT_POSTGRES keeps the last 8 connections, closed ones among them.
        row["misses"].append(f"the census does not tell closed psycopg connections from open ones: {r}")
    for f in fields:
        if not (r.get(f) or 0) > 0:
            row["misses"].append(f"the census counts {value} in {where} but its {f} is {r.get(f)}")


def check(report, load_stats, version, mode, rate_scale=1.0):
    stacks = report["stacks"]
    rows = []
    control_growth = []
    for name, kind, functions, culprits, min_requests in SCENARIOS:
        mine = [s for s in stacks if app_functions(s) & set(functions)]
        mine.sort(key=growth, reverse=True)
        top = mine[0] if mine else None
        ls = load_stats[name]
        row = {
            "version": version,
            "mode": mode,
            "scenario": name,
            "kind": kind,
            "requests": ls["ok"],
            "load_errors": ls["errors"],
            "stacks": len(mine),
            "top": short(top) if top else None,
            "top_frames": top["frames"] if top else None,
            "culprit_named": None,
            "growth": top.get("growth_bytes_per_s") if top else None,
            "trend": top.get("trend") if top else None,
            "top_is_arena": is_arena(top) if top else None,
            "live_bytes": sum(s["live_bytes"] for s in mine),
            "growing_stacks": [short(s) for s in mine if s.get("trend") == "growing"],
            "holder": None,
            "misses": [],
        }
        if name in HOLDERS:
            check_holder(report, HOLDERS[name], row)
        if name in NAMED:
            check_named(report, name, row)
        if ls["errors"]:
            row["misses"].append(f"load: {ls['ok']} ok, {ls['errors']} errors ({ls['last_error']})")
        min_requests = int(min_requests * rate_scale)
        if ls["ok"] < min_requests:
            row["misses"].append(f"load: only {ls['ok']} requests (needs {min_requests}): the machine was too busy for this run to mean anything")
        if kind == "leak":
            if top is None:
                row["misses"].append("no stack of this scenario in the report")
            else:
                named = set(culprits) <= all_functions(top)
                row["culprit_named"] = named
                if not named:
                    row["misses"].append(f"top stack does not name {'/'.join(culprits)}: {short(top)}")
                if top.get("trend") != "growing":
                    row["misses"].append(f"top stack is {top.get('trend')}, not growing")
                if growth(top) <= 0:
                    row["misses"].append(f"top stack growth {top.get('growth_bytes_per_s')} B/s")
        elif kind == "control":
            want = MIN_LIVE_BYTES.get(name, 0)
            if row["live_bytes"] < want:
                row["misses"].append(f"only {row['live_bytes']} live bytes in its stacks, expected at least {want}: the cache is not seen")
            for s in mine:
                control_growth.append((name, growth(s), short(s), is_arena(s)))
            for s in mine:
                if s.get("trend") == "growing":
                    known = "KNOWN pymalloc-arena blame: " if is_arena(s) else ""
                    row["misses"].append(f"{known}control stack classified growing: {short(s)} ({fmt_growth(growth(s))})")
        rows.append(row)
    # The leaks must outrank the controls by growth. A control's pymalloc arena stack that
    # outranks leaks is one miss, the control's own (an arena is blamed on whichever allocation
    # grew it: see README.md, "pymalloc arenas"), not one per leak it outranks.
    leak_rows = [r for r in rows if r["kind"] == "leak" and r["growth"] is not None]
    for cname, cgrowth, cshort, carena in control_growth:
        beaten = [r["scenario"] for r in leak_rows if r["growth"] <= cgrowth]
        if not beaten:
            continue
        if carena:
            crow = next(r for r in rows if r["scenario"] == cname)
            crow["misses"].append(
                f"KNOWN pymalloc-arena blame: its arena stack ({cgrowth:.0f} B/s: {cshort}) outranks the leak(s) {', '.join(beaten)}"
            )
        else:
            for r in leak_rows:
                if r["scenario"] in beaten:
                    r["misses"].append(f"grows no faster ({r['growth']:.0f} B/s) than control {cname} ({cgrowth:.0f} B/s: {cshort})")
    for row in rows:
        if not row["misses"]:
            row["verdict"] = "ok"
        elif all(m.startswith("KNOWN pymalloc-arena") for m in row["misses"]):
            row["verdict"] = "MISS (arena)"
        else:
            row["verdict"] = "MISS"
    return rows


# ---------------------------------------------------------------- output


def fmt_growth(g):
    if g is None:
        return "-"
    if abs(g) >= 1024 * 1024:
        return f"{g / 1048576:.1f} MiB/s"
    if abs(g) >= 1024:
        return f"{g / 1024:.1f} KiB/s"
    return f"{g:.0f} B/s"


def table(rows):
    head = ["python", "scenario", "kind", "req", "top stack (innermost app frame > .. > leaf)", "culprit", "growth", "trend", "holder (census)", "verdict"]
    body = []
    for r in rows:
        culprit = "-" if r["culprit_named"] is None else ("yes" if r["culprit_named"] else "NO")
        top = r["top"] or "(none)"
        if r["top_is_arena"]:
            top += " [arena]"
        body.append(
            [
                r["version"] + (" pm" if r["mode"] == "pymalloc" else ""),
                r["scenario"],
                r["kind"],
                str(r["requests"]),
                top,
                culprit,
                fmt_growth(r["growth"]),
                r["trend"] or "-",
                r["holder"] or "-",
                r["verdict"],
            ]
        )
    widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(head, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)) for b in body]
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(c.replace("|", "\\|") for c in b) + " |" for b in body]
    return "\n".join(lines), "\n".join(md)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--leaktrace", type=Path, default=ROOT / "target" / "release" / "leaktrace")
    ap.add_argument("--versions", help="comma-separated, default: every pyenv 3.8-3.13 with a venv and the sid root's 3.14, 3.15, 3.14-shared, 3.15-shared")
    ap.add_argument("--duration", type=int, default=30)
    ap.add_argument("--interval", type=int, default=2)
    ap.add_argument("--pymalloc", action="store_true", help="trace with --pymalloc (every object counts)")
    ap.add_argument("--rate-scale", type=float, default=1.0, help="scale every endpoint's request rate (and the fewest requests checked)")
    ap.add_argument("--out", type=Path, default=ROOT / "target" / "scenarios")
    args = ap.parse_args()
    if os.geteuid() != 0:
        die("the suite attaches eBPF probes and runs PostgreSQL as `postgres`: run it as root")
    if not args.leaktrace.exists():
        die(f"{args.leaktrace} does not exist: build it first (cargo build --release)")
    if not 10 <= args.duration <= 300 or not 1 <= args.interval <= args.duration // 4:
        die("--duration must be 10..300 s and --interval at most a quarter of it (the trend needs samples)")
    versions = args.versions.split(",") if args.versions else available_versions()
    if not versions:
        die("no CPython found (pyenv 3.8-3.13, or the sid root's 3.14/3.15): run ./dev setup")
    for v in versions:
        if not venv_exists(v):
            die(f"{venv_python(v).parent.parent} is missing: run ./dev setup")
    args.out.mkdir(parents=True, exist_ok=True)
    mode = "pymalloc" if args.pymalloc else "default"
    procs = Procs()
    sid = [v for v in versions if v in SID_VERSIONS]
    if sid:
        # The app and its files must be reachable inside the root too.
        dest = SID_ROOT / "opt" / "leaktrace" / "scenarios"
        dest.mkdir(parents=True, exist_ok=True)
        for f in HERE.glob("*.py"):
            shutil.copy(f, dest / f.name)
        (SID_ROOT / "tmp").mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="leaktrace-scen-", dir=str(SID_ROOT / "tmp") if sid else None))
    tmp.chmod(0o755)
    pg = Postgres(max_connections=POSTGRES_CAP + 60)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    rows = []
    try:
        thumb = build_thumb(tmp)
        sqlite_path = make_sqlite(tmp)
        say(f"starting PostgreSQL on 127.0.0.1:{pg.port} (max_connections {pg.max_connections})")
        pg.start()
        env = {"SCEN_SQLITE": str(sqlite_path), "SCEN_PG_DSN": pg.dsn, "SCEN_THUMB_LIB": str(thumb)}
        for v in versions:
            say(f"Python {v}: tracing for {args.duration} s under load ({mode} mode)")
            report, load_stats = run_version(v, args, env, procs, args.out)
            rows += check(report, load_stats, v, mode, args.rate_scale)
    except KeyboardInterrupt:
        die("interrupted")
    finally:
        procs.stop_all()
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    text, md = table(rows)
    print(text)
    suffix = "-pymalloc" if args.pymalloc else ""
    (args.out / f"results{suffix}.md").write_text(md + "\n")
    (args.out / f"results{suffix}.json").write_text(json.dumps(rows, indent=1) + "\n")
    misses = [r for r in rows if r["misses"]]
    for r in misses:
        for m in r["misses"]:
            print(f"MISS python {r['version']} {r['scenario']}: {m}")
    if any(r["verdict"] == "MISS (arena)" for r in rows):
        print(
            "scenarios: MISS (arena) is a known limitation of the default mode, left failing on purpose: a pymalloc arena "
            "is blamed on whichever allocation grew it, here a control whose arenas stay pinned by small objects that "
            "other endpoints leak (tests/scenarios/README.md, \"pymalloc arenas\")"
        )
    passed = len(rows) - len(misses)
    print(f"scenarios: {passed} passed, {len(misses)} failed")
    sys.exit(1 if misses else 0)


if __name__ == "__main__":
    main()
