"""Bounded HTTP load for the demo: GETs on 127.0.0.1 only, stops by itself.

usage: python load.py PORT SECONDS
"""
import http.client
import sys
import time


def main():
    port, seconds = int(sys.argv[1]), float(sys.argv[2])
    deadline = time.monotonic() + seconds
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    done = 0
    while time.monotonic() < deadline:
        path = "/items/50" if done % 2 == 0 else "/health"
        conn.request("GET", path)
        conn.getresponse().read()
        done += 1
    print(f"load: {done} requests in {seconds:.0f} s", flush=True)


if __name__ == "__main__":
    main()
