"""Capacity of the DNS servers the refresh benchmark could use, each measured alone.

    python -m bench.dnscapacity --names 10000 --seconds 5 --reps 3
    python -m bench.dnscapacity --smoke

In one namespace (the server address 192.0.2.53 on ``lo``) a load generator keeps
``--window`` UDP queries in flight (A and AAAA of random names of the zone, with EDNS) for
``--seconds`` and counts answers per second. Servers, in rounds (A B C A B C ...):
``bed`` is the test bed's ``tests.bed.dnsserver`` as the bed runs it (JSON zone, one log
line per query), ``bed-nolog`` the same without the query log, ``fast`` is
``bench.dnsfast``. The load generator is one Python process too: a figure close to its own
ceiling (see the ``fast`` row) means "at least this much".
"""

from __future__ import annotations

import argparse
import json
import random
import select
import socket
import struct
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.common import Netns, Summary, fmt, machine, mmm, py_module, stop, table, wait_line
from bench.dnsfast import qname_wire
from bench.zonegen import parse_ttl, zone

ADDR = "192.0.2.53"
_OPT = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"  # EDNS0, 1232 bytes


def loadgen(server: str, names: int, seconds: float, window: int) -> dict[str, float]:
    """Query ``server`` for ``seconds`` with ``window`` queries in flight; answers/s."""
    rng = random.Random(7)
    questions = [
        qname_wire(f"d{rng.randrange(names)}.bench.example") + struct.pack("!HH", t, 1)
        for t in (1, 28) * 2000
    ]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.connect((server, 53))
    sock.setblocking(False)
    sent = answered = lost = 0
    outstanding = 0
    qid = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        while outstanding < window:
            qid = (qid + 1) & 0xFFFF
            q = questions[qid % len(questions)]
            sock.send(struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 1) + q + _OPT)
            outstanding += 1
            sent += 1
        ready, _, _ = select.select([sock], [], [], 0.5)
        if not ready:
            lost += outstanding
            outstanding = 0
            continue
        while True:
            try:
                sock.recv(4096)
            except BlockingIOError:
                break
            answered += 1
            outstanding -= 1
    sock.close()
    return {"qps": answered / seconds, "sent": sent, "lost": lost}


def bed_zone(names: int, ttl: tuple[int, int], path: Path) -> None:
    """Write the zone as the bed's JSON zone file."""
    records = {
        r.name: {
            "A": {"ttl": r.ttl, "values": [r.v4]},
            "AAAA": {"ttl": r.ttl, "values": [r.v6]},
        }
        for r in zone(names, ttl)
    }
    path.write_text(json.dumps({"records": records}))


def server_argv(kind: str, names: int, ttl: str, tmp: Path) -> list[str]:
    """How to start the server ``kind`` on ADDR."""
    if kind == "fast":
        return py_module("bench.dnsfast", "--listen", ADDR, "--names", str(names), "--ttl", ttl)
    argv = py_module("tests.bed.dnsserver", "--listen", ADDR, "--zone", str(tmp / "zone.json"))
    if kind == "bed":
        argv += ["--log", str(tmp / "queries.jsonl")]
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, measure each server in rounds, print the table."""
    p = argparse.ArgumentParser(prog="python -m bench.dnscapacity", description=__doc__)
    p.add_argument("--names", type=int, default=10000)
    p.add_argument("--ttl", default="1-5")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--smoke", action="store_true", help="1 s per server, 1 round")
    p.add_argument("--loadgen", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.loadgen:
        print(json.dumps(loadgen(ADDR, args.names, args.seconds, args.window)), flush=True)
        return 0
    seconds, reps = (1.0, 1) if args.smoke else (args.seconds, args.reps)
    kinds = ("bed", "bed-nolog", "fast")
    print(f"# DNS server capacity, {reps} rounds of {seconds} s; {machine()}", flush=True)
    qps: dict[str, list[float]] = {k: [] for k in kinds}
    with Netns("d") as ns, tempfile.TemporaryDirectory(prefix="fbn-") as tmpdir:
        tmp = Path(tmpdir)
        ns.ip(f"addr add {ADDR}/32 dev lo")
        bed_zone(args.names, parse_ttl(args.ttl), tmp / "zone.json")
        for rnd in range(reps):
            for kind in kinds:
                srv = ns.spawn(server_argv(kind, args.names, args.ttl, tmp))
                try:
                    wait_line(srv, "ready", 60)
                    gen = py_module(
                        "bench.dnscapacity", "--loadgen", "--names", str(args.names),
                        "--seconds", str(seconds), "--window", str(args.window),
                    )  # fmt: skip
                    out = ns.exec(gen)
                finally:
                    stop(srv)
                r = json.loads(out)
                qps[kind].append(r["qps"])
                print(f"  round {rnd} {kind:<9} {fmt(r['qps'])} answers/s", flush=True)
    fast = Summary.of(qps["fast"])
    rows = []
    for kind in kinds:
        s = Summary.of(qps[kind])
        rows.append([kind, mmm(s), f"{s.med / fast.med:.2f}"])
    print()
    print(f"answers per second, min / median / max, window {args.window}, {args.names} names")
    print()
    print(table(["server", "answers/s", "vs fast"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
