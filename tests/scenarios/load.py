"""Bounded load for the scenario app: each endpoint gets its own keep-alive HTTP/1.1 connection
to 127.0.0.1 and a fixed request rate, capped in count and time; it stops by itself. Standard
library only (asyncio streams), so any Python 3.8+ runs it.

usage: python load.py PORT SECONDS [--rate-scale X] [--skip NAME,...] [--json]
Prints one line per endpoint (requests, errors, achieved rate), or a JSON object with --json.
"""
import argparse
import asyncio
import json
import random
import sys
import time
import uuid

# endpoint: (requests per second, most requests in one run, request builder)
# The caps bound what a run can leak (postgres: the cluster's max_connections is set above it).
POSTGRES_CAP = 200


def _event(n):
    body = {
        "event_id": uuid.uuid4().hex,
        "user": f"user-{n % 50}",
        "kind": "checkout",
        "items": [{"sku": f"sku-{n % 97}-{i}", "qty": i + 1} for i in range(8)],
        "attachment": (uuid.uuid4().hex * 96),  # a 3 KiB string
    }
    return ("POST", "/events", {"content-type": "application/json"}, json.dumps(body).encode())


def _order(prefix):
    def build(n):
        # one request in four finds its order (and closes its connection); the rest miss
        order_id = 1 + n % 100 if n % 4 == 0 else 1_000_000 + n
        return ("GET", f"/{prefix}/orders/{order_id}", {}, b"")

    return build


ENDPOINTS = {
    "registry": (10, 2000, _event),
    "sqlite": (5, 1000, _order("sqlite")),
    "postgres": (3, POSTGRES_CAP, _order("postgres")),
    "tasks": (10, 2000, lambda n: ("POST", f"/subscribe/channel-{n}", {}, b"")),
    "depends": (
        10,
        2000,
        lambda n: ("GET", "/profile", {"x-request-id": uuid.uuid4().hex, "x-user": f"user-{n % 50}"}, b""),
    ),
    "c-leak": (10, 2000, lambda n: ("GET", f"/thumbnail/{n}", {}, b"")),
    "lru": (40, 4000, lambda n: ("GET", f"/products/{random.randrange(96)}", {}, b"")),
    "export": (2, 400, lambda n: ("GET", "/export", {}, b"")),
    "sessions": (
        10,
        2000,
        lambda n: ("GET", "/session", {"x-request-id": uuid.uuid4().hex, "x-user": f"user-{n % 50}"}, b""),
    ),
}


async def _read_response(reader):
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("connection closed")
    status = int(status_line.split()[1])
    length = None
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    if length is None:
        raise ValueError("response without content-length")
    await reader.readexactly(length)
    return status


async def _drive(port, name, rate, cap, build, deadline, stats):
    reader = writer = None
    period = 1.0 / rate
    start = time.monotonic()
    n = 0
    while n < cap and time.monotonic() < deadline:
        due = start + n * period
        now = time.monotonic()
        if due > now:
            await asyncio.sleep(min(due - now, deadline - now))
            if time.monotonic() >= deadline:
                break
        method, path, headers, body = build(n)
        n += 1
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            head = [f"{method} {path} HTTP/1.1", f"host: 127.0.0.1:{port}", f"content-length: {len(body)}"]
            head += [f"{k}: {v}" for k, v in headers.items()]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
            await writer.drain()
            status = await asyncio.wait_for(_read_response(reader), timeout=30)
            if status == 200:
                stats["ok"] += 1
            else:
                stats["errors"] += 1
                stats["last_error"] = f"HTTP {status} on {path}"
        except (OSError, ValueError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
            stats["errors"] += 1
            stats["last_error"] = f"{type(e).__name__}: {e}"
            if writer is not None:
                writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()
    stats["seconds"] = time.monotonic() - start


async def run(port, seconds, scale, only=None):
    deadline = time.monotonic() + seconds
    stats = {}
    jobs = []
    for name, (rate, cap, build) in ENDPOINTS.items():
        if only and name not in only:
            continue
        stats[name] = {"ok": 0, "errors": 0, "last_error": None}
        jobs.append(_drive(port, name, rate * scale, cap, build, deadline, stats[name]))
    await asyncio.gather(*jobs)
    return stats


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("seconds", type=float)
    ap.add_argument("--rate-scale", type=float, default=1.0)
    ap.add_argument("--skip", default="", help="endpoints to leave out, comma-separated")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not 0 < args.seconds <= 600:
        sys.exit("load.py: SECONDS must be in (0, 600]")
    skip = set(filter(None, args.skip.split(",")))
    if skip - set(ENDPOINTS):
        sys.exit(f"load.py: unknown endpoint(s) {', '.join(sorted(skip - set(ENDPOINTS)))}")
    only = [n for n in ENDPOINTS if n not in skip]
    stats = asyncio.run(run(args.port, args.seconds, args.rate_scale, only))
    if args.json:
        print(json.dumps(stats))
    else:
        for name, s in stats.items():
            print(f"{name:10} {s['ok']:6} ok {s['errors']:4} errors  {s['ok'] / s['seconds']:.1f}/s  {s['last_error'] or ''}")


if __name__ == "__main__":
    main()
