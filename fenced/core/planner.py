"""Turn cache changes into set writes, knowing what the kernel holds. Pure.

The planner keeps a *mirror* of fenced's domain sets in the kernel, ``{set: {ip:
expiry}}``, where ``expiry`` is when the kernel will drop the element by itself (the
timeout it was written with, counted from the ``now`` of the plan). Given a cache view,
a ``sets_for(key)`` function and a :class:`~fenced.core.cache.Change`, it computes for every
touched (set, IP) pair the expiry the set should give the IP:

    the latest expiry among the keys that hold the IP and map to the set, or none when
    the set's family differs, the IP is in a restricted range and the set's policy does
    not allow private addresses (:func:`is_restricted`), or no key holds it.

and plans the difference as ``SetOp`` s:

* not in the kernel -> ``add`` with ``timeout_ms = ceil((expiry - now) * 1000)``
  (``refresh`` instead when the mirror cannot rule out that the kernel still holds it:
  an element that just timed out, or a set whose content is unknown);
* expiry differs by more than ``slack`` -> ``refresh`` (rewrites the timeout on every
  kernel; also moves it earlier);
* no longer wanted while the kernel would keep it for more than ``slack`` -> ``delete``;
* no longer wanted and about to time out anyway -> nothing: the kernel removes it.

The mirror changes only in :meth:`Planner.commit`, called once the write succeeded; until
then every planned pair stays *dirty* and is planned again next time, so a failed write is
never forgotten. Nothing here reads a clock or does I/O; times are seconds of a monotonic
clock. Splitting big batches for netlink's 64 KiB limit is ``fenced.kernel.nfcodec``'s job.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, Literal, Protocol, TypeVar

from fenced.core.cache import Change
from fenced.core.elements import DumpedElement, Element, SetOp, ipv4_key, ipv6_key, key_to_ip
from fenced.core.model import IPAddress, is_restricted

_Action = Literal["delete", "add", "refresh"]
K = TypeVar("K", bound=Hashable)

#: The kernel accepts element timeouts up to 2^44 ms.
MAX_TIMEOUT_MS = (1 << 44) - 1

# ------------------------------------------------------------------------------ types


@dataclass(frozen=True)
class SetTarget:
    """A domain set addresses may go in.

    ``allow_private`` is the set's policy's ``Policy.allow_private``: whether restricted
    addresses (:func:`is_restricted`) may go in.
    """

    name: str
    family: Literal[4, 6]
    allow_private: bool = False


class CacheView(Protocol[K]):
    """The read side of a :class:`~fenced.core.cache.DnsCache` the planner needs."""

    def sources(self) -> Iterable[K]:  # pragma: no cover - protocol
        """Every key holding IPs."""
        ...

    def ips(self, key: K) -> Iterable[IPAddress]:  # pragma: no cover - protocol
        """The IPs ``key`` holds."""
        ...

    def latest(self, ip: IPAddress) -> Iterable[tuple[K, float]]:  # pragma: no cover
        """The keys holding ``ip`` with their expiries, the latest first."""
        ...


@dataclass(frozen=True)
class Filtered(Generic[K]):
    """A restricted address a key named, kept out of a set whose policy forbids it."""

    key: K
    ip: IPAddress
    set: str


@dataclass(frozen=True)
class Plan(Generic[K]):
    """Set operations to apply as one transaction, and what the mirror becomes after them.

    ``ops`` may be empty (the plan must still be committed to clean its pairs).
    ``result`` maps (set, IP) to the kernel expiry after the write (None: not held).
    ``filtered`` lists restricted addresses kept out of sets (for logging).
    """

    ops: tuple[SetOp, ...]
    result: Mapping[tuple[str, IPAddress], float | None]
    filtered: tuple[Filtered[K], ...]
    generation: int
    _ticks: Mapping[tuple[str, IPAddress], int] = field(repr=False)

    @property
    def elements(self) -> int:
        """How many elements the ops name."""
        return sum(len(op.elements) for op in self.ops)


def _key(ip: IPAddress) -> bytes:
    return ipv4_key(ip) if isinstance(ip, ipaddress.IPv4Address) else ipv6_key(ip)


def timeout_ms(now: float, expiry: float) -> int:
    """The element timeout (ms) that makes the kernel drop an element at ``expiry``.

    Rounded up; at least 1 ms, at most the kernel's limit.
    """
    return max(1, min(MAX_TIMEOUT_MS, math.ceil((expiry - now) * 1000)))


class Planner(Generic[K]):
    """Keeps the kernel mirror of the domain sets of ``inet table`` and plans writes.

    ``view`` is the cache, ``sets_for(key)`` the sets a key's IPs go in (only sets given
    to :meth:`set_sets` exist; others are ignored). ``slack``: expiry differences up to
    this many seconds are not rewritten, and an element that times out within it is not
    deleted. ``linger``: how long after its expiry an element may still be in the kernel
    (writes of such an element use ``refresh`` rather than ``add``).

    Use it from one task: ``plan`` -> write ``plan.ops`` -> ``commit(plan)`` on success.
    """

    def __init__(
        self,
        table: str,
        view: CacheView[K],
        sets_for: Callable[[K], Sequence[SetTarget]],
        *,
        slack: float = 1.0,
        linger: float = 5.0,
    ) -> None:
        self.table = table
        self.view = view
        self.sets_for = sets_for
        self.slack = slack
        self.linger = linger
        self._sets: dict[str, SetTarget] = {}
        self._known: set[str] = set()
        self._mirror: dict[str, dict[IPAddress, float]] = {}
        # Lazy heap of (expiry, set, ip): rows whose expiry changed since are skipped, so
        # expire() costs what expires, not the size of the mirror.
        self._expiries: list[tuple[float, str, IPAddress]] = []
        self._where: dict[IPAddress, set[str]] = {}
        self._dirty: dict[tuple[str, IPAddress], int] = {}
        self._tick = itertools.count(1)
        self.generation = 0

    # ------------------------------------------------------------------ reading
    def mirror(self) -> dict[str, dict[IPAddress, float]]:
        """A copy of what the planner believes each set holds: ``{set: {ip: expiry}}``."""
        return {name: dict(ips) for name, ips in self._mirror.items() if ips}

    @property
    def dirty(self) -> int:
        """How many (set, IP) pairs wait for a successful write."""
        return len(self._dirty)

    @property
    def sets(self) -> Mapping[str, SetTarget]:
        """The sets that exist, by name."""
        return dict(self._sets)

    # ------------------------------------------------------------------ configuring
    def set_sets(self, sets: Iterable[SetTarget], *, fresh: Iterable[str] = ()) -> None:
        """Declare the sets that exist now (after an install or reload) and resync.

        Mirrors of sets not listed are dropped without writes (the ruleset deleted them).
        ``fresh`` names sets known to be empty (just created). Every pair is planned again,
        so keys whose sets changed get their IPs moved.
        """
        self.generation += 1
        self._sets = {s.name: s for s in sets}
        for name in list(self._mirror):
            if name not in self._sets:
                self._drop_set(name)
        self._known &= set(self._sets)
        for name in fresh:
            if name in self._sets:
                self._drop_set(name)
                self._known.add(name)
        self.resync()

    def resync(self) -> None:
        """Mark every pair the cache or the mirror knows as dirty (plan all of them again)."""
        for name, ips in self._mirror.items():
            for ip in ips:
                self._mark(name, ip)
        for key in self.view.sources():
            self._mark_key(key, self.view.ips(key))

    def _drop_set(self, name: str) -> None:
        for ip in self._mirror.pop(name, {}):
            self._unwhere(name, ip)
        self._known.discard(name)
        for pair in [p for p in self._dirty if p[0] == name]:
            del self._dirty[pair]

    def _unwhere(self, name: str, ip: IPAddress) -> None:
        where = self._where.get(ip)
        if where is not None:
            where.discard(name)
            if not where:
                del self._where[ip]

    def _mark(self, name: str, ip: IPAddress) -> None:
        if name in self._sets:
            self._dirty[(name, ip)] = next(self._tick)

    def _mark_key(self, key: K, ips: Iterable[IPAddress]) -> None:
        targets = [t for t in self.sets_for(key) if t.name in self._sets]
        for ip in ips:
            for t in targets:
                if ip.version == t.family:
                    self._mark(t.name, ip)
            for name in self._where.get(ip, ()):
                self._mark(name, ip)

    # ------------------------------------------------------------------ planning
    def expire(self, now: float) -> None:
        """Forget mirror elements the kernel has certainly dropped (``expiry + linger <= now``).

        No writes: the kernel removes timed-out elements by itself.
        """
        heap = self._expiries
        while heap and heap[0][0] + self.linger <= now:
            exp, name, ip = heapq.heappop(heap)
            ips = self._mirror.get(name)
            if ips is not None and ips.get(ip) == exp:
                del ips[ip]
                self._unwhere(name, ip)
        if len(heap) > 4 * sum(len(v) for v in self._mirror.values()) + 1024:
            self._expiries = [
                (exp, name, ip)
                for name, ips in self._mirror.items()
                for ip, exp in ips.items()
                if exp != math.inf
            ]
            heapq.heapify(self._expiries)

    def _remember(self, name: str, ip: IPAddress, expiry: float) -> None:
        """Set a mirror element's expiry (and schedule its forgetting)."""
        self._mirror.setdefault(name, {})[ip] = expiry
        self._where.setdefault(ip, set()).add(name)
        if expiry != math.inf:
            heapq.heappush(self._expiries, (expiry, name, ip))

    def wanted(self, now: float, name: str, ip: IPAddress) -> float | None:
        """The expiry set ``name`` should give ``ip`` now (None: it should not hold it)."""
        target = self._sets.get(name)
        if target is None or ip.version != target.family:
            return None
        if not target.allow_private and is_restricted(ip):
            return None
        # The latest holder feeding the set decides; usually the first one looked at, so
        # the cost does not grow with the number of names sharing the IP (a CDN's).
        for key, exp in self.view.latest(ip):
            if exp <= now:
                return None
            if any(t.name == name for t in self.sets_for(key)):
                return exp
        return None

    def plan(self, now: float, change: Change[K] | None = None) -> Plan[K]:
        """Mark ``change``'s pairs dirty and plan every dirty pair (see the module text)."""
        filtered: list[Filtered[K]] = []
        if change is not None:
            for key, kc in change.keys.items():
                self._mark_key(key, itertools.chain(kc.updated, kc.removed))
                for t in self.sets_for(key):
                    if t.name in self._sets and not t.allow_private:
                        filtered += [
                            Filtered(key, ip, t.name)
                            for ip in kc.updated
                            if ip.version == t.family and is_restricted(ip)
                        ]
        adds: dict[str, list[Element]] = {}
        refreshes: dict[str, list[Element]] = {}
        deletes: dict[str, list[Element]] = {}
        result: dict[tuple[str, IPAddress], float | None] = {}
        for (name, ip), _tick in sorted(self._dirty.items(), key=_pair_order):
            want = self.wanted(now, name, ip)
            have = self._mirror.get(name, {}).get(ip)
            if want is None:
                if have is not None and have > now + self.slack:
                    deletes.setdefault(name, []).append(Element(_key(ip)))
                    result[(name, ip)] = None
                continue
            if have is not None and have > now and abs(want - have) <= self.slack:
                continue
            element = Element(_key(ip), timeout_ms=timeout_ms(now, want))
            maybe_present = have is not None or name not in self._known
            (refreshes if maybe_present else adds).setdefault(name, []).append(element)
            result[(name, ip)] = want
        steps: tuple[tuple[_Action, dict[str, list[Element]]], ...] = (
            ("delete", deletes),
            ("add", adds),
            ("refresh", refreshes),
        )
        ops = [
            SetOp(action, "inet", self.table, name, tuple(groups[name]))
            for action, groups in steps
            for name in sorted(groups)
        ]
        return Plan(tuple(ops), result, tuple(filtered), self.generation, dict(self._dirty))

    def commit(self, plan: Plan[K]) -> None:
        """Record that ``plan.ops`` were applied: update the mirror, clean its pairs.

        Pairs marked again after the plan was made stay dirty. Raises ValueError for a
        plan made before another plan was committed or sets were changed.
        """
        if plan.generation != self.generation:
            raise ValueError("stale plan: the mirror changed since it was made")
        self.generation += 1
        for (name, ip), exp in plan.result.items():
            if exp is None:
                self._mirror.setdefault(name, {}).pop(ip, None)
                self._unwhere(name, ip)
            else:
                self._remember(name, ip, exp)
        for pair, tick in plan._ticks.items():
            if self._dirty.get(pair) == tick:
                del self._dirty[pair]

    # ------------------------------------------------------------------ restarts
    def reconcile(self, now: float, dumped: Mapping[str, Sequence[DumpedElement]]) -> Plan[K]:
        """Take the sets' real content from a dump and plan what differs from the wanted state.

        For each set in ``dumped`` (its elements as ``Firewall.dump`` returned them
        at about ``now``) the mirror becomes exactly that content and the set counts as
        known; then every pair is planned again: missing IPs are added, wrong timeouts
        rewritten, unwanted elements deleted (including ones that never expire). Adopt
        still-valid elements into the cache *before* calling this if they should stay.
        Commit the returned plan once written, as with :meth:`plan`.
        """
        self.generation += 1
        for name, elements in dumped.items():
            target = self._sets.get(name)
            if target is None:
                continue
            self._drop_set(name)
            self._known.add(name)
            self._mirror[name] = {}
            for e in elements:
                try:
                    ip = key_to_ip(e.key)
                except ValueError:
                    continue
                if ip.version != target.family:
                    continue
                exp = math.inf if e.expires_ms is None else now + e.expires_ms / 1000
                self._remember(name, ip, exp)
        self.resync()
        return self.plan(now)


def _pair_order(item: tuple[tuple[str, IPAddress], int]) -> tuple[str, int, int]:
    (name, ip), _ = item
    return (name, ip.version, int(ip))


__all__ = [
    "MAX_TIMEOUT_MS",
    "CacheView",
    "Filtered",
    "Plan",
    "Planner",
    "SetTarget",
    "timeout_ms",
]
