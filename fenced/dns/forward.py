"""The DNS gateway's upstream side: one already built query to the servers in turn.

:func:`forward` sends the query to the servers in turn within a time budget and returns
the first usable response, as a :class:`Forwarded` that also says how long fenced waited
for upstream.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass

import dns.message
import dns.rcode

from fenced.core.model import IPAddress
from fenced.dns.answers import summarize
from fenced.dns.exchange import Exchanged, exchange


@dataclass(frozen=True)
class Forwarded:
    """The outcome of :func:`forward`.

    ``response`` is the first NOERROR or NXDOMAIN response (its ID and question match
    the query: dnspython checks), or ``None`` when every try failed; ``server`` the
    server that gave it; ``upstream`` the seconds spent waiting on servers (all tries);
    ``tcp`` whether the response came over TCP; ``detail`` what went wrong in words,
    each distinct problem once with how many tries gave it
    (:func:`~fenced.dns.answers.summarize`: ``192.0.2.53: timed out (x2)``; empty when
    the first try answered). ``refusal`` is the last REFUSED response
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
    problems: list[tuple[str, str]] = []  # (what went wrong, no label): see summarize
    refusal: dns.message.Message | None = None
    refused: set[str] = set()
    if not addrs:
        return Forwarded(None, None, 0.0, detail="no upstream server")
    for server in itertools.islice(itertools.cycle(addrs), max(1, rounds) * len(addrs)):
        if server in refused:
            continue
        left = deadline - time.monotonic()
        if left <= 0.01:
            problems.append(("time budget spent", ""))
            break
        try_timeout = min(timeout, left)
        try:
            got = await asyncio.wait_for(
                exchange(query, server, port=port, timeout=try_timeout), timeout=left
            )
        except TimeoutError:
            got = Exchanged(None, problem="timed out", timed_out=True)
        response = got.response
        if response is None:
            problems.append((f"{server}: {got.problem}", ""))
            continue
        rcode = response.rcode()
        if rcode in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            return Forwarded(
                response, server, time.monotonic() - start, got.tcp, summarize(problems)
            )
        if rcode == dns.rcode.REFUSED:
            refused.add(server)
            refusal = response
        problems.append((f"{server}: {dns.rcode.to_text(rcode)}", ""))
    return Forwarded(
        None,
        None,
        time.monotonic() - start,
        detail=summarize(problems),
        refusal=refusal if refused.issuperset(addrs) else None,
    )


__all__ = ["Forwarded", "forward"]
