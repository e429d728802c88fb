"""A small authoritative DNS server for the test bed (UDP and TCP, asyncio + dnspython).

Run inside the server namespace::

    python -m tests.bed.dnsserver --listen 192.0.2.53 --listen 2001:db8:53::53 \
        --zone ZONE.json --log QUERIES.jsonl
    python -m tests.bed.dnsserver --listen 198.51.100.53 --rogue 203.0.113.99 --log ROGUE.jsonl

It prints ``ready`` on stdout once every socket is bound. In zone mode it answers from the
JSON zone (see ``tests.bed.zone``), re-read whenever the file's inode, size or mtime
changes. In rogue mode it answers every A query with the given address (and other types
with NOERROR/NODATA). Each query is appended to the log as one JSON line at receipt.

UDP answers larger than 512 bytes (or the client's EDNS size) are sent empty with TC set;
TCP carries the full answer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any, cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.rrset

from tests.bed.zone import DEFAULT_NEGATIVE_TTL, empty_zone

MAX_CHAIN = 8
#: Malformed or hostile answers a zone can ask for (``Zone.garbage``).
GARBAGE_MODES = ("random", "truncated", "bad_rdata", "cname_loop", "other_name", "wrong_id")
#: The address ``other_name`` garbage offers for a name the query did not ask about.
GARBAGE_OTHER_ADDRESS = "203.0.113.10"
SOA_TEXT = "ns.bed. hostmaster.bed. 1 3600 600 86400 {minimum}"


class ZoneFile:
    """The zone as last read from disk, reloaded when the file changes."""

    def __init__(self, path: Path | None) -> None:
        """Serve ``path`` (None: an empty zone)."""
        self.path = path
        self._key: tuple[int, int, int] | None = None
        self.data: dict[str, Any] = empty_zone()
        self.counters: dict[tuple[str, str], int] = {}

    def current(self) -> dict[str, Any]:
        """Return the zone document, re-reading the file if it changed since the last call."""
        if self.path is None:
            return self.data
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._key, self.data = None, empty_zone()
            return self.data
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        if key != self._key:
            try:
                loaded = json.loads(self.path.read_text())
            except (OSError, json.JSONDecodeError) as e:
                print(f"zone reload failed: {e}", file=sys.stderr, flush=True)
            else:
                self.data = {**empty_zone(), **loaded}
                self._key = key
        return self.data

    def types_at(self, zone: dict[str, Any], name: str) -> set[str]:
        """Return the record types present at ``name`` (records and rotations)."""
        return set(zone["records"].get(name, {})) | set(zone["rotate"].get(name, {}))

    def values(self, zone: dict[str, Any], name: str, rtype: str) -> tuple[int, list[str]]:
        """Return ``(ttl, values)`` for ``name``/``rtype``; a rotation advances its counter."""
        rot = zone["rotate"].get(name, {}).get(rtype)
        if rot is not None:
            pool: list[str] = rot["pool"]
            per: int = rot["per_query"]
            k = self.counters.get((name, rtype), 0)
            self.counters[(name, rtype)] = k + 1
            return int(rot["ttl"]), [pool[(k * per + i) % len(pool)] for i in range(per)]
        rec = zone["records"][name][rtype]
        return int(rec["ttl"]), list(rec["values"])


def _rrset(name: str, rtype: str, ttl: int, values: list[str]) -> dns.rrset.RRset:
    owner = dns.name.from_text(name)
    rdtype = dns.rdatatype.from_text(rtype)
    rdatas: list[dns.rdata.Rdata] = []
    for v in values:
        if rtype == "TXT":
            raw = v.encode()
            chunks = [raw[i : i + 255] for i in range(0, len(raw), 255)] or [b""]
            rdatas.append(dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, rdtype, chunks))
        elif rtype == "CNAME":
            rdatas.append(dns.rdata.from_text(dns.rdataclass.IN, rdtype, v + "."))
        else:
            rdatas.append(dns.rdata.from_text(dns.rdataclass.IN, rdtype, v))
    return dns.rrset.from_rdata_list(owner, ttl, rdatas)


class Server:
    """Answers DNS messages from a ``ZoneFile`` (or as the rogue server) and logs queries."""

    def __init__(self, zone: ZoneFile, log: Path | None, rogue: str | None) -> None:
        """Answer from ``zone``; log to ``log``; in rogue mode answer A with ``rogue``."""
        self.zone = zone
        self.log = log
        self.rogue = rogue

    def _log(self, q: dns.message.Message, transport: str, client: str) -> None:
        if self.log is None or not q.question:
            return
        rr = q.question[0]
        rec = {
            "name": rr.name.to_text(omit_final_dot=True).lower() or ".",
            "type": dns.rdatatype.to_text(rr.rdtype),
            "transport": transport,
            "client": client,
            "t": time.time(),
        }
        fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(rec) + "\n").encode())
        finally:
            os.close(fd)

    async def answer(self, wire: bytes, transport: str, client: str) -> bytes | None:
        """Return the wire answer to the query ``wire``, or None to stay silent."""
        try:
            q = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        self._log(q, transport, client)
        r = dns.message.make_response(q, recursion_available=True)
        r.flags |= dns.flags.AA
        if len(q.question) != 1:
            r.set_rcode(dns.rcode.FORMERR)
        elif self.rogue is not None:
            rr = q.question[0]
            if rr.rdtype == dns.rdatatype.A:
                r.answer.append(_rrset(rr.name.to_text(omit_final_dot=True), "A", 60, [self.rogue]))
        else:
            mode = self._garbage_mode(q)
            if mode is not None:
                return await self._garbage(q, r, mode, transport)
            silent = await self._from_zone(q, r)
            if silent:
                return None
        return self._render(q, r, transport)

    def _garbage_mode(self, q: dns.message.Message) -> str | None:
        garbage = self.zone.current().get("garbage") or {}
        name = q.question[0].name.to_text(omit_final_dot=True).lower()
        mode = garbage.get(name)
        return str(mode) if mode is not None else None

    async def _garbage(
        self, q: dns.message.Message, r: dns.message.Message, mode: str, transport: str
    ) -> bytes:
        """A malformed or hostile answer to ``q`` (see ``Zone.garbage``)."""
        rr = q.question[0]
        name = rr.name.to_text(omit_final_dot=True)
        if mode == "random":
            return q.id.to_bytes(2, "big") + b"\x81\x80" + os.urandom(secrets.randbelow(200) + 1)
        if mode == "bad_rdata":
            head = struct.pack("!HHHHHH", q.id, 0x8180, 1, 1, 0, 0)
            question = q.to_wire()[12:]
            if q.edns >= 0:  # drop the OPT record: only the question follows the header
                question = question[: len(rr.name.to_wire() or b"") + 4]
            answer = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 5) + b"\xc6\x33\x64\x0a\x00"
            return head + question + answer
        if mode == "cname_loop":
            loop = f"loop.{name}"
            r.answer.append(_rrset(name, "CNAME", 60, [loop]))
            r.answer.append(_rrset(loop, "CNAME", 60, [name]))
            return self._render(q, r, transport)
        if mode == "other_name":
            if rr.rdtype == dns.rdatatype.A:
                r.answer.append(_rrset(f"other.{name}", "A", 60, [GARBAGE_OTHER_ADDRESS]))
            return self._render(q, r, transport)
        await self._from_zone(q, r)
        wire = self._render(q, r, transport)
        if mode == "truncated":
            return wire[: max(len(wire) // 2, 13)]
        if mode == "wrong_id":
            return ((q.id + 1) & 0xFFFF).to_bytes(2, "big") + wire[2:]
        raise ValueError(f"unknown garbage mode {mode!r} (one of {GARBAGE_MODES})")

    async def _from_zone(self, q: dns.message.Message, r: dns.message.Message) -> bool:
        """Fill ``r`` from the zone; return True if the query must not be answered."""
        zone = self.zone.current()
        if zone.get("blackhole"):
            return True
        rr = q.question[0]
        qtype = dns.rdatatype.to_text(rr.rdtype)
        name = rr.name.to_text(omit_final_dot=True).lower()
        # Walk the CNAME chain first to know which names the answer involves.
        chain = [name]
        while len(chain) <= MAX_CHAIN:
            types = self.zone.types_at(zone, chain[-1])
            if "CNAME" not in types or qtype in ("CNAME", "ANY"):
                break
            target = zone["records"][chain[-1]]["CNAME"]["values"][0]
            if target in chain:
                break
            chain.append(target)
        if any(n in zone["drop"] for n in chain):
            return True
        delay = max((float(zone["delay"].get(n, 0)) for n in chain), default=0.0)
        if delay > 0:
            await asyncio.sleep(delay)
        if any(n in zone["servfail"] for n in chain):
            r.set_rcode(dns.rcode.SERVFAIL)
            return False
        final = chain[-1]
        for n in chain[:-1]:
            ttl, vals = self.zone.values(zone, n, "CNAME")
            r.answer.append(_rrset(n, "CNAME", ttl, vals))
        types = self.zone.types_at(zone, final)
        if not types:
            r.set_rcode(dns.rcode.NXDOMAIN)
        wanted = sorted(types) if qtype == "ANY" else [qtype] if qtype in types else []
        for t in wanted:
            ttl, vals = self.zone.values(zone, final, t)
            r.answer.append(_rrset(final, t, ttl, vals))
        if not wanted:
            minimum = int(zone.get("negative_ttl", DEFAULT_NEGATIVE_TTL))
            soa = dns.rrset.from_text(".", minimum, "IN", "SOA", SOA_TEXT.format(minimum=minimum))
            r.authority.append(soa)
        return False

    @staticmethod
    def _render(q: dns.message.Message, r: dns.message.Message, transport: str) -> bytes:
        if transport == "tcp":
            return r.to_wire(max_size=65535)
        limit = max(512, q.payload) if q.edns >= 0 else 512
        try:
            return r.to_wire(max_size=limit)
        except dns.exception.TooBig:
            r.answer.clear()
            r.authority.clear()
            r.additional.clear()
            r.flags |= dns.flags.TC
            return r.to_wire(max_size=limit)


class UdpProtocol(asyncio.DatagramProtocol):
    """Serves DNS over one UDP socket."""

    def __init__(self, server: Server) -> None:
        """Answer with ``server``."""
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport."""
        # (In 3.11 the selector transport does not subclass DatagramTransport.)
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        """Answer in a task (so a delayed answer does not block the others)."""
        task = asyncio.get_running_loop().create_task(self._reply(data, addr))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _reply(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        out = await self.server.answer(data, "udp", str(addr[0]))
        if out is not None and self.transport is not None:
            self.transport.sendto(out, addr)


async def _tcp_client(
    server: Server, reader: asyncio.StreamReader, w: asyncio.StreamWriter
) -> None:
    peer = w.get_extra_info("peername")
    client = str(peer[0]) if peer else "?"
    try:
        while True:
            try:
                head = await reader.readexactly(2)
                wire = await reader.readexactly(struct.unpack("!H", head)[0])
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            out = await server.answer(wire, "tcp", client)
            if out is not None:
                w.write(struct.pack("!H", len(out)) + out)
                await w.drain()
    finally:
        w.close()
        with contextlib.suppress(Exception):
            await w.wait_closed()


async def serve(addresses: list[str], port: int, server: Server) -> None:
    """Bind UDP and TCP on every address, print ``ready``, then serve until cancelled."""
    loop = asyncio.get_running_loop()
    transports: list[asyncio.BaseTransport] = []
    tcp_servers: list[asyncio.Server] = []
    for addr in addresses:
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        t, _ = await loop.create_datagram_endpoint(
            lambda: UdpProtocol(server), local_addr=(addr, port), family=family
        )
        transports.append(t)
        tcp_servers.append(
            await asyncio.start_server(
                lambda r, w: _tcp_client(server, r, w), host=addr, port=port, family=family
            )
        )
    print("ready", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for tr in transports:
        tr.close()
    for s in tcp_servers:
        s.close()


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and serve until SIGTERM."""
    p = argparse.ArgumentParser(prog="python -m tests.bed.dnsserver", description=__doc__)
    p.add_argument("--listen", action="append", required=True, help="address (repeatable)")
    p.add_argument("--port", type=int, default=53)
    p.add_argument("--zone", type=Path, help="JSON zone file (zone mode)")
    p.add_argument("--log", type=Path, help="query log (JSON lines)")
    p.add_argument("--rogue", metavar="ADDR", help="answer every A query with ADDR")
    args = p.parse_args(argv)
    if (args.zone is None) == (args.rogue is None):
        p.error("give exactly one of --zone and --rogue")
    server = Server(ZoneFile(args.zone), args.log, args.rogue)
    asyncio.run(serve(args.listen, args.port, server))
    return 0


if __name__ == "__main__":
    sys.exit(main())
