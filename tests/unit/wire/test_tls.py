"""The TLS ClientHello parser: real OpenSSL ClientHellos, any split, crafted and random bytes."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fenced.core.wire.result import Foreign, Malformed, Named, NeedMore, Unnamed
from fenced.core.wire.tls import EXT_ECH, MAX_HELLO, parse_client_hello, parse_tls
from tests.unit.wire.clients import tls_client_hello
from tests.unit.wire.fuzz import edits, mutate, name_in

HELLO = tls_client_hello("Www.Example.COM", alpn=["h2", "http/1.1"])


def _records(handshake: bytes, sizes: list[int]) -> bytes:
    """``handshake`` cut into handshake records of the given sizes (the rest in a last one)."""
    out, pos = bytearray(), 0
    for size in [*sizes, len(handshake)]:
        part = handshake[pos : pos + size]
        if part:
            out += b"\x16\x03\x01" + struct.pack("!H", len(part)) + part
        pos += len(part)
    return bytes(out)


def _hello(extensions: bytes, *, session: bytes = b"", suites: bytes = b"\x13\x01") -> bytes:
    """A ClientHello handshake message with the given extensions block (length included)."""
    body = (
        b"\x03\x03"
        + bytes(32)
        + bytes([len(session)])
        + session
        + struct.pack("!H", len(suites))
        + suites
        + b"\x01\x00"
        + extensions
    )
    return b"\x01" + len(body).to_bytes(3, "big") + body


def _ext(kind: int, data: bytes) -> bytes:
    return struct.pack("!HH", kind, len(data)) + data


def _exts(*items: bytes) -> bytes:
    joined = b"".join(items)
    return struct.pack("!H", len(joined)) + joined


def _sni(*names: bytes, kind: int = 0) -> bytes:
    entries = b"".join(bytes([kind]) + struct.pack("!H", len(n)) + n for n in names)
    return _ext(0, struct.pack("!H", len(entries)) + entries)


def test_real_client_hello_gives_its_sni_lowercased_and_alpn() -> None:
    """OpenSSL's ClientHello yields the SNI (lowercased), no ECH, and the offered ALPN list."""
    assert parse_tls(HELLO) == Named("www.example.com", ech=False, alpn=(b"h2", b"http/1.1"))


def test_real_client_hello_without_sni_is_unnamed() -> None:
    """A ClientHello sent without server_hostname is complete and carries no name."""
    assert parse_tls(tls_client_hello(None)) == Unnamed()


def test_every_two_segment_split_needs_more_then_names() -> None:
    """Cut at every byte, the first segment alone needs more and both together give the name."""
    for cut in range(len(HELLO)):
        first = parse_tls(HELLO[:cut])
        assert isinstance(first, NeedMore), cut
        assert first.at_least is not None and cut < first.at_least <= len(HELLO)
        assert parse_tls(HELLO[:cut] + HELLO[cut:]) == parse_tls(HELLO)


@pytest.mark.parametrize("size", [1, 2, 7, 100, 300])
def test_handshake_spread_over_many_records(size: int) -> None:
    """The ClientHello split into records of ``size`` bytes gives the same result."""
    handshake = HELLO[5:]
    stream = _records(handshake, [size] * (len(handshake) // size))
    assert parse_tls(stream) == parse_tls(HELLO)


def test_bytes_after_the_hello_are_not_read() -> None:
    """Records after a complete ClientHello (early data, junk) do not change the result."""
    assert parse_tls(HELLO + b"\x17\x03\x03\x00\x05hello") == parse_tls(HELLO)


def test_other_protocols_are_foreign() -> None:
    """An HTTP request, SSH banner or a TLS record of version 2 is not TLS."""
    assert isinstance(parse_tls(b"GET / HTTP/1.1\r\n"), Foreign)
    assert isinstance(parse_tls(b"SSH-2.0-OpenSSH_9.2\r\n"), Foreign)
    assert isinstance(parse_tls(b"\x16\x02\x00\x00\x05"), Foreign)
    assert parse_tls(b"") == NeedMore(5)


def test_alert_interrupting_the_hello_is_malformed() -> None:
    """A non-handshake record between the pieces of a ClientHello is malformed."""
    stream = _records(HELLO[5:], [50])
    cut = 5 + 50
    bad = stream[:cut] + b"\x15\x03\x03\x00\x02\x01\x00" + stream[cut:]
    assert isinstance(parse_tls(bad), Malformed)


def test_another_handshake_type_is_malformed() -> None:
    """A ServerHello (type 2) where a ClientHello must be is malformed."""
    assert isinstance(parse_client_hello(b"\x02" + HELLO[6:]), Malformed)


def test_ech_extension_is_reported_with_the_outer_name() -> None:
    """A ClientHello with encrypted_client_hello gives the outer SNI and ech=True."""
    hello = _hello(_exts(_sni(b"public.example"), _ext(EXT_ECH, b"\x00" * 8)))
    assert parse_client_hello(hello) == Named("public.example", ech=True)


@pytest.mark.parametrize(
    ("extensions", "why"),
    [
        (_exts(_sni(b"a.example", b"b.example")), "two host_names"),
        (_exts(_sni(b"a.example"), _sni(b"b.example")), "duplicate extension"),
        (_exts(_sni(b"192.0.2.1")), "IP literal"),
        (_exts(_sni(b"a.example.")), "trailing dot"),
        (_exts(_sni(b"a\x00.example")), "NUL in the name"),
        (_exts(_sni(b"-a.example")), "label starts with '-'"),
        (_exts(_sni(b"a" * 64 + b".example")), "label too long"),
        (_exts(_sni(b"a.example", kind=1)), "unknown name type"),
        (_exts(_ext(0, b"")), "empty server_name extension"),
        (_exts(_ext(16, b"\x00\x01\x00")), "empty ALPN name"),
        (_exts(_sni(b"a.example"))[:-1] + b"\x00\x00", "lengths disagree"),
        (_exts(_sni(b"a.example")) + b"\x00", "bytes after the extensions"),
    ],
)
def test_crafted_hellos_that_break_the_rules_are_malformed(extensions: bytes, why: str) -> None:
    """Each crafted violation of RFC 8446 / RFC 6066 is declined as malformed."""
    assert isinstance(parse_client_hello(_hello(extensions)), Malformed), why


def test_hello_without_extensions_is_unnamed() -> None:
    """A TLS 1.2-style ClientHello without an extensions block is complete, without a name."""
    assert parse_client_hello(_hello(b"")) == Unnamed()


def test_bad_fixed_fields_are_malformed() -> None:
    """A session id over 32 bytes or an odd cipher_suites length is malformed."""
    assert isinstance(parse_client_hello(_hello(_exts(), session=bytes(33))), Malformed)
    assert isinstance(parse_client_hello(_hello(_exts(), suites=b"\x13")), Malformed)


def test_hello_longer_than_the_bound_is_malformed() -> None:
    """A handshake header announcing more than MAX_HELLO bytes is declined at once."""
    header = b"\x01" + (MAX_HELLO).to_bytes(3, "big")
    assert isinstance(parse_client_hello(header), Malformed)
    assert isinstance(parse_tls(b"\x16\x03\x01\x00\x04" + header), Malformed)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_never_raise_nor_invent_a_name(data: bytes) -> None:
    """Any bytes, with or without a handshake-record prefix, give a result; names come from them."""
    for stream in (data, b"\x16\x03\x01" + data, b"\x01" + data):
        for result in (parse_tls(stream), parse_client_hello(stream)):
            assert name_in(result, stream)


@settings(max_examples=400, deadline=None)
@given(edits(HELLO, 8))
def test_mutated_hellos_never_raise_nor_invent_a_name(changes: list[tuple[int, int]]) -> None:
    """A real ClientHello with bytes overwritten gives a result, and any name is in the bytes."""
    data = mutate(HELLO, changes)
    result = parse_tls(data)
    assert name_in(result, data)
