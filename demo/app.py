"""A small FastAPI service with a leak, for leaktrace's demo.

`GET /items/{n}` builds a response and, by mistake, keeps every request's payload in a
module-level "audit log" that is never trimmed. `GET /health` allocates and frees only.
`GET /catalog` returns 200 items as JSON and keeps nothing (bench/run's larger endpoint).
Run: uvicorn app:app --host 127.0.0.1 --port 8731
"""
import os

from fastapi import FastAPI

app = FastAPI()

AUDIT_LOG = []  # grows forever: the leak


def remember(payload):
    AUDIT_LOG.append(payload)


@app.get("/items/{n}")
def get_items(n: int):
    items = [{"id": i, "name": f"item-{i}", "blob": os.urandom(64).hex()} for i in range(n)]
    remember(bytes(4096) + str(items).encode())
    return {"count": len(items), "items": items[:3]}


@app.get("/health")
def health():
    scratch = [bytes(1024) for _ in range(16)]
    return {"ok": True, "scratch": len(scratch)}


@app.get("/catalog")
def catalog():
    items = [{"id": i, "name": f"item-{i}", "price": i * 0.25, "tags": ["a", "b"]} for i in range(200)]
    return {"count": len(items), "items": items}
