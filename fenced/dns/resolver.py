"""Looking up a name's addresses: the :class:`Resolver` protocol and its two makers.

:class:`DnsResolver` asks the configured servers for A and AAAA at once (dnspython, UDP
with EDNS, TCP when the answer is truncated), follows CNAME chains inside each answer and
reports the chain's smallest TTL, or for NXDOMAIN/NODATA the negative TTL (RFC 2308: the
SOA of the authority section). It never raises for a DNS outcome: every lookup ends in
an :class:`~fenced.dns.answers.Answer` whose ``status`` says what happened.
:class:`FakeResolver` plays scripted answers for tests.

Fast path. The common answer (NOERROR or NXDOMAIN, only A/AAAA/CNAME records in the
answer, not truncated) costs little: the A and AAAA queries are built by hand
(:mod:`fenced.dns.wire`: header, name, type/class, an EDNS OPT record for 1232 bytes)
and sent with a random 16-bit ID per query on long-lived *connected* UDP sockets owned by
the resolver, a few per server (:mod:`fenced.dns.exchange`, which also says how their
source ports rotate). The reply is parsed by hand into the very
:class:`~fenced.dns.answers.Part` that dnspython and :func:`~fenced.dns.answers.judge`
would give. Anything else is left to dnspython: a truncated reply is asked again over
TCP, another rcode or record type is parsed by dnspython from the same datagram, a
malformed reply or a socket error is asked again with dnspython's own socket. Timeouts
count as before (the ``attempts`` rounds over the servers). See docs/dns.md.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import dns.exception
import dns.message
import dns.name
import dns.rdatatype
import dns.resolver

from fenced.core.model import IPAddress
from fenced.dns.answers import FAILURES, Answer, Part, combine, judge, summarize
from fenced.dns.exchange import ServerSockets, exchange
from fenced.dns.wire import EDNS_PAYLOAD, encode, fast_parse, query_tail, question


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
        self._pools: dict[str, ServerSockets] = {}
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
            qname, qwire = encode(name)
        except dns.exception.DNSException as exc:
            return Answer("error", detail=f"bad name {name!r}: {exc}")
        # A in a task, AAAA inline: one task per name instead of gather's two.
        a_task = asyncio.get_running_loop().create_task(self._query(qname, qwire, dns.rdatatype.A))
        try:
            aaaa = await self._query(qname, qwire, dns.rdatatype.AAAA)
        except BaseException:
            a_task.cancel()
            raise
        return combine(name, (await a_task, aaaa))

    async def close(self) -> None:
        """Close the long-lived sockets (they reopen if ``resolve`` is called again)."""
        for pool in self._pools.values():
            pool.close()
        self._pools = {}

    async def _query(
        self, qname: dns.name.Name, qwire: bytes, rdtype: dns.rdatatype.RdataType
    ) -> Part:
        last = Part("error", detail="no server tried")
        tries: list[tuple[str, str]] = []
        kind = dns.rdatatype.to_text(rdtype)
        for _ in range(self.attempts):
            for server in self.servers:
                part = await self._ask(server, qname, qwire, rdtype)
                if part.status not in FAILURES:
                    return part
                tries.append((f"{server}: {part.detail}", kind))
                last = part
        return Part(last.status, detail=summarize(tries), tries=tuple(tries))

    async def _ask(
        self,
        server: str,
        qname: dns.name.Name,
        qwire: bytes,
        rdtype: dns.rdatatype.RdataType,
    ) -> Part:
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
    ) -> Part | None:
        """One try on the shared socket; ``None`` means: ask again with dnspython."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # sockets belong to one event loop
            await self.close()
            self._loop = loop
        pool = self._pools.get(server)
        if pool is None:
            pool = self._pools[server] = ServerSockets(server, self.port)
        try:
            sock = await pool.pick()
        except OSError:
            return None
        asked = question(qwire, rdtype)
        qid, fut = sock.send(query_tail(asked), asked)
        timer = loop.call_later(self.timeout, _expire, fut)
        try:
            data = await fut
        except TimeoutError:
            self.paths["fast"] += 1
            return Part("timeout", detail="timed out")
        except OSError:
            return None
        finally:
            timer.cancel()
            sock.forget(qid, fut)
        part = fast_parse(data, asked, rdtype)
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
        return judge(response, qname, rdtype)

    async def _ask_dnspython(
        self,
        server: str,
        qname: dns.name.Name,
        rdtype: dns.rdatatype.RdataType,
        *,
        tcp: bool = False,
    ) -> Part:
        """One try with dnspython: UDP then TCP when truncated, or TCP only (``tcp``)."""
        query = dns.message.make_query(qname, rdtype, use_edns=0, payload=EDNS_PAYLOAD)
        got = await exchange(query, server, port=self.port, timeout=self.timeout, tcp=tcp)
        if got.response is None:
            return Part("timeout" if got.timed_out else "error", detail=got.problem)
        response = got.response
        return judge(response, qname, rdtype)


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


__all__ = ["DnsResolver", "FakeResolver", "Resolver"]
