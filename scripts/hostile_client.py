#!/usr/bin/env python3
"""Hostile LAN clients against a running latchkey, for the hardening figures
(docs/PERFORMANCE.md, "Hardening"). Run by scripts/bench-hardening.sh; prints figures, asserts
nothing. Standard library only; loopback only.

  hostile_client.py logins  PORT PID [--count 60] [--addresses 1]
  hostile_client.py stall   PORT PID [--count 1100]
"""

import argparse
import re
import socket
import sys
import threading
import time


def status_line(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def mib(value):
    return f"{int(value.split()[0]) / 1024:.1f} MiB"


def memory(pid, when):
    s = status_line(pid)
    print(f"  {when}: VmRSS {mib(s['VmRSS'])}, VmHWM (peak) {mib(s['VmHWM'])}", flush=True)


def request(port, raw, source="127.0.0.1", timeout=30.0):
    """One raw HTTP/1.1 exchange; returns (status, body)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    s.sendall(raw)
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    return (int(parts[1]) if len(parts) > 1 else 0), head, body


def login_form(port, source):
    _, head, body = request(
        port, b"GET /login HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n", source
    )
    nonce = re.search(rb"latchkey_login=([^;]+)", head).group(1).decode()
    csrf = re.search(rb'name="csrf" value="([^"]+)"', body).group(1).decode()
    return nonce, csrf


def logins(args):
    sources = [f"127.0.0.{2 + i}" if args.addresses > 1 else "127.0.0.1"
               for i in range(args.addresses)]
    forms = {src: login_form(args.port, src) for src in sources}
    memory(args.pid, "before")
    statuses = []
    lock = threading.Lock()
    start = threading.Barrier(args.count)

    def one(i):
        src = sources[i % len(sources)]
        nonce, csrf = forms[src]
        body = f"password=wrong-{i}&csrf={csrf}".encode()
        raw = (
            b"POST /login HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
            b"content-type: application/x-www-form-urlencoded\r\n"
            + f"cookie: latchkey_login={nonce}\r\ncontent-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        start.wait()
        st, _, _ = request(args.port, raw, src, timeout=120)
        with lock:
            statuses.append(st)

    t0 = time.monotonic()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(args.count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - t0
    counts = {s: statuses.count(s) for s in sorted(set(statuses))}
    print(f"  {args.count} concurrent wrong logins from {len(sources)} address(es) "
          f"in {took:.2f} s: answers {counts} (401 = password checked, 429 = RATE_LIMITED)")
    memory(args.pid, "after")


def stall(args):
    socks = []
    refused = 0
    t0 = time.monotonic()
    for _ in range(args.count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(1.0)
        try:
            s.bind(("127.0.0.1", 0))
            s.connect(("127.0.0.1", args.port))
            s.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
            socks.append(s)
        except OSError:
            refused += 1
            s.close()
    print(f"  opened {len(socks)} half-sent requests from 127.0.0.1 in "
          f"{time.monotonic() - t0:.2f} s ({refused} connects failed)", flush=True)
    print(f"  daemon fds: {len(list_fds(args.pid))}", flush=True)
    t1 = time.monotonic()
    try:
        st, _, _ = request(
            args.port,
            b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            "127.0.0.2",
            timeout=30,
        )
        print(f"  GET /healthz from 127.0.0.2 answered {st} in "
              f"{(time.monotonic() - t1) * 1000:.1f} ms", flush=True)
    except OSError as e:
        print(f"  GET /healthz from 127.0.0.2 failed after "
              f"{time.monotonic() - t1:.1f} s: {e}", flush=True)
    # When is each stalled connection dropped?
    open_socks = set(range(len(socks)))
    for s in socks:
        s.setblocking(False)
    while open_socks and time.monotonic() - t1 < 60:
        for i in list(open_socks):
            try:
                if socks[i].recv(4096) == b"":
                    open_socks.discard(i)
            except BlockingIOError:
                pass
            except OSError:
                open_socks.discard(i)
        time.sleep(0.05)
    print(f"  stalled connections still open {time.monotonic() - t1:.1f} s later: "
          f"{len(open_socks)}")
    for s in socks:
        s.close()


def list_fds(pid):
    import os
    return os.listdir(f"/proc/{pid}/fd")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("logins")
    a.add_argument("port", type=int)
    a.add_argument("pid", type=int)
    a.add_argument("--count", type=int, default=60)
    a.add_argument("--addresses", type=int, default=1)
    b = sub.add_parser("stall")
    b.add_argument("port", type=int)
    b.add_argument("pid", type=int)
    b.add_argument("--count", type=int, default=1100)
    args = p.parse_args()
    {"logins": logins, "stall": stall}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
