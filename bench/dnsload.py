"""A DNS load generator for the gateway benchmark: latency or throughput, as one uid.

    python -m bench.dnsload --server 192.0.2.53 --names 1000 --queries 2000 \
        --mode latency|qps [--concurrency 64] [--uid 64500]

Asks for ``d<i>.bench.example`` A records (``i`` cycling over ``--names``), builds the
queries by hand and reads the answers' IDs only, so that the generator itself costs
little. Starts as root, then drops to ``--uid`` (after its imports: the interpreter may
live where that uid cannot read). Prints one JSON line: the latencies' percentiles (ms)
for ``latency`` (one query at a time), or queries per second for ``qps`` (``concurrency``
queries in flight on as many sockets).
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import struct
import time
from collections.abc import Sequence

from bench.common import percentile
from bench.dnsfast import qname_wire

_HEADER = struct.Struct("!HHHHHH")


def query(qid: int, name: str) -> bytes:
    """A recursive A query for ``name`` with ID ``qid`` (no EDNS)."""
    return _HEADER.pack(qid, 0x0100, 1, 0, 0, 0) + qname_wire(name) + b"\x00\x01\x00\x01"


def latency(server: str, names: int, queries: int, timeout: float) -> dict[str, float]:
    """One query at a time; percentiles of the round trip in ms, and the losses."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(timeout)
    sock.connect((server, 53))
    times: list[float] = []
    lost = 0
    for i in range(queries):
        qid = i & 0xFFFF
        wire = query(qid, f"d{i % names}.bench.example")
        t0 = time.perf_counter()
        sock.send(wire)
        try:
            while True:
                data = sock.recv(4096)
                if len(data) >= 2 and struct.unpack_from("!H", data)[0] == qid:
                    break
        except TimeoutError:
            lost += 1
            continue
        times.append((time.perf_counter() - t0) * 1000)
    return {
        "p50_ms": percentile(times, 50),
        "p99_ms": percentile(times, 99),
        "lost": lost,
        "answered": len(times),
    }


def qps(
    server: str, names: int, queries: int, concurrency: int, timeout: float
) -> dict[str, float]:
    """``concurrency`` queries in flight (one socket each); answered queries per second."""
    sel = selectors.DefaultSelector()
    socks = []
    for _ in range(concurrency):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        s.connect((server, 53))
        sel.register(s, selectors.EVENT_READ)
        socks.append(s)
    sent = answered = 0
    pending: dict[socket.socket, tuple[int, float]] = {}
    t0 = time.perf_counter()

    def send(s: socket.socket) -> None:
        nonlocal sent
        qid = sent & 0xFFFF
        s.send(query(qid, f"d{sent % names}.bench.example"))
        pending[s] = (qid, time.perf_counter())
        sent += 1

    for s in socks:
        if sent < queries:
            send(s)
    lost = 0
    while pending:
        events = sel.select(timeout=0.1)
        now = time.perf_counter()
        for key, _ in events:
            ready = key.fileobj
            assert isinstance(ready, socket.socket)
            try:
                data = ready.recv(4096)
            except OSError:
                continue
            if ready in pending and struct.unpack_from("!H", data)[0] == pending[ready][0]:
                del pending[ready]
                answered += 1
                if sent < queries:
                    send(ready)
        for s, (_, started) in list(pending.items()):
            if now - started > timeout:
                del pending[s]
                lost += 1
                if sent < queries:
                    send(s)
    elapsed = time.perf_counter() - t0
    return {"qps": answered / elapsed, "answered": answered, "lost": lost, "seconds": elapsed}


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, drop to the uid, run, print JSON."""
    p = argparse.ArgumentParser(prog="python -m bench.dnsload", description=__doc__)
    p.add_argument("--server", required=True)
    p.add_argument("--names", type=int, default=1000)
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--mode", choices=("latency", "qps"), required=True)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--timeout", type=float, default=2.0)
    p.add_argument("--uid", type=int)
    args = p.parse_args(argv)
    if args.uid is not None:
        os.setgroups([])
        os.setresgid(args.uid, args.uid, args.uid)
        os.setresuid(args.uid, args.uid, args.uid)
    if args.mode == "latency":
        out = latency(args.server, args.names, args.queries, args.timeout)
    else:
        out = qps(args.server, args.names, args.queries, args.concurrency, args.timeout)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
