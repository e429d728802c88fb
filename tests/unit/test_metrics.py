"""Unit tests of fenced.ops.metrics: values move, own registry, events, promtool-clean output."""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import subprocess

import pytest
from prometheus_client import REGISTRY

from fenced import __version__
from fenced.core.cache import CacheEntry
from fenced.core.events import (
    AddressDropped,
    CgroupsWritten,
    ConfigLoaded,
    GatewayLost,
    GatewayQuery,
    LookupDone,
    LookupStarted,
    NameCapped,
    SetsWritten,
    TableRepaired,
)
from fenced.core.model import Config, DaemonConfig, IPAddress, Policy, PortSpec, Target
from fenced.core.ruleset import install, layout
from fenced.dns.answers import Answer
from fenced.dns.refresher import FakeClock, Learned, NameStatus, Refresher, refresh_inputs
from fenced.dns.resolver import FakeResolver
from fenced.kernel.firewall import FakeFirewall
from fenced.ops.metrics import Metrics, policy_counts

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


def test_observe_counts_each_event() -> None:
    """Metrics.observe turns every kind of engine event into its series."""
    m = Metrics()
    for event in (
        LookupStarted("a.test", 0.25),
        LookupDone("a.test", "ok", 0.05),
        LookupDone("b.test", "timeout", 2.0),
        NameCapped("a.test", 3),
        AddressDropped("a.test", PRIV, set="s4"),
        AddressDropped("a.test", PRIV, policy="web"),
        SetsWritten("ok", 4, 0.002),
        SetsWritten("error", 9, 0.02),
        GatewayQuery("web", "allowed", 0.003),
        GatewayLost("web", 5),
        ConfigLoaded(True, 1_700_000_000.0, initial=True),
        ConfigLoaded(False, 1_700_000_100.0),
        TableRepaired(),
        CgroupsWritten(),
    ):
        m.observe(event)
    assert _value(m, "fenced_refresh_lag_seconds_sum") == 0.25
    assert _value(m, "fenced_dns_queries_total", result="ok") == 1
    assert _value(m, "fenced_dns_queries_total", result="timeout") == 1
    assert _value(m, "fenced_dns_query_duration_seconds_sum") == pytest.approx(2.05)
    assert _value(m, "fenced_names_capped_total") == 1
    assert _value(m, "fenced_private_addresses_dropped_total") == 2
    assert _value(m, "fenced_set_updates_total", result="ok") == 1
    assert _value(m, "fenced_set_updates_total", result="error") == 1
    assert _value(m, "fenced_set_update_duration_seconds_count") == 2
    assert _value(m, "fenced_set_elements_written_total") == 4  # failed writes wrote none
    assert _value(m, "fenced_gateway_queries_total", policy="web", result="allowed") == 1
    assert _value(m, "fenced_gateway_queries_total", policy="web", result="dropped") == 5
    assert _value(m, "fenced_gateway_latency_seconds_count") == 1  # lost queries: no time
    assert _value(m, "fenced_config_reloads_total", result="ok") == 0  # start-up load
    assert _value(m, "fenced_config_reloads_total", result="error") == 1
    assert _value(m, "fenced_config_last_reload_successful") == 0
    assert _value(m, "fenced_config_last_reload_success_timestamp_seconds") == 1_700_000_000.0
    assert _value(m, "fenced_table_repairs_total") == 1
    assert _value(m, "fenced_cgroup_updates_total") == 1


def test_forget_policies_drops_gateway_queries() -> None:
    """A policy no longer configured loses its fenced_gateway_queries_total series too."""
    m = Metrics()
    m.gateway_query("web", "allowed", 0.001)
    m.gateway_lost("web", 2)
    m.gateway_query("api", "denied", 0.001)
    m.forget_policies(["api"])
    assert _value(m, "fenced_gateway_queries_total", policy="web", result="allowed") is None
    assert _value(m, "fenced_gateway_queries_total", policy="web", result="dropped") is None
    assert _value(m, "fenced_gateway_queries_total", policy="api", result="denied") == 1
    assert _value(m, "fenced_gateway_latency_seconds_count") == 2
    m.gateway_query("web", "allowed", 0.001)  # back again: counts from 0
    assert _value(m, "fenced_gateway_queries_total", policy="web", result="allowed") == 1


async def test_refresher_feeds_metrics() -> None:
    """A refresher observed by Metrics moves lookups (with durations), writes and lag."""
    clock = FakeClock()
    m = Metrics()
    policy = Policy("web", uids=(1000,), outbound=(_target("a.test"),), dns="direct")
    cfg = _config(policy)
    lay = layout(cfg)
    fake = FakeFirewall()
    await fake.install(install(cfg, lay))
    dns = FakeResolver(clock.sleep)
    dns.script("a.test", Answer.ok([A, V6], 60))
    dns.delay("a.test", 0.5)
    ref = Refresher(fake, dns, clock=clock, rng=random.Random(1), observe=m.observe)
    await ref.start(cfg.daemon, refresh_inputs(cfg, lay))
    try:
        await clock.advance(62.5)
        m.update_policies(cfg, ref.status())
    finally:
        await ref.stop()
    assert _value(m, "fenced_dns_queries_total", result="ok") == 2
    assert _value(m, "fenced_dns_query_duration_seconds_sum") == pytest.approx(1.0)
    assert _value(m, "fenced_refresh_lag_seconds_count") == 2
    writes = _value(m, "fenced_set_updates_total", result="ok") or 0
    assert writes >= 2
    assert _value(m, "fenced_set_update_duration_seconds_count") == writes
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
