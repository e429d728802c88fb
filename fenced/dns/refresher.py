"""The DNS refresh engine: re-resolves each name when its TTL ends and keeps sets current.

One task (the *loop*) owns all state: the schedule (a heap of due times), the
:class:`~fenced.core.cache.DnsCache` and the :class:`~fenced.core.planner.Planner`. Lookups run as
separate tasks, at most ``max_in_flight`` at once and one per name however many policies
list it; each hands its :class:`~fenced.dns.answers.Answer` back to the loop, which updates
the cache, reschedules the name and, once results stop arriving (``coalesce`` seconds, or
no lookup left in flight), writes the planned set changes in one ``Firewall.apply``
transaction. While nothing is due the loop sleeps until the earliest due time or expiry;
there is no periodic wake-up.

Scheduling after an answer (``jitter`` is a random fraction, up to ``min(1 s, 10 %)`` of
the interval, from the given ``random.Random``):

* ``ok``: again at ``now + effective ttl + jitter`` (never before the TTL ends);
* ``nxdomain``/``nodata``: IPs run out on their deadlines; again when the negative
  answer runs out (``Answer.negative_ttl``, RFC 2308: min of the SOA's TTL and MINIMUM)
  raised to ``min_ttl`` and lowered to ``max_ttl``, plus jitter; ``min_ttl`` when the
  answer had no SOA. No backoff: a name that appears is picked up as soon as the
  resolver may say so;
* ``servfail``/``timeout``/``error``: IPs stay until ``deadline + stale``; again after
  ``retry_initial``, doubling up to ``retry_cap`` (only failures back off).

A failed firewall write is logged and counted; its changes stay dirty in the planner and
are written again after a backoff (``write_retry_initial`` doubling to
``write_retry_cap``), after dumping the sets again (so a kernel state changed behind
fenced's back cannot make every retry fail). Nothing escapes the loop: a bug is logged
and the loop goes on.

Time comes from an injected :class:`Clock` (``MonotonicClock`` in the daemon,
``FakeClock`` in tests, which never really sleeps).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import random
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from fenced.aio import wait_event
from fenced.core.cache import CacheEntry, Change, DnsCache
from fenced.core.elements import DumpedElement, key_to_ip
from fenced.core.events import (
    AddressDropped,
    LookupDone,
    LookupStarted,
    NameCapped,
    Observer,
    SetsWritten,
    ignore,
)
from fenced.core.model import Config, DaemonConfig, IPAddress
from fenced.core.planner import Plan, Planner, SetTarget
from fenced.core.ruleset import Layout
from fenced.dns.answers import Answer
from fenced.dns.resolver import Resolver
from fenced.errors import FirewallError
from fenced.kernel.firewall import Firewall
from fenced.log import Logger, log

# ------------------------------------------------------------------------------ clocks


class Clock(Protocol):
    """Where the refresher gets time from and how it waits."""

    def now(self) -> float:
        """Seconds of a monotonic clock."""
        ...

    async def wait_until(self, deadline: float | None, wake: asyncio.Event) -> None:
        """Return once ``now() >= deadline`` (never, for None) or ``wake`` is set."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` on this clock."""
        ...


class MonotonicClock:
    """The real clock: ``time.monotonic`` and asyncio timers."""

    def now(self) -> float:
        """See ``Clock.now``."""
        return time.monotonic()

    async def wait_until(self, deadline: float | None, wake: asyncio.Event) -> None:
        """See ``Clock.wait_until``."""
        timeout = None if deadline is None else max(0.0, deadline - self.now())
        await wait_event(wake, timeout)

    async def sleep(self, seconds: float) -> None:
        """See ``Clock.sleep``."""
        await asyncio.sleep(seconds)


class FakeClock:
    """A clock for tests that moves only when told to, and never really sleeps.

    ``await advance(dt)`` moves time forward through every pending wake-up in order,
    letting the event loop run the woken tasks at each step (``settle``), so tasks see
    the times they asked for.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        """See ``Clock.now``."""
        return self._now

    def _timer(self, deadline: float) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (deadline, next(self._seq), fut))
        return fut

    async def wait_until(self, deadline: float | None, wake: asyncio.Event) -> None:
        """See ``Clock.wait_until``."""
        if wake.is_set() or (deadline is not None and deadline <= self._now):
            return
        waiter = asyncio.ensure_future(wake.wait())
        pending: set[asyncio.Future[object]] = {waiter}  # type: ignore[arg-type]
        timer = self._timer(deadline) if deadline is not None else None
        if timer is not None:
            pending.add(timer)  # type: ignore[arg-type]
        try:
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            if timer is not None and not timer.done():
                timer.cancel()

    async def sleep(self, seconds: float) -> None:
        """See ``Clock.sleep``."""
        if seconds > 0:
            await self._timer(self._now + seconds)

    def pending(self) -> list[float]:
        """Deadlines of the wake-ups tasks are waiting for, earliest first."""
        return sorted(when for when, _, fut in self._timers if not fut.done())

    @staticmethod
    async def settle(rounds: int = 100) -> None:
        """Let ready tasks run (yield to the event loop ``rounds`` times)."""
        for _ in range(rounds):
            await asyncio.sleep(0)

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, waking sleepers in order on the way."""
        target = self._now + seconds
        await self.settle()
        while True:
            while self._timers and self._timers[0][2].done():
                heapq.heappop(self._timers)
            if not self._timers or self._timers[0][0] > target:
                break
            self._now = max(self._now, self._timers[0][0])
            while self._timers and self._timers[0][0] <= self._now:
                fut = heapq.heappop(self._timers)[2]
                if not fut.done():
                    fut.set_result(None)
            await self.settle()
        self._now = max(self._now, target)
        await self.settle()


# ------------------------------------------------------------------------------ keys


@dataclass(frozen=True)
class Adopted:
    """Source key of elements found in set ``set`` at start-up and taken over.

    They stay in that set (and only there) until their remaining lifetime ends, unless a
    name's answer keeps them longer. Which name they came from is unknown, so when a
    lookup of any name of the set fails they are kept until ``stale`` past their
    deadline (``expiry - grace``), as that name's own addresses would be.
    """

    set: str


@dataclass(frozen=True)
class Learned:
    """Source key of addresses a DNS gateway answer gave: the policy and the name it asked.

    Its addresses go only into the sets the gateway named for it (the policy's sets of the
    entries that allowed the name); they are never refreshed, only kept until their
    deadline plus grace, like any answer's.
    """

    policy: str
    name: str


SourceKey = str | Adopted | Learned


@dataclass(frozen=True)
class RefreshInputs:
    """Everything the refresher is told about the table: one value, built from one layout.

    ``names`` maps each exact domain to the sets its addresses go in (every policy's);
    a wildcard is never a key (it cannot be resolved ahead of time: a literal query for
    ``*.example.com`` would even match a wildcard record). ``sets`` is every domain set
    the refresher may write: those of ``names`` and those only wildcard entries feed,
    which gateway answers fill through ``Refresher.learn``. A set left out of ``sets`` is
    one the refresher forgets, with every address learned for it, so build this value
    with :func:`refresh_inputs` (or :meth:`from_names`) and pass the same kind of value
    at start, reload and repair. ``policies`` maps each policy to its domain entries
    (wildcards included) and the sets each one's addresses go in: what
    :meth:`sets_for` answers for a gateway answer. Raises ValueError when ``names`` holds
    a wildcard, or ``names`` or ``policies`` a set that ``sets`` lacks.
    """

    names: Mapping[str, tuple[SetTarget, ...]]
    sets: tuple[SetTarget, ...]
    policies: Mapping[str, Mapping[str, tuple[SetTarget, ...]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        known = {t.name for t in self.sets}
        for name, targets in self.names.items():
            if name.startswith("*."):
                raise ValueError(f"refresher inputs: {name} is a wildcard, it cannot be resolved")
            for t in targets:
                if t.name not in known:
                    raise ValueError(f"refresher inputs: set {t.name} of {name} is not declared")
        for policy, entries in self.policies.items():
            for entry, targets in entries.items():
                for t in targets:
                    if t.name not in known:
                        raise ValueError(
                            f"refresher inputs: set {t.name} of {policy}'s {entry} is not declared"
                        )

    def sets_for(self, policy: str, entries: Iterable[str]) -> tuple[SetTarget, ...]:
        """The sets ``policy``'s domain ``entries`` put addresses in: each once, by name.

        An entry the policy does not list adds none. Raises KeyError for a policy these
        inputs do not know.
        """
        known = self.policies[policy]
        found = {t for entry in entries for t in known.get(entry, ())}
        return tuple(sorted(found, key=lambda t: t.name))

    @classmethod
    def from_names(
        cls,
        names: Mapping[str, Sequence[SetTarget]],
        sets: Sequence[SetTarget] = (),
        *,
        policies: Mapping[str, Mapping[str, tuple[SetTarget, ...]]] | None = None,
    ) -> RefreshInputs:
        """``names`` with every set they name, plus ``sets`` (e.g. wildcard-only ones)."""
        every: dict[str, SetTarget] = {}
        for t in (*(t for ts in names.values() for t in ts), *sets):
            every.setdefault(t.name, t)
        return cls(
            {k: tuple(v) for k, v in names.items()},
            tuple(sorted(every.values(), key=lambda t: t.name)),
            policies or {},
        )


def refresh_inputs(config: Config, lay: Layout) -> RefreshInputs:
    """The refresher's inputs for ``config`` installed as ``lay``: every name, every set.

    Each exact domain maps to the sets of every policy listing it; every domain set of
    ``lay`` is declared, the groups only wildcard entries feed included; every policy of
    ``config`` has its entries' sets (see :meth:`RefreshInputs.sets_for`).
    """
    allow = {p.name: p.allow_private for p in config.policies}
    targets = {
        ds.name: SetTarget(ds.name, ds.family, allow.get(ds.policy, False))
        for ds in lay.domain_sets
    }
    policies: dict[str, dict[str, tuple[SetTarget, ...]]] = {p.name: {} for p in config.policies}
    names: dict[str, tuple[SetTarget, ...]] = {}
    for d in sorted({d for ds in lay.domain_sets for d in ds.domains}):
        sets = lay.sets_for(d)
        if not d.startswith("*."):
            names[d] = tuple(targets[ds.name] for ds in sets)
        for ds in sets:
            entries = policies.setdefault(ds.policy, {})
            entries[d] = (*entries.get(d, ()), targets[ds.name])
    return RefreshInputs.from_names(names, tuple(targets.values()), policies=policies)


@dataclass
class _Name:
    """The refresher's state of one configured name."""

    name: str
    due: float | None = None
    in_flight: bool = False
    fail_backoff: float = 0.0
    last_status: str | None = None
    last_detail: str = ""
    last_time: float | None = None
    capped_logged: bool = False
    filtered_logged: set[tuple[IPAddress, str]] = field(default_factory=set)


@dataclass(frozen=True)
class NameStatus:
    """What the refresher knows about one name (for status pages)."""

    name: str
    next_due: float | None
    in_flight: bool
    last_status: str | None
    last_detail: str
    last_time: float | None
    ips: Mapping[IPAddress, CacheEntry]


@dataclass
class _Request:
    kind: Literal["start", "configure"]
    daemon: DaemonConfig
    inputs: RefreshInputs
    done: asyncio.Future[None]


@dataclass
class _Learn:
    key: Learned
    targets: tuple[SetTarget, ...]
    ips: tuple[IPAddress, ...]
    ttl: float
    done: asyncio.Future[None]


# ------------------------------------------------------------------------------ engine


class Refresher:
    """Keeps the domain sets of fenced's table filled from DNS (see the module text).

    Life cycle: ``await start(daemon, inputs)`` once the ruleset is installed;
    ``await configure(daemon, inputs[, resolver])`` after every reload and every repair
    (once the ruleset is installed again); ``await stop()`` at exit (elements stay in the
    kernel and time out by themselves). ``inputs`` names every name and set
    (:func:`refresh_inputs`). The refresher owns ``resolver``: it closes it at ``stop``,
    and one ``configure`` replaces once its lookups in flight are done.
    ``observe`` is told every lookup, lag, cap, dropped address and set write
    (:mod:`fenced.core.events`).
    ``lock``, when given, is held around every firewall call (the daemon's firewall lock);
    never await ``start`` or ``configure`` while holding it.
    """

    def __init__(
        self,
        firewall: Firewall,
        resolver: Resolver,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        observe: Observer = ignore,
        lock: asyncio.Lock | None = None,
        logger: Logger = log,
        max_in_flight: int = 64,
        coalesce: float = 0.05,
        retry_initial: float = 1.0,
        retry_cap: float = 60.0,
        write_retry_initial: float = 1.0,
        write_retry_cap: float = 60.0,
    ) -> None:
        self.fw = firewall
        self.resolver = resolver
        self.clock: Clock = clock or MonotonicClock()
        self.rng = rng or random.Random()
        self.observe = observe
        self.lock = lock or asyncio.Lock()
        self.log = logger
        self.max_in_flight = max(1, max_in_flight)
        self.coalesce = coalesce
        self.retry_initial = retry_initial
        self.retry_cap = retry_cap
        self.write_retry_initial = write_retry_initial
        self.write_retry_cap = write_retry_cap

        self.daemon = DaemonConfig()
        self.table = self.daemon.table
        self.cache: DnsCache[SourceKey] = self._new_cache(self.daemon)
        self.planner: Planner[SourceKey] = Planner(self.table, self.cache, self._sets_for)
        self._targets: dict[str, tuple[SetTarget, ...]] = {}
        self._set_index: dict[str, SetTarget] = {}
        self._names: dict[str, _Name] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._lookups: set[asyncio.Task[None]] = set()
        #: Lookups in flight per resolver (by id), and replaced resolvers still in use.
        self._using: Counter[int] = Counter()
        self._retired: dict[int, Resolver] = {}
        self._results: list[tuple[_Name, Answer]] = []
        self._requests: list[_Request] = []
        self._learns: list[_Learn] = []
        self._learned: dict[Learned, tuple[SetTarget, ...]] = {}
        self._pending: Change[SourceKey] = Change()
        self._pending_since: float | None = None
        self._write_backoff = 0.0
        self._write_retry_at: float | None = None
        self._reconcile_next = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ public
    async def start(self, daemon: DaemonConfig, inputs: RefreshInputs) -> None:
        """Start the loop: adopt still-valid elements of the sets, reconcile, resolve all.

        Returns once the first reconciliation was written (or failed and was queued for
        retry); the names are being resolved by then.
        """
        if self._task is not None:
            raise RuntimeError("refresher already started")
        self._task = asyncio.create_task(self._run(), name="fenced-refresher")
        await self._submit("start", daemon, inputs)

    async def learn(
        self,
        key: Learned,
        targets: Sequence[SetTarget],
        ips: Sequence[IPAddress],
        ttl: float,
    ) -> None:
        """Add addresses a gateway answer gave; return once the kernel accepted them.

        ``targets`` are the sets they go in (those not configured are ignored); ``ttl``
        is the answer's, floored and capped like any. Raises FirewallError when the write
        failed (the change stays queued and is retried, but the caller must not release
        the answer).
        """
        if self._task is None:
            raise RuntimeError("refresher not started")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._learns.append(_Learn(key, tuple(targets), tuple(ips), ttl, done))
        self._wake.set()
        await done

    def learned(self) -> dict[Learned, Mapping[IPAddress, CacheEntry]]:
        """What gateway answers added, by (policy, name), with deadlines (for status pages)."""
        return {k: self.cache.entries(k) for k in self._learned if self.cache.entries(k)}

    async def configure(
        self, daemon: DaemonConfig, inputs: RefreshInputs, resolver: Resolver | None = None
    ) -> None:
        """Apply a reload or a repair, reconciling the sets with a dump of them.

        Given a ``resolver``, later lookups use it; the one it replaces is closed once
        its lookups in flight are done.

        New names are resolved at once, removed ones forgotten and their addresses
        deleted, kept ones untouched (no gap). Every address held for a set still in
        ``inputs`` (resolved, learned from a gateway or adopted) is written again where
        the dump lacks it, so a table installed anew gets back all it held.

        Returns once that was written (or failed and was queued for retry).
        """
        if self._task is None:
            raise RuntimeError("refresher not started")
        if resolver is not None and resolver is not self.resolver:
            replaced, self.resolver = self.resolver, resolver
            await self._retire(replaced)
        await self._submit("configure", daemon, inputs)

    async def stop(self) -> None:
        """Stop the loop and every lookup, then close the resolver.

        Elements stay in the kernel with their timeouts.
        """
        tasks = [t for t in (self._task, *self._lookups) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await self.resolver.close()
        self._task = None
        for req in self._requests:
            if not req.done.done():
                req.done.cancel()
        self._requests.clear()
        for lrn in self._learns:
            if not lrn.done.done():
                lrn.done.set_exception(FirewallError("learn", "fenced is stopping"))
        self._learns.clear()

    @property
    def running(self) -> bool:
        """Whether the loop is alive (started, not stopped, not crashed)."""
        return self._task is not None and not self._task.done()

    def status(self) -> dict[str, NameStatus]:
        """The state of every configured name, by name."""
        return {
            n.name: NameStatus(
                n.name,
                n.due,
                n.in_flight,
                n.last_status,
                n.last_detail,
                n.last_time,
                self.cache.entries(n.name),
            )
            for n in sorted(self._names.values(), key=lambda n: n.name)
        }

    # ------------------------------------------------------------------ plumbing
    def _new_cache(self, d: DaemonConfig) -> DnsCache[SourceKey]:
        return DnsCache(
            min_ttl=d.min_ttl,
            max_ttl=d.max_ttl,
            grace=d.grace,
            stale=d.stale,
            max_ips=d.max_ips_per_name,
        )

    def _sets_for(self, key: SourceKey) -> Sequence[SetTarget]:
        if isinstance(key, Adopted):
            target = self._set_index.get(key.set)
            return (target,) if target is not None else ()
        if isinstance(key, Learned):
            return self._learned.get(key, ())
        return self._targets.get(key, ())

    async def _submit(
        self, kind: Literal["start", "configure"], daemon: DaemonConfig, inputs: RefreshInputs
    ) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._requests.append(_Request(kind, daemon, inputs, done))
        self._wake.set()
        await done

    def _jitter(self, interval: float) -> float:
        return self.rng.uniform(0.0, min(1.0, 0.1 * interval))

    def _schedule(self, state: _Name, due: float) -> None:
        state.due = due
        heapq.heappush(self._heap, (due, next(self._seq), state.name))

    def _note_change(self, now: float, change: Change[SourceKey]) -> None:
        if change.keys:
            self._pending.merge(change)
            if self._pending_since is None:
                self._pending_since = now

    # ------------------------------------------------------------------ loop
    async def _run(self) -> None:
        while True:
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug: log it, wait a little, go on
                self.log.error("refresher_error", error=f"{type(exc).__name__}: {exc}")
                self._wake.clear()
                await self.clock.wait_until(self.clock.now() + 1.0, self._wake)

    async def _step(self) -> None:
        self._wake.clear()
        now = self.clock.now()
        if self._learns:
            await self._absorb_learns(now)
        if self._requests:
            req = self._requests.pop(0)
            try:
                await self._handle(req, now)
            finally:
                if not req.done.done():
                    req.done.set_result(None)
            self._wake.set()  # look at the rest in the next step
            return
        self._absorb(now)
        self._launch(now)
        self._note_change(now, self.cache.expire(now))
        self.planner.expire(now)
        if self._write_due(now):
            if self._reconcile_next:
                await self._reconcile_and_write()
            else:
                await self._write(now)
        await self.clock.wait_until(self._next_wake(), self._wake)

    def _write_due(self, now: float) -> bool:
        if not self._pending.keys and not self.planner.dirty:
            return False
        if self._write_retry_at is not None and now < self._write_retry_at:
            return False
        since = self._pending_since
        return not self._lookups or since is None or now >= since + self.coalesce

    def _next_wake(self) -> float | None:
        times: list[float] = []
        while self._heap and self._names.get(self._heap[0][2]) is None:
            heapq.heappop(self._heap)
        if self._heap and len(self._lookups) < self.max_in_flight:
            times.append(self._heap[0][0])
        exp = self.cache.next_expiry()
        if exp is not None:
            times.append(exp)
        if self._pending.keys or self.planner.dirty:
            if self._write_retry_at is not None:
                times.append(self._write_retry_at)
            elif self._pending_since is not None:
                times.append(self._pending_since + self.coalesce)
        return min(times) if times else None

    # ------------------------------------------------------------------ lookups
    def _launch(self, now: float) -> None:
        while self._heap and len(self._lookups) < self.max_in_flight:
            due, _, name = self._heap[0]
            if due > now:
                break
            heapq.heappop(self._heap)
            state = self._names.get(name)
            if state is None or state.due != due or state.in_flight:
                continue  # stale row
            state.due = None
            state.in_flight = True
            self.observe(LookupStarted(name, max(0.0, now - due)))
            # Keep the name's IPs while the answer is unknown (a timing-out resolver can
            # take longer than grace); writes happen only when an expiry would come first.
            self._note_change(now, self.cache.hold(now, name, now + self.resolver.budget + 1.0))
            task = asyncio.create_task(self._lookup(state), name=f"fenced-dns-{name}")
            self._lookups.add(task)
            task.add_done_callback(self._lookups.discard)

    async def _lookup(self, state: _Name) -> None:
        resolver = self.resolver
        self._using[id(resolver)] += 1
        started = self.clock.now()
        try:
            try:
                answer = await resolver.resolve(state.name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a Resolver must not raise; never let it stop us
                answer = Answer("error", detail=f"resolver raised {type(exc).__name__}: {exc}")
            self.observe(LookupDone(state.name, answer.status, self.clock.now() - started))
        finally:
            self._using[id(resolver)] -= 1
            if not self._using[id(resolver)]:
                del self._using[id(resolver)]
                retired = self._retired.pop(id(resolver), None)
                if retired is not None:
                    await retired.close()
        self._results.append((state, answer))
        self._wake.set()

    async def _retire(self, resolver: Resolver) -> None:
        """Close ``resolver`` now, or after its last lookup in flight when it has any.

        Closed under a running lookup, a resolver could open sockets again on its next
        try, which nothing would close.
        """
        if self._using[id(resolver)]:
            self._retired[id(resolver)] = resolver
        else:
            await resolver.close()

    def _absorb(self, now: float) -> None:
        results, self._results = self._results, []
        for state, answer in results:
            state.in_flight = False
            if self._names.get(state.name) is not state:
                continue  # the name was removed (or re-added) while it was looked up
            self._note_change(now, self._apply_answer(now, state, answer))

    def _apply_answer(self, now: float, state: _Name, answer: Answer) -> Change[SourceKey]:
        name, cache = state.name, self.cache
        previous = state.last_status
        state.last_status, state.last_detail, state.last_time = answer.status, answer.detail, now
        if answer.status == "ok":
            ttl = cache.effective_ttl(answer.ttl if answer.ttl is not None else 0)
            change = cache.update(now, name, answer.ips, ttl)
            state.fail_backoff = 0.0
            interval = ttl
            event, level = "dns_resolved", "debug" if previous == "ok" else "info"
        elif answer.status in ("nxdomain", "nodata"):
            change = cache.update(now, name, (), cache.min_ttl)
            state.fail_backoff = 0.0
            # RFC 2308: the negative answer holds for its negative TTL; no SOA, min_ttl.
            negative = answer.negative_ttl
            interval = cache.effective_ttl(negative if negative is not None else 0)
            event, level = "dns_negative", "debug" if previous == answer.status else "warning"
        else:
            if answer.ips:
                ttl = cache.effective_ttl(answer.ttl if answer.ttl is not None else 0)
                change = cache.update(now, name, answer.ips, ttl, partial=True)
            else:
                change = cache.fail(now, name)
            # Addresses adopted at start-up may be this name's: keep them stale as well.
            for target in self._targets.get(name, ()):
                change.merge(cache.fail(now, Adopted(target.name)))
            state.fail_backoff = min(
                self.retry_cap, max(self.retry_initial, state.fail_backoff * 2)
            )
            interval = state.fail_backoff
            event, level = "dns_failed", "debug" if previous == answer.status else "warning"
        jitter = self._jitter(interval)
        self._schedule(state, now + interval + jitter)
        self.log.log(
            level,
            event,
            domain=name,
            status=answer.status,
            ips=[str(ip) for ip in answer.ips] or None,
            ttl=answer.ttl,
            negative_ttl=answer.negative_ttl,
            cnames=list(answer.cnames) or None,
            detail=answer.detail or None,
            next_in=round(interval + jitter, 3),
        )
        kc = change.keys.get(name)
        if kc is not None and kc.capped:
            self.observe(NameCapped(name, kc.capped))
            if not state.capped_logged:
                state.capped_logged = True
                self.log.warning(
                    "dns_too_many_ips",
                    domain=name,
                    limit=cache.max_ips,
                    dropped=kc.capped,
                    note="keeping the newest; logged once per name",
                )
        return change

    async def _absorb_learns(self, now: float) -> None:
        """Put gateway answers into the cache and write them at once (the clients wait)."""
        learns, self._learns = self._learns, []
        for lrn in learns:
            targets = tuple(t for t in lrn.targets if t.name in self._set_index)
            self._learned[lrn.key] = targets
            self._note_change(now, self.cache.update(now, lrn.key, lrn.ips, lrn.ttl))
        ok = await self._write(now)
        for lrn in learns:
            if lrn.done.done():
                continue
            if ok:
                lrn.done.set_result(None)
            else:
                lrn.done.set_exception(FirewallError("learn", "the set write failed"))
        if len(self._learned) > 2 * len(self.cache) + 1024:  # forget keys whose IPs ran out
            self._learned = {k: v for k, v in self._learned.items() if self.cache.entries(k)}

    # ------------------------------------------------------------------ writing
    async def _write(self, now: float, plan: Plan[SourceKey] | None = None) -> bool:
        """Plan (unless given) and apply; commit on success, back off on failure."""
        change, self._pending, self._pending_since = self._pending, Change(), None
        if plan is None:
            plan = self.planner.plan(now, change)
        self._report_filtered(plan)
        if plan.ops:
            started: float | None = None  # timed once the lock is held: the write alone
            try:
                async with self.lock:
                    started = self.clock.now()
                    await self.fw.apply(plan.ops)
                    took = self.clock.now() - started
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                took = self.clock.now() - started if started is not None else 0.0
                self.observe(SetsWritten("error", plan.elements, took))
                self._write_backoff = min(
                    self.write_retry_cap, max(self.write_retry_initial, self._write_backoff * 2)
                )
                self._write_retry_at = self.clock.now() + self._write_backoff
                self._reconcile_next = True
                detail = (
                    str(exc) if isinstance(exc, FirewallError) else f"{type(exc).__name__}: {exc}"
                )
                self.log.error(
                    "set_write_failed",
                    error=detail,
                    elements=plan.elements,
                    ops=len(plan.ops),
                    retry_in=self._write_backoff,
                )
                return False
            self.observe(SetsWritten("ok", plan.elements, took))
            self.log.debug("sets_written", elements=plan.elements, ops=len(plan.ops))
        self.planner.commit(plan)
        self._write_backoff = 0.0
        self._write_retry_at = None
        return True

    async def _reconcile_and_write(self) -> bool:
        """Dump the sets, rebuild the mirror from them, write what differs.

        Used after a failed write: if the kernel's sets changed behind fenced's back (an
        element deleted by hand, a set flushed), retrying the same batch would fail again.
        """
        dumped = await self._dump_all()
        now = self.clock.now()
        plan = self.planner.reconcile(now, dumped)
        self._pending, self._pending_since = Change(), None  # reconcile planned everything
        ok = await self._write(now, plan)
        if ok:
            self._reconcile_next = False
        return ok

    def _report_filtered(self, plan: Plan[SourceKey]) -> None:
        for f in plan.filtered:
            if not isinstance(f.key, str):
                continue
            state = self._names.get(f.key)
            if state is None or (f.ip, f.set) in state.filtered_logged:
                continue
            state.filtered_logged.add((f.ip, f.set))
            self.observe(AddressDropped(f.key, f.ip, set=f.set))
            self.log.warning(
                "private_address_dropped",
                domain=f.key,
                ip=str(f.ip),
                set=f.set,
                note="the policy has allow_private = false",
            )

    # ------------------------------------------------------------------ (re)configuring
    async def _handle(self, req: _Request, now: float) -> None:
        daemon, cache = req.daemon, self.cache
        fresh_table = req.kind == "start" or daemon.table != self.table
        cache.min_ttl, cache.max_ttl = daemon.min_ttl, daemon.max_ttl
        cache.grace, cache.stale = daemon.grace, max(daemon.stale, daemon.grace)
        cache.max_ips = daemon.max_ips_per_name
        self.daemon, self.table = daemon, daemon.table
        old = set(self._names)
        self._targets = dict(req.inputs.names)
        self._set_index = {t.name: t for t in req.inputs.sets}
        for learned, targets in list(self._learned.items()):
            kept = tuple(self._set_index[t.name] for t in targets if t.name in self._set_index)
            if kept:
                self._learned[learned] = kept
            else:
                del self._learned[learned]
                self._note_change(now, cache.forget(learned))
        removed = sorted(old - set(self._targets))
        added = sorted(set(self._targets) - old)
        for name in removed:
            del self._names[name]
            self._note_change(now, cache.forget(name))
        for key in list(cache.sources()):
            if isinstance(key, Adopted) and key.set not in self._set_index:
                self._note_change(now, cache.forget(key))
        if fresh_table:
            self.planner = Planner(self.table, self.cache, self._sets_for)
        self.planner.set_sets(self._set_index.values())
        dumped = await self._dump_all()
        now = self.clock.now()  # dumps take time; timeouts count from when they are written
        if req.kind == "start":
            self._adopt(now, dumped)
        for name in added:
            self._names[name] = _Name(name)
        for name in added if req.kind == "configure" else sorted(self._names):
            state = self._names[name]
            state.in_flight = False  # after stop() + start(): its lookup was cancelled
            self._schedule(state, now)
        plan = self.planner.reconcile(now, dumped)
        self._pending, self._pending_since = Change(), None  # reconcile planned everything
        self._write_retry_at = None
        if await self._write(now, plan):
            self._reconcile_next = False
        self.log.info(
            "dns_names_configured",
            table=self.table,
            names=len(self._names),
            added=len(added),
            removed=len(removed),
            sets=len(self._set_index),
            adopted=sum(len(v) for v in dumped.values()) if req.kind == "start" else None,
        )

    async def _dump_all(self) -> dict[str, list[DumpedElement]]:
        dumped: dict[str, list[DumpedElement]] = {}
        for name in sorted(self._set_index):
            try:
                async with self.lock:
                    dumped[name] = await self.fw.dump(self.table, name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.log.warning("set_dump_failed", set=name, error=str(exc))
        return dumped

    def _adopt(self, now: float, dumped: Mapping[str, Sequence[DumpedElement]]) -> None:
        for set_name, elements in dumped.items():
            for e in elements:
                if e.expires_ms is None or e.expires_ms <= 0:
                    continue  # permanent elements are not fenced's: reconcile deletes them
                try:
                    ip = key_to_ip(e.key)
                except ValueError:
                    continue
                self.cache.adopt(now, Adopted(set_name), ip, now + e.expires_ms / 1000)


__all__ = [
    "Adopted",
    "Clock",
    "FakeClock",
    "Learned",
    "MonotonicClock",
    "NameStatus",
    "RefreshInputs",
    "Refresher",
    "SourceKey",
    "refresh_inputs",
]
