"""The DNS gateway: answers a gateway policy's DNS and opens what it answers, first.

A policy with ``dns = "gateway"`` has its DNS (UDP and TCP port 53, to any address)
redirected by the ruleset to a loopback port of its own, where a :class:`Gateway` listens.
The port says which policy asked (the kernel lets only that policy's sockets reach it),
so one ``Gateway`` serves one policy. For each query it:

* answers ``FORMERR`` to what does not parse (or drops it when not even the header
  does), ``BADVERS`` (with EDNS version 0) to an EDNS version above 0 (RFC 6891),
  ``NOTIMP`` to opcodes other than QUERY, ``FORMERR`` to anything but exactly one
  question, ``REFUSED`` to classes other than IN and to zone transfers and other meta
  types;
* answers ``NXDOMAIN`` (or ``REFUSED``, per the policy's ``deny_response``) to a name no
  outbound entry allows, with the question echoed, without asking upstream: whatever
  the type, so a TXT or NULL query cannot tunnel data out through a resolver. A policy
  in audit mode logs and counts such a query the same way, then forwards it and returns
  the answer untouched (nothing is learned: the policy drops nothing anyway);
* forwards a question for an allowed name to the resolvers with a fresh random ID
  (:func:`fenced.dns.forward.forward`: UDP with EDNS, TCP on truncation, next server on
  failure, about 2 s in all), keeping the client's RD, CD and AD bits and its DO bit;
  the reply carries the upstream's rcode and its AA, AD, CD and RA bits. When every
  resolver refused, the client gets ``REFUSED``; when nothing usable comes back
  otherwise, ``SERVFAIL``;
* lets the names on an allowed answer's CNAME chain be asked (any type) while the chain is
  live, on the ports of the entry that allowed the first name (:mod:`fenced.core.chains`), and
  forwards DS, DNSKEY, SOA and NS queries for the ancestors of the entries and of live
  names (a validating stub's chain of trust), with every address removed from those;
* in the answer, follows the CNAME chain from the question name (answer section only)
  and keeps the A and AAAA records on it (none when the chain loops or runs past
  :data:`~fenced.dns.answers.MAX_CHAIN` links); every other A or AAAA record, in any section,
  is removed, so the client never holds an address fenced did not vouch for (SRV, MX
  and other additional-section glue included: the client asks for those names itself,
  and they are judged like any other). With ``allow_private = false`` addresses that
  :func:`fenced.core.model.is_restricted` flags are removed too;
* when addresses remain, awaits the injected ``learn`` hook with them and the chain's
  smallest TTL, and replies only after it returned: the firewall holds the addresses
  before the client can use them. If the hook raises or takes longer than
  ``learn_timeout``, the client gets ``SERVFAIL``: nothing the firewall did not accept
  is released;
* removes the RRSIGs covering every RRset it took records out of, and then clears AD;
* gives every record on the chain (and its RRSIGs) the chain's smallest TTL, at most
  ``max_ttl``, so a caching stub forgets the whole chain at once, and never later than
  the firewall drops the addresses (their effective TTL plus ``grace``);
* returns other types (TXT, SRV, HTTPS, MX, ...) of allowed names unchanged apart from
  removed address records; nothing in them is learned (not SRV or HTTPS targets, not
  ``ipv4hint``/``ipv6hint``);
* over UDP, when the reply exceeds what the client can take (its EDNS payload size, 512
  bytes without EDNS), leaves out the additional section and, if that is not enough,
  sends ``TC=1`` with the first whole answer records that fit and nothing else (as BIND
  and dnsmasq do; a cut RRset loses its RRSIGs and AD is cleared): a client that does
  not retry over TCP still gets the addresses learned first, and never one the
  firewall does not hold. The TCP listener takes
  length-prefixed messages, several per connection, closes connections idle for
  ``tcp_idle`` seconds and holds at most ``max_tcp`` at once.
* reads its UDP sockets with ``recvmsg`` and ``SO_RXQ_OVFL``: queries the kernel dropped
  because a socket's receive queue was full are counted as ``dropped`` when that socket
  next receives one.

Every query ends in one result reported to the ``observe`` hook as a
:class:`~fenced.core.events.GatewayQuery` (see :data:`Result`) with the time fenced
added (handling time minus the time spent waiting on resolvers). Denials, failures and
removed private addresses are logged: the first time per name, then at 10, 100, 1000,
... occurrences, and never more than a few lines a second per gateway (what was held
back is counted on the next line).

:class:`NameMatcher` is the pure part: which outbound entries allow a name.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import socket
import struct
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from fenced.core.chains import Labels, LiveChains, ancestors, name_labels
from fenced.core.events import AddressDropped, GatewayLost, GatewayQuery, Observer, ignore
from fenced.core.model import DaemonConfig, IPAddress, Policy, Target, is_restricted
from fenced.dns.answers import answer_chain
from fenced.dns.forward import forward
from fenced.dns.wire import EDNS_PAYLOAD
from fenced.log import Logger, log

__all__ = [
    "Gateway",
    "LearnHook",
    "NameMatcher",
    "Result",
    "Transport",
]

#: The outcome of one query, as counted:
#:
#: * ``allowed``: forwarded, and the upstream answer (NOERROR or NXDOMAIN) returned;
#: * ``denied``: the name is not allowed; NXDOMAIN or REFUSED returned;
#: * ``audit_denied``: the name is not allowed but the policy is in audit mode: logged
#:   like a denial, then forwarded and the answer returned as is, nothing learned;
#: * ``servfail``: no resolver gave a usable answer in time; SERVFAIL returned;
#: * ``learn_failed``: the ``learn`` hook raised or timed out; SERVFAIL returned;
#: * ``formerr``: malformed, or not exactly one question; FORMERR returned; or an EDNS
#:   version above 0: BADVERS returned;
#: * ``refused``: class other than IN, a zone transfer or meta type, or every resolver
#:   refused the query; REFUSED returned;
#: * ``notimp``: opcode other than QUERY; NOTIMP returned;
#: * ``dropped``: no reply at all (unparseable header, a response sent to the gateway,
#:   too many queries in flight, or dropped by the kernel: the socket's receive queue
#:   was full).
Result = Literal[
    "allowed",
    "denied",
    "audit_denied",
    "servfail",
    "learn_failed",
    "formerr",
    "refused",
    "notimp",
    "dropped",
]

#: How a query reached the gateway.
Transport = Literal["udp", "tcp"]

#: ``learn(policy, qname, targets, ips, ttl)``: put ``ips`` into ``policy``'s sets for
#: ``targets`` (the outbound entries that allow ``qname``; their ports), kept for ``ttl``
#: (the chain's smallest TTL, not yet raised to ``min_ttl`` or lowered to ``max_ttl``)
#: plus grace. Must return only once the kernel holds them, and raise if it could not.
#: The gateway waits at most ``learn_timeout`` seconds (then answers SERVFAIL) but never
#: cancels the hook: it runs to its end in the background.
LearnHook = Callable[[str, str, tuple[Target, ...], tuple[IPAddress, ...], int], Awaitable[None]]

_ADDRESS_TYPES = frozenset((dns.rdatatype.A, dns.rdatatype.AAAA))
#: What a validating stub asks about the zone cuts above a name (DNSSEC's chain of trust).
_INFRA_TYPES = frozenset(
    (dns.rdatatype.DS, dns.rdatatype.DNSKEY, dns.rdatatype.SOA, dns.rdatatype.NS)
)
_FORWARDED_FLAGS = dns.flags.RD | dns.flags.CD | dns.flags.AD
_UPSTREAM_FLAGS = dns.flags.AA | dns.flags.AD | dns.flags.CD | dns.flags.RA
_REFUSED_TYPES = frozenset(
    (dns.rdatatype.AXFR, dns.rdatatype.IXFR, dns.rdatatype.OPT, dns.rdatatype.TSIG)
)
_HEADER = struct.Struct("!HHHHHH")
#: Linux's SO_RXQ_OVFL (asm-generic/socket.h), which Python's socket module does not name.
_SO_RXQ_OVFL = int(getattr(socket, "SO_RXQ_OVFL", 40))
_DROPS = struct.Struct("=I")
#: At most this many datagrams are read from one socket per wake-up of the event loop.
_READ_BATCH = 64


# ------------------------------------------------------------------------------ matching


class NameMatcher:
    """Which outbound entries of a policy allow a DNS name. Pure.

    Built from a policy's outbound targets (entries without a domain are ignored). An
    exact entry ``a.example.com`` allows that name only; a wildcard ``*.example.com``
    allows every name below example.com at any depth (``x.example.com``,
    ``x.y.example.com``), not example.com itself. Names are compared label by label,
    case-insensitively, a trailing dot ignored; a label holding a dot or other bytes no
    entry can hold never matches.

    The *ancestors* of the entries are the names a validating stub needs the DNSSEC
    records of (see ``is_ancestor``): the proper ancestors of each exact entry, and a
    wildcard's parent (``example.com`` for ``*.example.com``) with its ancestors, up to the
    root. A fixed set: no other name below them is an ancestor.
    """

    def __init__(self, targets: Iterable[Target]) -> None:
        self._exact: dict[Labels, list[Target]] = {}
        self._wild: dict[Labels, list[Target]] = {}
        self._ancestors: set[Labels] = set()
        for t in targets:
            if t.domain is None:
                continue
            if t.wildcard:
                key = name_labels(t.domain[2:])
                table = self._wild
            else:
                key = name_labels(t.domain)
                table = self._exact
            if key:
                entries = table.setdefault(key, [])
                if t not in entries:
                    entries.append(t)
                if t.wildcard:
                    self._ancestors.add(key)
                self._ancestors.update(ancestors(key))

    def match(self, qname: str | dns.name.Name) -> tuple[Target, ...]:
        """Every entry that allows ``qname``, each once; empty when none does.

        Exact entries come first, then wildcards from the most specific suffix on, in
        configuration order within each group. A ``qname`` that is not a valid name
        matches nothing.
        """
        labels = name_labels(qname)
        if not labels:
            return ()
        found: list[Target] = list(self._exact.get(labels, ()))
        for i in range(1, len(labels)):
            for t in self._wild.get(labels[i:], ()):
                if t not in found:
                    found.append(t)
        return tuple(found)

    def allows(self, qname: str | dns.name.Name) -> bool:
        """Whether any entry allows ``qname``."""
        return bool(self.match(qname))

    def is_ancestor(self, qname: str | dns.name.Name) -> bool:
        """Whether ``qname`` is one of the entries' ancestors (see the class text)."""
        labels = name_labels(qname)
        return labels is not None and labels in self._ancestors


# ------------------------------------------------------------------------------ logs


class _Limiter:
    """Decides which repeated events get a log line (see the module text)."""

    def __init__(self, rate: float = 5.0, burst: float = 20.0, names: int = 4096) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = time.monotonic()
        self.held_back = 0
        self.names = names
        self.counts: OrderedDict[tuple[str, str], int] = OrderedDict()

    def note(self, kind: str, name: str) -> tuple[int, int] | None:
        """Count one event; ``(count, held_back)`` when it deserves a line, else None."""
        key = (kind, name)
        count = self.counts.pop(key, 0) + 1
        self.counts[key] = count
        while len(self.counts) > self.names:
            self.counts.popitem(last=False)
        if count != 1 and not _power_of_ten(count):
            return None
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1.0:
            self.held_back += 1
            return None
        self.tokens -= 1.0
        held, self.held_back = self.held_back, 0
        return count, held


def _power_of_ten(n: int) -> bool:
    while n >= 10 and n % 10 == 0:
        n //= 10
    return n == 1


# ------------------------------------------------------------------------------ messages


def _header_only(wire: bytes, rcode: int) -> bytes | None:
    """A bare reply to an unparseable query: its ID and opcode, no sections.

    None when ``wire`` is shorter than a header or is itself a response.
    """
    if len(wire) < _HEADER.size:
        return None
    ident, flags = struct.unpack_from("!HH", wire)
    if flags & dns.flags.QR:
        return None
    flags = dns.flags.QR | (flags & (0x7800 | dns.flags.RD)) | (rcode & 0xF)
    return _HEADER.pack(ident, flags, 0, 0, 0, 0)


def _reply(query: dns.message.Message, rcode: int) -> dns.message.Message:
    """An empty reply to ``query`` with ``rcode``, its question and EDNS echoed."""
    reply = dns.message.make_response(query, recursion_available=True, our_payload=EDNS_PAYLOAD)
    reply.set_rcode(dns.rcode.Rcode.make(rcode))
    return reply


def _relay(
    query: dns.message.Message,
    response: dns.message.Message,
    answer: Sequence[dns.rrset.RRset] = (),
    authority: Sequence[dns.rrset.RRset] = (),
    additional: Sequence[dns.rrset.RRset] = (),
    *,
    modified: bool = False,
) -> dns.message.Message:
    """The reply to ``query`` that relays upstream's ``response``: the one builder of those.

    It carries ``response``'s rcode, AA/AD/CD/RA bits and DO bit, and the sections given
    (empty when not given); AD is cleared when ``modified`` (records were taken out:
    what was validated is no longer all there).
    """
    reply = dns.message.make_response(query, recursion_available=False, our_payload=EDNS_PAYLOAD)
    reply.set_rcode(response.rcode())
    reply.flags |= response.flags & _UPSTREAM_FLAGS
    if modified:
        reply.flags &= ~dns.flags.AD
    if query.edns >= 0 and response.ednsflags & dns.flags.DO:
        reply.want_dnssec(True)
    reply.answer = list(answer)
    reply.authority = list(authority)
    reply.additional = list(additional)
    return reply


def _truncate(reply: dns.message.Message, limit: int) -> bytes:
    """``reply`` in at most ``limit`` bytes, for a reply that does not fit whole.

    Without its additional section if that is enough (OPT stays); else with ``TC=1``, AD
    cleared, the first whole answer records that fit, in answer order, and no other
    records; an RRSIG whose RRset is not all there is left out with it. Changes
    ``reply``.
    """
    reply.additional = []
    with contextlib.suppress(dns.exception.TooBig):
        return reply.to_wire(max_size=limit)
    rrsets = list(reply.answer)
    reply.authority = []
    reply.flags |= dns.flags.TC
    reply.flags &= ~dns.flags.AD

    def first(count: int) -> list[dns.rrset.RRset]:
        kept: list[dns.rrset.RRset] = []
        cut: set[tuple[dns.name.Name, int]] = set()
        for rrset in rrsets:
            rdatas = list(rrset)[: max(0, count)]
            count -= len(rdatas)
            if len(rdatas) < len(rrset):
                cut.add((rrset.name, rrset.rdtype))
            if rdatas:
                kept.append(dns.rrset.from_rdata_list(rrset.name, rrset.ttl, rdatas))
        return [r for r in kept if r.rdtype != dns.rdatatype.RRSIG or (r.name, r.covers) not in cut]

    fits, too_many = 0, sum(len(r) for r in rrsets)  # no answer records always fit
    while too_many - fits > 1:
        middle = (fits + too_many) // 2
        reply.answer = first(middle)
        try:
            reply.to_wire(max_size=limit)
        except dns.exception.TooBig:
            too_many = middle
        else:
            fits = middle
    reply.answer = first(fits)
    return reply.to_wire(max_size=limit)


@dataclass
class _Filtered:
    """An upstream answer with addresses sorted out.

    ``names`` is the CNAME chain from the question name
    (:func:`~fenced.dns.answers.answer_chain`); ``chain`` the RRsets kept on it and
    ``ttl`` their smallest TTL (None when nothing is on it); ``ips`` the addresses kept
    (in answer order); ``removed`` the restricted ones taken out; ``modified`` whether
    any record was taken out of any RRset (its signatures left with it).
    """

    answer: list[dns.rrset.RRset]
    authority: list[dns.rrset.RRset]
    additional: list[dns.rrset.RRset]
    names: list[dns.name.Name]
    chain: list[dns.rrset.RRset]
    ips: tuple[IPAddress, ...]
    ttl: int | None
    removed: list[IPAddress]
    modified: bool = False

    def cap_ttls(self, cap: int) -> None:
        """Lower the TTL of every RRset on the chain, and of its signatures, to ``cap``."""
        on_chain = {(r.name, r.rdtype) for r in self.chain}
        for rrset in self.answer:
            if (rrset.name, rrset.rdtype) in on_chain or (
                rrset.rdtype == dns.rdatatype.RRSIG and (rrset.name, rrset.covers) in on_chain
            ):
                rrset.ttl = min(rrset.ttl, cap)


def _sort_out(
    response: dns.message.Message,
    qname: dns.name.Name,
    allow_private: bool,
    max_ips: int = 0,
    addresses: bool = True,
) -> _Filtered:
    """Sort the addresses of ``response`` out.

    Keeps the chain's addresses (none without ``addresses`` or when the chain is broken:
    it loops or runs past ``MAX_CHAIN`` links; restricted ones only with
    ``allow_private``; at most ``max_ips`` of them in answer order when it is above 0, as
    the firewall keeps no more for one answer), removes every other address record, and
    notes the chain's smallest TTL. An RRSIG covering an RRset that lost records is
    removed with them (a signature without the records it signs, or over records that
    are no longer all there, fails validation).
    """
    walked = answer_chain(response, qname)
    names = list(walked.names)
    addresses = addresses and not walked.broken
    on_chain = set(names)
    answer: list[dns.rrset.RRset] = []
    chain: list[dns.rrset.RRset] = []
    ips: list[IPAddress] = []
    removed: list[IPAddress] = []
    changed: set[tuple[dns.name.Name, int]] = set()
    ttl = math.inf
    links = set(names[:-1])
    for rrset in response.answer:
        if rrset.rdclass == dns.rdataclass.IN and rrset.rdtype in _ADDRESS_TYPES:
            if rrset.name not in on_chain or not addresses:
                changed.add((rrset.name, rrset.rdtype))
                continue
            keep = []
            for rd in rrset:
                ip = _address(rd)
                if ip is None:
                    continue
                if not allow_private and is_restricted(ip):
                    removed.append(ip)
                    continue
                if max_ips > 0 and len(ips) >= max_ips and ip not in ips:
                    continue  # beyond what the firewall keeps: never hand it out
                keep.append(rd)
                if ip not in ips:
                    ips.append(ip)
            if len(keep) != len(rrset):
                changed.add((rrset.name, rrset.rdtype))
            if not keep:
                continue
            kept = dns.rrset.from_rdata_list(rrset.name, rrset.ttl, keep)
            answer.append(kept)
            chain.append(kept)
            ttl = min(ttl, rrset.ttl)
        elif (
            rrset.rdclass == dns.rdataclass.IN
            and rrset.rdtype == dns.rdatatype.CNAME
            and rrset.name in links
        ):
            answer.append(rrset)
            chain.append(rrset)
            ttl = min(ttl, rrset.ttl)
        else:
            answer.append(rrset)

    def no_addresses(section: list[dns.rrset.RRset]) -> list[dns.rrset.RRset]:
        for r in section:
            if r.rdtype in _ADDRESS_TYPES:
                changed.add((r.name, r.rdtype))
        return [r for r in section if r.rdtype not in _ADDRESS_TYPES]

    authority = no_addresses(response.authority)
    additional = no_addresses(response.additional)

    def unsigned(section: list[dns.rrset.RRset]) -> list[dns.rrset.RRset]:
        return [
            r
            for r in section
            if r.rdtype != dns.rdatatype.RRSIG or (r.name, r.covers) not in changed
        ]

    return _Filtered(
        answer=unsigned(answer),
        authority=unsigned(authority),
        additional=unsigned(additional),
        names=names,
        chain=chain,
        ips=tuple(ips),
        ttl=int(ttl) if chain else None,
        removed=removed,
        modified=bool(changed),
    )


def _address(rd: object) -> IPAddress | None:
    try:
        return ipaddress.ip_address(getattr(rd, "address", ""))
    except ValueError:
        return None


# ------------------------------------------------------------------------------ server


class _UdpListener:
    """One UDP socket of a gateway, read with ``recvmsg`` to learn the kernel's drops.

    ``SO_RXQ_OVFL`` makes the kernel attach the socket's running count of dropped
    datagrams to each one it delivers; the growth since the last one read is passed to
    ``gateway._lost``. Replies that cannot be sent at once are not sent (UDP).
    """

    def __init__(self, gateway: Gateway, sock: socket.socket) -> None:
        self.gateway = gateway
        self.sock = sock
        self.drops = 0
        self.closed = False
        self._loop = asyncio.get_running_loop()
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_RXQ_OVFL, 1)
            self._loop.add_reader(sock.fileno(), self._readable)
        except BaseException:
            sock.close()
            raise

    def _readable(self) -> None:
        for _ in range(_READ_BATCH):
            try:
                data, ancillary, _flags, addr = self.sock.recvmsg(65535, socket.CMSG_SPACE(4))
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # an ICMP error for an earlier reply: nothing to do
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == _SO_RXQ_OVFL and len(value) >= 4:
                    (total,) = _DROPS.unpack_from(value)
                    lost = (total - self.drops) & 0xFFFFFFFF
                    self.drops = total
                    if lost:
                        self.gateway._lost(lost)
            self.gateway._spawn_udp(self, data, addr)

    def is_closing(self) -> bool:
        """Whether ``close`` was called."""
        return self.closed

    def sendto(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        """Send ``data`` to ``addr`` if the socket takes it now; else let it go."""
        with contextlib.suppress(OSError):
            self.sock.sendto(data, addr)

    def close(self) -> None:
        """Stop reading and close the socket."""
        if not self.closed:
            self.closed = True
            self._loop.remove_reader(self.sock.fileno())
            self.sock.close()


def _udp_socket(host: str, port: int) -> socket.socket:
    """A bound, non-blocking UDP socket; IPv6 ones are v6-only.

    As asyncio's TCP servers are, so that ``0.0.0.0`` and ``::`` can share a port.
    """
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class Gateway:
    """The DNS gateway of one policy (see the module text).

    Listens on ``hosts`` (the first must bind; later ones, such as ``::1``, are skipped
    with a warning when they cannot), UDP and TCP, all on ``port`` (0: a free port,
    the same for every host and both protocols; read it from ``port`` after ``start``).
    Forwards allowed questions to ``servers`` on ``upstream_port``. ``learn`` is awaited
    with every answer's addresses before the answer is released (see :data:`LearnHook`).
    ``observe`` is told each query's result, queries the kernel dropped and addresses
    removed from answers (:mod:`fenced.core.events`).

    Life cycle: ``await start()``; ``configure(...)`` on reload (same port: a new port
    needs a new Gateway); ``await stop()``. ``handle(wire, transport)`` answers one
    query without any socket (the listeners call it).
    """

    def __init__(
        self,
        policy: Policy,
        *,
        servers: Sequence[str | IPAddress],
        learn: LearnHook,
        port: int = 0,
        hosts: Sequence[str] = ("127.0.0.1", "::1"),
        upstream_port: int = 53,
        max_ttl: int = 3600,
        min_ttl: int = 5,
        grace: int = 30,
        observe: Observer = ignore,
        logger: Logger = log,
        clock: Callable[[], float] = time.monotonic,
        timeout: float = 1.0,
        budget: float = 2.0,
        learn_timeout: float = 2.0,
        tcp_idle: float = 10.0,
        max_tcp: int = 64,
        max_in_flight: int = 512,
    ) -> None:
        if not hosts:
            raise ValueError("Gateway needs at least one host to listen on")
        self.learn = learn
        self.hosts = tuple(hosts)
        self._port = port
        self.upstream_port = upstream_port
        self.observe = observe
        self.log = logger
        self.timeout = timeout
        self.budget = budget
        self.learn_timeout = learn_timeout
        self.tcp_idle = tcp_idle
        self.max_tcp = max(1, max_tcp)
        self.max_in_flight = max(1, max_in_flight)
        self.policy = policy
        self.matcher = NameMatcher(policy.outbound)
        self.servers: tuple[str, ...] = tuple(str(s) for s in servers)
        self.max_ttl = max_ttl
        self.min_ttl = min_ttl
        self.grace = grace
        self.clock = clock
        #: The names this policy's allowed answers led to (see :mod:`fenced.core.chains`).
        self.chains = LiveChains()
        #: At most this many addresses of one answer are returned (0: no limit); the daemon
        #: sets ``max_ips_per_name``, what the firewall keeps for one name.
        self.max_ips = 0
        self._limiter = _Limiter()
        self._udp: list[_UdpListener] = []
        self._tcp: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._connections: set[asyncio.Task[None]] = set()

    @classmethod
    def for_policy(
        cls,
        policy: Policy,
        daemon: DaemonConfig,
        *,
        learn: LearnHook,
        port: int,
        hosts: Sequence[str] = ("127.0.0.1", "::1"),
        observe: Observer = ignore,
        logger: Logger = log,
    ) -> Gateway:
        """A gateway for ``policy`` on ``port``, forwarding to ``daemon.resolvers``.

        TTLs are capped at ``daemon.max_ttl``; chains stay live for their TTL (between
        ``daemon.min_ttl`` and ``daemon.max_ttl``) plus ``daemon.grace``; other settings
        take their defaults.
        """
        gw = cls(
            policy,
            servers=daemon.resolvers,
            learn=learn,
            port=port,
            hosts=hosts,
            max_ttl=daemon.max_ttl,
            min_ttl=daemon.min_ttl,
            grace=daemon.grace,
            observe=observe,
            logger=logger,
        )
        gw.max_ips = daemon.max_ips_per_name
        return gw

    # ------------------------------------------------------------------ life cycle
    @property
    def port(self) -> int:
        """The port the gateway listens on (the bound one after ``start``)."""
        return self._port

    def configure(self, policy: Policy, daemon: DaemonConfig | None = None) -> None:
        """Take a reloaded policy (and daemon settings); the port stays.

        Entries, deny response, private guard, resolvers and TTL settings change for new
        queries; queries in flight finish under the old ones. Live chains stay only for
        the entries the new policy still has.
        """
        self.policy = policy
        self.matcher = NameMatcher(policy.outbound)
        self.chains.retain(policy.outbound)
        if daemon is not None:
            self.servers = tuple(str(s) for s in daemon.resolvers)
            self.max_ttl = daemon.max_ttl
            self.min_ttl = daemon.min_ttl
            self.grace = daemon.grace
            self.max_ips = daemon.max_ips_per_name

    async def start(self) -> None:
        """Bind the listeners. Raises OSError when the first host cannot be bound."""
        if self._udp or self._tcp:
            raise RuntimeError("gateway already started")
        first, *others = self.hosts
        for attempt in range(20):
            udp = _UdpListener(self, _udp_socket(first, self._port))
            port = int(udp.sock.getsockname()[1])
            try:
                tcp = await asyncio.start_server(self._tcp_client, first, port)
            except OSError:
                udp.close()
                if self._port != 0 or attempt == 19:
                    raise
                continue
            break
        self._port = port
        self._udp.append(udp)
        self._tcp.append(tcp)
        for host in others:
            try:
                more = _UdpListener(self, _udp_socket(host, port))
            except OSError as exc:
                self.log.warning(
                    "gateway_listen_failed", policy=self.policy.name, host=host, error=exc
                )
                continue
            self._udp.append(more)
            try:
                self._tcp.append(await asyncio.start_server(self._tcp_client, host, port))
            except OSError as exc:
                self.log.warning(
                    "gateway_listen_failed", policy=self.policy.name, host=host, error=exc
                )
        self.log.info(
            "gateway_started",
            policy=self.policy.name,
            port=port,
            hosts=[h for h in self.hosts],
            servers=self.servers,
        )

    async def stop(self) -> None:
        """Close the listeners and cancel queries and connections in flight."""
        for udp in self._udp:
            udp.close()
        for srv in self._tcp:
            srv.close()
        tasks = [*self._tasks, *self._connections]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for srv in self._tcp:
            with contextlib.suppress(Exception):
                await srv.wait_closed()
        self._udp.clear()
        self._tcp.clear()

    # ------------------------------------------------------------------ sockets
    def _lost(self, count: int) -> None:
        """The kernel dropped ``count`` queries on one of the UDP sockets."""
        self.observe(GatewayLost(self.policy.name, count))
        self._note("warning", "gateway_queries_lost", None, lost=count)

    def _spawn_udp(self, transport: _UdpListener, data: bytes, addr: tuple[str | int, ...]) -> None:
        if len(self._tasks) >= self.max_in_flight:
            self.observe(GatewayQuery(self.policy.name, "dropped", 0.0))
            self._note("warning", "gateway_overloaded", None, in_flight=len(self._tasks))
            return
        task = asyncio.create_task(self._udp_one(transport, data, addr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _udp_one(
        self, transport: _UdpListener, data: bytes, addr: tuple[str | int, ...]
    ) -> None:
        reply = await self.handle(data, "udp")
        if reply is not None and not transport.is_closing():
            transport.sendto(reply, addr)

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if len(self._connections) >= self.max_tcp or task is None:
            self._note("warning", "gateway_tcp_full", None, connections=len(self._connections))
            writer.close()
            return
        self._connections.add(task)
        try:
            while True:
                head = await asyncio.wait_for(reader.readexactly(2), self.tcp_idle)
                (size,) = struct.unpack("!H", head)
                if size == 0:
                    break
                wire = await asyncio.wait_for(reader.readexactly(size), self.tcp_idle)
                reply = await self.handle(wire, "tcp")
                if reply is None:
                    break
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    # ------------------------------------------------------------------ queries
    async def handle(self, wire: bytes, transport: Transport) -> bytes | None:
        """The reply to one query message ``wire``; None means send nothing.

        Never raises (except CancelledError); counts the result and the time fenced
        added (a ``GatewayQuery`` event to ``observe``).
        """
        start = time.monotonic()
        upstream = [0.0]
        result: Result = "servfail"
        reply: bytes | None = None
        try:
            result, reply = await self._answer(wire, transport, upstream)
        except Exception as exc:  # a bug: answer SERVFAIL and go on
            self.log.error(
                "gateway_error", policy=self.policy.name, error=f"{type(exc).__name__}: {exc}"
            )
            result = "servfail"
            reply = _header_only(wire, dns.rcode.SERVFAIL)
        added = max(0.0, time.monotonic() - start - upstream[0])
        self.observe(GatewayQuery(self.policy.name, result, added))
        return reply

    async def _answer(
        self, wire: bytes, transport: Transport, upstream: list[float]
    ) -> tuple[Result, bytes | None]:
        try:
            query = dns.message.from_wire(wire)
        except Exception as exc:
            bare = _header_only(wire, dns.rcode.FORMERR)
            self._note("info", "gateway_malformed", None, error=f"{type(exc).__name__}: {exc}")
            return ("formerr" if bare is not None else "dropped"), bare
        if query.flags & dns.flags.QR:
            return "dropped", None
        if query.edns > 0:
            return "formerr", _reply(query, dns.rcode.BADVERS).to_wire(max_size=512)
        if query.opcode() != dns.opcode.QUERY:
            return "notimp", _reply(query, dns.rcode.NOTIMP).to_wire(max_size=512)
        if len(query.question) != 1:
            return "formerr", _reply(query, dns.rcode.FORMERR).to_wire(max_size=512)
        question = query.question[0]
        if question.rdclass != dns.rdataclass.IN or (
            question.rdtype in _REFUSED_TYPES
            or (dns.rdatatype.is_metatype(question.rdtype) and question.rdtype != dns.rdatatype.ANY)
        ):
            return "refused", self._wire(_reply(query, dns.rcode.REFUSED), query, transport)
        qname = question.name
        name = qname.to_text(omit_final_dot=True).lower()
        qtype = dns.rdatatype.to_text(question.rdtype)
        policy = self.policy
        targets, live, infra = self._allowed(qname, question.rdtype)
        audit = not targets and not infra and policy.mode == "audit"
        if not targets and not infra:
            self._note("info", "gateway_denied", name, qtype=qtype, audit=audit or None)
            if not audit:
                rcode = (
                    dns.rcode.REFUSED if policy.deny_response == "refused" else dns.rcode.NXDOMAIN
                )
                return "denied", self._wire(_reply(query, rcode), query, transport)

        outgoing = dns.message.make_query(
            qname,
            question.rdtype,
            question.rdclass,
            use_edns=0,
            payload=EDNS_PAYLOAD,
            want_dnssec=bool(query.ednsflags & dns.flags.DO),
        )
        outgoing.flags = dns.flags.Flag(int(query.flags) & int(_FORWARDED_FLAGS))
        got = await forward(
            outgoing,
            self.servers,
            port=self.upstream_port,
            timeout=self.timeout,
            budget=self.budget,
        )
        upstream[0] = got.upstream
        response = got.response
        if response is None and got.refusal is not None:
            self._note("warning", "gateway_upstream_refused", name, qtype=qtype, error=got.detail)
            return "refused", self._wire(_relay(query, got.refusal), query, transport)
        if response is None:
            self._note("warning", "gateway_upstream_failed", name, qtype=qtype, error=got.detail)
            return "servfail", self._wire(_reply(query, dns.rcode.SERVFAIL), query, transport)

        if audit:
            reply = _relay(
                query, response, response.answer, response.authority, response.additional
            )
            return "audit_denied", self._wire(reply, query, transport)

        sorted_out = _sort_out(
            response, qname, policy.allow_private, self.max_ips, addresses=bool(targets)
        )
        for ip in sorted_out.removed:
            self.observe(AddressDropped(name, ip, policy=policy.name))
            self._note("info", "gateway_private_removed", name, key=f"{name} {ip}", ip=ip)
        if sorted_out.ips and sorted_out.ttl is not None:
            try:
                # Shielded: a slow write is not cancelled half-way, only no longer awaited.
                await asyncio.wait_for(
                    asyncio.shield(
                        self.learn(policy.name, name, targets, sorted_out.ips, sorted_out.ttl)
                    ),
                    self.learn_timeout,
                )
            except Exception as exc:
                self._note(
                    "warning",
                    "gateway_learn_failed",
                    name,
                    ips=sorted_out.ips,
                    error=f"{type(exc).__name__}: {exc}".rstrip(": "),
                )
                return "learn_failed", self._wire(
                    _reply(query, dns.rcode.SERVFAIL), query, transport
                )
        if sorted_out.ttl is not None:
            sorted_out.cap_ttls(min(sorted_out.ttl, self.max_ttl))
            if targets:
                self._keep_chain(sorted_out.names, sorted_out.ttl, targets, live)

        reply = _relay(
            query,
            response,
            sorted_out.answer,
            sorted_out.authority,
            sorted_out.additional,
            modified=sorted_out.modified,
        )
        return "allowed", self._wire(reply, query, transport)

    def _allowed(
        self, qname: dns.name.Name, rdtype: int
    ) -> tuple[tuple[Target, ...], dict[Target, float], bool]:
        """Which entries allow ``qname``: ``(targets, live, infra)``.

        ``targets`` are the entries that match it, then those whose chains it is live on
        (``live``: each with the time its chain ends); ``infra`` is whether, allowed by
        none, it may still be asked for ``rdtype`` as a DNSSEC record of an ancestor of
        an entry or of a live name.
        """
        labels = name_labels(qname)
        if labels is None:
            return (), {}, False
        now = self.clock()
        found = list(self.matcher.match(qname))
        live = self.chains.match(labels, now)
        found += [t for t in live if t not in found]
        infra = rdtype in _INFRA_TYPES and (
            self.matcher.is_ancestor(qname) or self.chains.is_ancestor(labels, now)
        )
        return tuple(found), live, infra

    def _keep_chain(
        self,
        names: Sequence[dns.name.Name],
        ttl: int,
        targets: tuple[Target, ...],
        live: dict[Target, float],
    ) -> None:
        """Make the names after the first on an answer's CNAME chain live for ``targets``.

        For the chain's TTL (raised to ``min_ttl``, lowered to ``max_ttl``) plus
        ``grace``; a target that allowed the question only through a live chain (in
        ``live``) never lasts past that chain's end.
        """
        found = [labels for labels in map(name_labels, names[1:]) if labels]
        if not found:
            return
        now = self.clock()
        end = now + min(max(ttl, self.min_ttl), self.max_ttl) + self.grace
        until = {t: min(end, live[t]) if t in live else end for t in targets}
        self.chains.add(found, until, now)

    def _wire(
        self, reply: dns.message.Message, query: dns.message.Message, transport: Transport
    ) -> bytes:
        """``reply`` as bytes, cut down (see :func:`_truncate`) when too big for UDP."""
        limit = 65535
        if transport == "udp":
            limit = max(512, query.payload) if query.edns >= 0 else 512
        try:
            return reply.to_wire(max_size=limit)
        except dns.exception.TooBig:
            return _truncate(reply, limit)

    def _note(
        self, level: str, event: str, name: str | None, key: str | None = None, **fields: object
    ) -> None:
        """Log an event of this gateway, rate-limited per (event, ``key`` or ``name``)."""
        verdict = self._limiter.note(event, key if key is not None else name or "")
        if verdict is None:
            return
        count, held = verdict
        self.log.log(
            level,
            event,
            policy=self.policy.name,
            name=name,
            **fields,
            count=count if count > 1 else None,
            held_back=held or None,
        )
