"""The QUIC Initial reader: RFC 9001 vectors, aioquic's Initials (v1, v2, many datagrams), fuzz."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fenced.core.wire.quic import QUIC_V1, InitialKeys, crypto_pieces, initial_keys, parse_quic
from fenced.core.wire.result import Foreign, Malformed, Named, NeedMore
from tests.unit.wire import rfc9001
from tests.unit.wire.clients import quic_initials
from tests.unit.wire.fuzz import edits, mutate

NAME = "quic.example.org"


def test_rfc9001_client_initial_keys() -> None:
    """The keys derived from the Appendix A DCID are the RFC's key, IV and hp key."""
    assert initial_keys(rfc9001.DCID, QUIC_V1) == InitialKeys(rfc9001.KEY, rfc9001.IV, rfc9001.HP)


def test_rfc9001_client_initial_decrypts_to_its_crypto_frame() -> None:
    """The protected Appendix A.2 packet opens to the RFC's CRYPTO frame (offset 0, 241 bytes)."""
    assert crypto_pieces(rfc9001.PACKET) == [(0, rfc9001.CRYPTO_FRAME[4:])]


def test_rfc9001_client_initial_names_example_com() -> None:
    """The Appendix A.2 ClientHello carries SNI example.com and ALPN "alpn"."""
    assert parse_quic([rfc9001.PACKET]) == Named("example.com", alpn=(b"alpn",))


@pytest.mark.parametrize("version", [1, 2])
def test_aioquic_initial_gives_the_sni(version: int) -> None:
    """aioquic's first Initial (QUIC v1, and v2 of RFC 9369) names the server it asked for."""
    (datagram,) = quic_initials("Quic.Example.ORG", version=version)
    assert parse_quic([datagram]) == Named(NAME, alpn=(b"proto-0000",))


@pytest.mark.parametrize("version", [1, 2])
def test_hello_spread_over_several_initials_is_reassembled(version: int) -> None:
    """A ClientHello over four Initials needs more until all are in, in any order."""
    datagrams = quic_initials(NAME, alpn_count=300, version=version)
    assert len(datagrams) > 1
    for count in range(1, len(datagrams)):
        assert isinstance(parse_quic(datagrams[:count]), NeedMore)
    for order in itertools.islice(itertools.permutations(datagrams), 6):
        result = parse_quic(order)
        assert isinstance(result, Named) and result.name == NAME
        assert len(result.alpn) == 300


def test_coalesced_initials_in_one_datagram() -> None:
    """Two Initial packets coalesced in one datagram are both opened and reassembled."""
    first, second, *_ = quic_initials(NAME, alpn_count=150)
    pieces = crypto_pieces(first + second)
    assert isinstance(pieces, list) and len(pieces) == 2
    assert isinstance(parse_quic([first + second]), Named)


def test_trailing_bytes_after_the_packets_are_ignored() -> None:
    """Bytes after the last packet that cannot start a long header end the datagram."""
    assert parse_quic([rfc9001.PACKET + bytes(40)]) == parse_quic([rfc9001.PACKET])


def test_tampered_packet_fails_to_decrypt() -> None:
    """One flipped ciphertext byte makes the AEAD check fail: malformed."""
    packet = bytearray(rfc9001.PACKET)
    packet[100] ^= 0xFF
    assert isinstance(parse_quic([bytes(packet)]), Malformed)


def test_conflicting_crypto_data_is_malformed() -> None:
    """Two clients' Initials covering the same CRYPTO offsets with other bytes: malformed."""
    (ours,) = quic_initials(NAME)
    assert isinstance(parse_quic([ours, rfc9001.PACKET]), Malformed)


def test_other_datagrams_are_foreign() -> None:
    """DNS, a short-header packet, another QUIC version or a Handshake packet are not Initials."""
    handshake_type = bytes([rfc9001.PACKET[0] | 0x20]) + rfc9001.PACKET[1:]
    other_version = rfc9001.PACKET[:1] + b"\xff\x00\x00\x1d" + rfc9001.PACKET[5:]
    for datagram in (
        b"\x12\x34\x01\x00\x00\x01",
        b"\x40" + bytes(40),
        other_version,
        handshake_type,
    ):
        assert isinstance(parse_quic([datagram]), Foreign), datagram[:8]


def test_short_dcid_is_malformed() -> None:
    """A client Initial whose DCID is under 8 bytes breaks RFC 9000 7.2."""
    packet = rfc9001.PACKET[:5] + b"\x04" + rfc9001.PACKET[6:10] + rfc9001.PACKET[14:]
    assert isinstance(parse_quic([packet]), Malformed)


def test_crypto_beyond_the_limit_is_malformed() -> None:
    """With a limit below the ClientHello's length, the flow is declined, not buffered."""
    datagrams = quic_initials(NAME, alpn_count=300)
    assert isinstance(parse_quic(datagrams, limit=1000), Malformed)
    assert isinstance(parse_quic(datagrams[:1], limit=2000), Malformed)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1500))
def test_random_datagrams_never_raise_nor_name(data: bytes) -> None:
    """Random bytes, also behind a valid v1 Initial header start, give a result and no name."""
    for datagram in (data, rfc9001.PACKET[:18] + data):
        assert not isinstance(parse_quic([datagram]), Named)


@settings(max_examples=300, deadline=None)
@given(edits(rfc9001.PACKET, 4))
def test_mutated_initials_never_raise_nor_name_another(changes: list[tuple[int, int]]) -> None:
    """The RFC packet with bytes overwritten gives a result; a name, if any, is example.com."""
    data = mutate(rfc9001.PACKET, changes)
    result = parse_quic([data])
    assert not isinstance(result, Named) or result.name == "example.com"
