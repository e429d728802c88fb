"""Talking to DNS servers: one dnspython try at a server, and the fast path's sockets.

:func:`exchange` is one try of a built query at one server with dnspython (UDP, then TCP
when the answer is truncated), shared by the resolver's dnspython path and the gateway's
:func:`~fenced.dns.forward.forward`; it never raises for a network or DNS outcome.

Each server gets ``SOCKETS_PER_SERVER`` *connected* UDP sockets (:class:`ServerSockets`),
used in turn; each socket (:class:`UdpSocket`) demultiplexes replies by query ID (none
collides with one in flight on that socket) and drops any whose question does not echo
the asked name, type and class.

Source ports. A long-lived socket keeps its source port, which is more predictable to an
off-path spoofer than dnspython's fresh random port per query. To narrow the gap the
sockets are opened on kernel-chosen random ports, and a socket is replaced (new port; the
old one closes once its queries are done) after ``ROTATE_QUERIES`` queries or
``ROTATE_SECONDS`` seconds. Against spoofing stand the random ID, the question check and
the connected socket (the kernel drops datagrams from any other address or port). See
docs/dns.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Any, cast

import dns.asyncquery
import dns.exception
import dns.message

#: Sockets per server; a socket is replaced after this many queries or seconds.
SOCKETS_PER_SERVER = 4
ROTATE_QUERIES = 10_000
ROTATE_SECONDS = 60.0
#: Most queries in flight on one socket (beyond that, dnspython's socket per query).
_MAX_PENDING = 30_000


class UdpSocket(asyncio.DatagramProtocol):
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
        """Keep the transport to send on."""
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        """Deliver a response to the query it answers; drop anything else."""
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
        """Fail every query in flight with ``exc`` and retire the socket."""
        # An ICMP error (port unreachable, ...): it cannot be tied to one query, so every
        # query in flight here gets it and goes to dnspython, which decides per query.
        for _question, fut in self.pending.values():
            if not fut.done():
                fut.set_exception(exc)
        self.pending.clear()
        self.retired = True
        self._close_if_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail every query still in flight (the socket is gone)."""
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


class ServerSockets:
    """The ``SOCKETS_PER_SERVER`` sockets to one server, used in turn.

    Each is opened lazily and replaced when worn; a replaced one closes when the queries
    in flight on it are done.
    """

    def __init__(self, server: str, port: int) -> None:
        self.addr = (server, port)
        self.family = socket.AF_INET6 if ":" in server else socket.AF_INET
        self.slots: list[UdpSocket | None] = [None] * SOCKETS_PER_SERVER
        self.opening: list[asyncio.Task[UdpSocket] | None] = [None] * SOCKETS_PER_SERVER
        self.turn = 0

    async def pick(self) -> UdpSocket:
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

    async def _open(self, i: int) -> UdpSocket:
        try:
            loop = asyncio.get_running_loop()
            # remote_addr: a connected socket on a kernel-chosen random port.
            _transport, proto = await loop.create_datagram_endpoint(
                UdpSocket, remote_addr=self.addr, family=self.family
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


def _retrieve(task: asyncio.Task[UdpSocket]) -> None:
    if not task.cancelled():
        task.exception()


@dataclass(frozen=True)
class Exchanged:
    """The outcome of :func:`exchange`.

    ``response`` is the server's response (ID and question checked by dnspython), or
    ``None`` when the try failed; ``tcp`` whether it came over TCP; ``problem`` what went
    wrong in words (``timed out`` when ``timed_out``), empty when a response came.
    """

    response: dns.message.Message | None
    tcp: bool = False
    problem: str = ""
    timed_out: bool = False


async def exchange(
    query: dns.message.Message, server: str, *, port: int, timeout: float, tcp: bool = False
) -> Exchanged:
    """Send ``query`` to ``server`` with dnspython and wait for its response.

    Over UDP and, when the answer is truncated, over TCP (each bounded by ``timeout``
    seconds), or over TCP only with ``tcp``. Never raises for a network or DNS outcome
    (a timeout, a network error, a malformed or mismatched reply): see :class:`Exchanged`.
    """
    try:
        if tcp:
            response = await dns.asyncquery.tcp(query, server, timeout=timeout, port=port)
            return Exchanged(response, tcp=True)
        response, over_tcp = await dns.asyncquery.udp_with_fallback(
            query, server, timeout=timeout, port=port, ignore_unexpected=True
        )
        return Exchanged(response, tcp=over_tcp)
    except (dns.exception.Timeout, TimeoutError):
        return Exchanged(None, problem="timed out", timed_out=True)
    except (dns.exception.DNSException, OSError, EOFError, ValueError) as exc:
        return Exchanged(None, problem=f"{type(exc).__name__}: {exc}".rstrip(": "))


__all__ = [
    "ROTATE_QUERIES",
    "ROTATE_SECONDS",
    "SOCKETS_PER_SERVER",
    "Exchanged",
    "ServerSockets",
    "UdpSocket",
    "exchange",
]
