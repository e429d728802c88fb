"""A bench-only authoritative DNS server: precomputed wire answers in a dict, one UDP loop.

    python -m bench.dnsfast --listen 192.0.2.53 --names 10000 --ttl 1-5 [--seed 1]

Serves the zone of ``bench.zonegen`` over UDP only. Each (qname, qtype, qclass) of the
zone maps to its answer records in wire form; a query costs one label walk, one
``bytes.lower``, one dict look-up and one concatenation. Unknown names get NXDOMAIN,
other types NODATA. Prints ``ready`` once bound; on SIGTERM prints the number of queries
answered as JSON and exits. It exists because the test bed's server (dnspython, a log
line per query) tops out far below what the refresh engine asks at 10k names.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import signal
import socket
import struct
import sys
from collections.abc import Sequence
from types import FrameType

from bench.zonegen import parse_ttl, zone

_QTYPE_A = 1
_QTYPE_AAAA = 28


def qname_wire(name: str) -> bytes:
    """The wire form of ``name`` (lower case, no compression)."""
    out = b""
    for label in name.lower().rstrip(".").split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def build_answers(names: int, ttl: tuple[int, int], seed: int) -> dict[bytes, tuple[int, bytes]]:
    """(qname wire + qtype + qclass) -> (answer count, answer records), for A and AAAA."""
    table: dict[bytes, tuple[int, bytes]] = {}
    for r in zone(names, ttl, seed):
        q = qname_wire(r.name)
        for qtype, rdata in (
            (_QTYPE_A, ipaddress.IPv4Address(r.v4).packed),
            (_QTYPE_AAAA, ipaddress.IPv6Address(r.v6).packed),
        ):
            # owner = pointer to the question's name at offset 12
            rr = struct.pack("!HHHIH", 0xC00C, qtype, 1, r.ttl, len(rdata)) + rdata
            table[q + struct.pack("!HH", qtype, 1)] = (1, rr)
        # Names exist: other types are NODATA (known owner names).
        table[q] = (0, b"")
    return table


def answer(table: dict[bytes, tuple[int, bytes]], wire: bytes) -> bytes | None:
    """The response to the query ``wire`` (None for garbage)."""
    if len(wire) < 17:
        return None
    pos = 12
    n = len(wire)
    while pos < n:
        ln = wire[pos]
        if ln == 0:
            break
        pos += ln + 1
    end = pos + 5
    if end > n:
        return None
    question = wire[12:end]
    key = question.lower()
    rd = wire[2] & 0x01
    hit = table.get(key)
    if hit is not None:
        ancount, rrs = hit
        flags = 0x84 | rd, 0x00
    elif key[:-4] in table:
        ancount, rrs, flags = 0, b"", (0x84 | rd, 0x00)
    else:
        ancount, rrs, flags = 0, b"", (0x84 | rd, 0x03)  # NXDOMAIN
    return wire[:2] + bytes(flags) + struct.pack("!HHHH", 1, ancount, 0, 0) + question + rrs


def serve(listen: str, port: int, table: dict[bytes, tuple[int, bytes]]) -> int:
    """Answer on ``listen:port`` until SIGTERM/SIGINT; return the number of answers."""
    family = socket.AF_INET6 if ":" in listen else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    sock.bind((listen, port))
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        sock.close()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print("ready", flush=True)
    served = 0
    recvfrom, sendto = sock.recvfrom, sock.sendto
    while not stopping:
        try:
            wire, addr = recvfrom(4096)
        except OSError:
            break
        out = answer(table, wire)
        if out is not None:
            try:
                sendto(out, addr)
                served += 1
            except OSError:
                if stopping:
                    break
    return served


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, build the answers, serve."""
    p = argparse.ArgumentParser(prog="python -m bench.dnsfast", description=__doc__)
    p.add_argument("--listen", required=True)
    p.add_argument("--port", type=int, default=53)
    p.add_argument("--names", type=int, required=True)
    p.add_argument("--ttl", default="1-5")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    table = build_answers(args.names, parse_ttl(args.ttl), args.seed)
    served = serve(args.listen, args.port, table)
    print(json.dumps({"answered": served}), flush=True)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
