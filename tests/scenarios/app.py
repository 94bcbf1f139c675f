"""The leak scenario suite's FastAPI service: one endpoint per way FastAPI services leak, and
two controls that must not be called leaks. Served by uvicorn on 127.0.0.1 only (run.py starts
it); every culprit is a named function of this file so the accuracy report can be checked by
name. See README.md next to this file.

Environment (set by run.py):
  SCEN_SQLITE   path of the SQLite database file (table `orders`)
  SCEN_PG_DSN   libpq connection string of the suite's PostgreSQL cluster (table `orders`)
  SCEN_THUMB_LIB  path of the compiled thumb.c shared library
"""
import asyncio
import collections
import ctypes
import functools
import os
import sqlite3
import time

import psycopg
from fastapi import Depends, FastAPI, Request, Response

app = FastAPI()


@app.get("/health")
def health():
    return {"ok": True}


# 1. A module-level registry that keeps every request's payload ("for replay and debugging"),
#    keyed by the request's id and never trimmed. The JSON body is parsed here, so its objects
#    (a ~3 KiB attachment string, and small dicts/strings) are allocated under this handler.
PAYLOAD_REGISTRY = {}


@app.post("/events")
async def ingest_event(request: Request):
    payload = await request.json()
    PAYLOAD_REGISTRY[payload["event_id"]] = payload
    return {"stored": len(PAYLOAD_REGISTRY)}


# 2. Database connections opened per request and never closed. The connections are tracked
#    in a module-level set so that shutdown could close stragglers (so they stay referenced,
#    as in real code); the handlers return early on "not found" and skip the close.
OPEN_CONNECTIONS = set()


def open_sqlite():
    conn = sqlite3.connect(os.environ["SCEN_SQLITE"], check_same_thread=False)
    OPEN_CONNECTIONS.add(conn)
    return conn


# The last few PostgreSQL connections, open or closed, kept for a debug page (bounded: not a
# leak). The census must tell the closed ones from the open ones.
RECENT_POSTGRES = collections.deque(maxlen=8)


def open_postgres():
    conn = psycopg.connect(os.environ["SCEN_PG_DSN"], autocommit=True)
    OPEN_CONNECTIONS.add(conn)
    RECENT_POSTGRES.append(conn)
    return conn


def close_connection(conn):
    OPEN_CONNECTIONS.discard(conn)
    conn.close()


@app.get("/sqlite/orders/{order_id}")
def sqlite_order(order_id: int):
    conn = open_sqlite()
    row = conn.execute("SELECT id, customer, total FROM orders WHERE id = ?", (order_id,)).fetchone()
    if row is None:
        return {"found": False}  # the connection is never closed on this path
    close_connection(conn)
    return {"found": True, "customer": row[1], "total": row[2]}


@app.get("/postgres/orders/{order_id}")
def postgres_order(order_id: int):
    conn = open_postgres()
    row = conn.execute("SELECT id, customer, total FROM orders WHERE id = %s", (order_id,)).fetchone()
    if row is None:
        return {"found": False}  # the connection is never closed on this path
    close_connection(conn)
    return {"found": True, "customer": row[1], "total": float(row[2])}


# 3. asyncio tasks created per request and kept alive forever: each subscription starts a
#    relay task that waits on an inbox nobody ever feeds; the set that keeps tasks from being
#    garbage-collected (as asyncio's docs advise) never lets go of them.
RELAY_TASKS = set()


async def relay_updates(channel):
    backlog = bytearray(8192)  # per-subscriber buffer, held as long as the task lives
    inbox = asyncio.Queue()
    while True:
        message = await inbox.get()
        backlog[: len(message)] = message


@app.post("/subscribe/{channel}")
async def subscribe(channel: str):
    task = asyncio.create_task(relay_updates(channel))
    RELAY_TASKS.add(task)
    return {"subscribed": channel, "relays": len(RELAY_TASKS)}


# 4. A dependency whose result is cached in a module-level dict keyed by the request id,
#    which is unique per request: a cache that is never hit and never evicts.
CONTEXT_CACHE = {}


def get_request_context(request: Request):
    key = request.headers["x-request-id"]
    context = CONTEXT_CACHE.get(key)
    if context is None:
        user = request.headers.get("x-user", "anonymous")
        context = {
            "user": user,
            "permissions": ",".join(f"{user}:resource-{i}:read" for i in range(96)),
        }
        CONTEXT_CACHE[key] = context
    return context


@app.get("/profile")
def profile(context: dict = Depends(get_request_context)):
    return {"user": context["user"], "permissions": len(context["permissions"])}


# 5. A C-level leak: a native thumbnail routine returns a malloc'd buffer that its Python
#    wrapper copies and never hands back to thumb_free().
_thumb = None


def thumb_lib():
    global _thumb
    if _thumb is None:
        lib = ctypes.CDLL(os.environ["SCEN_THUMB_LIB"])
        lib.thumb_render.restype = ctypes.c_void_p
        lib.thumb_render.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t)]
        lib.thumb_free.argtypes = [ctypes.c_void_p]
        _thumb = lib
    return _thumb


def make_thumbnail(image):
    out_len = ctypes.c_size_t()
    ptr = thumb_lib().thumb_render(image, len(image), ctypes.byref(out_len))
    return ctypes.string_at(ptr, out_len.value)  # thumb_free(ptr) is missing


@app.get("/thumbnail/{image_id}")
def thumbnail(image_id: int):
    image = bytes([image_id % 251]) * 65536
    thumb = make_thumbnail(image)
    return {"image": image_id, "thumbnail_bytes": len(thumb)}


# 6. Control: a bounded LRU cache of rendered pages; it fills to 64 entries (~370 KiB) and stays flat
#    while requests keep missing and evicting.
@functools.lru_cache(maxsize=64)
def render_product_page(product_id):
    return "".join(f"<li>product {product_id} option {i}</li>" for i in range(200))


@app.get("/products/{product_id}")
def product_page(product_id: int):
    return {"product": product_id, "page_bytes": len(render_product_page(product_id))}


# 7. Control: a large export built in memory for each request and freed when it is sent: a
#    high peak, no leak.
@app.get("/export")
def export_report():
    rows = [f"{i},customer-{i % 977},{i * 7 % 10007}.{i % 100:02d}\n" for i in range(30000)]
    body = "".join(rows).encode()
    return Response(content=body, media_type="text/csv")


# 8. Small objects only: per-request session state (a dict of two short strings, an int and a
#    float: each object well under pymalloc's 512-byte threshold) kept in a module-level dict
#    keyed by the request id, which is unique per request. Allocation stacks see only pymalloc
#    arenas grow; the heap census names the holder.
SESSION_STATE = {}


@app.get("/session")
def touch_session(request: Request):
    key = request.headers["x-request-id"]
    SESSION_STATE[key] = {"user": request.headers.get("x-user", "anonymous"), "hits": 1, "seen": time.time()}
    return {"sessions": len(SESSION_STATE)}
