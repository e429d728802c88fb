"""The per-flow reassembler: merging pieces in any order, conflicts, bounds in bytes and time."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fenced.core.wire.reassembly import MAX_FLOW_BYTES, Reassembly
from fenced.core.wire.result import Malformed, Named, NeedMore

DATA = bytes(range(256)) * 4


def test_pieces_in_any_order_merge_into_one() -> None:
    """Overlapping, adjacent and out-of-order pieces give the contiguous bytes."""
    r = Reassembly(deadline=5.0).add(600, DATA[600:]).add(10, DATA[10:300]).add(0, DATA[:20])
    assert r.contiguous() == DATA[:300]
    r = r.add(250, DATA[250:700])
    assert r.contiguous() == DATA
    assert len(r.pieces) == 1 and not r.conflict


def test_no_contiguous_bytes_without_offset_zero() -> None:
    """Pieces after a gap at the start give no contiguous bytes yet."""
    assert Reassembly(deadline=5.0).add(1, DATA[1:]).contiguous() == b""


def test_disagreeing_overlap_is_a_sticky_conflict() -> None:
    """A repeated offset with other bytes is a conflict; the first copy is kept; it stays."""
    r = Reassembly(deadline=5.0).add(0, b"abcdef").add(2, b"XY")
    assert r.conflict and r.contiguous() == b"abcdef"
    assert r.add(6, b"g").status(NeedMore(), now=0.0) == "conflict"


def test_status_order() -> None:
    """Conflict, then done, then overflow, then expired, else need-more."""
    r = Reassembly(deadline=5.0, limit=100).add(0, b"x")
    assert r.status(NeedMore(10), now=1.0) == "need-more"
    assert r.status(NeedMore(), now=5.0) == "expired"
    assert r.status(NeedMore(101), now=1.0) == "overflow"
    assert r.status(Named("a.example"), now=9.0) == "done"
    assert r.status(Malformed("x"), now=1.0) == "done"
    over = r.add(90, bytes(11))
    assert over.overflow and over.pieces == r.pieces
    assert over.status(NeedMore(), now=1.0) == "overflow"


def test_negative_offset_and_default_limit() -> None:
    """A negative offset is refused as overflow; the default bound is MAX_FLOW_BYTES."""
    assert Reassembly(deadline=1.0).add(-1, b"a").overflow
    assert Reassembly(deadline=1.0).add(MAX_FLOW_BYTES - 1, b"a").pieces
    assert Reassembly(deadline=1.0).add(MAX_FLOW_BYTES, b"a").overflow


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(DATA) - 1), st.integers(1, 200)), max_size=20))
def test_any_pieces_of_one_stream_agree_and_merge(cuts: list[tuple[int, int]]) -> None:
    """Any pieces of the same bytes never conflict and stay sorted, disjoint and true."""
    r = Reassembly(deadline=1.0)
    for offset, size in cuts:
        r = r.add(offset, DATA[offset : offset + size])
    assert not r.conflict and not r.overflow
    ends = [0]
    for at, held in r.pieces:
        assert held == DATA[at : at + len(held)]
        assert at > ends[-1] or (at == 0 and ends == [0])
        ends.append(at + len(held))
