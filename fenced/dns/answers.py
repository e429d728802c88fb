"""What a lookup of a name's addresses ends in, and how a DNS response becomes that. Pure.

An :class:`Answer` is the outcome of looking up one name's A and AAAA records: its
``status`` says what happened (:data:`Status`, :data:`FAILURES`). A :class:`Part` is the
outcome of one query type at one server or after every server was tried; :func:`judge`
reads one (dnspython-parsed) response into a ``Part``, following the CNAME chain from the
question name (:func:`chase`), and :func:`combine` makes one ``Answer`` of the A and AAAA
parts. Negative answers carry RFC 2308's negative TTL (:func:`negative_ttl`).

Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import collections
import ipaddress
import math
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from fenced.core.model import IPAddress

Status = Literal["ok", "nxdomain", "nodata", "servfail", "timeout", "error"]

#: Statuses that mean "the lookup failed" (as opposed to a definite answer).
FAILURES: frozenset[Status] = frozenset(("servfail", "timeout", "error"))

#: Longest CNAME chain followed inside one answer (links), see :func:`follow_cnames`.
MAX_CHAIN = 16

#: A name on a CNAME chain: a :class:`dns.name.Name` or a case-folded key of its labels.
N = TypeVar("N", bound=Hashable)


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


@dataclass(frozen=True)
class Part:
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


def negative_ttl(response: dns.message.Message) -> int | None:
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


@dataclass(frozen=True)
class CnameChain(Generic[N]):
    """Where the CNAME links of one answer led from one name (see :func:`follow_cnames`).

    ``names`` holds the start, then each target followed, in order (at most
    ``MAX_CHAIN + 1`` names). ``loop`` is the target that named a name already on the
    chain (the walk ended there; ``None`` when it did not loop); ``too_long`` says the
    last name links on although ``MAX_CHAIN`` links were followed.
    """

    names: tuple[N, ...]
    loop: N | None = None
    too_long: bool = False

    @property
    def broken(self) -> bool:
        """Whether the chain loops or runs too long: no address comes from a broken chain."""
        return self.loop is not None or self.too_long

    def problem(self, loop_text: str) -> str:
        """What is wrong with the chain, in words ("" if whole); ``loop_text`` names ``loop``."""
        if self.loop is not None:
            return f"CNAME loop at {loop_text}"
        return "CNAME chain too long" if self.too_long else ""


def follow_cnames(
    start: N, target: Callable[[N], N | None], stop: Callable[[N], bool] | None = None
) -> CnameChain[N]:
    """Follow CNAME links from ``start``, by the one rule fenced has for chains.

    ``target(name)`` is the target of ``name``'s CNAME record (``None`` when it has
    none). The walk ends at a name without one, at a name where ``stop`` is true (one
    holding the records asked for), at a target already on the chain (a loop), or when a
    link would be the ``MAX_CHAIN + 1``-th (too long). Names compare with ``==`` (pass
    case-folded keys or :class:`dns.name.Name`, which compares case-insensitively).
    """
    names = [start]
    while stop is None or not stop(names[-1]):
        link = target(names[-1])
        if link is None:
            break
        if link in names:
            return CnameChain(tuple(names), loop=link)
        if len(names) > MAX_CHAIN:
            return CnameChain(tuple(names), too_long=True)
        names.append(link)
    return CnameChain(tuple(names))


def _cname(response: dns.message.Message, name: dns.name.Name) -> dns.rrset.RRset | None:
    """``name``'s CNAME RRset (class IN) in the answer section of ``response``, if any."""
    rrset = response.get_rrset(response.answer, name, dns.rdataclass.IN, dns.rdatatype.CNAME)
    return rrset if rrset is not None and len(rrset) > 0 else None


def answer_chain(
    response: dns.message.Message,
    qname: dns.name.Name,
    stop: Callable[[dns.name.Name], bool] | None = None,
) -> CnameChain[dns.name.Name]:
    """The CNAME chain from ``qname`` in the answer section of ``response``.

    Class IN only; an RRset of several CNAMEs links to its first; ``stop`` as for
    :func:`follow_cnames`.
    """

    def target(name: dns.name.Name) -> dns.name.Name | None:
        rrset = _cname(response, name)
        link: dns.name.Name | None = None if rrset is None else rrset[0].target
        return link

    return follow_cnames(qname, target, stop)


def chase(
    response: dns.message.Message, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType
) -> Part:
    """Follow the CNAME chain from ``qname`` in the answer section to ``rdtype`` records.

    Records not on the chain are ignored (a server cannot add addresses for other names);
    a broken chain (:attr:`CnameChain.broken`) is an error.
    """
    found: list[dns.rrset.RRset] = []

    def holds(name: dns.name.Name) -> bool:
        rrset = response.get_rrset(response.answer, name, dns.rdataclass.IN, rdtype)
        if rrset is None or len(rrset) == 0:
            return False
        found.append(rrset)
        return True

    chain = answer_chain(response, qname, holds)
    cnames = tuple(name.to_text(omit_final_dot=True) for name in chain.names[1:])
    if chain.broken:
        return Part("error", cnames=cnames, detail=chain.problem(str(chain.loop)))
    if not found:
        return Part("nodata", cnames=cnames, negative_ttl=negative_ttl(response))
    (rrset,) = found
    ips = tuple(ipaddress.ip_address(rd.address) for rd in rrset)
    links = (_cname(response, name) for name in chain.names[:-1])
    ttl = min([rrset.ttl, *(link.ttl for link in links if link is not None)])
    return Part("ok", ips, int(ttl), cnames)


def least(values: Iterable[int | None]) -> int | None:
    """The smallest of ``values``; ``None`` if any is ``None`` (no SOA: re-ask soonest)."""
    known = list(values)
    return None if not known or None in known else min(v for v in known if v is not None)


def summarize(tries: Iterable[tuple[str, str]]) -> str:
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


def combine(name: str, parts: Sequence[Part]) -> Answer:
    """One answer from the A and AAAA outcomes (see ``Answer``)."""
    nx = [p for p in parts if p.status == "nxdomain"]
    if nx:
        detail = next((p.detail for p in nx if p.detail), f"{name} does not exist")
        return Answer("nxdomain", detail=detail, negative_ttl=least(p.negative_ttl for p in nx))
    good = [p for p in parts if p.status == "ok"]
    ips = tuple(dict.fromkeys(ip for p in good for ip in p.ips))
    ttls = [p.ttl for p in good if p.ttl is not None]
    ttl = min(ttls) if ttls else None
    cnames = next((p.cnames for p in parts if p.cnames), ())
    failed = [p for p in parts if p.status in FAILURES]
    if failed:
        detail = summarize(t for p in failed for t in (p.tries or ((p.detail, ""),)) if t[0])
        return Answer(failed[0].status, ips, ttl, cnames, detail)
    if ips:
        return Answer("ok", ips, ttl, cnames)
    negative = least(p.negative_ttl for p in parts)
    return Answer("nodata", (), None, cnames, f"{name} has no A or AAAA records", negative)


def judge(
    response: dns.message.Message, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType
) -> Part:
    """The outcome of one server's (dnspython-parsed) response."""
    rcode = response.rcode()
    if rcode == dns.rcode.NXDOMAIN:
        return Part("nxdomain", negative_ttl=negative_ttl(response))
    if rcode == dns.rcode.SERVFAIL:
        return Part("servfail", detail="SERVFAIL")
    if rcode != dns.rcode.NOERROR:
        return Part("error", detail=dns.rcode.to_text(rcode))
    try:
        return chase(response, qname, rdtype)
    except (ValueError, AttributeError) as exc:  # malformed address records
        return Part("error", detail=f"bad answer: {exc}")


__all__ = [
    "FAILURES",
    "MAX_CHAIN",
    "Answer",
    "CnameChain",
    "Part",
    "Status",
    "answer_chain",
    "chase",
    "combine",
    "follow_cnames",
    "judge",
    "least",
    "negative_ttl",
    "summarize",
]
