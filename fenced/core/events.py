"""What the engines report as it happens: typed event values and the observer they go to. Pure.

The refresh engine, the DNS gateways and the daemon each take one :data:`Observer` and
call it with one of these values whenever something countable happens; they keep no
counters of their own. :meth:`fenced.ops.metrics.Metrics.observe` is the observer the
daemon passes (it turns each event into the Prometheus series docs/operations.md lists);
tests pass ``list.append``. A new kind of event is one class here, added to
:data:`Event`, and one ``case`` in ``Metrics.observe`` (mypy reports a missing one).

Durations are seconds measured by the emitter on a monotonic clock; nothing here reads a
clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from fenced.core.model import IPAddress

__all__ = [
    "AddressDropped",
    "CgroupsWritten",
    "ConfigLoaded",
    "Event",
    "GatewayLost",
    "GatewayQuery",
    "LookupDone",
    "LookupStarted",
    "NameCapped",
    "Observer",
    "SetsWritten",
    "TableRepaired",
    "ignore",
]


@dataclass(frozen=True)
class LookupStarted:
    """The refresher started a lookup of ``name`` ``lag`` seconds after it was due (>= 0)."""

    name: str
    lag: float


@dataclass(frozen=True)
class LookupDone:
    """A lookup of ``name`` ended with answer status ``status`` after ``seconds``.

    Every lookup that was not cancelled ends in one, its answer used or not; a resolver
    that raised counts as ``error``.
    """

    name: str
    status: str
    seconds: float


@dataclass(frozen=True)
class NameCapped:
    """An answer for ``name`` had more addresses than allowed; ``dropped`` were dropped."""

    name: str
    dropped: int


@dataclass(frozen=True)
class AddressDropped:
    """A private or special address ``ip`` of ``name`` was kept out of the sets.

    From the refresher, ``set`` names the set it was kept out of (once per address, name
    and set); from a DNS gateway, ``policy`` names the policy whose answer lost it.
    """

    name: str
    ip: IPAddress
    set: str | None = None
    policy: str | None = None


@dataclass(frozen=True)
class SetsWritten:
    """One non-empty domain-set transaction of ``elements`` elements took ``seconds``."""

    result: Literal["ok", "error"]
    elements: int
    seconds: float


@dataclass(frozen=True)
class GatewayQuery:
    """``policy``'s DNS gateway ended a query with ``result``; it added ``added`` seconds.

    ``added`` is the gateway's handling time minus the time spent waiting for upstream
    (0 for a query dropped before it was handled).
    """

    policy: str
    result: str
    added: float


@dataclass(frozen=True)
class GatewayLost:
    """The kernel dropped ``count`` queries to ``policy``'s gateway (its receive queue was full)."""

    policy: str
    count: int


@dataclass(frozen=True)
class ConfigLoaded:
    """A configuration load at Unix time ``when`` succeeded (``ok``) or failed.

    ``initial`` marks the load at start-up (not a reload).
    """

    ok: bool
    when: float
    initial: bool = False


@dataclass(frozen=True)
class TableRepaired:
    """The table was found changed behind fenced's back and installed again."""


@dataclass(frozen=True)
class CgroupsWritten:
    """One transaction wrote cgroup ids to the cgroup verdict maps."""


#: Every event an engine reports.
Event = (
    LookupStarted
    | LookupDone
    | NameCapped
    | AddressDropped
    | SetsWritten
    | GatewayQuery
    | GatewayLost
    | ConfigLoaded
    | TableRepaired
    | CgroupsWritten
)


class Observer(Protocol):
    """Where an engine reports its events: called on the event loop, must not raise or block."""

    def __call__(self, event: Event, /) -> None:
        """Take note of ``event``."""
        ...


def ignore(event: Event, /) -> None:
    """The observer of an engine nobody watches: drops ``event``."""
