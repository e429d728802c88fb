"""Prometheus metrics of one fenced process, on a registry of its own.

:class:`Metrics` owns a ``CollectorRegistry`` (never prometheus-client's global one, so
two daemons in one process, or tests, never share series) and every metric object. The
engines (refresher, DNS gateways, daemon) report what happens as
:mod:`fenced.core.events` values to one observer, :meth:`Metrics.observe`, which turns
each into its series; the HTTP server calls :meth:`Metrics.render` for ``GET /metrics``.

Values read from the kernel (the ``denied_<policy>_<out|in>`` named counters) are pushed
in with :meth:`Metrics.update_denied` before a scrape renders; gauges about the
configuration and the DNS cache with :meth:`Metrics.update_policies`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import assert_never

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from fenced import __version__
from fenced.core.cache import CacheEntry
from fenced.core.events import (
    AddressDropped,
    CgroupsWritten,
    ConfigLoaded,
    Event,
    GatewayLost,
    GatewayQuery,
    LookupDone,
    LookupStarted,
    NameCapped,
    SetsWritten,
    TableRepaired,
)
from fenced.core.model import Config, IPAddress
from fenced.core.ruleset import Direction, denied_counter
from fenced.dns.refresher import Learned, NameStatus

#: Content type of :meth:`Metrics.render`'s output (the classic text format; every
#: name fenced exports is valid in it, so no escaping scheme needs announcing).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Answer statuses of a lookup (``fenced.dns.answers.Status``), pre-set to 0 so that
#: ``rate()`` works from the first scrape.
DNS_RESULTS = ("ok", "nxdomain", "nodata", "servfail", "timeout", "error")
#: Results of a set transaction or a config reload.
RESULTS = ("ok", "error")
#: Directions of the denial counters.
DIRECTIONS: tuple[Direction, ...] = ("out", "in")

_DNS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_WRITE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_LAG_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0)


def family_label(family: int) -> str:
    """The ``family`` label value for IP version 4 or 6: ``ipv4`` or ``ipv6``."""
    if family not in (4, 6):
        raise ValueError(f"no IP family {family}")
    return f"ipv{family}"


class _DeniedCollector(Collector):
    """Exports the last-read kernel denial counters as ``fenced_denied_packets_total``."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], float] = {}

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        fam = self._family()
        for (policy, direction), value in sorted(self.values.items()):
            fam.add_metric([policy, direction], value)
        return [fam]

    @staticmethod
    def _family() -> CounterMetricFamily:
        return CounterMetricFamily(
            "fenced_denied_packets_total",
            "Packets the table denied, by policy and direction (out: sent by a confined "
            "process, in: sent to one); read from the table's named counters.",
            labels=["policy", "direction"],
        )


class _WithoutCreated(Collector):
    """A view of a registry without the ``_created`` samples prometheus-client adds.

    In the classic text format each becomes one more gauge series per counter and
    histogram series, doubling their number for a value nobody graphs. Filtering here,
    rather than with ``prometheus_client.disable_created_metrics()``, leaves the
    library's global setting (and other registries in the process) alone.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        for metric in self.registry.collect():
            kept = [s for s in metric.samples if not s.name.endswith("_created")]
            if len(kept) != len(metric.samples):
                metric.samples = kept
            yield metric


class Metrics:
    """Every metric fenced exports, on a ``CollectorRegistry`` of its own.

    Methods never raise for ordinary input and do no I/O; call them from the event loop.
    ``version`` goes in ``fenced_build_info``; ``process`` adds prometheus-client's
    ``process_*`` metrics (memory, CPU, open fds; read from /proc at render time).
    """

    def __init__(self, version: str = __version__, *, process: bool = True) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._build_info = Gauge(
            "fenced_build_info",
            "Always 1; the labels say which fenced runs.",
            ["version"],
            registry=r,
        )
        self._build_info.labels(version).set(1)

        self._domains = Gauge(
            "fenced_domains",
            "Domain names a policy lists in its outbound entries.",
            ["policy"],
            registry=r,
        )
        self._allowed_ips = Gauge(
            "fenced_allowed_ips",
            "Addresses of a policy's domains that fenced holds in its sets (resolved by "
            "fenced or learned from the policy's DNS gateway answers), by IP family.",
            ["policy", "family"],
            registry=r,
        )
        self._dns_queries = Counter(
            "fenced_dns_queries_total",
            "DNS lookups (A and AAAA of one name) by outcome.",
            ["result"],
            registry=r,
        )
        self._dns_duration = Histogram(
            "fenced_dns_query_duration_seconds",
            "How long DNS lookups took.",
            buckets=_DNS_BUCKETS,
            registry=r,
        )
        self._set_updates = Counter(
            "fenced_set_updates_total",
            "Transactions writing domain-set elements, by result.",
            ["result"],
            registry=r,
        )
        self._set_duration = Histogram(
            "fenced_set_update_duration_seconds",
            "How long domain-set transactions took.",
            buckets=_WRITE_BUCKETS,
            registry=r,
        )
        self._elements = Counter(
            "fenced_set_elements_written_total",
            "Set elements added, refreshed or deleted by successful transactions.",
            registry=r,
        )
        self._refresh_lag = Histogram(
            "fenced_refresh_lag_seconds",
            "How late lookups started after they were due.",
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self._reloads = Counter(
            "fenced_config_reloads_total",
            "Configuration reloads (SIGHUP), by result.",
            ["result"],
            registry=r,
        )
        self._reload_ok = Gauge(
            "fenced_config_last_reload_successful",
            "1 when the last configuration load (at start or reload) succeeded, else 0.",
            registry=r,
        )
        self._reload_ok_time = Gauge(
            "fenced_config_last_reload_success_timestamp_seconds",
            "When a configuration was last loaded successfully, in Unix time.",
            registry=r,
        )
        self._repairs = Counter(
            "fenced_table_repairs_total",
            "Times fenced found its table changed behind its back and installed it again.",
            registry=r,
        )
        self._cgroup_updates = Counter(
            "fenced_cgroup_updates_total",
            "Transactions writing cgroup ids to the cgroup verdict maps.",
            registry=r,
        )
        self._capped = Counter(
            "fenced_names_capped_total",
            "Answers with more addresses than max_ips_per_name (the newest were kept).",
            registry=r,
        )
        self._filtered = Counter(
            "fenced_private_addresses_dropped_total",
            "Private or special addresses of a domain kept out of a set (first time per "
            "address, domain and set).",
            registry=r,
        )
        self._counter_failures = Counter(
            "fenced_denied_read_failures_total",
            "Scrapes whose read of the denial counters failed or timed out.",
            registry=r,
        )
        self._gateway_queries = Counter(
            "fenced_gateway_queries_total",
            "DNS queries answered by the DNS gateway.",
            ["policy", "result"],
            registry=r,
        )
        self._gateway_latency = Histogram(
            "fenced_gateway_latency_seconds",
            "How long the DNS gateway took to answer.",
            buckets=_DNS_BUCKETS,
            registry=r,
        )
        self._denied = _DeniedCollector()
        r.register(self._denied)
        if process:
            ProcessCollector(registry=r)

        for result in DNS_RESULTS:
            self._dns_queries.labels(result)
        for result in RESULTS:
            self._set_updates.labels(result)
            self._reloads.labels(result)
        self._policy_labels: set[str] = set()
        self._ip_labels: set[tuple[str, str]] = set()
        self._gateway_labels: set[tuple[str, str]] = set()
        self._view = _WithoutCreated(r)

    # ------------------------------------------------------------------ events
    def observe(self, event: Event) -> None:
        """Count ``event`` in its series: the observer the engines report to."""
        match event:
            case LookupStarted():
                self.refresh_lag(event.lag)
            case LookupDone():
                self.dns_query(event.status, event.seconds)
            case SetsWritten():
                self.set_update(event.result, event.seconds)
                if event.result == "ok":
                    self.elements_written(event.elements)
            case NameCapped():
                self.name_capped()
            case AddressDropped():
                self.address_filtered()
            case GatewayQuery():
                self.gateway_query(event.policy, event.result, event.added)
            case GatewayLost():
                self.gateway_lost(event.policy, event.count)
            case ConfigLoaded():
                self.reload(event.ok, event.when, initial=event.initial)
            case TableRepaired():
                self.table_repair()
            case CgroupsWritten():
                self.cgroup_update()
            case _:
                assert_never(event)

    def dns_query(self, result: str, seconds: float | None = None) -> None:
        """One lookup ended with ``result`` (an answer status) after ``seconds``."""
        self._dns_queries.labels(result).inc()
        if seconds is not None:
            self._dns_duration.observe(max(0.0, seconds))

    def set_update(self, result: str, seconds: float | None = None) -> None:
        """One domain-set transaction ended with ``result`` (ok, error) after ``seconds``."""
        self._set_updates.labels(result).inc()
        if seconds is not None:
            self._set_duration.observe(max(0.0, seconds))

    def elements_written(self, elements: int) -> None:
        """``elements`` set elements were written by a successful transaction."""
        if elements > 0:
            self._elements.inc(elements)

    def refresh_lag(self, seconds: float) -> None:
        """A lookup started ``seconds`` after it was due."""
        self._refresh_lag.observe(max(0.0, seconds))

    def reload(self, ok: bool, when: float, *, initial: bool = False) -> None:
        """A configuration load at Unix time ``when`` succeeded (``ok``) or failed.

        ``initial`` marks the load at start-up: it sets the ``last_reload`` gauges but
        does not count in ``fenced_config_reloads_total``.
        """
        if not initial:
            self._reloads.labels("ok" if ok else "error").inc()
        self._reload_ok.set(1 if ok else 0)
        if ok:
            self._reload_ok_time.set(when)

    def table_repair(self) -> None:
        """The table was found changed behind fenced's back and installed again."""
        self._repairs.inc()

    def cgroup_update(self) -> None:
        """One transaction wrote cgroup ids to the verdict maps."""
        self._cgroup_updates.inc()

    def name_capped(self) -> None:
        """An answer had more addresses than ``max_ips_per_name``."""
        self._capped.inc()

    def address_filtered(self) -> None:
        """A private or special address of a domain was kept out of a set."""
        self._filtered.inc()

    def counter_read_failed(self) -> None:
        """Reading the denial counters for a scrape failed or timed out."""
        self._counter_failures.inc()

    def gateway_query(self, policy: str, result: str, seconds: float) -> None:
        """The DNS gateway answered a query of ``policy`` with ``result`` in ``seconds``."""
        self._gateway_queries.labels(policy, result).inc()
        self._gateway_labels.add((policy, result))
        self._gateway_latency.observe(max(0.0, seconds))

    def gateway_lost(self, policy: str, count: int) -> None:
        """The kernel dropped ``count`` queries to ``policy``'s gateway (result ``dropped``)."""
        self._gateway_queries.labels(policy, "dropped").inc(count)
        self._gateway_labels.add((policy, "dropped"))

    # ------------------------------------------------------------------ state
    def set_denied(self, policy: str, direction: str, packets: float) -> None:
        """The kernel counter of ``policy``'s denials in ``direction`` reads ``packets``."""
        self._denied.values[(policy, direction)] = float(packets)

    def update_denied(self, policies: Iterable[str], counters: Mapping[str, int]) -> None:
        """Take denial counts from ``Firewall.counters`` output for exactly ``policies``.

        Policies not listed lose their series; a policy whose counter is missing (the
        table is being replaced) keeps its last value.
        """
        wanted = set(policies)
        for key in [k for k in self._denied.values if k[0] not in wanted]:
            del self._denied.values[key]
        for policy in sorted(wanted):
            for direction in DIRECTIONS:
                value = counters.get(denied_counter(policy, direction))
                if value is not None:
                    self.set_denied(policy, direction, value)

    def set_domains(self, policy: str, n: int) -> None:
        """``policy`` lists ``n`` domain names."""
        self._domains.labels(policy).set(n)
        self._policy_labels.add(policy)

    def set_allowed_ips(self, policy: str, family: int, n: int) -> None:
        """``n`` addresses of IP version ``family`` (4 or 6) are in ``policy``'s sets."""
        label = family_label(family)
        self._allowed_ips.labels(policy, label).set(n)
        self._ip_labels.add((policy, label))

    def forget_policies(self, keep: Iterable[str]) -> None:
        """Drop every per-policy series of policies not in ``keep``.

        Gauges, gateway query counters and denial counters go; the gateway latency
        histogram has no policy label and stays.
        """
        kept = set(keep)
        for policy, result in sorted(self._gateway_labels):
            if policy not in kept:
                self._gateway_queries.remove(policy, result)
                self._gateway_labels.discard((policy, result))
        for policy in sorted(self._policy_labels - kept):
            self._domains.remove(policy)
            self._policy_labels.discard(policy)
        for policy, family in sorted(self._ip_labels):
            if policy not in kept:
                self._allowed_ips.remove(policy, family)
                self._ip_labels.discard((policy, family))
        for key in [k for k in self._denied.values if k[0] not in kept]:
            del self._denied.values[key]

    def update_policies(
        self,
        config: Config,
        names: Mapping[str, NameStatus],
        learned: Mapping[Learned, Mapping[IPAddress, CacheEntry]] | None = None,
    ) -> None:
        """Set ``fenced_domains`` and ``fenced_allowed_ips`` from a config and name states.

        ``names`` is ``Refresher.status()`` and ``learned`` ``Refresher.learned()``. An
        address counts for a policy when one of its domains or one of the names its
        gateway learned holds it and the set may take it (private addresses only with
        ``allow_private``), so the numbers match the sets' content. Policies no longer
        configured lose their series. In-memory, O(domains x addresses).
        """
        for policy, domains, ips in policy_counts(config, names, learned):
            self.set_domains(policy, domains)
            for family, n in ips.items():
                self.set_allowed_ips(policy, family, n)
        self.forget_policies(p.name for p in config.policies)

    # ------------------------------------------------------------------ output
    def render(self) -> bytes:
        """The registry in the Prometheus text format (see ``CONTENT_TYPE``)."""
        return generate_latest(self._view)


def policy_counts(
    config: Config,
    names: Mapping[str, NameStatus],
    learned: Mapping[Learned, Mapping[IPAddress, CacheEntry]] | None = None,
) -> list[tuple[str, int, dict[int, int]]]:
    """Per policy: its name, how many domains it lists, and its set addresses per family.

    See :meth:`Metrics.update_policies`. Pure.
    """
    result: list[tuple[str, int, dict[int, int]]] = []
    gateway: dict[str, list[Iterable[IPAddress]]] = {}
    for key, entries in (learned or {}).items():
        gateway.setdefault(key.policy, []).append(entries)
    for policy in config.policies:
        ips: set[IPAddress] = set()
        held: list[Iterable[IPAddress]] = [
            status.ips for status in (names.get(d) for d in policy.domains) if status is not None
        ]
        for source in (*held, *gateway.get(policy.name, ())):
            ips.update(ip for ip in source if policy.admits(ip))
        by_family = {4: 0, 6: 0}
        for ip in ips:
            by_family[ip.version] += 1
        result.append((policy.name, len(policy.domains), by_family))
    return result


__all__ = [
    "CONTENT_TYPE",
    "DIRECTIONS",
    "DNS_RESULTS",
    "RESULTS",
    "Metrics",
    "family_label",
    "policy_counts",
]
