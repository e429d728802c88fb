"""The nf_tables wire codec: walkers, requests, batches and the decoders, without a kernel."""

from __future__ import annotations

import struct

from fenced.core.elements import Element, SetOp, Verdict
from fenced.kernel import nfcodec
from fenced.kernel.nfcodec import (
    NLM_F_ACK_TLVS,
    NLMSG_ERROR,
    SETELEM_REPLY,
    BatchBuilder,
    attr_payloads,
    be32,
    decode_ack,
    decode_done,
    decode_elements,
    decode_generation,
    dump_request,
    generation_request,
    walk_attrs,
    walk_messages,
)

HDR = struct.Struct("=IHHII")


def _attr(atype: int, payload: bytes) -> bytes:
    """One attribute, padded (written independently of the codec)."""
    return struct.pack("=HH", 4 + len(payload), atype) + payload + b"\0" * (-len(payload) % 4)


def _msg(mtype: int, body: bytes, *, seq: int = 1, flags: int = 0, portid: int = 0) -> bytes:
    """One netlink message whose payload is ``body``."""
    return HDR.pack(16 + len(body), mtype, flags, seq, portid) + body


def test_walk_attrs_yields_types_and_payload_spans() -> None:
    """Types lose their flag bits; spans exclude the header and the padding."""
    buf = _attr(1 | 0x8000, b"abc") + _attr(2, b"wxyz")
    assert walk_attrs(buf, 0, len(buf)) == [(1, 4, 7), (2, 12, 16)]


def test_walk_attrs_stops_at_a_malformed_attribute() -> None:
    """A too short or overlong attribute ends the walk; what came before is kept."""
    good = _attr(1, b"ab")
    assert walk_attrs(good + struct.pack("=HH", 2, 3), 0, len(good) + 4) == [(1, 4, 6)]
    assert walk_attrs(good + struct.pack("=HH", 99, 3), 0, len(good) + 4) == [(1, 4, 6)]


def test_attr_payloads_keeps_the_last_of_a_repeated_type() -> None:
    """attr_payloads maps type to payload bytes; a repeated type keeps its last value."""
    buf = _attr(1, b"one") + _attr(1, b"two") + _attr(3, b"x")
    assert attr_payloads(buf, 0, len(buf)) == {1: b"two", 3: b"x"}


def test_be32_reads_big_endian_and_defaults_to_zero() -> None:
    """be32 reads the first four bytes big-endian; missing or short payloads are 0."""
    assert be32(b"\0\0\1\2extra") == 258
    assert be32(None) == 0
    assert be32(b"\1\2") == 0


def test_walk_messages_splits_a_datagram_and_stops_at_a_truncated_one() -> None:
    """Each message's header fields and span; a message running past the end stops the walk."""
    a = _msg(5, b"abcd", seq=7, flags=2, portid=9)
    b = _msg(6, b"", seq=8)
    data = a + b + HDR.pack(400, 1, 0, 0, 0)
    assert list(walk_messages(data, len(data))) == [(7, 5, 2, 9, 0, 20), (8, 6, 0, 0, 20, 36)]


def test_dump_and_generation_requests() -> None:
    """A dump request names table and set with NLM_F_DUMP; GETGEN has no attributes."""
    req = dump_request(42, "ip6", "t", "s")
    ((seq, mtype, flags, _portid, start, end),) = walk_messages(req, len(req))
    assert (seq, mtype, flags) == (42, (10 << 8) | 13, 0x301)
    assert req[16] == nfcodec.NFPROTO_IPV6
    assert attr_payloads(req, start + 20, end) == {1: b"t\0", 2: b"s\0"}
    gen = generation_request(3)
    assert HDR.unpack_from(gen, 0) == (20, (10 << 8) | 16, 1, 3, 0) and len(gen) == 20


def _as_dump(datagram: bytes) -> list[tuple[bytes, int, int]]:
    """The set-element messages of a built batch, as a dump would carry them."""
    return [(datagram, s, e) for _q, t, _f, _p, s, e in walk_messages(datagram, len(datagram))
            if t == SETELEM_REPLY]  # fmt: skip


def test_batch_round_trips_through_the_element_decoder() -> None:
    """Elements packed by BatchBuilder decode back to their keys, times and verdicts."""
    els = (
        Element(b"\x0a\0\0\1", timeout_ms=60_000, expiration_ms=5_000),
        Element(b"\0" * 8, verdict=Verdict("jump", "m_cg_a")),
        Element(b"\1" * 16, verdict=Verdict("accept")),
    )
    builder = BatchBuilder(100)
    builder.add_op(0, SetOp("add", "inet", "t", "s", els))
    dumped = [d for buf, s, e in _as_dump(builder.finish()) for d in decode_elements(buf, s, e)]
    assert [(d.key, d.timeout_ms, d.expires_ms, d.verdict) for d in dumped] == [
        (b"\x0a\0\0\1", 60_000, 5_000, None),
        (b"\0" * 8, None, None, Verdict("jump", "m_cg_a")),
        (b"\1" * 16, None, None, Verdict("accept")),
    ]


def test_batch_splits_large_ops_and_explains_error_offsets() -> None:
    """Over 64 KiB of elements become several messages; an error offset names its element."""
    els = tuple(Element(i.to_bytes(4, "big"), timeout_ms=1_000) for i in range(5_000))
    builder = BatchBuilder(1)
    builder.add_op(0, SetOp("add", "inet", "t", "s", els))
    datagram = builder.finish()
    assert len(builder.messages) >= 2
    assert all(e - s <= nfcodec.MAX_MESSAGE_BYTES for _b, s, e in _as_dump(datagram))
    assert [el for m in builder.messages for el in m.elements] == list(els)
    second = builder.messages[1]
    assert second.element_at(second.offsets[3] + 5) == second.elements[3]
    assert second.element_at(None) is None and second.element_at(0) is None


def test_delete_keeps_the_last_of_a_repeated_key_and_skips_empty_ops() -> None:
    """delete sends each key once; an op without elements sends nothing (never a flush)."""
    builder = BatchBuilder(1)
    builder.add_op(0, SetOp("delete", "inet", "t", "s", ()))
    assert builder.messages == []
    el = Element(b"\1\2\3\4")
    builder.add_op(1, SetOp("delete", "inet", "t", "s", (el, el)))
    assert [(m.step, len(m.elements)) for m in builder.messages] == [("delete", 1)]


def test_decode_ack_reads_error_message_and_offset() -> None:
    """An extended ack carries the errno, the kernel's text and the bad attribute's offset."""
    request = HDR.pack(16, 0, 0, 5, 0)  # the capped copy of the request's header
    tlvs = _attr(1, b"bad element\0") + _attr(2, struct.pack("=I", 48))
    body = struct.pack("=i", -2) + request + tlvs
    buf = _msg(NLMSG_ERROR, body, seq=5, flags=0x100 | NLM_F_ACK_TLVS)
    ack = decode_ack(buf, 0, len(buf), 5, 0x100 | NLM_F_ACK_TLVS)
    assert (ack.seq, ack.error, ack.message, ack.offset) == (5, 2, "bad element", 48)


def test_decode_done_and_generation() -> None:
    """NLMSG_DONE's status becomes a positive errno; NEWGEN's NFTA_GEN_ID is read big-endian."""
    done = _msg(3, struct.pack("=i", -16))
    assert decode_done(done, 0, len(done)) == 16
    assert decode_done(done[:16], 0, 16) == 0
    gen = _msg((10 << 8) | 15, b"\0\0\0\0" + _attr(1, b"\0\0\1\0"))
    assert decode_generation(gen, 0, len(gen)) == 256
    bare = _msg((10 << 8) | 15, b"\0\0\0\0")
    assert decode_generation(bare, 0, len(bare)) is None
