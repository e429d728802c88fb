"""Looking up a name's addresses: the one module of fenced that speaks DNS.

:class:`DnsResolver` asks the configured servers for A and AAAA at once (dnspython, UDP
with EDNS, TCP when the answer is truncated), follows CNAME chains inside each answer and
reports the chain's smallest TTL, or for NXDOMAIN/NODATA the negative TTL (RFC 2308: the
SOA of the authority section). It never raises for a DNS outcome: every lookup ends in
an :class:`Answer` whose ``status`` says what happened. :class:`FakeResolver` plays
scripted answers for tests.

Fast path. The common answer (NOERROR or NXDOMAIN, only A/AAAA/CNAME records in the
answer, not truncated) costs little: the A and AAAA queries are built by hand (header,
name, type/class, an EDNS OPT record for 1232 bytes, a random 16-bit ID per query) and
sent on long-lived *connected* UDP sockets owned by the resolver, a few per server, whose
protocol demultiplexes replies by ID (none collides with one in flight on that socket) and
drops any whose question does not echo the asked name, type and class. The reply is parsed
by hand (compression pointers followed by dnspython's rules, every offset bounds-checked)
into the very ``_Part`` that dnspython and ``_chase`` would give. Anything else is left to
dnspython: a truncated reply is asked again over TCP, another rcode or record type is
parsed by dnspython from the same datagram, a malformed reply or a socket error is asked
again with dnspython's own socket. Timeouts count as before (the ``attempts`` rounds over
the servers).

Source ports. A long-lived socket keeps its source port, which is more predictable to an
off-path spoofer than dnspython's fresh random port per query. To narrow the gap each
server gets ``SOCKETS_PER_SERVER`` sockets on kernel-chosen random ports, used in turn,
and a socket is replaced (new port; the old one closes once its queries are done) after
``ROTATE_QUERIES`` queries or ``ROTATE_SECONDS`` seconds. Against spoofing stand the
random ID, the question check and the connected socket (the kernel drops datagrams from
any other address or port). See docs/dns.md.

:func:`forward` is the DNS gateway's upstream side: it sends one already built query to
the servers in turn within a time budget and returns the first usable response, as a
:class:`Forwarded` that also says how long fenced waited for upstream.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import itertools
import math
import secrets
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, cast

import dns.asyncquery
import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver

from fenced.core.model import IPAddress

Status = Literal["ok", "nxdomain", "nodata", "servfail", "timeout", "error"]

#: Statuses that mean "the lookup failed" (as opposed to a definite answer).
FAILURES: frozenset[Status] = frozenset(("servfail", "timeout", "error"))

#: Longest CNAME chain followed inside one answer.
MAX_CHAIN = 16
#: EDNS payload size advertised (the DNS flag day 2020 value: no IP fragmentation).
EDNS_PAYLOAD = 1232


@dataclass(frozen=True)
class Answer:
    """The outcome of looking up one name's A and AAAA records.

    ``status``:

    * ``ok``: ``ips`` holds at least one address; ``ttl`` is the smallest TTL along the
      CNAME chains and address records that gave them;
    * ``nxdomain``: the name does not exist (either query said so);
    * ``nodata``: it exists but has neither A nor AAAA records;
    * ``servfail``, ``timeout``, ``error``: the lookup failed (every server was tried).
      If only one of A and AAAA failed, ``ips`` and ``ttl`` hold what the other gave
      (a *partial* answer: the failed family's addresses are unknown, not gone).

    ``cnames`` lists the chain's targets in order, ``detail`` says what went wrong in
    words (empty when nothing did): each distinct problem once, with the query types and
    how many tries gave it (``192.0.2.53: timed out (A x2, AAAA x2)``).

    ``negative_ttl`` (``nxdomain`` and ``nodata`` only) is how long the negative answer
    may be cached (RFC 2308): the smallest of the authority section's SOA TTL, that SOA's
    MINIMUM field and the TTLs of the answer section's CNAME records, over the queries
    that gave the negative answer; ``None`` when one of them carried no SOA (the answer
    says nothing about how long it holds).
    """

    status: Status
    ips: tuple[IPAddress, ...] = ()
    ttl: int | None = None
    cnames: tuple[str, ...] = ()
    detail: str = ""
    negative_ttl: int | None = None

    @property
    def failed(self) -> bool:
        """Whether the lookup failed (servfail, timeout or error), partial or not."""
        return self.status in FAILURES

    @classmethod
    def ok(cls, ips: Iterable[str | IPAddress], ttl: int, cnames: Sequence[str] = ()) -> Answer:
        """A successful answer (addresses may be given as text)."""
        addrs = tuple(dict.fromkeys(ipaddress.ip_address(ip) for ip in ips))
        if not addrs:
            raise ValueError("an ok answer needs at least one address")
        return cls("ok", addrs, ttl, tuple(cnames))

    @classmethod
    def fail(
        cls,
        status: Status,
        detail: str = "",
        ips: Iterable[str | IPAddress] = (),
        ttl: int | None = None,
        *,
        negative_ttl: int | None = None,
    ) -> Answer:
        """A negative or failed answer.

        ``ips``/``ttl`` only for partial failures, ``negative_ttl`` only for ``nxdomain``
        and ``nodata``.
        """
        addrs = tuple(dict.fromkeys(ipaddress.ip_address(ip) for ip in ips))
        return cls(status, addrs, ttl, (), detail, negative_ttl)


class Resolver(Protocol):
    """Something that looks up a name's addresses. Never raises for DNS outcomes.

    ``budget`` is the longest one ``resolve`` can take, in seconds.
    """

    budget: float

    async def resolve(self, name: str) -> Answer:
        """A and AAAA of ``name`` (no trailing dot needed), CNAMEs followed."""
        ...

    async def close(self) -> None:
        """Release what the resolver holds open (sockets); a later lookup may reopen it."""
        ...


@dataclass(frozen=True)
class _Part:
    """The outcome of one query type.

    ``negative_ttl``: see ``Answer`` (``nxdomain``/``nodata`` with an SOA only);
    ``tries``: for a failure after every server was tried, each try's problem (server
    and what went wrong) with the query type, in order.
    """

    status: Status
    ips: tuple[IPAddress, ...] = ()
    ttl: int | None = None
    cnames: tuple[str, ...] = ()
    detail: str = ""
    negative_ttl: int | None = None
    tries: tuple[tuple[str, str], ...] = ()


def _negative_ttl(response: dns.message.Message) -> int | None:
    """RFC 2308's negative TTL of ``response`` (``None`` without an SOA).

    The smallest of the authority section's SOA TTL and MINIMUM field, lowered to the TTL
    of every CNAME in the answer section.
    """
    soa: float = math.inf
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA and rrset.rdclass == dns.rdataclass.IN:
            soa = min(soa, rrset.ttl, *(rd.minimum for rd in rrset))
    if soa == math.inf:
        return None
    for rrset in response.answer:
        if rrset.rdtype == dns.rdatatype.CNAME and rrset.rdclass == dns.rdataclass.IN:
            soa = min(soa, rrset.ttl)
    return int(soa)


def _chase(
    response: dns.message.Message, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType
) -> _Part:
    """Follow the CNAME chain from ``qname`` in the answer section to ``rdtype`` records.

    Records not on the chain are ignored (a server cannot add addresses for other names).
    """
    name = qname
    ttl = math.inf
    cnames: list[str] = []
    seen = {name}
    for _ in range(MAX_CHAIN + 1):
        rrset = response.get_rrset(response.answer, name, dns.rdataclass.IN, rdtype)
        if rrset is not None and len(rrset) > 0:
            ips = tuple(ipaddress.ip_address(rd.address) for rd in rrset)
            return _Part("ok", ips, int(min(ttl, rrset.ttl)), tuple(cnames))
        cname = response.get_rrset(response.answer, name, dns.rdataclass.IN, dns.rdatatype.CNAME)
        if cname is None or len(cname) == 0:
            break
        ttl = min(ttl, cname.ttl)
        name = cname[0].target
        if name in seen:
            return _Part("error", cnames=tuple(cnames), detail=f"CNAME loop at {name}")
        seen.add(name)
        cnames.append(name.to_text(omit_final_dot=True))
    else:
        return _Part("error", cnames=tuple(cnames), detail="CNAME chain too long")
    return _Part("nodata", cnames=tuple(cnames), negative_ttl=_negative_ttl(response))


def _least(values: Iterable[int | None]) -> int | None:
    """The smallest of ``values``; ``None`` if any is ``None`` (no SOA: re-ask soonest)."""
    known = list(values)
    return None if not known or None in known else min(v for v in known if v is not None)


def _summarize(tries: Iterable[tuple[str, str]]) -> str:
    """Each distinct problem once, with the labels (query types) and tries that gave it.

    ``[("s: timed out", "A"), ("s: timed out", "A"), ("s: timed out", "AAAA")]`` gives
    ``"s: timed out (A x2, AAAA)"``; problems are listed in the order first seen.
    """
    seen: dict[str, collections.Counter[str]] = {}
    for problem, label in tries:
        seen.setdefault(problem, collections.Counter())[label] += 1
    out: list[str] = []
    for problem, labels in seen.items():
        shown = [f"{lab} x{n}" if n > 1 else lab for lab, n in labels.items() if lab]
        unlabeled = labels.get("", 0)
        if unlabeled > 1:
            shown.append(f"x{unlabeled}")
        out.append(f"{problem} ({', '.join(shown)})" if shown else problem)
    return "; ".join(out)


def _combine(name: str, parts: Sequence[_Part]) -> Answer:
    """One answer from the A and AAAA outcomes (see ``Answer``)."""
    nx = [p for p in parts if p.status == "nxdomain"]
    if nx:
        detail = next((p.detail for p in nx if p.detail), f"{name} does not exist")
        return Answer("nxdomain", detail=detail, negative_ttl=_least(p.negative_ttl for p in nx))
    good = [p for p in parts if p.status == "ok"]
    ips = tuple(dict.fromkeys(ip for p in good for ip in p.ips))
    ttls = [p.ttl for p in good if p.ttl is not None]
    ttl = min(ttls) if ttls else None
    cnames = next((p.cnames for p in parts if p.cnames), ())
    failed = [p for p in parts if p.status in FAILURES]
    if failed:
        detail = _summarize(t for p in failed for t in (p.tries or ((p.detail, ""),)) if t[0])
        return Answer(failed[0].status, ips, ttl, cnames, detail)
    if ips:
        return Answer("ok", ips, ttl, cnames)
    negative = _least(p.negative_ttl for p in parts)
    return Answer("nodata", (), None, cnames, f"{name} has no A or AAAA records", negative)


# ------------------------------------------------------------------------------ fast path

_QTYPE_A = 1
_QTYPE_CNAME = 5
_QTYPE_SOA = 6
_QTYPE_NS = 2
_QTYPE_AAAA = 28
_QTYPE_OPT = 41
_CLASS_IN = 1
#: Header flags after the ID (RD), counts (one question, one additional: the OPT record).
_QUERY_HEAD = b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x01"
#: The OPT record: root owner, type 41, class = payload, TTL 0 (no DO bit), no options.
_QUERY_OPT = b"\x00\x00\x29" + EDNS_PAYLOAD.to_bytes(2, "big") + b"\x00\x00\x00\x00\x00\x00"
#: Sockets per server; a socket is replaced after this many queries or seconds.
SOCKETS_PER_SERVER = 4
ROTATE_QUERIES = 10_000
ROTATE_SECONDS = 60.0
#: Most queries in flight on one socket (beyond that, dnspython's socket per query).
_MAX_PENDING = 30_000
#: Label bytes a CNAME target may hold for the fast path to name it in text (others:
#: dnspython, which escapes them).
_PLAIN = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
_MAX_HOPS = 16


def _read_name(wire: bytes, pos: int) -> tuple[tuple[bytes, ...], int] | None:
    """The labels of the (possibly compressed) name at ``pos`` and the offset after it.

    ``None`` when malformed, with dnspython's rules: pointers point strictly backwards
    and the target does not overlap the name, at most 16 hops, 255 octets in all.
    """
    labels: list[bytes] = []
    end = len(wire)  # reads must stay below this (shrinks after each jump)
    start = pos
    biggest = pos
    after = -1
    hops = 0
    length = 1
    while True:
        if pos >= end:
            return None
        count = wire[pos]
        if count == 0:
            pos += 1
            break
        if count < 64:
            stop = pos + 1 + count
            if stop > end:
                return None
            labels.append(wire[pos + 1 : stop])
            length += count + 1
            if length > 255:
                return None
            pos = stop
        elif count >= 192:
            if pos + 1 >= end:
                return None
            target = ((count & 0x3F) << 8) | wire[pos + 1]
            if target >= biggest:
                return None
            hops += 1
            if hops > _MAX_HOPS:
                return None
            if after < 0:
                after = pos + 2
            biggest = target
            end = start
            pos = start = target
        else:
            return None
    return tuple(labels), (after if after >= 0 else pos)


def _key(labels: tuple[bytes, ...]) -> bytes:
    """A name's labels as one case-folded key (length-prefixed: unambiguous)."""
    return b"".join(bytes((len(lab),)) + lab for lab in labels).lower()


def _name_text(labels: tuple[bytes, ...]) -> str | None:
    """``labels`` as dnspython's ``to_text(omit_final_dot=True)`` would, plain ones only."""
    if not labels or any(not lab or not _PLAIN.issuperset(lab) for lab in labels):
        return None
    return b".".join(labels).decode("ascii")


def _fast_parse(wire: bytes, question: bytes, rdtype: int) -> _Part | None:
    """The ``_Part`` that dnspython + ``_ask`` would give for ``wire``, or ``None``.

    Handles only a well-formed NOERROR/NXDOMAIN response (not truncated) whose answer
    section holds only A, AAAA and CNAME records of class IN, whose authority section
    holds only NS records and at most one SOA, and whose additional section holds only
    A, AAAA and one plain OPT record; ``None`` for everything else (the caller falls back
    to dnspython).
    """
    n = len(wire)
    if n < 12:
        return None
    flags = (wire[2] << 8) | wire[3]
    if not flags & 0x8000 or flags & 0x7800 or flags & 0x0200:  # QR, opcode QUERY, TC
        return None
    rcode = flags & 0x000F
    if rcode not in (0, 3):
        return None
    qd, an, ns, ar = struct.unpack_from("!HHHH", wire, 4)
    qend = 12 + len(question)
    if (
        qd != 1
        or wire[12:qend].lower() != question.lower()
        or wire[qend - 4 : qend] != question[-4:]
    ):
        return None
    pos = qend
    # owner (lower case) -> records, in order: (type, ttl, rdata or target labels)
    addrs: dict[bytes, list[tuple[int, int, bytes]]] = {}
    cnames: dict[bytes, tuple[int, tuple[bytes, ...]]] = {}
    soa: float = math.inf  # min(TTL, MINIMUM) of the authority section's SOA record
    opt = 0
    for section, count in ((1, an), (2, ns), (3, ar)):
        for _ in range(count):
            got = _read_name(wire, pos)
            if got is None:
                return None
            owner, pos = got
            if pos + 10 > n:
                return None
            rtype, rclass, ttl, rdlen = struct.unpack_from("!HHIH", wire, pos)
            pos += 10
            rend = pos + rdlen
            if rend > n:
                return None
            if rtype == _QTYPE_OPT:
                # one, in the additional section, root owner, no extended rcode, no options
                if section != 3 or opt or owner or ttl >> 16 or rdlen:
                    return None
                opt = 1
                pos = rend
                continue
            if rclass != _CLASS_IN:
                return None
            if ttl > 0x7FFFFFFF:  # RFC 2181 8: read as 0 (so does dnspython)
                ttl = 0
            if rtype in (_QTYPE_A, _QTYPE_AAAA) and section != 2:
                if rdlen != (4 if rtype == _QTYPE_A else 16):
                    return None
                if section == 1:
                    key = _key(owner)
                    addrs.setdefault(key, []).append((rtype, ttl, wire[pos:rend]))
            elif rtype == _QTYPE_CNAME and section == 1:
                target = _read_name(wire, pos)
                if target is None or target[1] != rend:
                    return None
                key = _key(owner)
                if key in cnames:  # several CNAMEs for one owner: dnspython decides
                    return None
                cnames[key] = (ttl, target[0])
            elif rtype == _QTYPE_NS and section == 2:
                target = _read_name(wire, pos)
                if target is None or target[1] != rend:
                    return None
            elif rtype == _QTYPE_SOA and section == 2:
                mname = _read_name(wire, pos)
                if mname is None:
                    return None
                rname = _read_name(wire, mname[1])
                if rname is None or rname[1] + 20 != rend or soa != math.inf:
                    return None  # several SOAs: dnspython keeps one per owner, it decides
                (minimum,) = struct.unpack_from("!I", wire, rend - 4)
                soa = min(ttl, minimum)
            else:
                return None
            pos = rend
    if pos != n:  # trailing junk: dnspython refuses it
        return None
    negative = None if soa == math.inf else int(min([soa, *(t for t, _ in cnames.values())]))
    if rcode == 3:
        return _Part("nxdomain", negative_ttl=negative)
    # _chase, on the parsed records
    qlabels = _read_name(question, 0)
    if qlabels is None:
        return None
    name = _key(qlabels[0])
    ttl_min: float = math.inf
    chain: list[str] = []
    seen = {name}
    for _ in range(MAX_CHAIN + 1):
        recs = addrs.get(name)
        if recs:
            ips: dict[IPAddress, None] = {}
            rr_ttl: float = math.inf
            for t, rttl, rdata in recs:
                if t == rdtype:
                    ip: IPAddress = (
                        ipaddress.IPv4Address(rdata)
                        if t == _QTYPE_A
                        else ipaddress.IPv6Address(rdata)
                    )
                    ips[ip] = None
                    rr_ttl = min(rr_ttl, rttl)
            if ips:
                return _Part("ok", tuple(ips), int(min(ttl_min, rr_ttl)), tuple(chain))
        link = cnames.get(name)
        if link is None:
            break
        ttl_min = min(ttl_min, link[0])
        text = _name_text(link[1])
        if text is None:
            return None
        name = _key(link[1])
        if name in seen:
            return _Part("error", cnames=tuple(chain), detail=f"CNAME loop at {text}.")
        seen.add(name)
        chain.append(text)
    else:
        return _Part("error", cnames=tuple(chain), detail="CNAME chain too long")
    return _Part("nodata", cnames=tuple(chain), negative_ttl=negative)


class _UdpSocket(asyncio.DatagramProtocol):
    """One connected UDP socket to one server; demultiplexes responses by query ID.

    ``pending`` maps an ID in flight to the question it asked and the future that
    receives the response. A datagram is delivered only if its ID is in flight, it is a
    response (QR) and its question section echoes the asked name (any case), type and
    class; everything else is dropped (the socket is connected, so the kernel already
    dropped datagrams from other addresses and ports).
    """

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: dict[int, tuple[bytes, asyncio.Future[bytes]]] = {}
        self.sent = 0
        self.opened = time.monotonic()
        self.retired = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if len(data) < 12 or data[2] & 0xF8 != 0x80:  # a response (QR) to a QUERY (opcode 0)
            return
        entry = self.pending.get((data[0] << 8) | data[1])
        if entry is None:
            return
        question, fut = entry
        qend = 12 + len(question)
        qd = (data[4] << 8) | data[5]
        if qd == 1:
            if data[12:qend].lower() != question.lower() or data[qend - 4 : qend] != question[-4:]:
                return
        elif not (qd == 0 and data[3] & 0x0F in (1, 2, 4, 5)):  # dnspython takes these too
            return
        del self.pending[(data[0] << 8) | data[1]]
        if not fut.done():
            fut.set_result(data)
        self._close_if_idle()

    def error_received(self, exc: Exception) -> None:
        # An ICMP error (port unreachable, ...): it cannot be tied to one query, so every
        # query in flight here gets it and goes to dnspython, which decides per query.
        for _question, fut in self.pending.values():
            if not fut.done():
                fut.set_exception(exc)
        self.pending.clear()
        self.retired = True
        self._close_if_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        for _question, fut in self.pending.values():
            if not fut.done():
                fut.set_exception(exc or ConnectionError("socket closed"))
        self.pending.clear()
        self.retired = True

    def send(self, query_tail: bytes, question: bytes) -> tuple[int, asyncio.Future[bytes]]:
        """Send a query (``query_tail``: all but the ID) with a fresh random ID."""
        assert self.transport is not None
        qid = secrets.randbits(16)
        while qid in self.pending:
            qid = secrets.randbits(16)
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.pending[qid] = (question, fut)
        self.sent += 1
        self.transport.sendto(qid.to_bytes(2, "big") + query_tail)
        return qid, fut

    def forget(self, qid: int, fut: asyncio.Future[bytes]) -> None:
        """Stop waiting for query ``qid`` (timed out or cancelled)."""
        entry = self.pending.get(qid)
        if entry is not None and entry[1] is fut:
            del self.pending[qid]
        self._close_if_idle()

    def worn(self, now: float) -> bool:
        """Whether to replace this socket (see the module's note on source ports)."""
        return (
            self.retired
            or self.sent >= ROTATE_QUERIES
            or now - self.opened >= ROTATE_SECONDS
            or len(self.pending) >= _MAX_PENDING
        )

    def retire(self) -> None:
        """Take no new queries; close once the ones in flight are answered or given up."""
        self.retired = True
        self._close_if_idle()

    def _close_if_idle(self) -> None:
        if self.retired and not self.pending and self.transport is not None:
            self.transport.close()


class _ServerSockets:
    """The ``SOCKETS_PER_SERVER`` sockets to one server, used in turn.

    Each is opened lazily and replaced when worn; a replaced one closes when the queries
    in flight on it are done.
    """

    def __init__(self, server: str, port: int) -> None:
        self.addr = (server, port)
        self.family = socket.AF_INET6 if ":" in server else socket.AF_INET
        self.slots: list[_UdpSocket | None] = [None] * SOCKETS_PER_SERVER
        self.opening: list[asyncio.Task[_UdpSocket] | None] = [None] * SOCKETS_PER_SERVER
        self.turn = 0

    async def pick(self) -> _UdpSocket:
        """A socket to send on (OSError when one cannot be opened)."""
        i = self.turn
        self.turn = (i + 1) % SOCKETS_PER_SERVER
        sock = self.slots[i]
        if sock is not None and not sock.worn(time.monotonic()):
            return sock
        task = self.opening[i]
        if task is None:
            task = asyncio.get_running_loop().create_task(self._open(i))
            task.add_done_callback(_retrieve)
            self.opening[i] = task
        return await asyncio.shield(task)

    async def _open(self, i: int) -> _UdpSocket:
        try:
            loop = asyncio.get_running_loop()
            # remote_addr: a connected socket on a kernel-chosen random port.
            _transport, proto = await loop.create_datagram_endpoint(
                _UdpSocket, remote_addr=self.addr, family=self.family
            )
            old, self.slots[i] = self.slots[i], proto
            if old is not None:
                old.retire()
            return proto
        finally:
            self.opening[i] = None

    def close(self) -> None:
        """Close every socket now (queries in flight fail over to dnspython)."""
        for i, sock in enumerate(self.slots):
            if sock is not None and sock.transport is not None:
                sock.retired = True
                with contextlib.suppress(RuntimeError):  # the loop may be closed
                    sock.transport.close()
            self.slots[i] = None


def _retrieve(task: asyncio.Task[_UdpSocket]) -> None:
    if not task.cancelled():
        task.exception()


def _judge(
    response: dns.message.Message, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType
) -> _Part:
    """The outcome of one server's (dnspython-parsed) response."""
    rcode = response.rcode()
    if rcode == dns.rcode.NXDOMAIN:
        return _Part("nxdomain", negative_ttl=_negative_ttl(response))
    if rcode == dns.rcode.SERVFAIL:
        return _Part("servfail", detail="SERVFAIL")
    if rcode != dns.rcode.NOERROR:
        return _Part("error", detail=dns.rcode.to_text(rcode))
    try:
        return _chase(response, qname, rdtype)
    except (ValueError, AttributeError) as exc:  # malformed address records
        return _Part("error", detail=f"bad answer: {exc}")


def _encode(name: str) -> tuple[dns.name.Name, bytes]:
    """``name`` parsed by dnspython and in uncompressed wire form (DNSException if bad)."""
    qname = dns.name.from_text(name)
    wire = qname.to_wire()
    assert wire is not None  # no file given: the bytes are returned
    return qname, wire


def _expire(fut: asyncio.Future[bytes]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


class DnsResolver:
    """Looks names up at ``servers`` (IP addresses, all on ``port``).

    Common answers take the fast path (see the module's docstring), the rest dnspython;
    ``fast=False`` uses dnspython only. ``paths`` counts tries by path: ``fast`` (the shared
    sockets), ``tcp`` (truncated there, asked again over TCP), ``dnspython``.
    ``close()`` closes the long-lived sockets.

    Each query (A, AAAA) tries the servers in order, ``attempts`` rounds at most, each try
    bounded by ``timeout`` seconds (UDP, then TCP for the same time when truncated). A
    server's SERVFAIL, REFUSED, timeout or network error moves on to the next server;
    NOERROR and NXDOMAIN are final.
    """

    def __init__(
        self,
        servers: Sequence[str | IPAddress],
        *,
        port: int = 53,
        timeout: float = 2.0,
        attempts: int = 2,
        fast: bool = True,
    ) -> None:
        if not servers:
            raise ValueError("DnsResolver needs at least one server")
        self.servers = tuple(str(ipaddress.ip_address(s)) for s in servers)
        self.port = port
        self.timeout = timeout
        self.attempts = max(1, attempts)
        #: The longest one ``resolve`` can take (every attempt at every server timing out).
        self.budget = self.timeout * self.attempts * max(1, len(self.servers))
        #: Whether to try the hand-built fast path first (False: dnspython only).
        self.fast = fast
        #: How many tries each path answered ("fast", "dnspython").
        self.paths: collections.Counter[str] = collections.Counter()
        self._pools: dict[str, _ServerSockets] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def from_system(cls, *, port: int = 53, timeout: float = 2.0, attempts: int = 2) -> DnsResolver:
        """A resolver using the name servers of /etc/resolv.conf (ValueError if none)."""
        try:
            conf = dns.resolver.Resolver(configure=True)
        except dns.exception.DNSException as exc:
            raise ValueError(f"no usable name servers in /etc/resolv.conf: {exc}") from exc
        servers = [s for s in conf.nameservers if isinstance(s, str)]
        return cls(servers, port=port, timeout=timeout, attempts=attempts)

    async def resolve(self, name: str) -> Answer:
        """See ``Resolver.resolve``; never raises for DNS outcomes."""
        try:
            qname, qwire = _encode(name)
        except dns.exception.DNSException as exc:
            return Answer("error", detail=f"bad name {name!r}: {exc}")
        # A in a task, AAAA inline: one task per name instead of gather's two.
        a_task = asyncio.get_running_loop().create_task(self._query(qname, qwire, dns.rdatatype.A))
        try:
            aaaa = await self._query(qname, qwire, dns.rdatatype.AAAA)
        except BaseException:
            a_task.cancel()
            raise
        return _combine(name, (await a_task, aaaa))

    async def close(self) -> None:
        """Close the long-lived sockets (they reopen if ``resolve`` is called again)."""
        for pool in self._pools.values():
            pool.close()
        self._pools = {}

    async def _query(
        self, qname: dns.name.Name, qwire: bytes, rdtype: dns.rdatatype.RdataType
    ) -> _Part:
        last = _Part("error", detail="no server tried")
        tries: list[tuple[str, str]] = []
        kind = dns.rdatatype.to_text(rdtype)
        for _ in range(self.attempts):
            for server in self.servers:
                part = await self._ask(server, qname, qwire, rdtype)
                if part.status not in FAILURES:
                    return part
                tries.append((f"{server}: {part.detail}", kind))
                last = part
        return _Part(last.status, detail=_summarize(tries), tries=tuple(tries))

    async def _ask(
        self,
        server: str,
        qname: dns.name.Name,
        qwire: bytes,
        rdtype: dns.rdatatype.RdataType,
    ) -> _Part:
        if self.fast:
            part = await self._ask_fast(server, qname, qwire, rdtype)
            if part is not None:
                return part
        self.paths["dnspython"] += 1
        return await self._ask_dnspython(server, qname, rdtype)

    async def _ask_fast(
        self,
        server: str,
        qname: dns.name.Name,
        qwire: bytes,
        rdtype: dns.rdatatype.RdataType,
    ) -> _Part | None:
        """One try on the shared socket; ``None`` means: ask again with dnspython."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # sockets belong to one event loop
            await self.close()
            self._loop = loop
        pool = self._pools.get(server)
        if pool is None:
            pool = self._pools[server] = _ServerSockets(server, self.port)
        try:
            sock = await pool.pick()
        except OSError:
            return None
        question = qwire + struct.pack("!HH", rdtype, _CLASS_IN)
        qid, fut = sock.send(_QUERY_HEAD + question + _QUERY_OPT, question)
        timer = loop.call_later(self.timeout, _expire, fut)
        try:
            data = await fut
        except TimeoutError:
            self.paths["fast"] += 1
            return _Part("timeout", detail="timed out")
        except OSError:
            return None
        finally:
            timer.cancel()
            sock.forget(qid, fut)
        part = _fast_parse(data, question, rdtype)
        if part is not None:
            self.paths["fast"] += 1
            return part
        if data[2] & 0x02:  # truncated: ask again over TCP, as dnspython would
            self.paths["tcp"] += 1
            return await self._ask_dnspython(server, qname, rdtype, tcp=True)
        # Not the common case (another rcode, other record types): dnspython parses the
        # same datagram; if it cannot, it asks again itself.
        try:
            response = dns.message.from_wire(data)
        except Exception:  # any parse failure: dnspython's own try decides
            return None
        self.paths["fast"] += 1  # sent and received by the fast path, parsed by dnspython
        return _judge(response, qname, rdtype)

    async def _ask_dnspython(
        self,
        server: str,
        qname: dns.name.Name,
        rdtype: dns.rdatatype.RdataType,
        *,
        tcp: bool = False,
    ) -> _Part:
        """One try with dnspython: UDP then TCP when truncated, or TCP only (``tcp``)."""
        query = dns.message.make_query(qname, rdtype, use_edns=0, payload=EDNS_PAYLOAD)
        try:
            if tcp:
                response = await dns.asyncquery.tcp(
                    query, server, timeout=self.timeout, port=self.port
                )
            else:
                response, _tcp = await dns.asyncquery.udp_with_fallback(
                    query, server, timeout=self.timeout, port=self.port, ignore_unexpected=True
                )
        except dns.exception.Timeout:
            return _Part("timeout", detail="timed out")
        except (dns.exception.DNSException, OSError, EOFError, ValueError) as exc:
            return _Part("error", detail=f"{type(exc).__name__}: {exc}".rstrip(": "))
        return _judge(response, qname, rdtype)


class FakeResolver:
    """Scripted answers for tests, counting queries.

    ``script(name, a1, a2, ...)`` queues answers for ``name``: each query takes the next
    one and the last repeats. An answer may be an exception, which ``resolve`` raises (to
    test callers' robustness). Unknown names answer NXDOMAIN. ``delay(name, seconds)``
    makes queries wait that long with ``sleep`` (e.g. a fake clock's). ``queries`` counts
    queries per name; ``max_in_flight`` records the most concurrent ones; ``closed``
    counts ``close`` calls.
    """

    def __init__(self, sleep: Callable[[float], Awaitable[None]] | None = None) -> None:
        self._sleep = sleep or asyncio.sleep
        self._answers: dict[str, collections.deque[Answer | Exception]] = {}
        self._delays: dict[str, float] = {}
        self.budget = 5.0
        self.queries: collections.Counter[str] = collections.Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.closed = 0

    def script(self, name: str, *answers: Answer | Exception) -> None:
        """Replace ``name``'s queued answers."""
        self._answers[name] = collections.deque(answers)

    def delay(self, name: str, seconds: float) -> None:
        """Make each query of ``name`` take ``seconds``."""
        self._delays[name] = seconds

    async def resolve(self, name: str) -> Answer:
        """The next scripted answer for ``name``."""
        self.queries[name] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self._delays.get(name):
                await self._sleep(self._delays[name])
            queue = self._answers.get(name)
            if not queue:
                return Answer("nxdomain", detail="not scripted")
            answer = queue.popleft() if len(queue) > 1 else queue[0]
            if isinstance(answer, Exception):
                raise answer
            return answer
        finally:
            self.in_flight -= 1

    async def close(self) -> None:
        """See ``Resolver.close`` (counted; nothing is held)."""
        self.closed += 1


# ------------------------------------------------------------------------------ forwarding


@dataclass(frozen=True)
class Forwarded:
    """The outcome of :func:`forward`.

    ``response`` is the first NOERROR or NXDOMAIN response (its ID and question match
    the query: dnspython checks), or ``None`` when every try failed; ``server`` the
    server that gave it; ``upstream`` the seconds spent waiting on servers (all tries);
    ``tcp`` whether the response came over TCP; ``detail`` what went wrong, per try, in
    words (empty when the first try answered). ``refusal`` is the last REFUSED response
    when every server refused the query (then ``response`` is ``None``), else ``None``.
    """

    response: dns.message.Message | None
    server: str | None
    upstream: float
    tcp: bool = False
    detail: str = ""
    refusal: dns.message.Message | None = None


async def forward(
    query: dns.message.Message,
    servers: Sequence[str | IPAddress],
    *,
    port: int = 53,
    timeout: float = 1.0,
    budget: float = 2.0,
    rounds: int = 2,
) -> Forwarded:
    """Send ``query`` to ``servers`` in order until one gives a usable answer.

    Each try goes over UDP and, when the answer is truncated, over TCP to the same
    server, and is bounded by ``timeout`` seconds and by what is left of ``budget``
    (the whole call never takes much longer than ``budget``). A timeout, a network error,
    a malformed or mismatched reply, or an rcode other than NOERROR and NXDOMAIN
    (SERVFAIL, REFUSED, FORMERR, ...) moves on to the next server; the list is walked at
    most ``rounds`` times, a server that refused is not asked again (a refusal is its
    answer, not a hiccup). Never raises for a network or DNS outcome: failure is
    ``Forwarded(response=None, ...)``, with ``refusal`` set when every server refused.
    The query is sent as given (build it with a fresh random ID: responses are matched
    on ID and question).
    """
    addrs = [str(ipaddress.ip_address(s)) for s in servers]
    start = time.monotonic()
    deadline = start + budget
    problems: list[str] = []
    refusal: dns.message.Message | None = None
    refused: set[str] = set()
    if not addrs:
        return Forwarded(None, None, 0.0, detail="no upstream server")
    for server in itertools.islice(itertools.cycle(addrs), max(1, rounds) * len(addrs)):
        if server in refused:
            continue
        left = deadline - time.monotonic()
        if left <= 0.01:
            problems.append("time budget spent")
            break
        try_timeout = min(timeout, left)
        try:
            response, tcp = await asyncio.wait_for(
                dns.asyncquery.udp_with_fallback(
                    query, server, timeout=try_timeout, port=port, ignore_unexpected=True
                ),
                timeout=left,
            )
        except (dns.exception.Timeout, TimeoutError):
            problems.append(f"{server}: timed out")
            continue
        except (dns.exception.DNSException, OSError, EOFError, ValueError) as exc:
            problems.append(f"{server}: {type(exc).__name__}: {exc}".rstrip(": "))
            continue
        rcode = response.rcode()
        if rcode in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            return Forwarded(response, server, time.monotonic() - start, tcp, "; ".join(problems))
        if rcode == dns.rcode.REFUSED:
            refused.add(server)
            refusal = response
        problems.append(f"{server}: {dns.rcode.to_text(rcode)}")
    return Forwarded(
        None,
        None,
        time.monotonic() - start,
        detail="; ".join(problems),
        refusal=refusal if refused.issuperset(addrs) else None,
    )


__all__ = [
    "FAILURES",
    "Answer",
    "DnsResolver",
    "FakeResolver",
    "Forwarded",
    "Resolver",
    "Status",
    "forward",
]
