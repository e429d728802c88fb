"""Looking up a name's addresses: the one module of fenced that speaks DNS.

:class:`DnsResolver` asks the configured servers for A and AAAA at once (dnspython, UDP
with EDNS, TCP when the answer is truncated), follows CNAME chains inside each answer and
reports the chain's smallest TTL. It never raises for a DNS outcome: every lookup ends in
an :class:`Answer` whose ``status`` says what happened. :class:`FakeResolver` plays
scripted answers for tests.

:func:`forward` is the DNS gateway's upstream side: it sends one already built query to
the servers in turn within a time budget and returns the first usable response, as a
:class:`Forwarded` that also says how long fenced waited for upstream.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import itertools
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import dns.asyncquery
import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver

from fenced.model import IPAddress

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
    words (empty when nothing did).
    """

    status: Status
    ips: tuple[IPAddress, ...] = ()
    ttl: int | None = None
    cnames: tuple[str, ...] = ()
    detail: str = ""

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
    ) -> Answer:
        """A negative or failed answer; ``ips``/``ttl`` only for partial failures."""
        addrs = tuple(dict.fromkeys(ipaddress.ip_address(ip) for ip in ips))
        return cls(status, addrs, ttl, (), detail)


class Resolver(Protocol):
    """Something that looks up a name's addresses. Never raises for DNS outcomes.

    ``budget`` is the longest one ``resolve`` can take, in seconds.
    """

    budget: float

    async def resolve(self, name: str) -> Answer:
        """A and AAAA of ``name`` (no trailing dot needed), CNAMEs followed."""
        ...


@dataclass(frozen=True)
class _Part:
    """The outcome of one query type."""

    status: Status
    ips: tuple[IPAddress, ...] = ()
    ttl: int | None = None
    cnames: tuple[str, ...] = ()
    detail: str = ""


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
    return _Part("nodata", cnames=tuple(cnames))


def _combine(name: str, parts: Sequence[_Part]) -> Answer:
    """One answer from the A and AAAA outcomes (see ``Answer``)."""
    for p in parts:
        if p.status == "nxdomain":
            return Answer("nxdomain", detail=p.detail or f"{name} does not exist")
    good = [p for p in parts if p.status == "ok"]
    ips = tuple(dict.fromkeys(ip for p in good for ip in p.ips))
    ttls = [p.ttl for p in good if p.ttl is not None]
    ttl = min(ttls) if ttls else None
    cnames = next((p.cnames for p in parts if p.cnames), ())
    failed = [p for p in parts if p.status in FAILURES]
    if failed:
        detail = "; ".join(p.detail for p in failed if p.detail)
        return Answer(failed[0].status, ips, ttl, cnames, detail)
    if ips:
        return Answer("ok", ips, ttl, cnames)
    return Answer("nodata", (), None, cnames, f"{name} has no A or AAAA records")


class DnsResolver:
    """Looks names up at ``servers`` (IP addresses, all on ``port``) with dnspython.

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
    ) -> None:
        if not servers:
            raise ValueError("DnsResolver needs at least one server")
        self.servers = tuple(str(ipaddress.ip_address(s)) for s in servers)
        self.port = port
        self.timeout = timeout
        self.attempts = max(1, attempts)
        #: The longest one ``resolve`` can take (every attempt at every server timing out).
        self.budget = self.timeout * self.attempts * max(1, len(self.servers))

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
            qname = dns.name.from_text(name)
        except dns.exception.DNSException as exc:
            return Answer("error", detail=f"bad name {name!r}: {exc}")
        parts = await asyncio.gather(
            self._query(qname, dns.rdatatype.A), self._query(qname, dns.rdatatype.AAAA)
        )
        return _combine(name, parts)

    async def _query(self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> _Part:
        last = _Part("error", detail="no server tried")
        problems: list[str] = []
        kind = dns.rdatatype.to_text(rdtype)
        for _ in range(self.attempts):
            for server in self.servers:
                part = await self._ask(server, qname, rdtype)
                if part.status not in FAILURES:
                    return part
                problems.append(f"{server} {kind}: {part.detail}")
                last = part
        return _Part(last.status, detail="; ".join(problems))

    async def _ask(
        self, server: str, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType
    ) -> _Part:
        query = dns.message.make_query(qname, rdtype, use_edns=0, payload=EDNS_PAYLOAD)
        try:
            response, _tcp = await dns.asyncquery.udp_with_fallback(
                query, server, timeout=self.timeout, port=self.port, ignore_unexpected=True
            )
        except dns.exception.Timeout:
            return _Part("timeout", detail="timed out")
        except (dns.exception.DNSException, OSError, EOFError, ValueError) as exc:
            return _Part("error", detail=f"{type(exc).__name__}: {exc}".rstrip(": "))
        rcode = response.rcode()
        if rcode == dns.rcode.NXDOMAIN:
            return _Part("nxdomain")
        if rcode == dns.rcode.SERVFAIL:
            return _Part("servfail", detail="SERVFAIL")
        if rcode != dns.rcode.NOERROR:
            return _Part("error", detail=dns.rcode.to_text(rcode))
        try:
            return _chase(response, qname, rdtype)
        except (ValueError, AttributeError) as exc:  # malformed address records
            return _Part("error", detail=f"bad answer: {exc}")


class FakeResolver:
    """Scripted answers for tests, counting queries.

    ``script(name, a1, a2, ...)`` queues answers for ``name``: each query takes the next
    one and the last repeats. An answer may be an exception, which ``resolve`` raises (to
    test callers' robustness). Unknown names answer NXDOMAIN. ``delay(name, seconds)``
    makes queries wait that long with ``sleep`` (e.g. a fake clock's). ``queries`` counts
    queries per name; ``max_in_flight`` records the most concurrent ones.
    """

    def __init__(self, sleep: Callable[[float], Awaitable[None]] | None = None) -> None:
        self._sleep = sleep or asyncio.sleep
        self._answers: dict[str, collections.deque[Answer | Exception]] = {}
        self._delays: dict[str, float] = {}
        self.budget = 5.0
        self.queries: collections.Counter[str] = collections.Counter()
        self.in_flight = 0
        self.max_in_flight = 0

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


# ------------------------------------------------------------------------------ forwarding


@dataclass(frozen=True)
class Forwarded:
    """The outcome of :func:`forward`.

    ``response`` is the first NOERROR or NXDOMAIN response (its ID and question match
    the query: dnspython checks), or ``None`` when every try failed; ``server`` the
    server that gave it; ``upstream`` the seconds spent waiting on servers (all tries);
    ``tcp`` whether the response came over TCP; ``detail`` what went wrong, per try, in
    words (empty when the first try answered).
    """

    response: dns.message.Message | None
    server: str | None
    upstream: float
    tcp: bool = False
    detail: str = ""


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
    most ``rounds`` times. Never raises for a network or DNS outcome: failure is
    ``Forwarded(response=None, ...)``. The query is sent as given (build it with a fresh
    random ID: responses are matched on ID and question).
    """
    addrs = [str(ipaddress.ip_address(s)) for s in servers]
    start = time.monotonic()
    deadline = start + budget
    problems: list[str] = []
    if not addrs:
        return Forwarded(None, None, 0.0, detail="no upstream server")
    for server in itertools.islice(itertools.cycle(addrs), max(1, rounds) * len(addrs)):
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
        problems.append(f"{server}: {dns.rcode.to_text(rcode)}")
    return Forwarded(None, None, time.monotonic() - start, detail="; ".join(problems))


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
