"""What the fuzz tests of the wire parsers check: edits to valid bytes, and names never invented."""

from __future__ import annotations

from hypothesis import strategies as st

from fenced.core.wire.result import Named, WireResult


def edits(data: bytes, most: int) -> st.SearchStrategy[list[tuple[int, int]]]:
    """Up to ``most`` overwrites ``(position, byte)`` of ``data``."""
    return st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 255)), max_size=most)


def mutate(data: bytes, changes: list[tuple[int, int]]) -> bytes:
    """``data`` with each ``(position, byte)`` overwritten."""
    out = bytearray(data)
    for pos, value in changes:
        out[pos] = value
    return bytes(out)


def name_in(result: WireResult, data: bytes) -> bool:
    """False only when ``result`` names what is not in ``data`` (compared case-insensitively)."""
    return not isinstance(result, Named) or result.name.encode() in data.lower()
