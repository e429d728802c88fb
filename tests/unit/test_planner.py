"""Unit tests of the set-write planner (fenced.core.planner)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import pytest

from fenced.core.cache import DnsCache
from fenced.core.elements import DumpedElement, SetOp, ipv4_key, ipv6_key
from fenced.core.model import is_restricted
from fenced.core.planner import Plan, Planner, SetTarget, timeout_ms

A = ipaddress.IPv4Address("192.0.2.1")
B = ipaddress.IPv4Address("192.0.2.2")
V6 = ipaddress.IPv6Address("2001:db8::1")
PRIV = ipaddress.IPv4Address("10.1.2.3")

S4 = SetTarget("s4", 4)
S6 = SetTarget("s6", 6)
P4 = SetTarget("p4", 4, allow_private=True)


class Rig:
    """A cache, a key->sets mapping and a planner over them."""

    def __init__(self, mapping: dict[str, tuple[SetTarget, ...]] | None = None) -> None:
        self.cache: DnsCache[str] = DnsCache(
            min_ttl=5, max_ttl=3600, grace=30, stale=300, max_ips=64
        )
        self.mapping = mapping or {"a": (S4, S6), "b": (S4,)}
        self.planner: Planner[str] = Planner("fenced", self.cache, self.sets_for)
        sets = {t for ts in self.mapping.values() for t in ts}
        self.planner.set_sets(sets, fresh=[t.name for t in sets])

    def sets_for(self, key: str) -> Sequence[SetTarget]:
        """The mapping as a function."""
        return self.mapping.get(key, ())


def _ops(plan: Plan[str]) -> list[tuple[str, str, list[tuple[bytes, int | None]]]]:
    return [(op.action, op.set, [(e.key, e.timeout_ms) for e in op.elements]) for op in plan.ops]


def test_new_ips_are_added_with_timeouts() -> None:
    """New IPs are added to the sets of their family with ceil(ms) timeouts."""
    r = Rig()
    ch = r.cache.update(100.0, "a", [A, V6], 60)
    plan = r.planner.plan(100.0, ch)
    assert _ops(plan) == [
        ("add", "s4", [(ipv4_key(A), 90_000)]),
        ("add", "s6", [(ipv6_key(V6), 90_000)]),
    ]
    assert all(op.table == "fenced" and op.family == "inet" for op in plan.ops)
    r.planner.commit(plan)
    assert r.planner.mirror() == {"s4": {A: 190.0}, "s6": {V6: 190.0}}
    assert r.planner.plan(101.0).ops == ()


def test_later_expiry_is_refreshed() -> None:
    """A re-resolution that moves an IP's expiry later rewrites its timeout."""
    r = Rig()
    r.planner.commit(r.planner.plan(0.0, r.cache.update(0.0, "b", [A], 60)))
    plan = r.planner.plan(60.0, r.cache.update(60.0, "b", [A], 60))
    assert _ops(plan) == [("refresh", "s4", [(ipv4_key(A), 90_000)])]


def test_expiry_is_not_written_again() -> None:
    """Nothing is written for IPs that simply time out; the mirror forgets them later."""
    r = Rig()
    r.planner.commit(r.planner.plan(0.0, r.cache.update(0.0, "b", [A], 60)))
    plan = r.planner.plan(90.0, r.cache.expire(90.0))
    assert plan.ops == ()
    r.planner.commit(plan)
    r.planner.expire(94.0)
    assert r.planner.mirror() == {"s4": {A: 90.0}}  # may linger in the kernel
    r.planner.expire(95.0)
    assert r.planner.mirror() == {}


def test_readd_after_expiry_uses_refresh() -> None:
    """An IP written again just after it timed out is refreshed (the kernel may hold it)."""
    r = Rig()
    r.planner.commit(r.planner.plan(0.0, r.cache.update(0.0, "b", [A], 60)))
    r.planner.commit(r.planner.plan(90.0, r.cache.expire(90.0)))
    plan = r.planner.plan(91.0, r.cache.update(91.0, "b", [A], 60))
    assert [op.action for op in plan.ops] == ["refresh"]
    r.planner.commit(plan)
    r.planner.commit(r.planner.plan(500.0, r.cache.expire(500.0)))
    r.planner.expire(500.0)
    plan = r.planner.plan(500.0, r.cache.update(500.0, "b", [A], 60))
    assert [op.action for op in plan.ops] == ["add"]


def test_shared_ip_stays_while_any_key_holds_it() -> None:
    """An IP two keys share keeps the latest expiry and is not deleted when one key leaves."""
    r = Rig()
    r.planner.commit(r.planner.plan(0.0, r.cache.update(0.0, "a", [A], 100)))
    plan = r.planner.plan(0.0, r.cache.update(0.0, "b", [A], 60))
    assert plan.ops == ()  # a's expiry (130) is later than b's (90)
    r.planner.commit(plan)
    plan = r.planner.plan(10.0, r.cache.forget("a"))
    assert _ops(plan) == [("refresh", "s4", [(ipv4_key(A), 80_000)])]  # moved earlier, stays
    r.planner.commit(plan)
    plan = r.planner.plan(20.0, r.cache.forget("b"))
    assert _ops(plan) == [("delete", "s4", [(ipv4_key(A), None)])]
    r.planner.commit(plan)
    assert r.planner.mirror() == {}


def test_about_to_expire_is_not_deleted() -> None:
    """An element that times out within the slack is left to the kernel, not deleted."""
    r = Rig()
    r.planner.commit(r.planner.plan(0.0, r.cache.update(0.0, "b", [A], 60)))
    assert r.planner.plan(89.5, r.cache.forget("b")).ops == ()


def test_failed_write_is_planned_again() -> None:
    """Without commit the mirror is unchanged and the next plan repeats the writes."""
    r = Rig()
    first = r.planner.plan(0.0, r.cache.update(0.0, "b", [A], 60))
    assert r.planner.dirty == 1
    again = r.planner.plan(1.0)
    assert _ops(again) == [("add", "s4", [(ipv4_key(A), 89_000)])]
    r.planner.commit(again)
    assert r.planner.dirty == 0
    with pytest.raises(ValueError):
        r.planner.commit(first)


def test_pairs_marked_after_plan_stay_dirty() -> None:
    """A pair changed between plan and commit is planned again after the commit."""
    r = Rig()
    plan = r.planner.plan(0.0, r.cache.update(0.0, "b", [A], 60))
    later = r.cache.update(10.0, "b", [A], 60)
    r.planner.commit(plan)
    assert _ops(r.planner.plan(10.0, later)) == [("refresh", "s4", [(ipv4_key(A), 90_000)])]


def test_private_addresses_only_in_allowing_sets() -> None:
    """Restricted addresses go only into sets whose policy allows private addresses."""
    r = Rig({"a": (S4, P4)})
    plan = r.planner.plan(0.0, r.cache.update(0.0, "a", [A, PRIV], 60))
    assert _ops(plan) == [
        ("add", "p4", [(ipv4_key(PRIV), 90_000), (ipv4_key(A), 90_000)]),
        ("add", "s4", [(ipv4_key(A), 90_000)]),
    ]
    assert [(f.key, f.ip, f.set) for f in plan.filtered] == [("a", PRIV, "s4")]


def test_set_sets_moves_ips_and_drops_removed_sets() -> None:
    """After a reload a key's IPs move to its new sets; mirrors of deleted sets are dropped."""
    r = Rig()
    r.planner.commit(r.planner.plan(0.0, r.cache.update(0.0, "b", [A], 60)))
    t4 = SetTarget("t4", 4)
    r.mapping = {"b": (t4,)}
    r.planner.set_sets([S4, t4], fresh=["t4"])
    plan = r.planner.plan(1.0)
    assert _ops(plan) == [
        ("delete", "s4", [(ipv4_key(A), None)]),
        ("add", "t4", [(ipv4_key(A), 89_000)]),
    ]
    r.planner.commit(plan)
    r.planner.set_sets([t4])
    assert r.planner.mirror() == {"t4": {A: 90.0}}


def test_unknown_set_gets_refresh() -> None:
    """In a set whose content is unknown (not dumped, not fresh) writes use refresh."""
    r = Rig()
    r.planner.set_sets([S4, S6])  # a reload without ``fresh`` keeps what was known
    plan = r.planner.plan(0.0, r.cache.update(0.0, "b", [A], 60))
    assert [op.action for op in plan.ops] == ["add"]
    r.mapping = {"b": (SetTarget("u4", 4),)}
    r.planner.set_sets([SetTarget("u4", 4)])
    plan = r.planner.plan(0.0)
    assert [(op.action, op.set) for op in plan.ops] == [("refresh", "u4")]


def test_reconcile_fixes_kernel_state() -> None:
    """Reconcile deletes unwanted and permanent elements, adds missing, fixes timeouts."""
    r = Rig()
    r.cache.update(0.0, "b", [A, B], 60)  # both wanted until 90
    stray = ipaddress.IPv4Address("203.0.113.9")
    perm = ipaddress.IPv4Address("203.0.113.10")
    dumped = {
        "s4": [
            DumpedElement(ipv4_key(A), 90_000, 90_000),  # right
            DumpedElement(ipv4_key(stray), 50_000, 50_000),  # not wanted
            DumpedElement(ipv4_key(perm), None, None),  # never expires, not wanted
        ],
        "s6": [DumpedElement(ipv6_key(V6), 10_000, 10_000)],
        "gone": [DumpedElement(ipv4_key(A), 1, 1)],
    }
    plan = r.planner.reconcile(0.0, dumped)
    assert _ops(plan) == [
        ("delete", "s4", [(ipv4_key(stray), None), (ipv4_key(perm), None)]),
        ("delete", "s6", [(ipv6_key(V6), None)]),
        ("add", "s4", [(ipv4_key(B), 90_000)]),
    ]
    r.planner.commit(plan)
    assert r.planner.mirror() == {"s4": {A: 90.0, B: 90.0}}


def test_reconcile_shortens_too_long_timeouts() -> None:
    """A kernel timeout longer than wanted is rewritten (moved earlier)."""
    r = Rig()
    r.cache.update(0.0, "b", [A], 60)
    plan = r.planner.reconcile(0.0, {"s4": [DumpedElement(ipv4_key(A), 999_000, 999_000)]})
    assert _ops(plan) == [("refresh", "s4", [(ipv4_key(A), 90_000)])]


def test_timeout_ms_rounds_up_and_bounds() -> None:
    """timeout_ms rounds up, is at least 1 and at most 2^44-1."""
    assert timeout_ms(0.0, 1.0001) == 1001
    assert timeout_ms(5.0, 5.0) == 1
    assert timeout_ms(0.0, 1e30) == (1 << 44) - 1


@pytest.mark.parametrize(
    ("text", "restricted"),
    [
        ("10.0.0.1", True),
        ("172.16.5.4", True),
        ("172.32.0.1", False),
        ("192.168.1.1", True),
        ("127.0.0.1", True),
        ("169.254.169.254", True),
        ("100.64.0.1", True),
        ("100.128.0.1", False),
        ("224.0.0.251", True),
        ("239.255.255.250", True),
        ("0.0.0.0", True),
        ("255.255.255.255", True),
        ("192.0.2.1", False),
        ("198.51.100.7", False),
        ("203.0.113.200", False),
        ("8.8.8.8", False),
        ("::1", True),
        ("::", True),
        ("fe80::1", True),
        ("fc00::1", True),
        ("fd00:ec2::254", True),
        ("ff02::1", True),
        ("2001:db8::1", False),
        ("2606:4700::1111", False),
        ("::ffff:10.0.0.1", True),
        ("::ffff:169.254.169.254", True),
        ("::ffff:192.0.2.1", False),
        ("64:ff9b::a00:1", True),
        ("64:ff9b::c000:201", False),
    ],
)
def test_is_restricted(text: str, restricted: bool) -> None:
    """The guard's explicit ranges: private, loopback, link-local, CGNAT, ... not docs."""
    assert is_restricted(ipaddress.ip_address(text)) is restricted


def test_ops_are_setops() -> None:
    """Plans carry netlink SetOps for table fenced, family inet."""
    r = Rig()
    plan = r.planner.plan(0.0, r.cache.update(0.0, "b", [A], 60))
    assert all(isinstance(op, SetOp) for op in plan.ops)
    assert plan.elements == 1


def test_planning_an_ip_shared_by_many_names_does_not_visit_them_all() -> None:
    """An answer for an IP 5,000 live names share is planned without looking at each name."""
    mapping: dict[str, tuple[SetTarget, ...]] = {f"n{i}.cdn.example": (S4,) for i in range(5000)}
    mapping["other"] = (S6,)
    r = Rig(mapping)
    looked: list[str] = []

    def counting(key: str) -> Sequence[SetTarget]:
        looked.append(key)
        return r.sets_for(key)

    r.planner.sets_for = counting
    for i in range(5000):
        r.planner.commit(
            r.planner.plan(float(i), r.cache.update(float(i), f"n{i}.cdn.example", [A], 60))
        )
    looked.clear()
    plan = r.planner.plan(5000.0, r.cache.update(5000.0, "n0.cdn.example", [A], 600))
    assert _ops(plan) == [("refresh", "s4", [(ipv4_key(A), 630_000)])]
    assert len(looked) < 10
    # the latest holder leaves: the next latest one decides, not an older one
    r.cache.forget("n0.cdn.example")
    assert r.planner.wanted(5000.0, "s4", A) == 4999 + 90
    assert r.planner.wanted(5000.0, "s6", A) is None
    r.cache.update(5000.0, "other", [A], 600)
    assert r.planner.wanted(5000.0, "s4", A) == 4999 + 90  # a later holder of another set
