#!/usr/bin/env python3
"""What idle clients cost a gateway (scripts/bench --idle).

Opens N client connections to the gateway; each sends one request and reads its response,
then stays open and silent (kept alive). The gateway's resident memory is read from /proc
before and after: the growth divided by N is the memory an idle kept-alive connection holds.
Then those close, and N others each send half a request head (about 1 KB, no end) and stay,
which is what a slow or hostile client leaves behind.
"""
import argparse
import selectors
import socket
import sys
import time


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def open_clients(port, n, payload, want_response):
    sel = selectors.DefaultSelector()
    socks = []
    pending = {}
    for i in range(n):
        s = socket.socket()
        s.setblocking(True)
        s.connect(("127.0.0.1", port))
        s.sendall(payload)
        socks.append(s)
        if want_response:
            s.setblocking(False)
            pending[s] = b""
            sel.register(s, selectors.EVENT_READ)
        # Keep the accept queue short: read answers as we go.
        if want_response and len(pending) >= 256:
            drain(sel, pending, until=128)
    if want_response:
        drain(sel, pending, until=0)
    return socks


def drain(sel, pending, until):
    deadline = time.time() + 60
    while len(pending) > until:
        if time.time() > deadline:
            sys.exit(f"idle-clients: {len(pending)} responses never came")
        for key, _ in sel.select(timeout=1):
            s = key.fileobj
            data = s.recv(65536)
            if not data:
                sys.exit("idle-clients: the gateway closed a kept-alive connection")
            pending[s] += data
            got = pending[s]
            end = got.find(b"\r\n\r\n")
            if end < 0:
                continue
            length = 0
            for line in got[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if len(got) >= end + 4 + length:
                if not got.startswith(b"HTTP/1.1 200"):
                    sys.exit("idle-clients: " + got.split(b"\r\n")[0].decode())
                sel.unregister(s)
                del pending[s]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--clients", type=int, default=10000)
    p.add_argument("--name", default="gateway")
    p.add_argument("--path", default="/proxy/hello")
    a = p.parse_args()
    request = f"GET {a.path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    # Warm-up: the first requests' allocations (pools, buffers) are not the connections'.
    warm = open_clients(a.port, 64, request, True)
    for s in warm:
        s.close()
    time.sleep(1)
    measure(a, "idle kept-alive clients", request, True)
    half = b"GET " + a.path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 1000
    measure(a, "clients with half a head (1 KB), after those left", half, False)


def measure(a, what, payload, want_response):
    """Opens the clients, prints the RSS they added per connection, and closes them."""
    before = rss_kb(a.pid)
    clients = open_clients(a.port, a.clients, payload, want_response)
    time.sleep(2)
    after = rss_kb(a.pid)
    per = (after - before) * 1024 / a.clients
    print(f"{a.name}: {a.clients} {what}: RSS {before / 1024:.1f} -> {after / 1024:.1f} MB, {per:.0f} bytes a connection")
    for s in clients:
        s.close()
    time.sleep(2)

if __name__ == "__main__":
    main()
