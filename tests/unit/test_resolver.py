"""Unit tests of the DNS resolver (fenced.resolver) against an in-process DNS server."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import socket
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from fenced.resolver import Answer, DnsResolver, FakeResolver

Record = tuple[str, str, int, str]  # owner, type, ttl, rdata


@dataclass
class Zone:
    """What the test server answers: records, rcodes, names to ignore or truncate."""

    records: list[Record] = field(default_factory=list)
    rcodes: dict[str, dns.rcode.Rcode] = field(default_factory=dict)
    type_rcodes: dict[tuple[str, str], dns.rcode.Rcode] = field(default_factory=dict)
    drop: set[str] = field(default_factory=set)
    truncate: set[str] = field(default_factory=set)
    seen: collections.Counter[tuple[str, str, str]] = field(default_factory=collections.Counter)


def _answer(zone: Zone, wire: bytes, transport: str) -> bytes | None:
    query = dns.message.from_wire(wire)
    q = query.question[0]
    name = q.name.to_text(omit_final_dot=True)
    qtype = dns.rdatatype.to_text(q.rdtype)
    zone.seen[(transport, name, qtype)] += 1
    if name in zone.drop:
        return None
    response = dns.message.make_response(query)
    rcode = zone.type_rcodes.get((name, qtype), zone.rcodes.get(name, dns.rcode.NOERROR))
    response.set_rcode(rcode)
    if transport == "udp" and name in zone.truncate:
        response.flags |= dns.flags.TC
        return response.to_wire()
    if rcode in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        for owner, rtype, ttl, rdata in zone.records:
            if rtype in ("CNAME", qtype):
                response.answer.append(dns.rrset.from_text(owner + ".", ttl, "IN", rtype, rdata))
    return response.to_wire(max_size=65535)


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, zone: Zone) -> None:
        self.zone = zone
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = _answer(self.zone, data, "udp")
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


async def _tcp_handler(
    zone: Zone, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
        while True:
            (length,) = struct.unpack("!H", await reader.readexactly(2))
            reply = _answer(zone, await reader.readexactly(length), "tcp")
            if reply is not None:
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def dns_server(zone: Zone, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[int]:
    """Serve ``zone`` on ``host`` (UDP and TCP on one port, random when 0); yield the port."""
    loop = asyncio.get_running_loop()
    for _ in range(20):
        udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(zone), local_addr=(host, port))
        bound = udp.get_extra_info("sockname")[1]
        try:
            tcp = await asyncio.start_server(
                lambda r, w: _tcp_handler(zone, r, w), host, bound, family=socket.AF_INET
            )
        except OSError:
            udp.close()
            if port:
                raise
            continue
        try:
            yield bound
        finally:
            udp.close()
            tcp.close()
        return
    raise RuntimeError("no free port")


def _resolver(port: int, **kw: float) -> DnsResolver:
    return DnsResolver(["127.0.0.1"], port=port, timeout=kw.get("timeout", 1.0), attempts=1)


async def test_a_and_aaaa() -> None:
    """A and AAAA are both asked and merged; ttl is the smaller one."""
    zone = Zone([("web.test", "A", 300, "192.0.2.10"), ("web.test", "AAAA", 120, "2001:db8::10")])
    async with dns_server(zone) as port:
        ans = await _resolver(port).resolve("web.test")
    assert ans.status == "ok"
    assert set(ans.ips) == {
        ipaddress.ip_address("192.0.2.10"),
        ipaddress.ip_address("2001:db8::10"),
    }
    assert ans.ttl == 120


async def test_cname_chain_min_ttl() -> None:
    """CNAME chains are followed and the answer's TTL is the chain's minimum."""
    zone = Zone(
        [
            ("www.test", "CNAME", 600, "edge.test."),
            ("edge.test", "CNAME", 30, "host.cdn.test."),
            ("host.cdn.test", "A", 3600, "198.51.100.5"),
            ("other.test", "A", 3600, "203.0.113.66"),  # not on the chain: ignored
        ]
    )
    async with dns_server(zone) as port:
        ans = await _resolver(port).resolve("www.test")
    assert ans.status == "ok"
    assert ans.ips == (ipaddress.ip_address("198.51.100.5"),)
    assert ans.ttl == 30
    assert ans.cnames == ("edge.test", "host.cdn.test")


async def test_nxdomain() -> None:
    """NXDOMAIN is reported as nxdomain with no addresses."""
    async with dns_server(Zone(rcodes={"gone.test": dns.rcode.NXDOMAIN})) as port:
        ans = await _resolver(port).resolve("gone.test")
    assert (ans.status, ans.ips) == ("nxdomain", ())


async def test_nodata() -> None:
    """A name with neither A nor AAAA records is nodata."""
    zone = Zone([("mx.test", "MX", 60, "10 mail.test.")])
    async with dns_server(zone) as port:
        ans = await _resolver(port).resolve("mx.test")
    assert (ans.status, ans.ips, ans.ttl) == ("nodata", (), None)


async def test_servfail() -> None:
    """SERVFAIL from every server is servfail."""
    async with dns_server(Zone(rcodes={"bad.test": dns.rcode.SERVFAIL})) as port:
        ans = await _resolver(port).resolve("bad.test")
    assert ans.status == "servfail" and ans.failed and "SERVFAIL" in ans.detail


async def test_refused_is_error() -> None:
    """An rcode other than NOERROR, NXDOMAIN, SERVFAIL is an error."""
    async with dns_server(Zone(rcodes={"no.test": dns.rcode.REFUSED})) as port:
        ans = await _resolver(port).resolve("no.test")
    assert ans.status == "error" and "REFUSED" in ans.detail


async def test_next_server_on_failure() -> None:
    """A failing server is skipped for the next one in order; a timeout too."""
    bad = Zone(rcodes={"x.test": dns.rcode.SERVFAIL}, drop={"y.test"})
    good = Zone([("x.test", "A", 60, "192.0.2.7"), ("y.test", "A", 60, "192.0.2.8")])
    async with dns_server(good) as port, dns_server(bad, "127.0.0.2", port):
        r = DnsResolver(["127.0.0.2", "127.0.0.1"], port=port, timeout=0.1, attempts=1)
        x = await r.resolve("x.test")
        y = await r.resolve("y.test")
    assert x.status == "ok" and x.ips == (ipaddress.ip_address("192.0.2.7"),)
    assert y.status == "ok"
    assert bad.seen[("udp", "x.test", "A")] == 1
    assert good.seen[("udp", "x.test", "A")] == 1


async def test_timeout() -> None:
    """A server that never answers gives timeout, within the configured time."""
    async with dns_server(Zone(drop={"slow.test"})) as port:
        start = time.monotonic()
        ans = await _resolver(port, timeout=0.1).resolve("slow.test")
        took = time.monotonic() - start
    assert ans.status == "timeout"
    assert took < 1.0


async def test_truncation_falls_back_to_tcp() -> None:
    """A truncated UDP answer is asked again over TCP."""
    zone = Zone(
        [("big.test", "A", 60, f"192.0.2.{i}") for i in range(1, 101)],
        truncate={"big.test"},
    )
    async with dns_server(zone) as port:
        ans = await _resolver(port).resolve("big.test")
    assert ans.status == "ok" and len(ans.ips) == 100
    assert zone.seen[("udp", "big.test", "A")] == 1
    assert zone.seen[("tcp", "big.test", "A")] == 1


async def test_partial_failure_keeps_answered_family() -> None:
    """When AAAA fails but A answers, the status is the failure and ips hold the A part."""
    zone = Zone(
        [("half.test", "A", 60, "192.0.2.8")],
        type_rcodes={("half.test", "AAAA"): dns.rcode.SERVFAIL},
    )
    async with dns_server(zone) as port:
        ans = await _resolver(port).resolve("half.test")
    assert ans.status == "servfail" and ans.failed
    assert ans.ips == (ipaddress.ip_address("192.0.2.8"),) and ans.ttl == 60


async def test_nxdomain_wins_over_other_type() -> None:
    """NXDOMAIN for either query type makes the answer nxdomain."""
    zone = Zone(
        [("n.test", "A", 60, "192.0.2.9")],
        type_rcodes={("n.test", "AAAA"): dns.rcode.NXDOMAIN},
    )
    async with dns_server(zone) as port:
        ans = await _resolver(port).resolve("n.test")
    assert (ans.status, ans.ips) == ("nxdomain", ())


async def test_cname_to_nothing_is_nodata() -> None:
    """A chain that ends without addresses is nodata, with the chain reported."""
    zone = Zone([("alias.test", "CNAME", 60, "target.test.")])
    async with dns_server(zone) as port:
        ans = await _resolver(port).resolve("alias.test")
    assert (ans.status, ans.cnames) == ("nodata", ("target.test",))


async def test_cname_loop_is_error() -> None:
    """A CNAME loop inside an answer is an error, not a hang."""
    zone = Zone([("l1.test", "CNAME", 60, "l2.test."), ("l2.test", "CNAME", 60, "l1.test.")])
    async with dns_server(zone) as port:
        ans = await _resolver(port).resolve("l1.test")
    assert ans.status == "error" and "loop" in ans.detail


async def test_unreachable_server_is_error_or_timeout() -> None:
    """A port nobody listens on yields a failure status, not an exception."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    ans = await _resolver(port, timeout=0.1).resolve("any.test")
    assert ans.status in ("error", "timeout")


async def test_bad_name_is_error() -> None:
    """A name dnspython cannot encode is an error answer, not an exception."""
    ans = await DnsResolver(["127.0.0.1"], port=9).resolve("a" * 70 + ".test")
    assert ans.status == "error"


def test_answer_helpers() -> None:
    """Answer.ok needs addresses; Answer.fail carries partial addresses."""
    with pytest.raises(ValueError):
        Answer.ok([], 60)
    a = Answer.fail("timeout", "t", ips=["192.0.2.1"], ttl=60)
    assert a.failed and a.ips == (ipaddress.ip_address("192.0.2.1"),)


async def test_fake_resolver_scripts_and_counts() -> None:
    """FakeResolver plays answers in order, repeats the last, counts queries."""
    fake = FakeResolver()
    fake.script("a.test", Answer.ok(["192.0.2.1"], 60), Answer.fail("servfail"))
    assert (await fake.resolve("a.test")).status == "ok"
    assert (await fake.resolve("a.test")).status == "servfail"
    assert (await fake.resolve("a.test")).status == "servfail"
    assert (await fake.resolve("b.test")).status == "nxdomain"
    assert fake.queries == {"a.test": 3, "b.test": 1}
