"""A bounded, per-flow gatherer of first-payload bytes that arrive in pieces. Pure.

TCP segments and QUIC CRYPTO frames deliver a ClientHello as pieces at byte offsets, out
of order and possibly repeated. :class:`Reassembly` is an immutable value holding them,
bounded in bytes (:data:`MAX_FLOW_BYTES`) and in time (a deadline the caller sets from its
own clock; ``now`` is always passed in). Overlapping pieces must agree: bytes that differ
from those already held are a conflict (the receiver may keep either copy).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Final, Literal

from fenced.core.wire.result import NeedMore, WireResult

__all__ = ["MAX_FLOW_BYTES", "Reassembly", "Status"]

#: The most bytes gathered for one flow's first payload.
MAX_FLOW_BYTES: Final = 16384

#: What a flow's gathering has come to (see :meth:`Reassembly.status`).
Status = Literal["done", "need-more", "overflow", "expired", "conflict"]


@dataclass(frozen=True, slots=True)
class Reassembly:
    """Pieces of one flow's first payload gathered so far.

    ``pieces`` are ``(offset, bytes)``, sorted, merged and non-overlapping. ``overflow`` is
    set when a piece reached past ``limit``; ``conflict`` when a piece disagreed with bytes
    already held. Both are sticky: a new value never clears them.
    """

    deadline: float
    limit: int = MAX_FLOW_BYTES
    pieces: tuple[tuple[int, bytes], ...] = ()
    overflow: bool = False
    conflict: bool = False

    def add(self, offset: int, data: bytes) -> Reassembly:
        """A new value with ``data`` at ``offset`` merged in (nothing kept past ``limit``)."""
        if offset < 0 or offset + len(data) > self.limit:
            return replace(self, overflow=True)
        if not data:
            return self
        merged: list[tuple[int, bytes]] = []
        start, buf = offset, bytearray(data)
        conflict = self.conflict
        for at, held in self.pieces:
            if at + len(held) < start or at > start + len(buf):
                merged.append((at, held))
                continue
            lo = max(at, start)
            hi = min(at + len(held), start + len(buf))
            if held[lo - at : hi - at] != buf[lo - start : hi - start]:
                conflict = True
            new_start = min(at, start)
            out = bytearray(max(at + len(held), start + len(buf)) - new_start)
            out[start - new_start : start - new_start + len(buf)] = buf
            out[at - new_start : at - new_start + len(held)] = held  # held bytes win
            start, buf = new_start, out
        merged.append((start, bytes(buf)))
        merged.sort()
        return replace(self, pieces=tuple(merged), conflict=conflict)

    def contiguous(self) -> bytes:
        """The bytes held from offset 0 without a gap (empty when offset 0 is missing)."""
        if self.pieces and self.pieces[0][0] == 0:
            return self.pieces[0][1]
        return b""

    def status(self, result: WireResult, now: float) -> Status:
        """Where the flow stands, given what the parser said of :meth:`contiguous`.

        ``conflict`` first (the bytes cannot be trusted), then ``done`` when the parser
        reached a conclusion, then ``overflow`` (more than ``limit`` bytes offered, or the
        parser needs more than ``limit``), then ``expired`` at or after ``deadline``, else
        ``need-more``.
        """
        if self.conflict:
            return "conflict"
        if not isinstance(result, NeedMore):
            return "done"
        if self.overflow or (result.at_least is not None and result.at_least > self.limit):
            return "overflow"
        if now >= self.deadline:
            return "expired"
        return "need-more"
