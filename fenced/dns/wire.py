"""DNS messages by hand: the fast path's A/AAAA query and the reader of its common reply. Pure.

The query (:func:`query_tail` of a :func:`question`) is built by hand: header with RD, the
question, an EDNS OPT record for :data:`EDNS_PAYLOAD` bytes; the sender puts a random
16-bit ID in front. :func:`fast_parse` reads the common reply (NOERROR or NXDOMAIN, only
A/AAAA/CNAME records in the answer, not truncated) by hand, compression pointers followed
by dnspython's rules and every offset bounds-checked, into the very
:class:`~fenced.dns.answers.Part` that dnspython and :func:`~fenced.dns.answers.judge`
would give; it declines (``None``) anything else, which is then left to dnspython.

Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import ipaddress
import math
import struct

import dns.name

from fenced.core.model import IPAddress
from fenced.dns.answers import Part, follow_cnames

#: EDNS payload size advertised (the DNS flag day 2020 value: no IP fragmentation).
EDNS_PAYLOAD = 1232

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
#: Label bytes a CNAME target may hold for the fast path to name it in text (others:
#: dnspython, which escapes them).
_PLAIN = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
_MAX_HOPS = 16


def encode(name: str) -> tuple[dns.name.Name, bytes]:
    """``name`` parsed by dnspython and in uncompressed wire form (DNSException if bad)."""
    qname = dns.name.from_text(name)
    wire = qname.to_wire()
    assert wire is not None  # no file given: the bytes are returned
    return qname, wire


def question(qwire: bytes, rdtype: int) -> bytes:
    """The question section asking ``rdtype`` (class IN) of the name in wire form ``qwire``."""
    return qwire + struct.pack("!HH", rdtype, _CLASS_IN)


def query_tail(asked: bytes) -> bytes:
    """A query with the question section ``asked``, all of it but its ID (two bytes)."""
    return _QUERY_HEAD + asked + _QUERY_OPT


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


def fast_parse(wire: bytes, question: bytes, rdtype: int) -> Part | None:
    """The ``Part`` that dnspython + ``_ask`` would give for ``wire``, or ``None``.

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
        return Part("nxdomain", negative_ttl=negative)
    # answers.chase, on the parsed records
    qlabels = _read_name(question, 0)
    if qlabels is None:
        return None

    def holds(key: bytes) -> bool:
        return any(t == rdtype for t, _ttl, _rdata in addrs.get(key, ()))

    def linked(key: bytes) -> bytes | None:
        link = cnames.get(key)
        return None if link is None else _key(link[1])

    chain = follow_cnames(_key(qlabels[0]), linked, holds)
    # The targets as written, in text; the looping one too (a name dnspython would
    # escape: declined).
    texts = [_name_text(cnames[key][1]) for key in chain.names[:-1]]
    if chain.loop is not None:
        texts.append(_name_text(cnames[chain.names[-1]][1]))
    if any(text is None for text in texts):
        return None
    named = tuple(text for text in texts if text is not None)
    if chain.broken:
        loop_text = f"{named[-1]}." if chain.loop is not None else ""
        followed = named[:-1] if chain.loop is not None else named
        return Part("error", cnames=followed, detail=chain.problem(loop_text))
    recs = [(rttl, rdata) for t, rttl, rdata in addrs.get(chain.names[-1], ()) if t == rdtype]
    if not recs:
        return Part("nodata", cnames=named, negative_ttl=negative)
    ips: dict[IPAddress, None] = {}
    for _ttl, rdata in recs:
        ip: IPAddress = (
            ipaddress.IPv4Address(rdata) if rdtype == _QTYPE_A else ipaddress.IPv6Address(rdata)
        )
        ips[ip] = None
    ttl = min([*(rttl for rttl, _rdata in recs), *(cnames[key][0] for key in chain.names[:-1])])
    return Part("ok", tuple(ips), int(ttl), named)


__all__ = ["EDNS_PAYLOAD", "encode", "fast_parse", "query_tail", "question"]
