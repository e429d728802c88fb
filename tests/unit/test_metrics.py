"""Unit tests of fenced.ops.metrics: values move, own registry, adapters, promtool-clean output."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import random
import shutil
import subprocess

import pytest
from prometheus_client import REGISTRY

from fenced import __version__
from fenced.core.cache import CacheEntry
from fenced.core.elements import Element, SetOp, ipv4_key
from fenced.core.model import Config, DaemonConfig, IPAddress, Policy, PortSpec, Target
from fenced.core.ruleset import layout, script
from fenced.dns.answers import Answer
from fenced.dns.refresher import FakeClock, Learned, NameStatus, Refresher, refresh_inputs
from fenced.dns.resolver import FakeResolver
from fenced.errors import FirewallError
from fenced.kernel.firewall import FakeFirewall
from fenced.ops.metrics import Metrics, MetricsStats, TimedFirewall, TimedResolver, policy_counts

A = ipaddress.IPv4Address("192.0.2.1")
B = ipaddress.ip_address("192.0.2.2")
V6 = ipaddress.ip_address("2001:db8::1")
PRIV = ipaddress.ip_address("10.0.0.1")
TCP443 = PortSpec(("tcp",), ())


def _value(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def _target(domain: str) -> Target:
    return Target(domain, TCP443, domain=domain)


def _config(*policies: Policy) -> Config:
    return Config(DaemonConfig(), policies)


def _names(entries: dict[str, tuple[IPAddress, ...]]) -> dict[str, NameStatus]:
    return {
        name: NameStatus(
            name, None, False, "ok", "", 1.0, {ip: CacheEntry(10.0, 40.0, 1.0) for ip in ips}
        )
        for name, ips in entries.items()
    }


class StepClock:
    """A perf_counter stand-in that moves ``step`` seconds per reading."""

    def __init__(self, step: float) -> None:
        self.t = 0.0
        self.step = step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


def test_own_registry_not_global() -> None:
    """Metrics registers nothing globally, and two instances can coexist."""
    before = {f.name for f in REGISTRY.collect()}
    first, second = Metrics(), Metrics()
    first.dns_query("ok", 0.01)
    assert {f.name for f in REGISTRY.collect()} == before
    assert not any(name.startswith("fenced_") for name in before)
    assert REGISTRY.get_sample_value("fenced_dns_queries_total", {"result": "ok"}) is None
    assert _value(first, "fenced_dns_queries_total", result="ok") == 1
    assert _value(second, "fenced_dns_queries_total", result="ok") == 0


def test_results_start_at_zero() -> None:
    """Known result labels exist from the start, so rate() works from the first scrape."""
    m = Metrics()
    for result in ("ok", "nxdomain", "nodata", "servfail", "timeout", "error"):
        assert _value(m, "fenced_dns_queries_total", result=result) == 0
    for result in ("ok", "error"):
        assert _value(m, "fenced_set_updates_total", result=result) == 0
        assert _value(m, "fenced_config_reloads_total", result=result) == 0
    assert _value(m, "fenced_build_info", version=__version__) == 1


def test_event_methods_move_values() -> None:
    """Each event method moves exactly its metric."""
    m = Metrics()
    m.dns_query("servfail", 0.2)
    m.dns_query("ok", 0.01)
    m.set_update("ok", 0.003)
    m.set_update("error", 0.5)
    m.elements_written(7)
    m.refresh_lag(1.5)
    m.table_repair()
    m.cgroup_update()
    m.name_capped()
    m.address_filtered()
    m.counter_read_failed()
    m.gateway_query("web", "ok", 0.02)
    assert _value(m, "fenced_dns_queries_total", result="servfail") == 1
    assert _value(m, "fenced_dns_query_duration_seconds_count") == 2
    assert _value(m, "fenced_dns_query_duration_seconds_sum") == pytest.approx(0.21)
    assert _value(m, "fenced_dns_query_duration_seconds_bucket", le="0.01") == 1
    assert _value(m, "fenced_set_updates_total", result="error") == 1
    assert _value(m, "fenced_set_update_duration_seconds_count") == 2
    assert _value(m, "fenced_set_elements_written_total") == 7
    assert _value(m, "fenced_refresh_lag_seconds_sum") == 1.5
    assert _value(m, "fenced_refresh_lag_seconds_bucket", le="1.0") == 0
    assert _value(m, "fenced_table_repairs_total") == 1
    assert _value(m, "fenced_cgroup_updates_total") == 1
    assert _value(m, "fenced_names_capped_total") == 1
    assert _value(m, "fenced_private_addresses_dropped_total") == 1
    assert _value(m, "fenced_denied_read_failures_total") == 1
    assert _value(m, "fenced_gateway_queries_total", policy="web", result="ok") == 1
    assert _value(m, "fenced_gateway_latency_seconds_count") == 1


def test_reload_gauges_and_counter() -> None:
    """The initial load sets the gauges only; reloads count and keep the last success time."""
    m = Metrics()
    m.reload(True, 1000.0, initial=True)
    assert _value(m, "fenced_config_reloads_total", result="ok") == 0
    assert _value(m, "fenced_config_last_reload_successful") == 1
    assert _value(m, "fenced_config_last_reload_success_timestamp_seconds") == 1000
    m.reload(False, 2000.0)
    assert _value(m, "fenced_config_reloads_total", result="error") == 1
    assert _value(m, "fenced_config_last_reload_successful") == 0
    assert _value(m, "fenced_config_last_reload_success_timestamp_seconds") == 1000
    m.reload(True, 3000.0)
    assert _value(m, "fenced_config_reloads_total", result="ok") == 1
    assert _value(m, "fenced_config_last_reload_successful") == 1
    assert _value(m, "fenced_config_last_reload_success_timestamp_seconds") == 3000


def test_update_denied_from_named_counters() -> None:
    """Denials come from denied_<policy>_<dir>; gone policies vanish, missing ones keep."""
    m = Metrics()
    m.update_denied(
        ["web", "db_x"], {"denied_web_out": 5, "denied_web_in": 2, "denied_db_x_out": 1}
    )
    assert _value(m, "fenced_denied_packets_total", policy="web", direction="out") == 5
    assert _value(m, "fenced_denied_packets_total", policy="web", direction="in") == 2
    assert _value(m, "fenced_denied_packets_total", policy="db_x", direction="out") == 1
    assert _value(m, "fenced_denied_packets_total", policy="db_x", direction="in") is None
    m.update_denied(["web"], {"denied_web_out": 9})
    assert _value(m, "fenced_denied_packets_total", policy="web", direction="out") == 9
    assert _value(m, "fenced_denied_packets_total", policy="web", direction="in") == 2
    assert _value(m, "fenced_denied_packets_total", policy="db_x", direction="out") is None
    m.set_denied("api", "in", 3)
    assert _value(m, "fenced_denied_packets_total", policy="api", direction="in") == 3


def test_update_policies_counts_set_addresses() -> None:
    """Domains per policy; addresses per family, shared ones once, private only if allowed."""
    web = Policy("web", uids=(1000,), outbound=(_target("a.test"), _target("b.test")))
    lab = Policy("lab", uids=(1001,), outbound=(_target("b.test"),), allow_private=True)
    names = _names({"a.test": (A, B, V6), "b.test": (B, PRIV)})
    assert policy_counts(_config(web, lab), names) == [
        ("web", 2, {4: 2, 6: 1}),
        ("lab", 1, {4: 2, 6: 0}),
    ]
    m = Metrics()
    m.update_policies(_config(web, lab), names)
    assert _value(m, "fenced_domains", policy="web") == 2
    assert _value(m, "fenced_allowed_ips", policy="web", family="ipv4") == 2
    assert _value(m, "fenced_allowed_ips", policy="web", family="ipv6") == 1
    assert _value(m, "fenced_allowed_ips", policy="lab", family="ipv4") == 2
    m.set_denied("lab", "out", 4)
    m.update_policies(_config(web), names)
    assert _value(m, "fenced_domains", policy="lab") is None
    assert _value(m, "fenced_allowed_ips", policy="lab", family="ipv4") is None
    assert _value(m, "fenced_denied_packets_total", policy="lab", direction="out") is None
    assert _value(m, "fenced_domains", policy="web") == 2


def test_allowed_ips_count_gateway_learned_names() -> None:
    """Addresses a policy's gateway learned count in fenced_allowed_ips, wildcard-only too."""
    web = Policy("web", uids=(1000,), outbound=(_target("a.test"),))
    edge = Policy("edge", uids=(1001,), outbound=(_target("*.cdn.test"),))
    entry = CacheEntry(10.0, 40.0, 1.0)
    learned = {
        Learned("web", "a.test"): {B: entry},  # the gateway's answer for an exact name
        Learned("edge", "x.cdn.test"): {A: entry, V6: entry},
        Learned("edge", "y.cdn.test"): {A: entry, PRIV: entry},  # private: not in the set
        Learned("gone", "z.test"): {B: entry},
    }
    names = _names({"a.test": (A,)})
    assert policy_counts(_config(web, edge), names, learned) == [
        ("web", 1, {4: 2, 6: 0}),
        ("edge", 0, {4: 1, 6: 1}),
    ]
    m = Metrics()
    m.update_policies(_config(web, edge), names, learned)
    assert _value(m, "fenced_allowed_ips", policy="edge", family="ipv4") == 1
    assert _value(m, "fenced_allowed_ips", policy="edge", family="ipv6") == 1
    assert _value(m, "fenced_allowed_ips", policy="web", family="ipv4") == 2


def test_family_label_rejects_unknown_family() -> None:
    """set_allowed_ips takes IP version 4 or 6 only."""
    with pytest.raises(ValueError, match="no IP family 5"):
        Metrics().set_allowed_ips("web", 5, 1)


def test_render_has_no_created_series() -> None:
    """render() drops prometheus-client's _created samples and keeps the rest."""
    m = Metrics()
    m.dns_query("ok", 0.01)
    text = m.render().decode()
    assert "_created" not in text
    assert 'fenced_dns_queries_total{result="ok"} 1.0' in text
    assert "# TYPE fenced_dns_query_duration_seconds histogram" in text


async def test_metrics_stats_adapter() -> None:
    """MetricsStats keeps Stats' counters and feeds lag, caps, filtered, elements."""
    m = Metrics()
    stats = MetricsStats(m)
    stats.refresh_lag(0.25)
    stats.capped_name("a.test", 3)
    stats.filtered_address("a.test", PRIV, "s4")
    stats.write_result("ok", 4)
    stats.write_result("error", 9)
    stats.dns_result("a.test", "ok")
    assert (stats.lag_count, stats.capped, stats.filtered, stats.elements) == (1, 1, 1, 4)
    assert stats.writes == {"ok": 1, "error": 1}
    assert _value(m, "fenced_refresh_lag_seconds_count") == 1
    assert _value(m, "fenced_names_capped_total") == 1
    assert _value(m, "fenced_private_addresses_dropped_total") == 1
    assert _value(m, "fenced_set_elements_written_total") == 4
    # lookups and transactions are the wrappers' to count, not the adapter's
    assert _value(m, "fenced_dns_queries_total", result="ok") == 0
    assert _value(m, "fenced_set_updates_total", result="ok") == 0


async def test_timed_resolver_counts_status_and_duration() -> None:
    """TimedResolver records each answer's status and time; a raising resolver is 'error'."""
    m = Metrics()
    fake = FakeResolver()
    fake.script("a.test", Answer.ok([A], 60))
    fake.script("boom.test", RuntimeError("bug"))
    timed = TimedResolver(fake, m, clock=StepClock(0.05))
    assert (await timed.resolve("a.test")).status == "ok"
    assert (await timed.resolve("gone.test")).status == "nxdomain"
    with pytest.raises(RuntimeError):
        await timed.resolve("boom.test")
    assert _value(m, "fenced_dns_queries_total", result="ok") == 1
    assert _value(m, "fenced_dns_queries_total", result="nxdomain") == 1
    assert _value(m, "fenced_dns_queries_total", result="error") == 1
    assert _value(m, "fenced_dns_query_duration_seconds_count") == 3
    assert _value(m, "fenced_dns_query_duration_seconds_sum") == pytest.approx(0.15)


async def test_timed_resolver_closes_inner_after_lookups_in_flight() -> None:
    """TimedResolver.close closes the wrapped resolver at once, or when its last lookup ends."""
    gate = asyncio.Event()

    async def wait(_seconds: float) -> None:
        await gate.wait()

    fake = FakeResolver(wait)
    fake.delay("slow.test", 1.0)
    timed = TimedResolver(fake, Metrics())
    await timed.close()
    assert fake.closed == 1
    lookup = asyncio.create_task(timed.resolve("slow.test"))
    await asyncio.sleep(0)
    await timed.close()
    assert fake.closed == 1  # a lookup is still running on it
    gate.set()
    assert (await lookup).status == "nxdomain"
    assert fake.closed == 2


async def test_timed_firewall_counts_applies() -> None:
    """TimedFirewall counts non-empty applies by result and passes everything through."""
    m = Metrics()
    fake = FakeFirewall()
    await fake.install("add table inet t\ntable inet t {\n\tset s {\n\t}\n}\n")
    fw = TimedFirewall(fake, m, clock=StepClock(0.001))
    op = SetOp("add", "inet", "t", "s", (Element(ipv4_key(A), timeout_ms=1000),))
    await fw.apply([])
    await fw.apply([op])
    fake.fail_next = FirewallError("apply", "refused")
    with pytest.raises(FirewallError):
        await fw.apply([op])
    assert _value(m, "fenced_set_updates_total", result="ok") == 1
    assert _value(m, "fenced_set_updates_total", result="error") == 1
    assert _value(m, "fenced_set_update_duration_seconds_count") == 2
    assert len(await fw.dump("t", "s")) == 1
    assert (await fw.existing("t")) is not None
    assert await fw.counters("t") == {}
    await fw.delete_table("t")
    assert fake.tables == {}


async def test_refresher_feeds_metrics_through_adapters() -> None:
    """A refresher built with MetricsStats and the wrappers moves lookups, writes and lag."""
    clock = FakeClock()
    m = Metrics()
    policy = Policy("web", uids=(1000,), outbound=(_target("a.test"),), dns="direct")
    cfg = _config(policy)
    lay = layout(cfg)
    fake = FakeFirewall()
    await fake.install(script(cfg, lay))
    dns = FakeResolver(clock.sleep)
    dns.script("a.test", Answer.ok([A, V6], 60))
    ref = Refresher(
        TimedFirewall(fake, m),
        TimedResolver(dns, m),
        clock=clock,
        rng=random.Random(1),
        stats=MetricsStats(m),
    )
    await ref.start(cfg.daemon, refresh_inputs(cfg, lay))
    try:
        await clock.advance(61.5)
        m.update_policies(cfg, ref.status())
    finally:
        await ref.stop()
    assert _value(m, "fenced_dns_queries_total", result="ok") == 2
    assert _value(m, "fenced_refresh_lag_seconds_count") == 2
    assert (_value(m, "fenced_set_updates_total", result="ok") or 0) >= 2
    assert (_value(m, "fenced_set_elements_written_total") or 0) >= 2
    assert _value(m, "fenced_allowed_ips", policy="web", family="ipv4") == 1
    assert _value(m, "fenced_allowed_ips", policy="web", family="ipv6") == 1


def populated() -> Metrics:
    """A Metrics with a value in every metric, labelled ones included."""
    m = Metrics()
    m.dns_query("ok", 0.01)
    m.dns_query("timeout", 2.0)
    m.set_update("ok", 0.002)
    m.set_update("error", 0.02)
    m.elements_written(3)
    m.refresh_lag(0.4)
    m.reload(True, 1_700_000_000.0)
    m.reload(False, 1_700_000_100.0)
    m.update_denied(["web", "api"], {"denied_web_out": 12, "denied_web_in": 1, "denied_api_out": 0})
    m.set_domains("web", 2)
    m.set_allowed_ips("web", 4, 3)
    m.set_allowed_ips("web", 6, 1)
    m.table_repair()
    m.cgroup_update()
    m.name_capped()
    m.address_filtered()
    m.counter_read_failed()
    m.gateway_query("web", "ok", 0.003)
    return m


def test_promtool_check_metrics() -> None:
    """A populated registry passes `promtool check metrics` (naming, types, units)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing under CI (apt-get install prometheus)")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    text = populated().render()
    proc = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, timeout=60, check=False
    )
    report = (proc.stdout + proc.stderr).decode()
    assert proc.returncode == 0, report
    assert report.strip() == "", report
