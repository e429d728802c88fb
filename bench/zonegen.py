"""The synthetic zone of the refresh-engine benchmarks: N names, each one A and one AAAA.

Name ``i`` is ``d<i>.bench.example``, its A record 240.0.0.0 + i (a reserved range: these
addresses only ever sit in sets, no packet goes to them), its AAAA 2001:db8:a:: + i, and
its TTL is drawn (seeded) uniformly from ``ttl_lo..ttl_hi`` seconds.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass

_V4 = int(ipaddress.IPv4Address("240.0.0.0"))
_V6 = int(ipaddress.IPv6Address("2001:db8:a::"))


@dataclass(frozen=True)
class Record:
    """One name of the zone."""

    name: str
    ttl: int
    v4: str
    v6: str


def parse_ttl(text: str) -> tuple[int, int]:
    """``"5"`` -> (5, 5); ``"1-5"`` -> (1, 5)."""
    lo, _, hi = text.partition("-")
    a, b = int(lo), int(hi or lo)
    if not 1 <= a <= b:
        raise ValueError(f"bad TTL range {text!r}")
    return a, b


def zone(n: int, ttl: tuple[int, int], seed: int = 1) -> list[Record]:
    """The ``n`` records of the zone (deterministic for equal arguments)."""
    rng = random.Random(seed)
    return [
        Record(
            f"d{i}.bench.example",
            rng.randint(ttl[0], ttl[1]),
            str(ipaddress.IPv4Address(_V4 + i)),
            str(ipaddress.IPv6Address(_V6 + i)),
        )
        for i in range(n)
    ]


def demand(records: list[Record]) -> float:
    """Names per second the zone asks a resolver to refresh (sum of 1/TTL)."""
    return sum(1.0 / r.ttl for r in records)
