"""Unit tests of the DNS gateway (fenced.dns.gateway) against an in-process upstream server."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import socket
import struct
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import cast

import dns.asyncquery
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from fenced.config.entries import parse_outbound
from fenced.core.events import AddressDropped, Event, GatewayLost, GatewayQuery, ignore
from fenced.core.model import DaemonConfig, IPAddress, Policy, Target
from fenced.dns.forward import forward
from fenced.dns.gateway import Gateway, NameMatcher

# ------------------------------------------------------------------------------ upstream


@dataclass
class Canned:
    """One prepared upstream answer: records as (owner, ttl, type, rdata) per section."""

    answer: list[tuple[str, int, str, str]] = field(default_factory=list)
    authority: list[tuple[str, int, str, str]] = field(default_factory=list)
    additional: list[tuple[str, int, str, str]] = field(default_factory=list)
    rcode: dns.rcode.Rcode = dns.rcode.NOERROR
    ad: bool = False


@dataclass
class Upstream:
    """What the test upstream answers, and every query it received (transport, message)."""

    answers: dict[tuple[str, str], Canned] = field(default_factory=dict)
    queries: list[tuple[str, dns.message.Message]] = field(default_factory=list)
    delay: float = 0.0
    silent: bool = False
    port: int = 0
    recursion_available: bool = True
    authentic: bool = False

    def names(self) -> list[tuple[str, str]]:
        """(name, type) of every query received."""
        return [
            (
                m.question[0].name.to_text(omit_final_dot=True).lower(),
                dns.rdatatype.to_text(m.question[0].rdtype),
            )
            for _, m in self.queries
        ]


def _rrsets(records: Sequence[tuple[str, int, str, str]]) -> list[dns.rrset.RRset]:
    grouped: dict[tuple[str, str], tuple[int, list[str]]] = {}
    for owner, ttl, rtype, rdata in records:
        grouped.setdefault((owner, rtype), (ttl, []))[1].append(rdata)
    return [
        dns.rrset.from_text_list(owner + ".", ttl, "IN", rtype, rdatas)
        for (owner, rtype), (ttl, rdatas) in grouped.items()
    ]


def _upstream_reply(up: Upstream, wire: bytes, transport: str) -> bytes:
    query = dns.message.from_wire(wire)
    up.queries.append((transport, query))
    q = query.question[0]
    key = (q.name.to_text(omit_final_dot=True).lower(), dns.rdatatype.to_text(q.rdtype))
    canned = up.answers.get(key, Canned(rcode=dns.rcode.NXDOMAIN))
    response = dns.message.make_response(query, our_payload=1232)
    if up.recursion_available:
        response.flags |= dns.flags.RA
    if up.authentic:
        response.flags |= dns.flags.AD
    if query.ednsflags & dns.flags.DO:
        response.want_dnssec(True)
    response.set_rcode(canned.rcode)
    if canned.ad:
        response.flags |= dns.flags.AD
    response.answer = _rrsets(canned.answer)
    response.authority = _rrsets(canned.authority)
    response.additional = _rrsets(canned.additional)
    limit = 65535 if transport == "tcp" else max(512, query.payload)
    try:
        return response.to_wire(max_size=limit)
    except dns.exception.TooBig:
        short = dns.message.make_response(query)
        short.flags |= dns.flags.TC
        return short.to_wire()


class _UpUdp(asyncio.DatagramProtocol):
    def __init__(self, up: Upstream) -> None:
        self.up = up
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        asyncio.get_running_loop().create_task(self._reply(data, addr))

    async def _reply(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if self.up.silent:
            self.up.queries.append(("udp", dns.message.from_wire(data)))
            return
        await asyncio.sleep(self.up.delay)
        reply = _upstream_reply(self.up, data, "udp")
        if self.transport is not None:
            self.transport.sendto(reply, addr)


async def _up_tcp(up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
        while True:
            (size,) = struct.unpack("!H", await reader.readexactly(2))
            data = await reader.readexactly(size)
            await asyncio.sleep(up.delay)
            reply = _upstream_reply(up, data, "tcp")
            writer.write(struct.pack("!H", len(reply)) + reply)
            await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def upstream_server(host: str = "127.0.0.1", want: int = 0) -> AsyncIterator[Upstream]:
    """A tiny DNS server on ``host`` (UDP and TCP on port ``want`` or a free one)."""
    up = Upstream()
    loop = asyncio.get_running_loop()
    for _ in range(20):
        udp, _proto = await loop.create_datagram_endpoint(
            lambda: _UpUdp(up), local_addr=(host, want)
        )
        port = udp.get_extra_info("sockname")[1]
        try:
            tcp = await asyncio.start_server(lambda r, w: _up_tcp(up, r, w), host, port)
        except OSError:
            udp.close()
            continue
        break
    up.port = port
    try:
        yield up
    finally:
        udp.close()
        tcp.close()


# ------------------------------------------------------------------------------ gateway


@dataclass
class Learner:
    """A fake learn hook: records calls, can be slow or fail."""

    delay: float = 0.0
    fail: bool = False
    calls: list[tuple[str, str, tuple[Target, ...], tuple[IPAddress, ...], int]] = field(
        default_factory=list
    )
    done_at: list[float] = field(default_factory=list)

    async def __call__(
        self,
        policy: str,
        qname: str,
        targets: tuple[Target, ...],
        ips: tuple[IPAddress, ...],
        ttl: int,
    ) -> None:
        """Record the call; sleep ``delay``; raise when ``fail``."""
        self.calls.append((policy, qname, targets, ips, ttl))
        await asyncio.sleep(self.delay)
        if self.fail:
            raise OSError("kernel said no")
        self.done_at.append(time.monotonic())


class Seen(list[Event]):
    """The events a gateway reported (pass ``append`` as its ``observe``), tallied."""

    @property
    def results(self) -> Counter[tuple[str, str]]:
        """Queries by (policy, result), those the kernel dropped included."""
        tally: Counter[tuple[str, str]] = Counter()
        for e in self:
            if isinstance(e, GatewayQuery):
                tally[(e.policy, e.result)] += 1
            elif isinstance(e, GatewayLost):
                tally[(e.policy, "dropped")] += e.count
        return tally

    @property
    def filtered(self) -> int:
        """Restricted addresses removed from answers."""
        return sum(1 for e in self if isinstance(e, AddressDropped))

    @property
    def added_max(self) -> float:
        """The most time the gateway added to one query (0 before any)."""
        return max((e.added for e in self if isinstance(e, GatewayQuery)), default=0.0)


def make_policy(
    *entries: str,
    deny_response: str = "nxdomain",
    allow_private: bool = False,
) -> Policy:
    """A gateway policy with the given outbound entries."""
    return Policy(
        name="web",
        uids=(4242,),
        outbound=tuple(parse_outbound(e) for e in entries),
        allow_private=allow_private,
        deny_response="refused" if deny_response == "refused" else "nxdomain",
    )


@contextlib.asynccontextmanager
async def running(
    policy: Policy,
    up: Upstream,
    learner: Learner | None = None,
    *,
    servers: Sequence[str] = ("127.0.0.1",),
    upstream_port: int | None = None,
    max_ttl: int = 3600,
    stats: Seen | None = None,
    learn_timeout: float = 2.0,
    clock: Clock | None = None,
) -> AsyncIterator[Gateway]:
    """A started Gateway on 127.0.0.1 (free port) forwarding to ``up``."""
    gw = Gateway(
        policy,
        servers=servers,
        learn=learner or Learner(),
        hosts=("127.0.0.1",),
        upstream_port=up.port if upstream_port is None else upstream_port,
        max_ttl=max_ttl,
        observe=stats.append if stats is not None else ignore,
        learn_timeout=learn_timeout,
    )
    if clock is not None:
        gw.clock = clock
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop()


async def ask(
    gw: Gateway,
    name: str,
    rdtype: str = "A",
    *,
    tcp: bool = False,
    edns: int = -1,
    payload: int = 1232,
    dnssec: bool = False,
) -> dns.message.Message:
    """Send one query to the gateway and return the reply."""
    q = dns.message.make_query(name, rdtype, use_edns=edns, payload=payload, want_dnssec=dnssec)
    if tcp:
        return await dns.asyncquery.tcp(q, "127.0.0.1", timeout=5, port=gw.port)
    return await dns.asyncquery.udp(q, "127.0.0.1", timeout=5, port=gw.port)


@dataclass
class Clock:
    """A monotonic clock for the gateway that moves only when the test says so."""

    t: float = 1000.0

    def __call__(self) -> float:
        """The current time."""
        return self.t


def addresses(msg: dns.message.Message) -> set[str]:
    """Every A/AAAA address anywhere in ``msg``."""
    return {
        rd.address
        for section in (msg.answer, msg.authority, msg.additional)
        for rrset in section
        if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA)
        for rd in rrset
    }


def ips(*texts: str) -> tuple[IPAddress, ...]:
    """Addresses from text."""
    return tuple(ipaddress.ip_address(t) for t in texts)


# ------------------------------------------------------------------------------ matcher


def test_matcher_exact_and_wildcard() -> None:
    """Exact entries match their name only; wildcards every depth below, not the apex."""
    exact = parse_outbound("api.example.com:443")
    wild = parse_outbound("*.example.com:80")
    deep = parse_outbound("*.cdn.example.com")
    m = NameMatcher([exact, wild, deep, parse_outbound("192.0.2.1")])
    assert m.match("api.example.com") == (exact, wild)
    assert m.match("API.Example.COM.") == (exact, wild)
    assert m.match("a.example.com") == (wild,)
    assert m.match("a.b.c.example.com") == (wild,)
    assert m.match("x.cdn.example.com") == (deep, wild)
    assert m.match("cdn.example.com") == (wild,)
    assert m.match("example.com") == ()
    assert m.match("example.com.evil.net") == ()
    assert m.match("badexample.com") == ()
    assert m.match(".") == ()
    assert m.match("") == ()
    assert not m.allows("org")


def test_matcher_compares_labels_not_text() -> None:
    """A label holding a dot cannot pose as two labels of an allowed suffix."""
    m = NameMatcher([parse_outbound("*.example.com")])
    tricky = dns.name.Name([b"x", b"a.example", b"com", b""])
    assert m.match(tricky) == ()
    assert m.match(dns.name.from_text("x.a.example.com")) != ()


# ------------------------------------------------------------------------------ gateway


async def test_chain_learned_before_reply() -> None:
    """An allowed A answer's chain addresses are learned (min TTL) before the reply leaves."""
    async with upstream_server() as up:
        up.answers[("www.example.com", "A")] = Canned(
            answer=[
                ("www.example.com", 300, "CNAME", "edge.cdn.example.net."),
                ("edge.cdn.example.net", 120, "CNAME", "e1.cdn.example.net."),
                ("e1.cdn.example.net", 600, "A", "192.0.2.1"),
                ("e1.cdn.example.net", 600, "A", "192.0.2.2"),
            ]
        )
        learner = Learner(delay=0.4)
        policy = make_policy("www.example.com:443/tcp")
        async with running(policy, up, learner) as gw:
            reply = await ask(gw, "www.example.com")
            received = time.monotonic()
    [(name, qname, targets, learned, ttl)] = learner.calls
    assert (name, qname, targets, ttl) == ("web", "www.example.com", policy.outbound, 120)
    assert sorted(learned) == sorted(ips("192.0.2.1", "192.0.2.2"))
    assert learner.done_at and received >= learner.done_at[0]
    assert reply.rcode() == dns.rcode.NOERROR
    assert addresses(reply) == {"192.0.2.1", "192.0.2.2"}
    assert {r.ttl for r in reply.answer} == {120}
    assert [r.rdtype for r in reply.answer] == [
        dns.rdatatype.CNAME,
        dns.rdatatype.CNAME,
        dns.rdatatype.A,
    ]


async def test_ttl_capped_at_max_ttl() -> None:
    """No record on the chain comes back with a TTL above max_ttl."""
    async with upstream_server() as up:
        up.answers[("a.example.com", "AAAA")] = Canned(
            answer=[("a.example.com", 86400, "AAAA", "2001:db8::1")]
        )
        learner = Learner()
        async with running(make_policy("a.example.com"), up, learner, max_ttl=600) as gw:
            reply = await ask(gw, "a.example.com", "AAAA")
    assert [r.ttl for r in reply.answer] == [600]
    assert learner.calls[0][3:] == (ips("2001:db8::1"), 86400)


@pytest.mark.parametrize(
    ("deny", "rcode"), [("nxdomain", dns.rcode.NXDOMAIN), ("refused", dns.rcode.REFUSED)]
)
async def test_denied_name_never_reaches_upstream(deny: str, rcode: dns.rcode.Rcode) -> None:
    """A name no entry allows gets the policy's deny rcode, question echoed, no upstream query."""
    async with upstream_server() as up:
        stats = Seen()
        learner = Learner()
        policy = make_policy("a.example.com", deny_response=deny)
        async with running(policy, up, learner, stats=stats) as gw:
            reply = await ask(gw, "b.example.com")
    assert reply.rcode() == rcode
    assert reply.question[0].name == dns.name.from_text("b.example.com")
    assert not reply.answer
    assert up.queries == []
    assert learner.calls == []
    assert stats.results[("web", "denied")] == 1


async def test_audit_mode_forwards_denied_names() -> None:
    """In audit mode a denied name is counted as audit_denied, forwarded, and not learned."""
    async with upstream_server() as up:
        up.answers[("b.example.com", "A")] = Canned(
            answer=[("b.example.com", 60, "A", "192.0.2.2")]
        )
        learner = Learner()
        stats = Seen()
        policy = dataclasses.replace(make_policy("a.example.com"), mode="audit")
        async with running(policy, up, learner, stats=stats) as gw:
            reply = await ask(gw, "b.example.com")
    assert addresses(reply) == {"192.0.2.2"}
    assert learner.calls == []
    assert stats.results[("web", "audit_denied")] == 1


async def test_txt_of_denied_name_never_reaches_upstream() -> None:
    """DNS tunnelling: a TXT query for a name outside the policy is answered locally."""
    async with upstream_server() as up, running(make_policy("*.example.com"), up) as gw:
        reply = await ask(gw, "aGVsbG8gd29ybGQ.t.attacker.net", "TXT")
        also = await ask(gw, "aGVsbG8.example.com.attacker.net", "NULL")
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert also.rcode() == dns.rcode.NXDOMAIN
    assert up.queries == []


async def test_wildcard_matches_any_depth_not_apex() -> None:
    """*.example.org allows a.example.org and a.b.example.org, not example.org."""
    async with upstream_server() as up:
        for name in ("a.example.org", "a.b.example.org", "example.org"):
            up.answers[(name, "A")] = Canned(answer=[(name, 60, "A", "198.51.100.7")])
        learner = Learner()
        async with running(make_policy("*.example.org:443"), up, learner) as gw:
            one = await ask(gw, "a.example.org")
            two = await ask(gw, "a.b.example.org")
            apex = await ask(gw, "example.org")
    assert (one.rcode(), two.rcode(), apex.rcode()) == (
        dns.rcode.NOERROR,
        dns.rcode.NOERROR,
        dns.rcode.NXDOMAIN,
    )
    assert [c[1] for c in learner.calls] == ["a.example.org", "a.b.example.org"]
    assert up.names() == [("a.example.org", "A"), ("a.b.example.org", "A")]


async def test_other_types_forwarded_unchanged_and_not_learned() -> None:
    """TXT and HTTPS answers of allowed names come back as given; nothing in them is learned."""
    async with upstream_server() as up:
        up.answers[("a.example.com", "TXT")] = Canned(
            answer=[("a.example.com", 300, "TXT", '"v=spf1 -all"')]
        )
        up.answers[("a.example.com", "HTTPS")] = Canned(
            answer=[("a.example.com", 300, "HTTPS", "1 . alpn=h2 ipv4hint=192.0.2.9")]
        )
        learner = Learner()
        async with running(make_policy("a.example.com"), up, learner) as gw:
            txt = await ask(gw, "a.example.com", "TXT")
            https = await ask(gw, "a.example.com", "HTTPS")
    assert txt.answer == _rrsets([("a.example.com", 300, "TXT", '"v=spf1 -all"')])
    assert txt.answer[0].ttl == 300
    assert https.answer == _rrsets(
        [("a.example.com", 300, "HTTPS", "1 . alpn=h2 ipv4hint=192.0.2.9")]
    )
    assert learner.calls == []


async def test_glue_and_injected_addresses_are_removed_not_learned() -> None:
    """Address records off the chain (answer or additional) are neither learned nor returned."""
    async with upstream_server() as up:
        up.answers[("a.example.com", "A")] = Canned(
            answer=[
                ("a.example.com", 60, "A", "192.0.2.1"),
                ("evil.example.net", 60, "A", "203.0.113.66"),
            ],
            additional=[("other.example.com", 60, "A", "203.0.113.67")],
        )
        up.answers[("_x._tcp.a.example.com", "SRV")] = Canned(
            answer=[("_x._tcp.a.example.com", 60, "SRV", "0 0 443 t.example.net.")],
            additional=[("t.example.net", 60, "A", "203.0.113.68")],
        )
        learner = Learner()
        policy = make_policy("a.example.com", "_x._tcp.a.example.com")
        async with running(policy, up, learner) as gw:
            a = await ask(gw, "a.example.com")
            srv = await ask(gw, "_x._tcp.a.example.com", "SRV")
    assert [c[3] for c in learner.calls] == [ips("192.0.2.1")]
    assert addresses(a) == {"192.0.2.1"}
    assert addresses(srv) == set()
    assert srv.answer[0].rdtype == dns.rdatatype.SRV


async def test_private_addresses_removed() -> None:
    """With allow_private = false, restricted addresses leave the answer and are not learned."""
    async with upstream_server() as up:
        up.answers[("mixed.example.com", "A")] = Canned(
            answer=[
                ("mixed.example.com", 60, "A", "10.0.0.1"),
                ("mixed.example.com", 60, "A", "192.0.2.5"),
                ("mixed.example.com", 60, "A", "169.254.169.254"),
            ]
        )
        up.answers[("inside.example.com", "A")] = Canned(
            answer=[
                ("inside.example.com", 60, "CNAME", "db.internal.example."),
                ("db.internal.example", 60, "A", "192.168.1.10"),
            ]
        )
        learner = Learner()
        stats = Seen()
        policy = make_policy("mixed.example.com", "inside.example.com")
        async with running(policy, up, learner, stats=stats) as gw:
            mixed = await ask(gw, "mixed.example.com")
            inside = await ask(gw, "inside.example.com")
        allowing = make_policy("inside.example.com", allow_private=True)
        open_learner = Learner()
        async with running(allowing, up, open_learner) as gw:
            kept = await ask(gw, "inside.example.com")
    assert addresses(mixed) == {"192.0.2.5"}
    assert inside.rcode() == dns.rcode.NOERROR
    assert addresses(inside) == set()
    assert [c[3] for c in learner.calls] == [ips("192.0.2.5")]
    assert stats.filtered == 3
    assert addresses(kept) == {"192.168.1.10"}
    assert [c[3] for c in open_learner.calls] == [ips("192.168.1.10")]


async def test_learn_failure_gives_servfail() -> None:
    """When the learn hook raises, the client gets SERVFAIL and no address."""
    async with upstream_server() as up:
        up.answers[("a.example.com", "A")] = Canned(
            answer=[("a.example.com", 60, "A", "192.0.2.1")]
        )
        stats = Seen()
        async with running(make_policy("a.example.com"), up, Learner(fail=True), stats=stats) as gw:
            reply = await ask(gw, "a.example.com")
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert addresses(reply) == set()
    assert stats.results[("web", "learn_failed")] == 1


async def test_slow_learn_gives_servfail_without_cancelling_it() -> None:
    """A learn hook slower than learn_timeout means SERVFAIL; the hook still runs to its end."""
    async with upstream_server() as up:
        up.answers[("a.example.com", "A")] = Canned(
            answer=[("a.example.com", 60, "A", "192.0.2.1")]
        )
        learner = Learner(delay=0.5)
        policy = make_policy("a.example.com")
        async with running(policy, up, learner, learn_timeout=0.1) as gw:
            reply = await ask(gw, "a.example.com")
            await asyncio.sleep(0.6)
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert addresses(reply) == set()
    assert len(learner.done_at) == 1


async def test_upstream_down_gives_servfail_quickly() -> None:
    """Silent and closed resolvers end in SERVFAIL within about 2 s."""
    async with upstream_server() as up:
        up.silent = True
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            closed_port = s.getsockname()[1]
        stats = Seen()
        async with running(make_policy("a.example.com"), up, stats=stats) as gw:
            start = time.monotonic()
            reply = await ask(gw, "a.example.com")
            silent_took = time.monotonic() - start
        async with running(make_policy("a.example.com"), up, upstream_port=closed_port) as gw:
            start = time.monotonic()
            closed = await ask(gw, "a.example.com", tcp=True)
            closed_took = time.monotonic() - start
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert 1.5 < silent_took < 3.0
    assert closed.rcode() == dns.rcode.SERVFAIL
    assert closed_took < 3.0
    assert stats.results[("web", "servfail")] == 1
    # the upstream time is not counted as time fenced added
    assert stats.added_max < 0.5


async def test_large_answer_truncated_over_udp_full_over_tcp() -> None:
    """An answer above the client's UDP size comes back TC=1 and cut; over TCP, whole."""
    many = [("big.example.com", 60, "A", f"198.51.100.{i}") for i in range(1, 61)]
    async with upstream_server() as up:
        up.answers[("big.example.com", "A")] = Canned(answer=many)
        learner = Learner()
        async with running(make_policy("big.example.com"), up, learner) as gw:
            udp = await ask(gw, "big.example.com")
            tcp = await ask(gw, "big.example.com", tcp=True)
            edns = await ask(gw, "big.example.com", edns=0, payload=4096)
    assert udp.flags & dns.flags.TC
    assert 0 < len(addresses(udp)) < 60
    assert not tcp.flags & dns.flags.TC
    assert len(addresses(tcp)) == 60
    assert len(addresses(edns)) == 60  # 60 A records fit in 4096 bytes
    assert len(learner.calls[0][3]) == 60
    # 60 A records fit in the 1232 bytes fenced advertises upstream: no upstream TCP.
    assert {t for t, _ in up.queries} == {"udp"}


async def test_truncated_udp_answer_keeps_the_first_whole_records_that_fit() -> None:
    """Over UDP a too-big answer carries, with TC=1, the chain and the first addresses."""
    chain = [("www.example.com", 60, "CNAME", "edge.example.net.")]
    many = [("edge.example.net", 60, "A", f"198.51.100.{i}") for i in range(1, 31)]
    async with upstream_server() as up:
        up.answers[("www.example.com", "A")] = Canned(
            answer=chain + many, additional=[("ns.example.net", 60, "TXT", "glue")]
        )
        learner = Learner()
        async with running(make_policy("www.example.com"), up, learner) as gw:
            plain = dns.message.make_query("www.example.com", "A")
            wire = await _udp_exchange(gw.port, plain.to_wire())
            small = await ask(gw, "www.example.com", edns=0, payload=512)
    reply = dns.message.from_wire(wire)
    for got, call in zip((reply, small), learner.calls, strict=True):
        learned = [str(ip) for ip in call[3]]
        assert len(learned) == 30
        assert got.flags & dns.flags.TC and got.rcode() == dns.rcode.NOERROR
        assert got.answer[0].rdtype == dns.rdatatype.CNAME
        kept = addresses(got)
        assert 20 < len(kept) < 30
        assert kept == set(learned[: len(kept)])  # the first ones learned
        assert not got.authority and not got.additional
    assert len(wire) <= 512
    assert small.edns == 0  # the OPT record stays


async def test_truncated_signed_answer_keeps_no_signature_of_a_cut_rrset() -> None:
    """A cut RRset loses its RRSIG and AD is cleared; whole RRsets keep their signatures."""
    sig = "{} 8 3 60 20300101000000 20200101000000 1 example.net. AAAA"
    chain = [
        ("www.example.net", 60, "CNAME", "edge.example.net."),
        ("www.example.net", 60, "RRSIG", sig.format("CNAME")),
    ]
    many = [("edge.example.net", 60, "A", f"198.51.100.{i}") for i in range(1, 31)]
    async with upstream_server() as up:
        up.authentic = True
        up.answers[("www.example.net", "A")] = Canned(
            answer=[*chain, *many, ("edge.example.net", 60, "RRSIG", sig.format("A"))]
        )
        async with running(make_policy("www.example.net"), up) as gw:
            whole = await ask(gw, "www.example.net", edns=0, payload=4096, dnssec=True)
            cut = await ask(gw, "www.example.net", edns=0, payload=512, dnssec=True)
    covered = {r.covers for r in whole.answer if r.rdtype == dns.rdatatype.RRSIG}
    assert covered == {dns.rdatatype.CNAME, dns.rdatatype.A}
    assert whole.flags & dns.flags.AD and not whole.flags & dns.flags.TC
    assert cut.flags & dns.flags.TC and not cut.flags & dns.flags.AD
    assert 0 < len(addresses(cut)) < 30
    covered = {r.covers for r in cut.answer if r.rdtype == dns.rdatatype.RRSIG}
    assert covered == {dns.rdatatype.CNAME}


async def _udp_exchange(port: int, wire: bytes) -> bytes:
    """Send ``wire`` to 127.0.0.1:``port`` over UDP and return the raw reply."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        s.connect(("127.0.0.1", port))
        s.send(wire)
        return await asyncio.wait_for(loop.sock_recv(s, 65535), 5)


async def test_reply_without_additional_fits_without_tc() -> None:
    """A reply that fits once its additional section is left out is sent whole, TC=0."""
    many = [("a.example.com", 60, "A", f"198.51.100.{i}") for i in range(1, 11)]
    extra = [("a.example.com", 60, "TXT", "x" * 200), ("b.example.com", 60, "TXT", "y" * 200)]
    async with upstream_server() as up:
        up.answers[("a.example.com", "A")] = Canned(answer=many, additional=extra)
        async with running(make_policy("a.example.com"), up) as gw:
            reply = await ask(gw, "a.example.com")
    assert not reply.flags & dns.flags.TC
    assert len(addresses(reply)) == 10 and not reply.additional


async def test_edns_version_above_0_gets_badvers() -> None:
    """A query with EDNS version 1 gets BADVERS with an OPT of version 0; nothing forwarded."""
    async with upstream_server() as up:
        up.answers[("a.example.com", "A")] = Canned(
            answer=[("a.example.com", 60, "A", "192.0.2.1")]
        )
        stats = Seen()
        async with running(make_policy("a.example.com"), up, stats=stats) as gw:
            reply = await ask(gw, "a.example.com", edns=1)
            denied = await ask(gw, "b.example.com", edns=1)
            ok = await ask(gw, "a.example.com", edns=0)
    for got in (reply, denied):
        assert got.rcode() == dns.rcode.BADVERS
        assert got.edns == 0
        assert not got.answer
    assert addresses(ok) == {"192.0.2.1"}
    assert up.names() == [("a.example.com", "A")]
    assert stats.results[("web", "formerr")] == 2


async def test_refused_by_every_resolver_is_passed_as_refused() -> None:
    """REFUSED from every resolver reaches the client as REFUSED (each asked once), not SERVFAIL."""
    async with upstream_server() as one, upstream_server("127.0.0.2", one.port) as two:
        for up in (one, two):
            up.recursion_available = False
            up.answers[("a.example.com", "A")] = Canned(rcode=dns.rcode.REFUSED)
        stats = Seen()
        policy = make_policy("a.example.com")
        servers = ("127.0.0.1", "127.0.0.2")
        async with running(policy, one, servers=servers, stats=stats) as gw:
            refused = await ask(gw, "a.example.com")
            two.answers[("a.example.com", "A")] = Canned(rcode=dns.rcode.SERVFAIL)
            mixed = await ask(gw, "a.example.com")
    assert refused.rcode() == dns.rcode.REFUSED
    assert not refused.flags & dns.flags.RA  # as the resolvers said
    assert mixed.rcode() == dns.rcode.SERVFAIL
    assert stats.results[("web", "refused")] == 1
    assert stats.results[("web", "servfail")] == 1
    # first query: each resolver once; second: the refuser once, the failing one twice
    assert len(one.queries) == 2
    assert len(two.queries) == 3


async def test_ra_bit_is_the_upstream_one() -> None:
    """RA in an answer is copied from the resolver's answer, not set by the gateway."""
    async with upstream_server() as up:
        up.answers[("a.example.com", "A")] = Canned(
            answer=[("a.example.com", 60, "A", "192.0.2.1")]
        )
        async with running(make_policy("a.example.com"), up) as gw:
            with_ra = await ask(gw, "a.example.com")
            up.recursion_available = False
            without_ra = await ask(gw, "a.example.com")
            nxdomain = await ask(gw, "nx.example.com")
    assert with_ra.flags & dns.flags.RA
    assert not without_ra.flags & dns.flags.RA
    assert addresses(without_ra) == {"192.0.2.1"}
    # a denial is the gateway's own answer: it offers recursion
    assert nxdomain.rcode() == dns.rcode.NXDOMAIN and nxdomain.flags & dns.flags.RA


async def test_queries_the_kernel_dropped_are_counted() -> None:
    """Queries lost to a full socket receive queue are counted as dropped (SO_RXQ_OVFL)."""
    async with upstream_server() as up:
        stats = Seen()
        async with running(make_policy("a.example.com"), up, stats=stats) as gw:
            wire = dns.message.make_query("denied.example.org", "A").to_wire()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect(("127.0.0.1", gw.port))
                # blocking sends: the event loop (and so the gateway) reads nothing meanwhile
                for _ in range(3000):
                    s.send(wire)
                await asyncio.sleep(0.5)
                s.send(wire)  # the kernel reports the drops with the next datagram
                await asyncio.sleep(0.5)
    handled = stats.results[("web", "denied")]
    assert 0 < handled < 3001
    assert stats.results[("web", "dropped")] == 3001 - handled


async def test_upstream_truncation_falls_back_to_tcp() -> None:
    """An upstream answer too big for 1232 bytes is fetched over TCP and fully learned."""
    many = [("huge.example.com", 60, "AAAA", f"2001:db8::{i:x}") for i in range(1, 101)]
    async with upstream_server() as up:
        up.answers[("huge.example.com", "AAAA")] = Canned(answer=many)
        learner = Learner()
        async with running(make_policy("huge.example.com"), up, learner) as gw:
            reply = await ask(gw, "huge.example.com", "AAAA", tcp=True)
    assert [t for t, _ in up.queries] == ["udp", "tcp"]
    assert len(addresses(reply)) == 100
    assert len(learner.calls[0][3]) == 100


async def test_edns_and_flags_preserved() -> None:
    """The client's DO and RD bits reach upstream under a fresh ID; EDNS is echoed back."""
    async with upstream_server() as up:
        up.answers[("a.example.com", "A")] = Canned(
            answer=[("a.example.com", 60, "A", "192.0.2.1")]
        )
        async with running(make_policy("a.example.com"), up) as gw:
            q = dns.message.make_query("a.example.com", "A", use_edns=0, payload=4000)
            q.want_dnssec(True)
            q.flags &= ~dns.flags.RD
            with_edns = await dns.asyncquery.udp(q, "127.0.0.1", timeout=5, port=gw.port)
            plain = await ask(gw, "a.example.com")
    sent = up.queries[0][1]
    assert sent.id != q.id or up.queries[1][1].id != plain.id
    assert sent.edns == 0
    assert sent.ednsflags & dns.flags.DO
    assert not sent.flags & dns.flags.RD
    assert up.queries[1][1].flags & dns.flags.RD
    assert not up.queries[1][1].ednsflags & dns.flags.DO
    assert with_edns.edns == 0
    assert with_edns.ednsflags & dns.flags.DO
    assert not with_edns.flags & dns.flags.RD
    assert plain.edns == -1
    assert plain.flags & dns.flags.RD


async def test_malformed_packets_do_not_kill_the_server() -> None:
    """Garbage gets FORMERR (or nothing), odd queries their rcodes, and the server goes on."""
    async with upstream_server() as up:
        up.answers[("a.example.com", "A")] = Canned(
            answer=[("a.example.com", 60, "A", "192.0.2.1")]
        )
        stats = Seen()
        async with running(make_policy("a.example.com"), up, stats=stats) as gw:
            loop = asyncio.get_running_loop()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.setblocking(False)
                s.connect(("127.0.0.1", gw.port))
                s.send(b"\x12")  # shorter than a header: dropped
                s.send(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff\xff")  # garbage
                formerr = dns.message.from_wire(await loop.sock_recv(s, 512))
            two = dns.message.make_query("a.example.com", "A")
            two.question.append(two.question[0])
            two_reply = await dns.asyncquery.udp(two, "127.0.0.1", timeout=5, port=gw.port)
            chaos = dns.message.make_query("version.bind", "TXT", "CH")
            chaos_reply = await dns.asyncquery.udp(chaos, "127.0.0.1", timeout=5, port=gw.port)
            notify = dns.message.make_query("a.example.com", "SOA")
            notify.set_opcode(dns.opcode.NOTIFY)
            notify_reply = await dns.asyncquery.udp(notify, "127.0.0.1", timeout=5, port=gw.port)
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            writer.write(b"\x00\x0e\x56\x78\x01\x00\x00\x01" + b"\xff" * 8)
            await writer.drain()
            size = struct.unpack("!H", await reader.readexactly(2))[0]
            tcp_formerr = dns.message.from_wire(await reader.readexactly(size))
            writer.close()
            good = await ask(gw, "a.example.com")
    assert (formerr.id, formerr.rcode()) == (0x1234, dns.rcode.FORMERR)
    assert two_reply.rcode() == dns.rcode.FORMERR
    assert chaos_reply.rcode() == dns.rcode.REFUSED
    assert notify_reply.rcode() == dns.rcode.NOTIMP
    assert (tcp_formerr.id, tcp_formerr.rcode()) == (0x5678, dns.rcode.FORMERR)
    assert addresses(good) == {"192.0.2.1"}
    assert stats.results[("web", "dropped")] == 1
    assert up.names() == [("a.example.com", "A")]


async def test_tcp_carries_several_queries_per_connection() -> None:
    """One TCP connection answers several length-prefixed queries in turn."""
    async with upstream_server() as up:
        up.answers[("a.example.com", "A")] = Canned(
            answer=[("a.example.com", 60, "A", "192.0.2.1")]
        )
        async with running(make_policy("a.example.com"), up) as gw:
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            replies = []
            for name in ("a.example.com", "b.example.com", "a.example.com"):
                wire = dns.message.make_query(name, "A").to_wire()
                writer.write(struct.pack("!H", len(wire)) + wire)
                await writer.drain()
                size = struct.unpack("!H", await reader.readexactly(2))[0]
                replies.append(dns.message.from_wire(await reader.readexactly(size)))
            writer.close()
    assert [r.rcode() for r in replies] == [
        dns.rcode.NOERROR,
        dns.rcode.NXDOMAIN,
        dns.rcode.NOERROR,
    ]


async def test_added_latency_excludes_upstream_time() -> None:
    """The time counted as added by fenced leaves out the wait for upstream."""
    async with upstream_server() as up:
        up.delay = 0.3
        up.answers[("a.example.com", "A")] = Canned(
            answer=[("a.example.com", 60, "A", "192.0.2.1")]
        )
        stats = Seen()
        async with running(make_policy("a.example.com"), up, stats=stats) as gw:
            start = time.monotonic()
            await ask(gw, "a.example.com")
            took = time.monotonic() - start
    assert took >= 0.3
    assert stats.results[("web", "allowed")] == 1
    assert stats.added_max < 0.2


async def test_configure_changes_entries_without_rebinding() -> None:
    """A reload swaps the entries and settings; the port stays."""
    async with upstream_server() as up:
        up.answers[("b.example.com", "A")] = Canned(
            answer=[("b.example.com", 60, "A", "192.0.2.2")]
        )
        async with running(make_policy("a.example.com"), up) as gw:
            port = gw.port
            before = await ask(gw, "b.example.com")
            gw.configure(
                make_policy("b.example.com", deny_response="refused"),
                DaemonConfig(resolvers=(ipaddress.ip_address("127.0.0.1"),)),
            )
            after = await ask(gw, "b.example.com")
            denied = await ask(gw, "a.example.com")
            assert gw.port == port
    assert before.rcode() == dns.rcode.NXDOMAIN
    assert addresses(after) == {"192.0.2.2"}
    assert denied.rcode() == dns.rcode.REFUSED


async def test_forward_tries_next_server() -> None:
    """forward() moves on from a server that answers SERVFAIL to the next one."""
    async with upstream_server() as bad, upstream_server("127.0.0.2", bad.port) as good:
        bad.answers[("a.example.com", "A")] = Canned(rcode=dns.rcode.SERVFAIL)
        good.answers[("a.example.com", "A")] = Canned(
            answer=[("a.example.com", 60, "A", "192.0.2.1")]
        )
        q = dns.message.make_query("a.example.com", "A")
        got = await forward(q, ["127.0.0.1", "127.0.0.2"], port=bad.port, budget=1.0)
        alone = await forward(q, ["127.0.0.1"], port=bad.port, budget=1.0)
    assert got.response is not None
    assert got.server == "127.0.0.2"
    assert "127.0.0.1: SERVFAIL" in got.detail
    assert alone.response is None
    assert alone.detail == "127.0.0.1: SERVFAIL (x2)"  # each problem once, with its count


# ------------------------------------------------------------------------------ CNAME chains

CHAIN = [
    ("www.example.com", 60, "CNAME", "cdn.example.net."),
    ("cdn.example.net", 120, "CNAME", "edge.example.org."),
    ("edge.example.org", 300, "A", "192.0.2.10"),
]


async def test_broken_chain_gives_no_addresses() -> None:
    """A looping CNAME chain gives no address, even one held (wrongly) by a CNAME owner."""
    async with upstream_server() as up:
        up.answers[("www.example.com", "A")] = Canned(
            answer=[
                ("www.example.com", 60, "CNAME", "edge.example.net."),
                ("edge.example.net", 60, "CNAME", "www.example.com."),
                ("edge.example.net", 60, "A", "192.0.2.7"),
            ]
        )
        learner = Learner()
        async with running(make_policy("www.example.com"), up, learner) as gw:
            reply = await ask(gw, "www.example.com")
    assert learner.calls == []
    assert addresses(reply) == set()
    assert reply.rcode() == dns.rcode.NOERROR


async def test_names_on_a_live_chain_may_be_asked_until_it_ends() -> None:
    """Chain names are allowed (any type) for the chain's TTL plus grace, on the entry's ports."""
    clock = Clock()
    async with upstream_server() as up:
        up.answers[("www.example.com", "A")] = Canned(answer=CHAIN)
        up.answers[("edge.example.org", "A")] = Canned(answer=CHAIN[2:])
        up.answers[("edge.example.org", "AAAA")] = Canned(
            authority=[("example.org", 30, "SOA", "ns. h. 1 2 3 4 30")]
        )
        up.answers[("cdn.example.net", "MX")] = Canned(answer=CHAIN[1:2])
        learner = Learner()
        policy = make_policy("www.example.com:443/tcp", "other.example.com:80")
        async with running(policy, up, learner, clock=clock) as gw:
            before = await ask(gw, "edge.example.org", "AAAA")
            www = await ask(gw, "www.example.com")
            aaaa = await ask(gw, "edge.example.org", "AAAA")
            mx = await ask(gw, "cdn.example.net", "MX")
            edge = await ask(gw, "edge.example.org")
            stranger = await ask(gw, "example.org")
            clock.t += 60 + 30 - 0.5  # chain TTL 60 (its smallest) plus grace 30
            late = await ask(gw, "edge.example.org")
            clock.t += 1.0
            gone = await ask(gw, "edge.example.org")
    assert before.rcode() == dns.rcode.NXDOMAIN
    assert addresses(www) == {"192.0.2.10"}
    assert (aaaa.rcode(), mx.rcode(), edge.rcode()) == (dns.rcode.NOERROR,) * 3
    assert mx.answer == _rrsets(CHAIN[1:2])
    assert addresses(edge) == {"192.0.2.10"}
    assert stranger.rcode() == dns.rcode.NXDOMAIN
    assert late.rcode() == dns.rcode.NOERROR
    assert gone.rcode() == dns.rcode.NXDOMAIN
    www_entry = policy.outbound[:1]  # only the entry that allowed www: its ports
    assert [(c[1], c[2]) for c in learner.calls] == [
        ("www.example.com", www_entry),
        ("edge.example.org", www_entry),
        ("edge.example.org", www_entry),
    ]
    assert up.names() == [
        ("www.example.com", "A"),
        ("edge.example.org", "AAAA"),
        ("cdn.example.net", "MX"),
        ("edge.example.org", "A"),
        ("edge.example.org", "A"),
    ]


async def test_chain_through_a_live_name_ends_with_it() -> None:
    """A chain found by asking a live name lives no longer than the chain that made it live."""
    clock = Clock()
    async with upstream_server() as up:
        up.answers[("www.example.com", "CNAME")] = Canned(answer=CHAIN[:1])
        up.answers[("cdn.example.net", "A")] = Canned(
            answer=[
                ("cdn.example.net", 3000, "CNAME", "far.example.org."),
                ("far.example.org", 3000, "A", "192.0.2.11"),
            ]
        )
        up.answers[("far.example.org", "TXT")] = Canned(
            answer=[("far.example.org", 60, "TXT", '"x"')]
        )
        async with running(make_policy("www.example.com"), up, clock=clock) as gw:
            await ask(gw, "www.example.com", "CNAME")
            cdn = await ask(gw, "cdn.example.net")
            clock.t += 60 + 30 - 0.5
            far = await ask(gw, "far.example.org", "TXT")
            clock.t += 1.0
            late = await ask(gw, "far.example.org", "TXT")
    assert addresses(cdn) == {"192.0.2.11"}
    assert far.rcode() == dns.rcode.NOERROR
    assert late.rcode() == dns.rcode.NXDOMAIN


async def test_reload_forgets_chains_of_removed_entries() -> None:
    """After a reload without the entry that made a chain live, its names are denied again."""
    async with upstream_server() as up:
        up.answers[("www.example.com", "A")] = Canned(answer=CHAIN)
        up.answers[("edge.example.org", "A")] = Canned(answer=CHAIN[2:])
        async with running(make_policy("www.example.com"), up) as gw:
            await ask(gw, "www.example.com")
            kept = await ask(gw, "edge.example.org")
            gw.configure(make_policy("api.example.com"))
            dropped = await ask(gw, "edge.example.org")
    assert kept.rcode() == dns.rcode.NOERROR
    assert dropped.rcode() == dns.rcode.NXDOMAIN


# ------------------------------------------------------------------------------ DNSSEC

SIG = "{covers} 13 3 {ttl} 20300101000000 20200101000000 4711 example.com. " + "A" * 88


def _sig(owner: str, covers: str, ttl: int) -> tuple[str, int, str, str]:
    return (owner, ttl, "RRSIG", SIG.format(covers=covers, ttl=ttl))


def _covered(msg: dns.message.Message) -> set[tuple[str, str]]:
    """(owner, covered type) of every RRSIG in ``msg``."""
    return {
        (r.name.to_text(omit_final_dot=True), dns.rdatatype.to_text(r.covers))
        for section in (msg.answer, msg.authority, msg.additional)
        for r in section
        if r.rdtype == dns.rdatatype.RRSIG
    }


@pytest.mark.parametrize(
    ("question", "canned", "kept", "covered", "ad"),
    [
        (
            ("mixed.example.com", "A"),
            Canned(
                answer=[
                    ("mixed.example.com", 60, "A", "10.0.0.1"),
                    ("mixed.example.com", 60, "A", "192.0.2.5"),
                    _sig("mixed.example.com", "A", 60),
                ],
                ad=True,
            ),
            {"192.0.2.5"},
            set(),
            False,
        ),
        (
            ("inside.example.com", "A"),
            Canned(
                answer=[
                    ("inside.example.com", 60, "CNAME", "db.example.com."),
                    _sig("inside.example.com", "CNAME", 60),
                    ("db.example.com", 60, "A", "192.168.1.10"),
                    _sig("db.example.com", "A", 60),
                ],
                ad=True,
            ),
            set(),
            {("inside.example.com", "CNAME")},
            False,
        ),
        (
            ("clean.example.com", "A"),
            Canned(
                answer=[
                    ("clean.example.com", 60, "A", "192.0.2.6"),
                    _sig("clean.example.com", "A", 60),
                ],
                ad=True,
            ),
            {"192.0.2.6"},
            {("clean.example.com", "A")},
            True,
        ),
        (
            ("_s._tcp.clean.example.com", "SRV"),
            Canned(
                answer=[
                    ("_s._tcp.clean.example.com", 60, "SRV", "0 0 443 t.example.com."),
                    _sig("_s._tcp.clean.example.com", "SRV", 60),
                ],
                additional=[
                    ("t.example.com", 60, "A", "203.0.113.68"),
                    _sig("t.example.com", "A", 60),
                ],
                ad=True,
            ),
            set(),
            {("_s._tcp.clean.example.com", "SRV")},
            False,
        ),
    ],
    ids=["address-removed", "chain-cut", "intact", "additional-removed"],
)
async def test_removed_records_take_their_signatures_and_clear_ad(
    question: tuple[str, str],
    canned: Canned,
    kept: set[str],
    covered: set[tuple[str, str]],
    ad: bool,
) -> None:
    """An RRset that lost records loses its RRSIG and the reply AD; intact RRsets keep theirs."""
    async with upstream_server() as up:
        up.answers[question] = canned
        policy = make_policy(
            "mixed.example.com", "inside.example.com", "clean.example.com", "*.clean.example.com"
        )
        async with running(policy, up) as gw:
            reply = await ask(gw, *question, dnssec=True, edns=0)
    assert addresses(reply) == kept
    assert _covered(reply) == covered
    assert bool(reply.flags & dns.flags.AD) is ad


async def test_rrsig_ttls_capped_like_their_rrsets() -> None:
    """Signatures of the chain's RRsets come back with the same capped TTL as the RRsets."""
    async with upstream_server() as up:
        up.answers[("www.example.com", "AAAA")] = Canned(
            answer=[
                ("www.example.com", 86400, "CNAME", "edge.example.com."),
                _sig("www.example.com", "CNAME", 86400),
                ("edge.example.com", 7200, "AAAA", "2001:db8::1"),
                _sig("edge.example.com", "AAAA", 7200),
            ]
        )
        async with running(make_policy("www.example.com"), up, max_ttl=600) as gw:
            reply = await ask(gw, "www.example.com", "AAAA", dnssec=True, edns=0)
    assert {r.ttl for r in reply.answer} == {600}
    assert len(reply.answer) == 4


def test_matcher_ancestors_are_a_fixed_set() -> None:
    """Ancestors: above exact entries, a wildcard's parent and above, the root; nothing else."""
    m = NameMatcher([parse_outbound("api.example.com"), parse_outbound("*.cdn.example.net")])
    for name in (".", "com", "example.com", "net", "example.net", "cdn.example.net"):
        assert m.is_ancestor(name), name
    for name in ("api.example.com", "x.example.com", "x.example.net", "a.cdn.example.net"):
        assert not m.is_ancestor(name), name


async def test_dnssec_records_of_ancestors_are_forwarded_nothing_else() -> None:
    """DS/DNSKEY/SOA/NS of ancestors of entries and live names are forwarded; nothing else is."""
    clock = Clock()
    async with upstream_server() as up:
        up.answers[("example.com", "NS")] = Canned(
            answer=[
                ("example.com", 60, "NS", "ns.example.com."),
                ("example.com", 60, "A", "203.0.113.66"),
            ],
            additional=[("ns.example.com", 60, "A", "203.0.113.67")],
        )
        up.answers[("www.example.com", "A")] = Canned(answer=CHAIN)
        learner = Learner()
        policy = make_policy("www.example.com", "*.cdn.example.com")
        async with running(policy, up, learner, clock=clock) as gw:
            allowed = [
                await ask(gw, name, rtype)
                for name, rtype in (
                    ("example.com", "DS"),
                    ("com", "DNSKEY"),
                    (".", "DNSKEY"),
                    ("cdn.example.com", "SOA"),
                    ("example.com", "NS"),
                )
            ]
            denied = [
                await ask(gw, name, rtype)
                for name, rtype in (
                    ("tunnel-data.example.com", "DS"),
                    ("example.com", "TXT"),
                    ("example.com", "A"),
                    ("example.org", "DNSKEY"),
                )
            ]
            await ask(gw, "www.example.com")
            above_live = await ask(gw, "example.org", "DNSKEY")
            clock.t += 100
            after = await ask(gw, "example.org", "DNSKEY")
    assert [r.rcode() for r in denied] == [dns.rcode.NXDOMAIN] * 4
    assert after.rcode() == dns.rcode.NXDOMAIN
    assert above_live.rcode() == dns.rcode.NXDOMAIN  # upstream's answer: it was forwarded
    ns = allowed[-1]
    assert ns.answer == _rrsets([("example.com", 60, "NS", "ns.example.com.")])
    assert addresses(ns) == set()
    assert [c[1] for c in learner.calls] == ["www.example.com"]
    assert up.names() == [
        ("example.com", "DS"),
        ("com", "DNSKEY"),
        (".", "DNSKEY"),
        ("cdn.example.com", "SOA"),
        ("example.com", "NS"),
        ("www.example.com", "A"),
        ("example.org", "DNSKEY"),
    ]
