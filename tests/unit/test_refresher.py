"""Unit tests of the DNS refresh engine (fenced.dns.refresher) on a fake clock.

``KernelSim`` is ``FakeFirewall`` plus what the kernel does with time: elements time out
(and then count as missing, so deleting one fails the batch), ``add`` of an existing
element keeps its old expiry (kernels before 6.12), ``refresh`` resets it, and dumps
report the time left.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import itertools
import math
import random
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

import pytest

from fenced.core.elements import DumpedElement, Element, SetOp, ipv4_key, key_to_ip
from fenced.core.events import (
    AddressDropped,
    Event,
    LookupDone,
    LookupStarted,
    NameCapped,
    SetsWritten,
)
from fenced.core.model import Config, DaemonConfig, IPAddress, Policy, PortSpec, Target
from fenced.core.planner import SetTarget
from fenced.core.ruleset import AddTable, DomainSet, Family, Ruleset, Table, layout
from fenced.dns.answers import Answer
from fenced.dns.refresher import FakeClock, Refresher, RefreshInputs, refresh_inputs
from fenced.dns.resolver import FakeResolver
from fenced.errors import FirewallError
from fenced.kernel.firewall import FakeFirewall
from fenced.log import Logger

TABLE = "fenced"
A = ipaddress.ip_address("192.0.2.1")
B = ipaddress.ip_address("192.0.2.2")
C = ipaddress.IPv4Address("198.51.100.3")
V6 = ipaddress.ip_address("2001:db8::1")
PRIV = ipaddress.ip_address("10.0.0.1")

S4 = SetTarget("s4", 4)
S6 = SetTarget("s6", 6)
P4 = SetTarget("p4", 4, allow_private=True)
DAEMON = DaemonConfig(table=TABLE, min_ttl=5, max_ttl=3600, grace=30, stale=300)


def _ruleset(*sets: tuple[str, Family]) -> Ruleset:
    spec = PortSpec(("tcp",), ())
    declared = tuple(DomainSet(name, "p", fam, spec, ()) for name, fam in sets)
    return Ruleset((AddTable(TABLE), Table(TABLE, (), declared, (), ())))


RULESET = _ruleset(("s4", 4), ("s6", 6), ("p4", 4), ("t4", 4))


class KernelSim(FakeFirewall):
    """FakeFirewall whose elements time out on ``clock`` like the kernel's."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock
        self.expiry: dict[tuple[str, str, bytes], float] = {}
        self.applied: list[list[SetOp]] = []

    def _purge(self) -> None:
        now = self.clock.now()
        for (table, name, key), exp in list(self.expiry.items()):
            if exp <= now:
                self.tables[table].sets[name].pop(key, None)
                del self.expiry[(table, name, key)]

    async def apply(self, ops: Sequence[SetOp]) -> None:
        """Apply like the kernel: expired elements are gone, add keeps an old expiry."""
        self._purge()
        before = dict(self.expiry)
        await super().apply(ops)
        now = self.clock.now()
        for op in ops:
            for e in op.elements:
                k = (op.table, op.set, e.key)
                if op.action == "delete":
                    self.expiry.pop(k, None)
                elif e.timeout_ms is not None and (op.action == "refresh" or k not in before):
                    self.expiry[k] = now + e.timeout_ms / 1000
        self.applied.append(list(ops))

    async def dump(self, table: str, set_name: str) -> list[DumpedElement]:
        """Elements with the time they have left."""
        self._purge()
        now = self.clock.now()
        out = []
        for e in await super().dump(table, set_name):
            exp = self.expiry.get((table, set_name, e.key))
            left = None if exp is None else math.ceil((exp - now) * 1000)
            out.append(DumpedElement(e.key, e.timeout_ms, left))
        return out

    def live(self, set_name: str) -> dict[IPAddress, float]:
        """What the set holds now: IP -> when the kernel drops it (inf: never)."""
        self._purge()
        return {
            key_to_ip(k): self.expiry.get((TABLE, set_name, k), math.inf)
            for k in self.tables[TABLE].sets[set_name]
        }

    def actions_for(self, ip: IPAddress) -> list[tuple[str, str]]:
        """Every (action, set) applied to ``ip``'s element, in order."""
        key = ipv4_key(ip) if ip.version == 4 else ip.packed
        return [
            (op.action, op.set)
            for batch in self.applied
            for op in batch
            for e in op.elements
            if e.key == key
        ]


class TimedResolver(FakeResolver):
    """FakeResolver that also records when each query was made."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock.sleep)
        self.clock = clock
        self.times: dict[str, list[float]] = {}

    async def resolve(self, name: str) -> Answer:
        """Record the time, then answer as scripted."""
        self.times.setdefault(name, []).append(self.clock.now())
        return await super().resolve(name)


@dataclass
class Rig:
    """A refresher on a fake clock with a simulated kernel and scripted DNS."""

    clock: FakeClock
    fw: KernelSim
    dns: TimedResolver
    ref: Refresher
    logs: io.StringIO
    t0: float
    seen: list[Event] = field(default_factory=list)

    async def at(self, t: float) -> None:
        """Advance the clock to ``t0 + t``."""
        await self.clock.advance(self.t0 + t - self.clock.now())

    def events(self, name: str) -> list[str]:
        """Log lines of event ``name``."""
        return [line for line in self.logs.getvalue().splitlines() if f"event={name} " in line]

    def lookups(self, status: str) -> int:
        """How many lookups the refresher reported ending with ``status``."""
        return sum(1 for e in self.seen if isinstance(e, LookupDone) and e.status == status)

    def writes(self, result: str) -> int:
        """How many set transactions the refresher reported ending with ``result``."""
        return sum(1 for e in self.seen if isinstance(e, SetsWritten) and e.result == result)

    def count(self, kind: type[Event]) -> int:
        """How many events of ``kind`` the refresher reported."""
        return sum(1 for e in self.seen if isinstance(e, kind))


@contextlib.asynccontextmanager
async def running(
    targets: Mapping[str, Sequence[SetTarget]],
    answers: Mapping[str, Sequence[Answer | Exception]],
    *,
    daemon: DaemonConfig = DAEMON,
    clock: FakeClock | None = None,
    fw: KernelSim | None = None,
    delays: Mapping[str, float] | None = None,
    **kw: float,
) -> AsyncIterator[Rig]:
    """Start a refresher for ``targets`` with scripted ``answers``; stop it afterwards."""
    clock = clock or FakeClock()
    if fw is None:
        fw = KernelSim(clock)
        await fw.install(RULESET)
    dns = TimedResolver(clock)
    for name, script in answers.items():
        dns.script(name, *script)
    for name, seconds in (delays or {}).items():
        dns.delay(name, seconds)
    logs = io.StringIO()
    seen: list[Event] = []
    ref = Refresher(
        fw,
        dns,
        clock=clock,
        rng=random.Random(7),
        observe=seen.append,
        logger=Logger(logs, level="debug"),
        **kw,  # type: ignore[arg-type]
    )
    rig = Rig(clock, fw, dns, ref, logs, clock.now(), seen)
    await ref.start(daemon, RefreshInputs.from_names(targets))
    try:
        yield rig
    finally:
        await ref.stop()


def ok(*ips: IPAddress, ttl: int = 60) -> Answer:
    """A successful answer."""
    return Answer.ok(ips, ttl)


# --------------------------------------------------------------------------- tests


async def test_first_resolution_writes_timeouts() -> None:
    """The first answer puts each IP in its family's set with timeout ttl + grace."""
    async with running({"a.test": (S4, S6)}, {"a.test": [ok(A, V6)]}) as r:
        await r.at(0)
        assert r.fw.live("s4") == {A: r.t0 + 90}
        assert r.fw.live("s6") == {V6: r.t0 + 90}
        elements = r.fw.tables[TABLE].sets["s4"]
        assert [e.timeout_ms for e in elements.values()] == [90_000]
        assert r.lookups("ok") == 1
        st = r.ref.status()["a.test"]
        assert st.last_status == "ok" and set(st.ips) == {A, V6}


async def test_reresolves_at_ttl_end_not_before() -> None:
    """A name is asked again when its TTL ends (plus at most 1 s jitter), not before."""
    async with running({"a.test": (S4,)}, {"a.test": [ok(A)]}) as r:
        await r.at(59.99)
        assert r.dns.queries["a.test"] == 1
        await r.at(61.0)
        assert r.dns.queries["a.test"] == 2
        second = r.dns.times["a.test"][1] - r.t0
        assert 60 <= second <= 61
        assert r.fw.live("s4")[A] == r.t0 + second + 90
        assert r.fw.actions_for(A) == [("add", "s4"), ("refresh", "s4")]


async def test_sleeps_until_next_due_time() -> None:
    """With nothing due the loop has a single wake-up pending: the next due time."""
    async with running({"a.test": (S4,)}, {"a.test": [ok(A, ttl=3600)]}) as r:
        await r.at(10)
        pending = r.clock.pending()
        assert len(pending) == 1
        assert r.t0 + 3600 <= pending[0] <= r.t0 + 3601


async def test_old_ip_leaves_after_deadline_plus_grace() -> None:
    """An IP missing from a newer answer stays until its deadline + grace, then leaves."""
    async with running({"a.test": (S4,)}, {"a.test": [ok(A), ok(B)]}) as r:
        await r.at(61)
        assert set(r.fw.live("s4")) == {A, B}
        await r.at(89.9)
        assert A in r.fw.live("s4")
        await r.at(90.1)
        assert set(r.fw.live("s4")) == {B}
        assert ("delete", "s4") not in r.fw.actions_for(A)  # the kernel timed it out
        assert A not in r.ref.status()["a.test"].ips


async def test_shared_ip_kept_when_one_name_moves() -> None:
    """An IP two names share stays while the other name still holds it."""
    answers = {"a.test": [ok(A), ok(B)], "b.test": [ok(A)]}
    async with running({"a.test": (S4,), "b.test": (S4,)}, answers) as r:
        await r.at(0)
        assert r.dns.queries == {"a.test": 1, "b.test": 1}
        await r.at(300)
        assert set(r.fw.live("s4")) == {A, B}
        assert r.fw.live("s4")[A] > r.clock.now() + 30


async def test_nxdomain_runs_ips_out_and_reasks_after_min_ttl() -> None:
    """NXDOMAIN without an SOA lets IPs expire at deadline + grace; re-asks every min_ttl."""
    answers = {"a.test": [ok(A), Answer.fail("nxdomain")]}
    async with running({"a.test": (S4,)}, answers) as r:
        await r.at(89)
        assert A in r.fw.live("s4")
        await r.at(91)
        assert r.fw.live("s4") == {}
        await r.at(400)
        times = r.dns.times["a.test"]
        gaps = [b - a for a, b in itertools.pairwise(times[1:])]
        assert len(gaps) > 50 and all(5 <= g <= 5.5 for g in gaps)  # min_ttl, no backoff
        assert r.lookups("nxdomain") == len(times) - 1
        # The name appears: picked up within min_ttl (+ jitter).
        r.dns.script("a.test", ok(B))
        await r.at(405.6)
        assert B in r.fw.live("s4")


async def test_negative_answer_is_reasked_after_its_negative_ttl() -> None:
    """NXDOMAIN/NODATA are asked again after the answer's negative TTL, with no backoff."""
    for status in ("nxdomain", "nodata"):
        answers = {"a.test": [Answer.fail(status, negative_ttl=7)]}
        async with running({"a.test": (S4,)}, answers) as r:
            await r.at(300)
            gaps = [b - a for a, b in itertools.pairwise(r.dns.times["a.test"])]
            assert len(gaps) > 30 and all(7 <= g <= 7.7 for g in gaps), (status, gaps)
            assert r.ref.status()["a.test"].last_status == status
            assert "negative_ttl=7" in r.events("dns_negative")[0]


async def test_negative_ttl_is_clamped_to_min_and_max_ttl() -> None:
    """A negative TTL below min_ttl counts as min_ttl, one above max_ttl as max_ttl."""
    answers = {"lo.test": [Answer.fail("nxdomain", negative_ttl=1)]}
    answers["hi.test"] = [Answer.fail("nxdomain", negative_ttl=86400)]
    daemon = DaemonConfig(table=TABLE, min_ttl=5, max_ttl=600, grace=30, stale=300)
    async with running({"lo.test": (S4,), "hi.test": (S4,)}, answers, daemon=daemon) as r:
        await r.at(1300)
        lo = [b - a for a, b in itertools.pairwise(r.dns.times["lo.test"])]
        hi = [b - a for a, b in itertools.pairwise(r.dns.times["hi.test"])]
        assert all(5 <= g <= 5.5 for g in lo)
        assert len(hi) == 2 and all(600 <= g <= 601 for g in hi)


async def test_name_created_later_is_reachable_within_negative_ttl_plus_a_second() -> None:
    """A name NXDOMAIN at start gets its address into the set within negative TTL + 1 s."""
    answers = {"late.test": [Answer.fail("nxdomain", negative_ttl=20)]}
    async with running({"late.test": (S4,)}, answers) as r:
        for created in (130.0, 245.5, 371.2):
            r.dns.script("late.test", ok(A))
            # The record appears at `created`; a cache may serve the NXDOMAIN for 20 s more.
            await r.at(created)
            await r.at(created + 20 + 1)
            assert A in r.fw.live("s4"), created
            r.dns.script("late.test", Answer.fail("nxdomain", negative_ttl=20))
            await r.at(created + 120)  # A runs out (60 s TTL + 30 s grace), NXDOMAIN again
            assert A not in r.fw.live("s4")


async def test_failures_after_negative_answers_back_off() -> None:
    """Only failures back off: SERVFAIL after NXDOMAIN retries from 1 s doubling."""
    answers = {"a.test": [Answer.fail("nxdomain", negative_ttl=7), Answer.fail("servfail")]}
    async with running({"a.test": (S4,)}, answers) as r:
        await r.at(200)
        gaps = [math.floor(b - a) for a, b in itertools.pairwise(r.dns.times["a.test"])]
        assert gaps[0] == 7 and gaps[1:7] == [1, 2, 4, 8, 16, 32]


async def test_servfail_keeps_ips_until_stale_then_removes() -> None:
    """On SERVFAIL known IPs stay until deadline + stale, retries back off to 60 s."""
    answers = {"a.test": [ok(A), Answer.fail("servfail", "SERVFAIL")]}
    async with running({"a.test": (S4,)}, answers) as r:
        await r.at(359)
        assert A in r.fw.live("s4")
        await r.at(361)
        assert r.fw.live("s4") == {}
        times = r.dns.times["a.test"]
        gaps = [math.floor(b - a) for a, b in itertools.pairwise(times[1:])]
        assert gaps[:6] == [1, 2, 4, 8, 16, 32]
        assert max(gaps) == 60
        assert r.lookups("servfail") == len(times) - 1
        assert len(r.events("dns_failed")) >= 2
        assert "level=warning" in r.events("dns_failed")[0]


async def test_timeout_is_a_failure_too() -> None:
    """A timeout keeps IPs stale like SERVFAIL and is counted as timeout."""
    answers = {"a.test": [ok(A), Answer.fail("timeout", "timed out")]}
    async with running({"a.test": (S4,)}, answers) as r:
        await r.at(200)
        assert abs(r.fw.live("s4")[A] - (r.t0 + 360)) < 0.01
        assert r.lookups("timeout") >= 1


async def test_lookup_slower_than_grace_keeps_ips_until_the_failure_is_known() -> None:
    """A lookup that takes longer than grace (a resolver timing out) never lets IPs lapse."""
    daemon = DaemonConfig(table=TABLE, min_ttl=1, max_ttl=3600, grace=1, stale=30)
    answers = {"a.test": [ok(A, ttl=2), Answer.fail("timeout", "timed out")]}
    async with running({"a.test": (S4,)}, answers, daemon=daemon, delays={"a.test": 4.0}) as r:
        # first answer at t0+4 (delayed), deadline t0+6, grace ends t0+7; the second
        # lookup starts at ~t0+6 and only fails at ~t0+10: the IP must hold until then.
        for t in (5, 7, 8, 9, 9.9):
            await r.at(t)
            assert A in r.fw.live("s4"), f"lapsed at t0+{t}"
        await r.at(12)
        assert A in r.fw.live("s4")  # now kept by stale (deadline + 30)
        assert r.lookups("timeout") >= 1


async def test_recovery_removes_stale_ips() -> None:
    """After a failure, an answer without an old IP removes it once its grace passed."""
    answers = {"a.test": [ok(A), Answer.fail("servfail")]}
    async with running({"a.test": (S4,)}, answers) as r:
        await r.at(150)
        assert A in r.fw.live("s4")
        r.dns.script("a.test", ok(B))
        await r.at(215)
        assert set(r.fw.live("s4")) == {B}
        assert ("delete", "s4") in r.fw.actions_for(A)


async def test_partial_answer_adds_and_retries_soon() -> None:
    """A partial answer (AAAA failed) adds the A part and is retried as a failure."""
    partial = Answer.fail("servfail", "AAAA SERVFAIL", ips=[A], ttl=60)
    async with running({"a.test": (S4, S6)}, {"a.test": [ok(A, V6), partial]}) as r:
        await r.at(62)
        assert A in r.fw.live("s4") and V6 in r.fw.live("s6")
        assert abs(r.fw.live("s6")[V6] - (r.t0 + 360)) < 0.01  # the failed family: stale
        assert r.dns.queries["a.test"] >= 3


async def test_private_addresses_filtered_per_policy() -> None:
    """A private address goes only into sets of policies with allow_private, logged once."""
    answers = {"a.test": [ok(A, PRIV)]}
    async with running({"a.test": (S4, P4)}, answers) as r:
        await r.at(200)
        assert set(r.fw.live("s4")) == {A}
        assert set(r.fw.live("p4")) == {A, PRIV}
        assert r.count(AddressDropped) == 1
        assert len(r.events("private_address_dropped")) == 1


async def test_max_ips_cap() -> None:
    """More addresses than max_ips_per_name: the newest stay, counted, logged once."""
    daemon = DaemonConfig(table=TABLE, max_ips_per_name=2)
    many = ok(A, B, C, ipaddress.ip_address("203.0.113.4"))
    async with running({"a.test": (S4,)}, {"a.test": [many]}, daemon=daemon) as r:
        await r.at(130)
        assert set(r.fw.live("s4")) == {A, B}
        assert r.count(NameCapped) >= 2
        assert len(r.events("dns_too_many_ips")) == 1


async def test_one_query_for_two_policies() -> None:
    """A name listed by two policies is asked once and written to both policies' sets."""
    async with running({"a.test": (S4, P4)}, {"a.test": [ok(A)]}) as r:
        await r.at(0)
        assert r.dns.queries["a.test"] == 1
        assert set(r.fw.live("s4")) == {A} and set(r.fw.live("p4")) == {A}


async def test_firewall_failure_is_retried() -> None:
    """A failed write is logged, counted and retried later; nothing is lost."""
    async with running({"a.test": (S4,)}, {"a.test": [ok(A)]}) as r:
        r.fw.fail_next = FirewallError("add elements to s4", "Cannot allocate memory", 12)
        await r.at(0)
        assert r.fw.live("s4") == {}
        assert r.writes("error") == 1
        assert len(r.events("set_write_failed")) == 1
        await r.at(1)
        assert r.fw.live("s4") == {A: r.t0 + 90}
        assert r.writes("ok") == 1


async def test_write_failure_from_outside_change_heals() -> None:
    """An element deleted behind fenced's back makes a batch fail once; the retry re-dumps."""
    answers = {"a.test": [ok(A), Answer.fail("servfail")]}
    async with running({"a.test": (S4,)}, answers) as r:
        await r.at(150)
        r.fw.tables[TABLE].sets["s4"].clear()  # e.g. `nft flush set` by an operator
        r.dns.script("a.test", ok(B))
        await r.at(214)
        assert r.writes("error") == 1  # "delete A" named a missing element
        await r.at(216)
        assert set(r.fw.live("s4")) == {B}
        assert r.writes("error") == 1


async def test_resolver_exception_does_not_stop_engine() -> None:
    """A resolver that raises counts as an error and the engine goes on."""
    answers: dict[str, list[Answer | Exception]] = {"a.test": [RuntimeError("boom"), ok(A)]}
    async with running({"a.test": (S4,)}, answers) as r:
        await r.at(2)
        assert r.lookups("error") == 1
        assert set(r.fw.live("s4")) == {A}


async def test_reload_adds_resolves_at_once_and_removes() -> None:
    """On reload new names are resolved at once, kept ones untouched, removed ones deleted."""
    answers = {"a.test": [ok(A)], "b.test": [ok(B)]}
    async with running({"a.test": (S4,)}, answers) as r:
        await r.at(10)
        writes_before = len(r.fw.applied)
        await r.ref.configure(DAEMON, RefreshInputs.from_names({"a.test": (S4,), "b.test": (S4,)}))
        await r.at(10)
        assert r.dns.queries == {"a.test": 1, "b.test": 1}
        assert set(r.fw.live("s4")) == {A, B}
        assert r.fw.actions_for(A) == [("add", "s4")]  # no gap, no rewrite
        assert len(r.fw.applied) == writes_before + 1
        await r.ref.configure(DAEMON, RefreshInputs.from_names({"b.test": (S4,)}))
        assert set(r.fw.live("s4")) == {B}
        assert ("delete", "s4") in r.fw.actions_for(A)
        assert list(r.ref.status()) == ["b.test"]


async def test_reload_moves_name_between_sets() -> None:
    """A name moved to another set on reload leaves the old set and enters the new one."""
    answers = {"a.test": [ok(A)], "c.test": [ok(C)]}
    async with running({"a.test": (S4,), "c.test": (S4,)}, answers) as r:
        await r.at(0)
        t4 = SetTarget("t4", 4)
        await r.ref.configure(DAEMON, RefreshInputs.from_names({"a.test": (t4,), "c.test": (S4,)}))
        assert set(r.fw.live("s4")) == {C}
        assert set(r.fw.live("t4")) == {A}
        assert r.dns.queries == {"a.test": 1, "c.test": 1}


async def _restarted() -> tuple[FakeClock, KernelSim]:
    """A kernel left by a refresher that wrote A and B for a.test 20 s ago, plus C by hand."""
    clock = FakeClock()
    fw = KernelSim(clock)
    await fw.install(RULESET)
    async with running({"a.test": (S4,)}, {"a.test": [ok(A, B)]}, clock=clock, fw=fw) as r:
        await r.at(0)
    await fw.apply([SetOp("add", "inet", TABLE, "s4", (Element(ipv4_key(C)),))])  # no timeout
    await clock.advance(20)
    return clock, fw


async def test_restart_adopts_valid_elements() -> None:
    """After a restart still-valid elements keep their remaining lifetime; foreign ones go."""
    clock, fw = await _restarted()
    async with running({"a.test": (S4,)}, {"a.test": [ok(B)]}, clock=clock, fw=fw) as r:
        await r.at(0)
        live = r.fw.live("s4")
        assert set(live) == {A, B}  # C never expires, so it was not fenced's: deleted
        assert abs(live[A] - (r.t0 + 70)) < 0.01  # remaining lifetime kept
        assert abs(live[B] - (r.t0 + 90)) < 0.01  # refreshed by the new answer
        assert ("refresh", "s4") not in r.fw.actions_for(A)
        await r.at(71)
        assert set(r.fw.live("s4")) == {B}


async def test_restart_while_dns_fails_keeps_adopted_stale() -> None:
    """After a restart during a DNS outage adopted elements stay until deadline + stale."""
    clock, fw = await _restarted()
    failing = {"a.test": [Answer.fail("servfail")]}
    async with running({"a.test": (S4,)}, failing, clock=clock, fw=fw) as r:
        await r.at(0)
        live = r.fw.live("s4")
        assert set(live) == {A, B}
        assert abs(live[A] - (r.t0 + 40 + 300)) < 0.01  # adopted deadline 40 s + stale
        await r.at(341)
        assert r.fw.live("s4") == {}


async def test_queries_in_flight_are_bounded() -> None:
    """No more than max_in_flight lookups run at once; all names get resolved."""
    names = [f"n{i}.test" for i in range(10)]
    async with running(
        {n: (S4,) for n in names},
        {n: [ok(ipaddress.ip_address(f"192.0.2.{i + 10}"))] for i, n in enumerate(names)},
        max_in_flight=3,
        delays=dict.fromkeys(names, 0.5),
    ) as r:
        await r.at(5)
        assert r.dns.max_in_flight <= 3
        assert len(r.fw.live("s4")) == 10
        assert (
            max(e.lag for e in r.seen if isinstance(e, LookupStarted)) > 0
        )  # some had to wait for a free slot


async def test_results_close_together_share_one_transaction() -> None:
    """Answers that arrive within the coalescing window are written in one transaction."""
    answers = {"a.test": [ok(A)], "b.test": [ok(B)]}
    delays = {"a.test": 0.01, "b.test": 0.03}
    async with running({"a.test": (S4,), "b.test": (S4,)}, answers, delays=delays) as r:
        await r.at(1)
        assert len(r.fw.applied) == 1
        assert set(r.fw.live("s4")) == {A, B}


async def test_slow_name_does_not_delay_others() -> None:
    """A name whose lookup hangs until it times out does not hold back other names' writes."""
    answers = {"slow.test": [Answer.fail("timeout")], "b.test": [ok(B, ttl=5)]}
    delays = {"slow.test": 4.0}
    async with running({"slow.test": (S4,), "b.test": (S4,)}, answers, delays=delays) as r:
        await r.at(0.1)
        assert set(r.fw.live("s4")) == {B}
        await r.at(12)
        assert r.dns.queries["b.test"] >= 3  # refreshed on its own TTL meanwhile
        assert r.ref.status()["slow.test"].last_status == "timeout"


async def test_inputs_leave_wildcards_out_but_keep_their_sets() -> None:
    """refresh_inputs never hands over a wildcard to resolve, but declares its sets."""
    spec = PortSpec(("tcp",))
    cfg = Config(
        DaemonConfig(),
        (
            Policy(
                "p1",
                uids=(1,),
                outbound=(
                    Target("*.w.test", PortSpec(("udp",)), domain="*.w.test"),
                    Target("a.test", spec, domain="a.test"),
                ),
            ),
        ),
    )
    lay = layout(cfg)
    inputs = refresh_inputs(cfg, lay)
    assert list(inputs.names) == ["a.test"]
    assert sorted(t.name for t in inputs.sets) == sorted(ds.name for ds in lay.domain_sets)
    assert len(inputs.sets) > len({t.name for ts in inputs.names.values() for t in ts})


async def test_targets_from_layout() -> None:
    """refresh_inputs maps each domain to the sets of every policy listing it."""
    spec = PortSpec(("tcp",))
    cfg = Config(
        DaemonConfig(),
        (
            Policy("p1", uids=(1,), outbound=(Target("a.test", spec, domain="a.test"),)),
            Policy(
                "p2",
                uids=(2,),
                outbound=(Target("a.test", spec, domain="a.test"),),
                allow_private=True,
            ),
        ),
    )
    targets = refresh_inputs(cfg, layout(cfg)).names
    assert list(targets) == ["a.test"]
    assert sorted((t.family, t.allow_private) for t in targets["a.test"]) == [
        (4, False),
        (4, True),
        (6, False),
        (6, True),
    ]


def test_sets_for_answers_per_policy_and_entry() -> None:
    """sets_for gives one policy's sets of the entries asked, wildcards too, others' never."""
    spec = PortSpec(("tcp",))
    cfg = Config(
        DaemonConfig(),
        (
            Policy(
                "p1",
                uids=(1,),
                outbound=(
                    Target("*.w.test", PortSpec(("udp",)), domain="*.w.test"),
                    Target("a.test", spec, domain="a.test"),
                ),
            ),
            Policy(
                "p2",
                uids=(2,),
                outbound=(Target("a.test", spec, domain="a.test"),),
                allow_private=True,
            ),
            Policy("p3", uids=(3,), outbound=()),
        ),
    )
    lay = layout(cfg)
    inputs = refresh_inputs(cfg, lay)

    def names(policy: str, domain: str) -> list[str]:
        return sorted(ds.name for ds in lay.sets_for(domain) if ds.policy == policy)

    p1 = inputs.sets_for("p1", ["a.test", "*.w.test", "other.test"])
    assert [t.name for t in p1] == sorted({*names("p1", "a.test"), *names("p1", "*.w.test")})
    assert len(p1) == 4 and not any(t.allow_private for t in p1)
    p2 = inputs.sets_for("p2", ["a.test", "*.w.test"])
    assert [t.name for t in p2] == names("p2", "a.test")
    assert all(t.allow_private for t in p2) and len(p2) == 2
    assert inputs.sets_for("p3", ["a.test"]) == ()
    with pytest.raises(KeyError):
        inputs.sets_for("gone", ["a.test"])


async def test_writes_and_lookups_are_reported_with_their_sizes_and_times() -> None:
    """Each lookup is reported with its status and duration, each write with its elements."""
    async with running({"a.test": (S4, S6)}, {"a.test": [ok(A, V6)]}, delays={"a.test": 2}) as r:
        await r.at(3)
        assert [(e.status, e.seconds) for e in r.seen if isinstance(e, LookupDone)] == [("ok", 2)]
        writes = [e for e in r.seen if isinstance(e, SetsWritten)]
        assert [(e.result, e.elements) for e in writes] == [("ok", 2)]


async def test_configure_with_a_new_resolver_closes_the_old_after_its_lookups() -> None:
    """A resolver replaced at configure is closed once its lookup in flight ends, not before."""
    async with running({"a.test": (S4,)}, {"a.test": [ok(A)]}, delays={"a.test": 3}) as r:
        await r.at(1)
        new = FakeResolver(r.clock.sleep)
        new.script("a.test", ok(B))
        await r.ref.configure(DAEMON, RefreshInputs.from_names({"a.test": (S4,)}), new)
        assert r.ref.resolver is new
        assert r.dns.closed == 0  # its lookup of a.test is still running
        await r.at(4)
        assert r.dns.closed == 1
        assert set(r.fw.live("s4")) == {A}  # the old resolver's answer still counts
        await r.at(70)
        assert new.queries["a.test"] == 1 and set(r.fw.live("s4")) == {A, B}
        assert new.closed == 0
    assert new.closed == 1 and r.dns.closed == 1  # stop closes the one in use


async def test_configure_with_an_idle_resolver_closes_it_at_once() -> None:
    """A replaced resolver with no lookup in flight is closed before configure returns."""
    async with running({"a.test": (S4,)}, {"a.test": [ok(A)]}) as r:
        await r.at(1)
        new = FakeResolver(r.clock.sleep)
        await r.ref.configure(DAEMON, RefreshInputs.from_names({"a.test": (S4,)}), new)
        assert r.dns.closed == 1 and new.closed == 0
