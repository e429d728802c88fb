"""Unit tests of the DNS resolver (fenced.dns.resolver, its answers, wire reader and sockets)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fenced.dns.answers import Answer, Part, combine, judge
from fenced.dns.exchange import UdpSocket
from fenced.dns.resolver import DnsResolver, FakeResolver
from fenced.dns.wire import fast_parse

Record = tuple[str, str, int, str]  # owner, type, ttl, rdata


@dataclass
class Zone:
    """What the test server answers: records, rcodes, names to ignore or truncate."""

    records: list[Record] = field(default_factory=list)
    rcodes: dict[str, dns.rcode.Rcode] = field(default_factory=dict)
    type_rcodes: dict[tuple[str, str], dns.rcode.Rcode] = field(default_factory=dict)
    drop: set[str] = field(default_factory=set)
    truncate: set[str] = field(default_factory=set)
    #: SOA (TTL, MINIMUM) put in the authority section of negative answers (None: no SOA).
    soa: tuple[int, int] | None = None
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
        negative = rcode == dns.rcode.NXDOMAIN or not any(
            r.rdtype == q.rdtype and r.name == q.name for r in response.answer
        )
        if zone.soa is not None and negative:
            soa = f"ns.test. admin.test. 1 7200 900 1209600 {zone.soa[1]}"
            response.authority.append(dns.rrset.from_text("test.", zone.soa[0], "IN", "SOA", soa))
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


# ------------------------------------------------------------------------------ fast path


def _response(
    qname: str,
    qtype: str,
    answer: list[Record] = (),  # type: ignore[assignment]
    *,
    rcode: dns.rcode.Rcode = dns.rcode.NOERROR,
    authority: list[Record] = (),  # type: ignore[assignment]
    additional: list[Record] = (),  # type: ignore[assignment]
    edns: bool = True,
) -> tuple[bytes, bytes]:
    """A dnspython-built response (compressed) and the question it answers, in wire form."""
    query = dns.message.make_query(qname, qtype, use_edns=0 if edns else None, payload=1232)
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    for section, records in (
        (response.answer, answer),
        (response.authority, authority),
        (response.additional, additional),
    ):
        for owner, rtype, ttl, rdata in records:
            rrset = dns.rrset.from_text(owner, ttl, "IN", rtype, rdata)
            for old in section:
                if old.name == rrset.name and old.rdtype == rrset.rdtype:
                    for rd in rrset:
                        old.add(rd, ttl)
                    break
            else:
                section.append(rrset)
    return response.to_wire(), _question(qname, qtype)


def _question(qname: str, qtype: str) -> bytes:
    wire = dns.name.from_text(qname).to_wire()
    assert wire is not None
    return wire + struct.pack("!HH", dns.rdatatype.from_text(qtype), 1)


def _dnspython_part(wire: bytes, qname: str, qtype: str) -> Part:
    return judge(
        dns.message.from_wire(wire), dns.name.from_text(qname), dns.rdatatype.from_text(qtype)
    )


SOA = ("test.", "SOA", 300, "ns.test. admin.test. 1 7200 900 1209600 60")
SOA_LOW_MIN = ("test.", "SOA", 30, "ns.test. admin.test. 1 7200 900 1209600 4294967295")
SOA_HUGE_TTL = ("test.", "SOA", 2**31, "ns.test. admin.test. 1 7200 900 1209600 7")
CHAIN = [
    ("www.test.", "CNAME", 600, "Edge.test."),
    ("edge.TEST.", "CNAME", 30, "host.cdn.test."),
    ("host.cdn.test.", "A", 3600, "198.51.100.5"),
    ("host.cdn.test.", "A", 100, "198.51.100.6"),
    ("host.cdn.test.", "AAAA", 50, "2001:db8::5"),
    ("other.test.", "A", 3600, "203.0.113.66"),
]
FAST_CASES: list[tuple[str, str, dict[str, object]]] = [
    ("web.test", "A", {"answer": [("web.test.", "A", 300, "192.0.2.10")]}),
    ("web.test", "AAAA", {"answer": [("web.test.", "AAAA", 120, "2001:db8::10")]}),
    ("many.test", "A", {"answer": [("many.test.", "A", 60, f"192.0.2.{i}") for i in range(9)]}),
    ("dup.test", "A", {"answer": [("dup.test.", "A", 60, "192.0.2.1")] * 2}),
    ("www.test", "A", {"answer": CHAIN}),
    ("www.test", "AAAA", {"answer": CHAIN}),
    ("WWW.Test", "A", {"answer": CHAIN}),
    ("gone.test", "A", {"rcode": dns.rcode.NXDOMAIN, "authority": [SOA]}),
    ("gone.test", "AAAA", {"rcode": dns.rcode.NXDOMAIN, "authority": [SOA_LOW_MIN]}),
    ("gone.test", "A", {"rcode": dns.rcode.NXDOMAIN, "authority": [SOA_HUGE_TTL]}),
    (
        "www.test",
        "A",
        {
            "rcode": dns.rcode.NXDOMAIN,
            "answer": [("www.test.", "CNAME", 9, "gone.test.")],
            "authority": [SOA],
        },
    ),
    (
        "alias.test",
        "AAAA",
        {"answer": [("alias.test.", "CNAME", 600, "target.test.")], "authority": [SOA]},
    ),
    ("gone.test", "AAAA", {"rcode": dns.rcode.NXDOMAIN}),
    ("mx.test", "A", {"authority": [SOA]}),
    ("mx.test", "AAAA", {"edns": False}),
    ("alias.test", "A", {"answer": [("alias.test.", "CNAME", 60, "target.test.")]}),
    (
        "l1.test",
        "A",
        {"answer": [("l1.test.", "CNAME", 60, "l2.test."), ("l2.test.", "CNAME", 9, "l1.test.")]},
    ),
    (
        "c0.test",
        "A",
        {"answer": [(f"c{i}.test.", "CNAME", 60 - i, f"c{i + 1}.test.") for i in range(20)]},
    ),
    (
        "v4only.test",
        "AAAA",
        {"answer": [("v4only.test.", "A", 60, "192.0.2.3")], "authority": [SOA]},
    ),
    (
        "glue.test",
        "A",
        {
            "answer": [("glue.test.", "A", 60, "192.0.2.4")],
            "authority": [("test.", "NS", 60, "ns.test.")],
            "additional": [("ns.test.", "A", 60, "192.0.2.53"), ("ns.test.", "AAAA", 60, "::1")],
        },
    ),
]


@pytest.mark.parametrize(("qname", "qtype", "kw"), FAST_CASES)
def test_fast_parse_matches_dnspython(qname: str, qtype: str, kw: dict[str, object]) -> None:
    """The hand parser gives the very outcome dnspython's parse + judge gives."""
    wire, question = _response(qname, qtype, **kw)  # type: ignore[arg-type]
    fast = fast_parse(wire, question, dns.rdatatype.from_text(qtype))
    assert fast is not None
    assert fast == _dnspython_part(wire, qname, qtype)


@pytest.mark.parametrize(
    ("kw", "negative"),
    [
        ({"rcode": dns.rcode.NXDOMAIN, "authority": [SOA]}, 60),  # MINIMUM < TTL
        ({"rcode": dns.rcode.NXDOMAIN, "authority": [SOA_LOW_MIN]}, 30),  # TTL < MINIMUM
        ({"rcode": dns.rcode.NXDOMAIN, "authority": [SOA_HUGE_TTL]}, 0),  # TTL >= 2^31 is 0
        ({"rcode": dns.rcode.NXDOMAIN}, None),  # no SOA
        ({"authority": [SOA]}, 60),  # NODATA
        ({"answer": [("gone.test.", "CNAME", 9, "x.test.")], "authority": [SOA]}, 9),
    ],
)
def test_negative_ttl_on_both_paths(kw: dict[str, object], negative: int | None) -> None:
    """Both parsers read RFC 2308's negative TTL: min(SOA TTL, MINIMUM, CNAME TTLs)."""
    wire, question = _response("gone.test", "A", **kw)  # type: ignore[arg-type]
    fast = fast_parse(wire, question, 1)
    slow = _dnspython_part(wire, "gone.test", "A")
    assert fast is not None and fast.status in ("nxdomain", "nodata")
    assert fast.negative_ttl == slow.negative_ttl == negative


def test_fast_parse_sees_compression() -> None:
    """The CHAIN answer really is compressed (pointers into the question and records)."""
    wire, question = _response("www.test", "A", CHAIN)
    assert wire.count(b"\xc0") >= 4
    part = fast_parse(wire, question, 1)
    assert part is not None and (part.status, part.ttl) == ("ok", 30)
    assert part.cnames == ("Edge.test", "host.cdn.test")
    assert set(part.ips) == {
        ipaddress.ip_address("198.51.100.5"),
        ipaddress.ip_address("198.51.100.6"),
    }


@pytest.mark.parametrize(
    "mangle",
    [
        lambda w: w[:2] + bytes([w[2] | 0x02]) + w[3:],  # TC
        lambda w: w[:3] + bytes([(w[3] & 0xF0) | 2]) + w[4:],  # SERVFAIL
        lambda w: w[:3] + bytes([(w[3] & 0xF0) | 5]) + w[4:],  # REFUSED
        lambda w: w[:2] + bytes([w[2] & 0x7F]) + w[3:],  # not a response
        lambda w: w[:-1],  # cut short
        lambda w: w + b"\0",  # trailing junk
        lambda w: w[:12] + b"\x03wwx" + w[16:],  # another question
        lambda w: w[:26] + b"\xc0\xff" + w[28:],  # a forward pointer as first owner
    ],
)
def test_fast_parse_declines(mangle: object) -> None:
    """Anything but a plain, well-formed NOERROR/NXDOMAIN answer goes to dnspython."""
    wire, question = _response("www.test", "A", CHAIN)
    assert callable(mangle)
    assert fast_parse(mangle(wire), question, 1) is None


def test_fast_parse_declines_other_types() -> None:
    """Record types the hand parser does not know (DNAME, TXT...) go to dnspython."""
    wire, question = _response(
        "www.test", "A", [("www.test.", "TXT", 60, '"x"'), ("www.test.", "A", 60, "192.0.2.1")]
    )
    assert fast_parse(wire, question, 1) is None
    assert _dnspython_part(wire, "www.test", "A").ips == (ipaddress.ip_address("192.0.2.1"),)


def test_fast_parse_declines_two_soas() -> None:
    """Two SOAs in the authority section go to dnspython (it keeps one per owner)."""
    two = [SOA, ("other.", "SOA", 20, "ns.test. admin.test. 2 7200 900 1209600 3")]
    wire, question = _response("gone.test", "A", rcode=dns.rcode.NXDOMAIN, authority=two)
    assert fast_parse(wire, question, 1) is None
    assert _dnspython_part(wire, "gone.test", "A") == Part("nxdomain", negative_ttl=3)


def test_pointer_loop_declines() -> None:
    """A compression pointer to itself (a loop) is malformed, not a hang."""
    wire, question = _response("web.test", "A", [("web.test.", "A", 60, "192.0.2.1")])
    qend = 12 + len(question)
    looped = wire[:qend] + struct.pack("!H", 0xC000 | qend) + wire[qend + 2 :]
    assert fast_parse(looped, question, 1) is None


def _mutations() -> st.SearchStrategy[bytes]:
    bases = [_response(q, t, **kw)[0] for q, t, kw in FAST_CASES]  # type: ignore[arg-type]
    edits = st.lists(st.tuples(st.integers(0, 600), st.integers(0, 255)), max_size=4)

    def mutate(base: bytes, changes: list[tuple[int, int]], cut: int) -> bytes:
        b = bytearray(base)
        for pos, val in changes:
            if pos < len(b):
                b[pos] = val
        return bytes(b[: len(b) - cut]) if cut < len(b) else bytes(b)

    return st.one_of(
        st.binary(max_size=600),
        st.builds(mutate, st.sampled_from(bases), edits, st.integers(0, 3)),
    )


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutations(), st.sampled_from(FAST_CASES))
def test_fast_parse_random_bytes(wire: bytes, case: tuple[str, str, object]) -> None:
    """Random or mangled answers never raise; accepted ones read as dnspython reads them.

    What the hand parser accepts, dnspython parses too and reads the same, so no address
    comes from a malformed answer.
    """
    qname, qtype, _kw = case
    question = _question(qname, qtype)
    wire = wire[:12] + question + wire[12 + len(question) :] if len(wire) > 12 else wire
    fast = fast_parse(wire, question, dns.rdatatype.from_text(qtype))
    if fast is not None:
        assert fast == _dnspython_part(wire, qname, qtype)
    sock = UdpSocket()
    loop = asyncio.new_event_loop()
    try:
        fut: asyncio.Future[bytes] = loop.create_future()
        sock.pending[int.from_bytes(wire[:2] or b"\0\0", "big")] = (question, fut)
        sock.datagram_received(wire, ("127.0.0.1", 53))  # never raises
    finally:
        loop.close()


Reply = Callable[[bytes], list[bytes]]


class _Raw(asyncio.DatagramProtocol):
    """A UDP server answering each query with ``reply(query)`` (any datagrams)."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.transport: asyncio.DatagramTransport | None = None
        self.queries: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queries.append(data)
        assert self.transport is not None
        for out in self.reply(data):
            self.transport.sendto(out, addr)


@contextlib.asynccontextmanager
async def raw_server(reply: Reply) -> AsyncIterator[tuple[int, _Raw]]:
    """Serve ``reply`` on 127.0.0.1 (UDP); yield the port and the protocol."""
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        lambda: _Raw(reply), local_addr=("127.0.0.1", 0)
    )
    try:
        yield transport.get_extra_info("sockname")[1], proto
    finally:
        transport.close()


def _good(query: bytes, ip4: str = "192.0.2.1", ip6: str = "2001:db8::1") -> bytes:
    q = dns.message.from_wire(query)
    r = dns.message.make_response(q)
    qt = q.question[0].rdtype
    rdata = ip4 if qt == dns.rdatatype.A else ip6
    r.answer.append(dns.rrset.from_text(q.question[0].name, 60, "IN", qt, rdata))
    return r.to_wire()


async def test_fast_path_is_used_and_sockets_are_reused() -> None:
    """Plain answers take the fast path: no dnspython, a few long-lived sockets."""
    async with raw_server(lambda q: [_good(q)]) as (port, _proto):
        r = _resolver(port)
        answers = [await r.resolve(f"n{i}.test") for i in range(20)]
        pool = r._pools["127.0.0.1"]
        assert all(s is not None for s in pool.slots)
        sockets = {id(s) for s in pool.slots}
        await r.close()
    assert all(a.status == "ok" and len(a.ips) == 2 for a in answers)
    assert r.paths == {"fast": 40}
    assert len(sockets) == 4


async def test_fast_and_dnspython_paths_agree() -> None:
    """Over the network, both paths give equal Answers for the same zone."""
    zone = Zone(
        [
            ("www.test", "CNAME", 600, "edge.test."),
            ("edge.test", "CNAME", 30, "host.test."),
            ("host.test", "A", 3600, "198.51.100.5"),
            ("host.test", "AAAA", 300, "2001:db8::5"),
            ("alias.test", "CNAME", 60, "nowhere.test."),
        ],
        rcodes={"gone.test": dns.rcode.NXDOMAIN, "bad.test": dns.rcode.SERVFAIL},
    )
    names = ["www.test", "edge.test", "host.test", "alias.test", "gone.test", "bad.test", "x.test"]
    async with dns_server(zone) as port:
        fast = _resolver(port)
        slow = DnsResolver(["127.0.0.1"], port=port, timeout=1.0, attempts=1, fast=False)
        for name in names:
            assert await fast.resolve(name) == await slow.resolve(name), name
        await fast.close()
    assert fast.paths["fast"] == 2 * len(names) and "dnspython" not in fast.paths


async def test_negative_ttl_is_reported_by_both_paths() -> None:
    """NXDOMAIN and NODATA answers carry the SOA's negative TTL, equal on both paths."""
    zone = Zone(
        [
            ("v4.test", "A", 60, "192.0.2.1"),
            ("alias.test", "CNAME", 600, "nowhere.test."),
        ],
        rcodes={"gone.test": dns.rcode.NXDOMAIN},
        soa=(5, 7),
    )
    async with dns_server(zone) as port:
        fast = _resolver(port)
        slow = DnsResolver(["127.0.0.1"], port=port, timeout=1.0, attempts=1, fast=False)
        got = {}
        for name in ("gone.test", "empty.test", "alias.test", "v4.test"):
            got[name] = await fast.resolve(name)
            assert got[name] == await slow.resolve(name), name
        await fast.close()
    assert (got["gone.test"].status, got["gone.test"].negative_ttl) == ("nxdomain", 5)
    assert (got["empty.test"].status, got["empty.test"].negative_ttl) == ("nodata", 5)
    assert (got["alias.test"].status, got["alias.test"].cnames) == ("nodata", ("nowhere.test",))
    assert got["alias.test"].negative_ttl == 5
    assert (got["v4.test"].status, got["v4.test"].negative_ttl) == ("ok", None)
    assert fast.paths["fast"] == 8


async def test_negative_answer_without_soa_has_no_negative_ttl() -> None:
    """An NXDOMAIN without an SOA says nothing about how long it holds: negative_ttl None."""
    async with dns_server(Zone(rcodes={"gone.test": dns.rcode.NXDOMAIN})) as port:
        r = _resolver(port)
        ans = await r.resolve("gone.test")
        await r.close()
    assert (ans.status, ans.negative_ttl) == ("nxdomain", None)


def test_combined_negative_ttl() -> None:
    """NXDOMAIN takes its own part's negative TTL; NODATA the smaller; no SOA wins as None."""
    assert combine(
        "x.test", [Part("nodata", negative_ttl=9), Part("nxdomain", negative_ttl=40)]
    ) == (Answer("nxdomain", detail="x.test does not exist", negative_ttl=40))
    both = combine("x.test", [Part("nodata", negative_ttl=9), Part("nodata", negative_ttl=40)])
    assert (both.status, both.negative_ttl) == ("nodata", 9)
    one = combine("x.test", [Part("nodata", negative_ttl=9), Part("nodata")])
    assert (one.status, one.negative_ttl) == ("nodata", None)


async def test_failure_detail_names_each_problem_once() -> None:
    """A server timing out on every try is named once, with types and tries, not 4 times."""
    async with dns_server(Zone(drop={"slow.test"})) as port:
        r = DnsResolver(["127.0.0.1"], port=port, timeout=0.05, attempts=2)
        ans = await r.resolve("slow.test")
        await r.close()
    assert ans.status == "timeout"
    assert ans.detail == "127.0.0.1: timed out (A x2, AAAA x2)"


def test_failure_detail_keeps_distinct_problems() -> None:
    """Different problems (servers, outcomes) each keep their own entry, in order."""
    a = Part(
        "servfail",
        detail="x",
        tries=(("192.0.2.1: SERVFAIL", "A"), ("192.0.2.2: timed out", "A")),
    )
    aaaa = Part("servfail", detail="y", tries=(("192.0.2.1: SERVFAIL", "AAAA"),))
    ans = combine("x.test", [a, aaaa])
    assert ans.detail == "192.0.2.1: SERVFAIL (A, AAAA); 192.0.2.2: timed out (A)"


async def test_mismatched_id_and_question_are_ignored() -> None:
    """Answers with another ID or another question are dropped; the real one counts."""

    def reply(query: bytes) -> list[bytes]:
        real = _good(query)
        wrong_id = bytes([query[0] ^ 0xFF]) + _good(query, "203.0.113.1", "2001:db8::bad")[1:]
        other = dns.message.from_wire(query)
        other.question[0].name = dns.name.from_text("evil.test")
        spoof = dns.message.make_response(other)
        qt = other.question[0].rdtype
        spoof.answer.append(
            dns.rrset.from_text(
                "evil.test.", 60, "IN", qt, "203.0.113.2" if qt == 1 else "2001:db8::bad"
            )
        )
        return [wrong_id, spoof.to_wire(), real]

    async with raw_server(reply) as (port, _proto):
        r = _resolver(port)
        ans = await r.resolve("ok.test")
        await r.close()
    assert ans == Answer.ok(["192.0.2.1", "2001:db8::1"], 60)
    assert r.paths == {"fast": 2}


async def test_malformed_answer_falls_back_to_dnspython() -> None:
    """A malformed answer with the right ID and question is asked again with dnspython."""
    count = collections.Counter[str]()

    def reply(query: bytes) -> list[bytes]:
        count["q"] += 1
        good = _good(query)
        if count["q"] <= 2:  # the fast path's two queries: cut short
            return [good[:-3]]
        return [good]

    async with raw_server(reply) as (port, proto):
        r = _resolver(port)
        ans = await r.resolve("m.test")
        await r.close()
    assert ans == Answer.ok(["192.0.2.1", "2001:db8::1"], 60)
    assert r.paths == {"dnspython": 2}
    assert len(proto.queries) == 4


async def test_servfail_on_fast_path_is_servfail() -> None:
    """SERVFAIL read by the fast socket is judged like dnspython's (no second query)."""
    async with dns_server(Zone(rcodes={"bad.test": dns.rcode.SERVFAIL})) as port:
        r = _resolver(port)
        ans = await r.resolve("bad.test")
        await r.close()
    slow = Answer("servfail", detail="127.0.0.1: SERVFAIL (A, AAAA)")
    assert ans == slow
    assert r.paths == {"fast": 2}


async def test_truncated_goes_to_tcp_only() -> None:
    """TC on the fast socket: dnspython over TCP, without a second UDP query."""
    zone = Zone([("big.test", "A", 60, "192.0.2.1")], truncate={"big.test"})
    async with dns_server(zone) as port:
        r = _resolver(port)
        ans = await r.resolve("big.test")
        await r.close()
    assert ans.status == "ok"
    assert r.paths["tcp"] == 2
    assert zone.seen[("udp", "big.test", "A")] == 1


async def test_socket_rotation(monkeypatch: pytest.MonkeyPatch) -> None:
    """A socket is replaced after ROTATE_QUERIES queries (new random source port)."""
    monkeypatch.setattr("fenced.dns.exchange.ROTATE_QUERIES", 3)
    async with raw_server(lambda q: [_good(q)]) as (port, proto):
        r = _resolver(port)
        for i in range(12):
            assert (await r.resolve(f"r{i}.test")).status == "ok"
        await r.close()
    # 24 queries over 4 slots, 3 queries per socket: 8 sockets, each its own port
    assert r.paths == {"fast": 24}
    assert len(proto.queries) == 24


async def test_resolver_survives_a_new_event_loop() -> None:
    """Sockets belong to one loop: a resolver used from another loop opens new ones."""
    async with raw_server(lambda q: [_good(q)]) as (port, _proto):
        r = _resolver(port)
        assert (await r.resolve("a.test")).status == "ok"
        r._loop = None  # as if called from another loop
        assert (await r.resolve("b.test")).status == "ok"
        await r.close()
