"""Parse the TLS ClientHello at the start of a client's byte stream: its SNI, ECH and ALPN.

Two entry points: :func:`parse_tls` reads the record layer (a TCP stream: the handshake may
span several records and segments), :func:`parse_client_hello` the handshake layer alone
(what QUIC's CRYPTO frames carry). Both decline what they do not understand through the
result (:mod:`fenced.core.wire.result`) and never raise.
"""

from __future__ import annotations

from typing import Final

from fenced.core.wire.names import dns_name
from fenced.core.wire.result import Foreign, Malformed, Named, NeedMore, Unnamed, WireResult

__all__ = [
    "EXT_ALPN",
    "EXT_ECH",
    "EXT_SERVER_NAME",
    "MAX_HELLO",
    "parse_client_hello",
    "parse_tls",
]

#: The largest ClientHello handshake message accepted (bytes, body and 4-byte header).
MAX_HELLO: Final = 16384
#: Extension numbers read (RFC 6066, RFC 7301, draft-ietf-tls-esni).
EXT_SERVER_NAME: Final = 0
EXT_ALPN: Final = 16
EXT_ECH: Final = 0xFE0D

_HANDSHAKE: Final = 22
_CLIENT_HELLO: Final = 1
_RECORD_HEADER: Final = 5
_MAX_RECORD: Final = 2**14 + 256  # TLSPlaintext limit, with the slack TLS 1.2 ciphertext has
_HOST_NAME: Final = 0


class _Bad(Exception):
    """Internal: the message breaks a rule (``args[0]`` says which); never leaves this module."""


class _Reader:
    """A cursor over bytes whose reads raise :class:`_Bad` instead of running past the end."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def take(self, n: int, what: str) -> bytes:
        if self.end - self.pos < n:
            raise _Bad(f"{what} runs past its enclosing length")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, n: int, what: str) -> int:
        return int.from_bytes(self.take(n, what), "big")

    def vector(self, n: int, what: str) -> _Reader:
        length = self.uint(n, f"{what} length")
        if self.end - self.pos < length:
            raise _Bad(f"{what} runs past its enclosing length")
        sub = _Reader(self.data, self.pos, self.pos + length)
        self.pos += length
        return sub

    def take_all(self) -> bytes:
        return self.take(self.left, "rest")

    @property
    def left(self) -> int:
        return self.end - self.pos


def parse_tls(stream: bytes) -> WireResult:
    """Judge the start of a client's TLS stream by the ClientHello its records carry.

    Records must be handshake records (type 22, version 3.x, at most 2^14+256 bytes);
    the ClientHello may be split across any number of them. Returns :class:`NeedMore`
    (with the total length needed when known) until the whole ClientHello is present;
    bytes after it are not read.
    """
    if not stream:
        return NeedMore(_RECORD_HEADER)
    if stream[0] != _HANDSHAKE:
        return Foreign(f"first byte {stream[0]:#04x} is not a TLS handshake record")
    handshake = bytearray()
    pos = 0
    while True:
        if len(stream) - pos < _RECORD_HEADER:
            if len(stream) > pos and stream[pos] != _HANDSHAKE:
                return Malformed("a non-handshake record interrupts the ClientHello")
            if len(stream) > pos + 1 and stream[pos + 1] != 3:
                return _bad_version(pos)
            return NeedMore(pos + _RECORD_HEADER)
        if stream[pos] != _HANDSHAKE:
            return Malformed("a non-handshake record interrupts the ClientHello")
        if stream[pos + 1] != 3:
            return _bad_version(pos)
        length = int.from_bytes(stream[pos + 3 : pos + 5], "big")
        if length == 0 or length > _MAX_RECORD:
            return Malformed(f"handshake record of {length} bytes")
        end = pos + _RECORD_HEADER + length
        handshake += stream[pos + _RECORD_HEADER : end]
        result = parse_client_hello(bytes(handshake))
        if not isinstance(result, NeedMore):
            return result
        if end > len(stream):
            return NeedMore(end)
        pos = end


def _bad_version(pos: int) -> WireResult:
    if pos == 0:
        return Foreign("record version is not 3.x")
    return Malformed("record version is not 3.x")


def parse_client_hello(handshake: bytes) -> WireResult:
    """Judge handshake-layer bytes that must begin with a ClientHello (RFC 8446 4.1.2).

    Returns :class:`Named` with the SNI host_name (validated, lowercased), :class:`Unnamed`
    when there is no server_name extension, :class:`NeedMore` (total handshake bytes needed)
    while incomplete, and :class:`Malformed` for anything that breaks the message's rules:
    another handshake type, lengths that disagree, duplicate extensions, more than one
    host_name, a host_name that is not a DNS name (an IP literal included).
    """
    if len(handshake) < 4:
        if handshake and handshake[0] != _CLIENT_HELLO:
            return Malformed(f"handshake type {handshake[0]} is not ClientHello")
        return NeedMore(4)
    if handshake[0] != _CLIENT_HELLO:
        return Malformed(f"handshake type {handshake[0]} is not ClientHello")
    length = int.from_bytes(handshake[1:4], "big")
    if length + 4 > MAX_HELLO:
        return Malformed(f"ClientHello of {length} bytes is longer than {MAX_HELLO - 4}")
    if len(handshake) < 4 + length:
        return NeedMore(4 + length)
    try:
        return _client_hello(_Reader(handshake, 4, 4 + length))
    except _Bad as e:
        return Malformed(str(e.args[0]))


def _client_hello(r: _Reader) -> WireResult:
    version = r.uint(2, "legacy_version")
    if version >> 8 != 3:
        raise _Bad(f"legacy_version {version:#06x} is not 3.x")
    r.take(32, "random")
    session = r.vector(1, "legacy_session_id")
    if session.left > 32:
        raise _Bad("legacy_session_id longer than 32 bytes")
    suites = r.vector(2, "cipher_suites")
    if suites.left < 2 or suites.left % 2:
        raise _Bad("cipher_suites is empty or of odd length")
    if r.vector(1, "legacy_compression_methods").left < 1:
        raise _Bad("legacy_compression_methods is empty")
    if r.left == 0:
        return Unnamed()  # TLS 1.2 and older may omit the extensions
    extensions = r.vector(2, "extensions")
    if r.left:
        raise _Bad("bytes after the extensions")
    seen: set[int] = set()
    name: str | None = None
    alpn: tuple[bytes, ...] = ()
    data, pos, end = extensions.data, extensions.pos, extensions.end
    while pos < end:  # indexed by hand: this loop is most of the parser's time
        if end - pos < 4:
            raise _Bad("extension header runs past the extensions")
        kind = data[pos] << 8 | data[pos + 1]
        start, pos = pos + 4, pos + 4 + (data[pos + 2] << 8 | data[pos + 3])
        if pos > end:
            raise _Bad("extension runs past the extensions")
        if kind in seen:
            raise _Bad(f"extension {kind} appears twice")
        seen.add(kind)
        if kind == EXT_SERVER_NAME:
            name = _server_name(_Reader(data, start, pos))
        elif kind == EXT_ALPN:
            alpn = _alpn(_Reader(data, start, pos))
    ech = EXT_ECH in seen
    if name is None:
        return Unnamed(ech=ech, alpn=alpn)
    return Named(name, ech=ech, alpn=alpn)


def _server_name(body: _Reader) -> str:
    names = body.vector(2, "server_name_list")
    if body.left:
        raise _Bad("bytes after the server_name_list")
    if not names.left:
        raise _Bad("empty server_name_list")
    host: str | None = None
    while names.left:
        kind = names.uint(1, "name_type")
        value = names.vector(2, "server name").take_all()
        if kind != _HOST_NAME:
            raise _Bad(f"server name of unknown type {kind}")
        if host is not None:
            raise _Bad("more than one host_name")
        host = dns_name(value)
        if host is None:
            raise _Bad("host_name is not a DNS name")
    if host is None:  # unreachable: the list is not empty and each entry sets or raises
        raise _Bad("no host_name")
    return host


def _alpn(body: _Reader) -> tuple[bytes, ...]:
    protocols = body.vector(2, "protocol_name_list")
    if body.left or not protocols.left:
        raise _Bad("bad ALPN extension length")
    data, pos, end = protocols.data, protocols.pos, protocols.end
    out: list[bytes] = []
    while pos < end:
        size = data[pos]
        if size == 0 or pos + 1 + size > end:
            raise _Bad("ALPN protocol name empty or past the list")
        out.append(data[pos + 1 : pos + 1 + size])
        pos += 1 + size
    return tuple(out)
