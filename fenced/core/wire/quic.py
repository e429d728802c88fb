"""Read the ClientHello inside a client's QUIC Initial packets (RFC 9000, 9001; v2: RFC 9369).

Initial packets are protected with keys anyone can derive from the Destination Connection
ID (RFC 9001 section 5.2): :func:`initial_keys` derives them, :func:`crypto_pieces` removes
header protection, decrypts each Initial packet of a datagram (coalesced packets included)
and returns its CRYPTO frames, and :func:`parse_quic` reassembles those across datagrams
and hands the bytes to :func:`fenced.core.wire.tls.parse_client_hello`. Only PADDING, PING,
ACK and CRYPTO frames are accepted in an Initial. Never raises.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from fenced.core.wire.reassembly import MAX_FLOW_BYTES, Reassembly
from fenced.core.wire.result import Foreign, Malformed, NeedMore, WireResult
from fenced.core.wire.tls import parse_client_hello

__all__ = [
    "QUIC_V1",
    "QUIC_V2",
    "InitialKeys",
    "crypto_pieces",
    "initial_keys",
    "parse_quic",
]

QUIC_V1: Final = 0x00000001
QUIC_V2: Final = 0x6B3343CF


@dataclass(frozen=True, slots=True)
class _Version:
    salt: bytes
    initial_type: int  # the long header's two type bits that mean Initial
    label: bytes  # prefix of the key, iv and hp labels


_VERSIONS: Final = {
    QUIC_V1: _Version(bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a"), 0, b"quic "),
    QUIC_V2: _Version(bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9"), 1, b"quicv2 "),
}
_MAX_CID: Final = 20
_MIN_CLIENT_DCID: Final = 8  # RFC 9000 7.2: a client's first DCID is at least 8 bytes
_SAMPLE: Final = 16
_TAG: Final = 16
_PADDING, _PING, _ACK, _ACK_ECN, _CRYPTO = 0x00, 0x01, 0x02, 0x03, 0x06


@dataclass(frozen=True, slots=True)
class InitialKeys:
    """A client's Initial packet protection keys: AEAD key, IV and header protection key."""

    key: bytes
    iv: bytes
    hp: bytes


class _Bad(Exception):
    """Internal: a packet breaks a rule (``args[0]`` says which); never leaves this module."""


def _expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    """HKDF-Expand-Label of TLS 1.3 (RFC 8446 7.1) with an empty context."""
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + b"\x00"
    return HKDFExpand(SHA256(), length, info).derive(secret)


@functools.lru_cache(maxsize=256)  # a flow's Initials share one DCID: derive its keys once
def initial_keys(dcid: bytes, version: int = QUIC_V1) -> InitialKeys:
    """The client's Initial keys for Destination Connection ID ``dcid`` (RFC 9001 5.2).

    ``version`` is :data:`QUIC_V1` or :data:`QUIC_V2`; any other raises KeyError (callers
    check the version first, as :func:`crypto_pieces` does).
    """
    v = _VERSIONS[version]
    initial_secret = hmac.digest(v.salt, dcid, "sha256")  # HKDF-Extract
    client = _expand_label(initial_secret, b"client in", 32)
    return InitialKeys(
        key=_expand_label(client, v.label + b"key", 16),
        iv=_expand_label(client, v.label + b"iv", 12),
        hp=_expand_label(client, v.label + b"hp", 16),
    )


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """A QUIC variable-length integer at ``pos`` and the position after it."""
    if pos >= len(data):
        raise _Bad("truncated variable-length integer")
    size = 1 << (data[pos] >> 6)
    if pos + size > len(data):
        raise _Bad("truncated variable-length integer")
    value = int.from_bytes(data[pos : pos + size], "big") & ((1 << (8 * size - 2)) - 1)
    return value, pos + size


def crypto_pieces(datagram: bytes) -> list[tuple[int, bytes]] | Foreign | Malformed:
    """The CRYPTO frames ``(offset, data)`` of every client Initial packet in ``datagram``.

    :class:`Foreign` when the datagram does not begin with a QUIC v1/v2 Initial;
    :class:`Malformed` when a packet's lengths disagree, it fails to decrypt, or it carries
    a frame other than PADDING, PING, ACK and CRYPTO. Other long-header packets coalesced
    after an Initial are skipped by their Length; a short-header packet or trailing bytes
    end the datagram.
    """
    if len(datagram) < 7 or datagram[0] & 0xC0 != 0xC0:
        return Foreign("not a QUIC long-header packet")
    version = int.from_bytes(datagram[1:5], "big")
    v = _VERSIONS.get(version)
    if v is None or (datagram[0] >> 4) & 3 != v.initial_type:
        return Foreign("not a QUIC v1 or v2 Initial packet")
    pieces: list[tuple[int, bytes]] = []
    pos = 0
    try:
        while pos < len(datagram) and datagram[pos] & 0xC0 == 0xC0:
            if int.from_bytes(datagram[pos + 1 : pos + 5], "big") != version:
                raise _Bad("coalesced packet of another version")
            pos = _packet(datagram, pos, version, v, pieces)
    except _Bad as e:
        return Malformed(str(e.args[0]))
    return pieces


def _packet(
    data: bytes, start: int, version: int, v: _Version, pieces: list[tuple[int, bytes]]
) -> int:
    """Open the long-header packet at ``start``; CRYPTO frames of an Initial go to ``pieces``.

    Returns the position after the packet.
    """
    pos = start + 5
    if pos >= len(data):
        raise _Bad("truncated long header")
    dcid_len = data[pos]
    dcid = data[pos + 1 : pos + 1 + dcid_len]
    pos += 1 + dcid_len
    if dcid_len > _MAX_CID or pos >= len(data):
        raise _Bad("bad Destination Connection ID")
    scid_len = data[pos]
    pos += 1 + scid_len
    if scid_len > _MAX_CID or pos > len(data):
        raise _Bad("bad Source Connection ID")
    initial = (data[start] >> 4) & 3 == v.initial_type
    if initial:
        if dcid_len < _MIN_CLIENT_DCID:
            raise _Bad("client Initial with a Destination Connection ID under 8 bytes")
        token_len, pos = _varint(data, pos)
        pos += token_len
    length, pn_offset = _varint(data, pos)
    end = pn_offset + length
    if end > len(data) or pos > len(data):
        raise _Bad("packet Length runs past the datagram")
    if not initial:
        return end
    if length < 4 + _SAMPLE:
        raise _Bad("Initial packet too short to sample")
    keys = initial_keys(dcid, version)
    sample = data[pn_offset + 4 : pn_offset + 4 + _SAMPLE]
    encryptor = Cipher(algorithms.AES(keys.hp), modes.ECB()).encryptor()
    mask = encryptor.update(sample) + encryptor.finalize()
    first = data[start] ^ (mask[0] & 0x0F)
    pn_len = (first & 3) + 1
    pn_bytes = bytes(
        b ^ m for b, m in zip(data[pn_offset : pn_offset + pn_len], mask[1:], strict=False)
    )
    header = bytes([first]) + data[start + 1 : pn_offset] + pn_bytes
    nonce = bytes(
        a ^ b
        for a, b in zip(keys.iv, int.from_bytes(pn_bytes, "big").to_bytes(12, "big"), strict=True)
    )
    try:
        payload = AESGCM(keys.key).decrypt(nonce, data[pn_offset + pn_len : end], header)
    except InvalidTag:
        raise _Bad("Initial packet fails to decrypt") from None
    if first & 0x0C:
        raise _Bad("reserved header bits set")
    _frames(payload, pieces)
    return end


def _frames(payload: bytes, pieces: list[tuple[int, bytes]]) -> None:
    """Append the CRYPTO frames of a decrypted Initial payload; refuse frames not allowed."""
    if not payload:
        raise _Bad("Initial packet without frames")
    pos = 0
    while pos < len(payload):
        kind, pos = _varint(payload, pos)
        if kind in (_PADDING, _PING):
            continue
        if kind in (_ACK, _ACK_ECN):
            _, pos = _varint(payload, pos)  # largest acknowledged
            _, pos = _varint(payload, pos)  # ack delay
            count, pos = _varint(payload, pos)
            if count > len(payload):
                raise _Bad("ACK range count runs past the packet")
            _, pos = _varint(payload, pos)  # first range
            for _ in range(count * 2 + (3 if kind == _ACK_ECN else 0)):  # gaps, lengths, ECN
                _, pos = _varint(payload, pos)
        elif kind == _CRYPTO:
            offset, pos = _varint(payload, pos)
            length, pos = _varint(payload, pos)
            if pos + length > len(payload):
                raise _Bad("CRYPTO frame runs past the packet")
            pieces.append((offset, payload[pos : pos + length]))
            pos += length
        else:
            raise _Bad(f"frame type {kind:#x} is not allowed in an Initial packet")


def parse_quic(datagrams: Iterable[bytes], limit: int = MAX_FLOW_BYTES) -> WireResult:
    """Judge a UDP flow's first datagrams as QUIC Initials carrying a ClientHello.

    CRYPTO data is reassembled by offset across packets and datagrams (at most ``limit``
    bytes; more, or overlapping bytes that disagree, is :class:`Malformed`) and the
    contiguous start is judged by :func:`~fenced.core.wire.tls.parse_client_hello`.
    """
    gathered = Reassembly(deadline=0.0, limit=limit)
    for datagram in datagrams:
        pieces = crypto_pieces(datagram)
        if not isinstance(pieces, list):
            return pieces
        for offset, data in pieces:
            gathered = gathered.add(offset, data)
    if gathered.conflict:
        return Malformed("CRYPTO frames disagree on the bytes at an offset")
    if gathered.overflow:
        return Malformed(f"CRYPTO data beyond {limit} bytes")
    result = parse_client_hello(gathered.contiguous())
    if isinstance(result, NeedMore) and result.at_least is not None and result.at_least > limit:
        return Malformed(f"ClientHello longer than {limit} bytes")
    return result
