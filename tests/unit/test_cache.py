"""Unit tests of the per-key, per-IP DNS cache (fenced.core.cache)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from fenced.core.cache import Change, DnsCache
from fenced.core.model import IPAddress

A = ipaddress.ip_address("192.0.2.1")
B = ipaddress.ip_address("192.0.2.2")
C = ipaddress.ip_address("2001:db8::3")
D = ipaddress.ip_address("198.51.100.4")


def _cache(**kw: float) -> DnsCache[str]:
    args: dict[str, float] = {"min_ttl": 5, "max_ttl": 3600, "grace": 30, "stale": 300}
    args.update(kw)
    return DnsCache(max_ips=int(args.pop("max_ips", 64)), **args)


def test_update_sets_deadline_and_grace() -> None:
    """A new answer gives each IP deadline now+ttl and expiry deadline+grace."""
    c = _cache()
    ch = c.update(100.0, "a.example", [A, C], 60)
    assert ch.keys["a.example"].updated == {A: 190.0, C: 190.0}
    e = c.entries("a.example")[A]
    assert (e.deadline, e.expires) == (160.0, 190.0)
    assert c.next_expiry() == 190.0


def test_ttl_is_clamped() -> None:
    """TTLs below min_ttl are raised and above max_ttl lowered."""
    c = _cache(min_ttl=10, max_ttl=100)
    c.update(0.0, "low", [A], 1)
    c.update(0.0, "high", [B], 100000)
    assert c.entries("low")[A].deadline == 10.0
    assert c.entries("high")[B].deadline == 100.0
    assert c.effective_ttl(50) == 50


def test_missing_ip_keeps_its_own_deadline_plus_grace() -> None:
    """An IP missing from a newer answer stays until its own deadline + grace."""
    c = _cache()
    c.update(0.0, "n", [A], 60)
    ch = c.update(60.0, "n", [B], 60)
    assert ch.keys["n"].updated == {B: 150.0}  # A unchanged: 60 + 30
    assert c.expiry("n", A) == 90.0
    assert c.expire(89.0).keys == {}
    gone = c.expire(90.0)
    assert gone.keys["n"].removed == {A}
    assert list(c.ips("n")) == [B]


def test_fail_extends_to_stale_and_success_reverts() -> None:
    """A failed lookup keeps IPs until deadline + stale; a later answer without them reverts."""
    c = _cache()
    c.update(0.0, "n", [A], 60)
    ch = c.fail(60.0, "n")
    assert ch.keys["n"].updated == {A: 360.0}
    ch = c.update(200.0, "n", [B], 60)
    assert ch.keys["n"].removed == {A}  # 60 + 30 <= 200: leaves at once
    assert c.expiry("n", B) == 290.0


def test_partial_answer_keeps_missing_ips_stale() -> None:
    """A partial answer (one family failed) treats missing IPs as failed, not gone."""
    c = _cache()
    c.update(0.0, "n", [A, C], 60)
    c.update(60.0, "n", [A], 60, partial=True)
    assert c.expiry("n", C) == 360.0


def test_empty_answer_runs_ips_out() -> None:
    """NXDOMAIN/NODATA (empty update) keeps IPs until deadline + grace, adds none."""
    c = _cache()
    c.update(0.0, "n", [A], 60)
    ch = c.update(60.0, "n", [], 60)
    assert not ch
    assert c.expiry("n", A) == 90.0


def test_cap_keeps_newest() -> None:
    """Beyond max_ips the newest IPs stay and the cap is reported."""
    c = _cache(max_ips=2)
    c.update(0.0, "n", [A, B], 60)
    ch = c.update(10.0, "n", [C], 60)
    kc = ch.keys["n"]
    assert kc.capped == 1
    assert set(c.ips("n")) == {C, A}  # the newest answer first, then answer order
    assert kc.removed == {B}
    ch = c.update(20.0, "m", [A, B, C, D], 60)
    assert ch.keys["m"].capped == 2
    assert ch.keys["m"].removed == set()  # never held, so never "removed"
    assert set(c.ips("m")) == {A, B}


def test_shared_ip_survives_other_key() -> None:
    """An IP two keys hold stays in one when the other forgets it."""
    c = _cache()
    c.update(0.0, "x", [A], 60)
    c.update(0.0, "y", [A], 120)
    assert set(c.holders(A)) == {"x", "y"}
    ch = c.forget("x")
    assert ch.keys["x"].removed == {A}
    assert list(c.holders(A)) == ["y"]
    assert c.expiry("y", A) == 150.0


def test_adopt_keeps_remaining_lifetime() -> None:
    """Adopted IPs keep their remaining lifetime, capped at max_ttl + stale."""
    c = _cache()
    c.adopt(0.0, "s", A, 50.0)
    c.adopt(0.0, "s", B, 1e9)
    c.adopt(0.0, "s", C, 0.0)
    assert c.expiry("s", A) == 50.0
    assert c.expiry("s", B) == 3600 + 300
    assert c.expiry("s", C) is None
    assert c.entries("s")[A].deadline == 20.0


def test_change_merge() -> None:
    """Merging changes gives the net effect per IP."""
    a: Change[str] = Change()
    a.merge(_cache().update(0.0, "n", [A], 60))
    c = _cache()
    c.update(0.0, "n", [A], 60)
    a.merge(c.forget("n"))
    assert a.keys["n"].removed == {A} and not a.keys["n"].updated
    assert set(a.touched()) == {("n", A)}


# --------------------------------------------------------------------- stateful model

POOL = [ipaddress.ip_address(f"203.0.113.{i}") for i in range(1, 6)] + [
    ipaddress.ip_address(f"2001:db8::{i}") for i in range(1, 4)
]
KEYS = ["a", "b", "c"]
MIN_TTL, MAX_TTL, GRACE, STALE, MAX_IPS = 5, 100, 10, 40, 4


@dataclass
class ModelEntry:
    """What the model remembers of an IP."""

    deadline: float
    expires: float
    answer: int
    order: int


class CacheMachine(RuleBasedStateMachine):
    """Drives DnsCache and a plain dict model with the same operations and compares them."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.cache: DnsCache[str] = DnsCache(
            min_ttl=MIN_TTL, max_ttl=MAX_TTL, grace=GRACE, stale=STALE, max_ips=MAX_IPS
        )
        self.model: dict[str, dict[IPAddress, ModelEntry]] = {}
        self.answers = 0

    @initialize()
    def start(self) -> None:
        """Start from an empty cache at time 0."""

    def _snapshot(self) -> dict[tuple[str, IPAddress], tuple[float, float]]:
        return {
            (k, ip): (e.deadline, e.expires)
            for k, ips in self.model.items()
            for ip, e in ips.items()
        }

    def _check_change(
        self, before: dict[tuple[str, IPAddress], tuple[float, float]], change: Change[str]
    ) -> None:
        after = self._snapshot()
        want_updated = {p: after[p][1] for p in after if before.get(p) != after[p]}
        want_removed = {p for p in before if p not in after}
        got_updated = {(k, ip): e for k, kc in change.keys.items() for ip, e in kc.updated.items()}
        got_removed = {(k, ip) for k, kc in change.keys.items() for ip in kc.removed}
        assert got_updated == want_updated
        assert got_removed == want_removed

    def _prune(self, key: str) -> None:
        if not self.model.get(key):
            self.model.pop(key, None)

    @rule(dt=st.integers(min_value=0, max_value=60))
    def advance(self, dt: int) -> None:
        """Let time pass."""
        self.now += dt

    @rule(
        key=st.sampled_from(KEYS),
        ips=st.lists(st.sampled_from(POOL), max_size=6),
        ttl=st.integers(min_value=0, max_value=200),
        partial=st.booleans(),
    )
    def update(self, key: str, ips: list[IPAddress], ttl: int, partial: bool) -> None:
        """An answer arrives for a key."""
        before = self._snapshot()
        change = self.cache.update(self.now, key, ips, ttl, partial=partial)
        deadline = self.now + min(max(ttl, MIN_TTL), MAX_TTL)
        cur = self.model.setdefault(key, {})
        answer = list(dict.fromkeys(ips))
        for ip in list(cur):
            if ip not in answer:
                e = cur[ip]
                exp = e.deadline + (STALE if partial else GRACE)
                if exp <= self.now:
                    del cur[ip]
                else:
                    e.expires = exp
        self.answers += 1
        for i, ip in enumerate(answer):
            cur[ip] = ModelEntry(deadline, deadline + GRACE, self.answers, i)
        dropped = 0
        if len(cur) > MAX_IPS:
            # The answer's first MAX_IPS IPs always stay; older ones fill what is left.
            keep = answer[:MAX_IPS]
            older = sorted(
                (ip for ip in cur if ip not in answer),
                key=lambda ip: (
                    -cur[ip].answer,
                    cur[ip].order,
                    -cur[ip].deadline,
                    ip.version,
                    int(ip),
                ),
            )
            keep += older[: MAX_IPS - len(keep)]
            dropped = len(cur) - len(keep)
            for ip in list(cur):
                if ip not in keep:
                    del cur[ip]
        self._prune(key)
        self._check_change(before, change)
        assert (change.keys[key].capped if key in change.keys else 0) == dropped

    @rule(key=st.sampled_from(KEYS))
    def fail(self, key: str) -> None:
        """A lookup for a key fails."""
        before = self._snapshot()
        change = self.cache.fail(self.now, key)
        cur = self.model.get(key, {})
        for ip in list(cur):
            exp = cur[ip].deadline + STALE
            if exp <= self.now:
                del cur[ip]
            else:
                cur[ip].expires = exp
        self._prune(key)
        self._check_change(before, change)

    @rule()
    def expire(self) -> None:
        """Expired IPs are removed."""
        before = self._snapshot()
        change = self.cache.expire(self.now)
        for key in list(self.model):
            for ip in list(self.model[key]):
                if self.model[key][ip].expires <= self.now:
                    del self.model[key][ip]
            self._prune(key)
        self._check_change(before, change)

    @rule(key=st.sampled_from(KEYS))
    def forget(self, key: str) -> None:
        """A key is forgotten."""
        before = self._snapshot()
        change = self.cache.forget(key)
        self.model.pop(key, None)
        self._check_change(before, change)

    @rule(
        key=st.sampled_from(KEYS),
        ip=st.sampled_from(POOL),
        remaining=st.integers(min_value=-10, max_value=500),
    )
    def adopt(self, key: str, ip: IPAddress, remaining: int) -> None:
        """An element found in the kernel is adopted."""
        before = self._snapshot()
        change = self.cache.adopt(self.now, key, ip, self.now + remaining)
        exp = self.now + min(remaining, MAX_TTL + STALE)
        cur = self.model.get(key, {})
        if exp > self.now and (ip not in cur or cur[ip].expires < exp):
            self.model.setdefault(key, {})[ip] = ModelEntry(max(self.now, exp - GRACE), exp, 0, 0)
        self._check_change(before, change)

    @invariant()
    def same_entries(self) -> None:
        """The cache holds exactly the model's IPs with the same deadlines and expiries."""
        got = {
            (k, ip): (e.deadline, e.expires)
            for k in self.cache.sources()
            for ip, e in self.cache.entries(k).items()
        }
        assert got == self._snapshot()
        assert len(self.cache) == len(got)

    @invariant()
    def holders_consistent(self) -> None:
        """holders(ip) names exactly the keys holding ip."""
        for ip in POOL:
            want = {k for k, ips in self.model.items() if ip in ips}
            assert set(self.cache.holders(ip)) == want

    @invariant()
    def latest_is_holders_latest_first(self) -> None:
        """latest(ip) gives every holder once with its expiry, the latest first."""
        for ip in POOL:
            want = {k: ips[ip].expires for k, ips in self.model.items() if ip in ips}
            got = list(self.cache.latest(ip))
            assert dict(got) == want and len(got) == len(want)
            assert [e for _, e in got] == sorted(want.values(), reverse=True)

    @invariant()
    def next_expiry_is_min(self) -> None:
        """next_expiry is the earliest expiry held."""
        exps = [e.expires for ips in self.model.values() for e in ips.values()]
        assert self.cache.next_expiry() == (min(exps) if exps else None)

    @invariant()
    def cap_respected(self) -> None:
        """No key holds more than max_ips answered IPs (adoption may exceed it)."""
        for ips in self.model.values():
            answered = [e for e in ips.values() if e.answer]
            assert len(answered) <= MAX_IPS


TestCacheMachine = CacheMachine.TestCase
TestCacheMachine.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)


@given(st.integers(min_value=0, max_value=10**6), st.integers(min_value=0, max_value=10**6))
def test_effective_ttl_bounds(ttl: int, now: int) -> None:
    """effective_ttl is always within [min_ttl, max_ttl]."""
    c = _cache()
    assert 5 <= c.effective_ttl(ttl) <= 3600
    c.update(float(now), "k", [A], ttl)
    e = c.entries("k")[A]
    assert e.expires - e.deadline == 30


def test_hold_extends_expiry_up_to_stale_only() -> None:
    """hold keeps IPs until the given time, but never past deadline + stale, never shorter."""
    cache: DnsCache[str] = DnsCache(min_ttl=1, max_ttl=100, grace=1, stale=10, max_ips=8)
    ip = ipaddress.ip_address("192.0.2.1")
    cache.update(0.0, "k", [ip], ttl=5)  # deadline 5, expires 6
    change = cache.hold(4.0, "k", 9.0)
    assert change.keys["k"].updated == {ip: 9.0}
    assert cache.expiry("k", ip) == 9.0
    assert not cache.hold(4.0, "k", 8.0)  # never shortens
    cache.hold(4.0, "k", 100.0)
    assert cache.expiry("k", ip) == 15.0  # capped at deadline + stale
    assert not cache.hold(4.0, "other", 50.0)
