"""Stale gateway DNS flows: which conntrack entries go, and when the daemon asks (fakes)."""

from __future__ import annotations

import io
import socket
from collections.abc import Mapping
from pathlib import Path

from fenced.core.model import DnsMode
from fenced.daemon import Daemon
from fenced.dns.answers import Answer
from fenced.errors import FirewallError
from fenced.kernel.conntrack import DnsFlow, FakeConntrack, stale_redirects
from fenced.kernel.firewall import FakeFirewall
from fenced.log import Logger
from tests.fakes import Fakes

UDP, TCP = socket.IPPROTO_UDP, socket.IPPROTO_TCP


def _flow(zone: int, reply_port: int, *, sport: int = 40053, proto: int = UDP) -> DnsFlow:
    return DnsFlow(socket.AF_INET, proto, "192.0.2.2", "192.0.2.53", sport, zone, reply_port, 7)


def test_only_flows_of_a_gateway_zone_not_from_its_port_are_stale() -> None:
    """A zone's flows from another port (or never redirected) go; other zones' flows never do."""
    old = _flow(0x4600, 41000)
    old_tcp = _flow(0x4600, 41000, sport=40054, proto=TCP)
    unredirected = _flow(0x4600, 53, sport=40055)
    current = _flow(0x4600, 42000, sport=40056)
    other_policy = _flow(0x4601, 41000, sport=40057)
    unconfined = _flow(0, 53, sport=40058)
    flows = [old, old_tcp, unredirected, current, other_policy, unconfined]
    assert stale_redirects(flows, {0x4600: 42000}) == [old, old_tcp, unredirected]
    assert stale_redirects(flows, {}) == []


def _write(fakes: Fakes, dns: DnsMode = "gateway") -> None:
    """Write the policy the daemon tests below run: uid 64123 to api.example.com:80/tcp."""
    fakes.write("api.example.com:80/tcp", dns=dns, resolvers='["192.0.2.53"]', uid=64123)


class _Recording(FakeConntrack):
    """A FakeConntrack that notes whether the ruleset was installed when it was asked."""

    def __init__(self, fw: FakeFirewall, flows: list[DnsFlow]) -> None:
        super().__init__(flows)
        self.fw = fw
        self.installs_before: list[int] = []

    async def forget_stale_redirects(self, ports: Mapping[int, int]) -> int:
        """See ``Conntrack.forget_stale_redirects``; records the installs so far."""
        self.installs_before.append(self.fw.calls.count("install"))
        return await super().forget_stale_redirects(ports)


def _daemon(fakes: Fakes, conntrack: FakeConntrack) -> Daemon:
    """A Daemon of the gateway policy on ``fakes``, cleaning up with ``conntrack``."""
    _write(fakes)
    fakes.resolver.script("api.example.com", Answer.ok(["198.51.100.10"], ttl=600))
    return fakes.daemon(conntrack=conntrack)


async def test_start_and_a_new_gateway_forget_flows_to_the_old_port(tmp_path: Path) -> None:
    """After the ruleset is in, start and a reload that starts a gateway delete stale flows."""
    fakes = Fakes(tmp_path)
    ct = _Recording(fakes.fw, [])
    daemon = _daemon(fakes, ct)
    try:
        await daemon.start()
        assert daemon.layout is not None
        zone = daemon.layout.zones["web"]
        first_port = daemon.gateways["web"].port
        assert ct.calls == [{zone: first_port}]
        assert ct.installs_before == [1]  # after the ruleset redirecting to the port

        # flows left by the previous gateway (and one of another zone) meet a new one
        ct.flows = [_flow(zone, first_port), _flow(zone, 1, sport=1), _flow(zone + 1, 1)]
        _write(fakes, dns="direct")
        assert await daemon.reload()
        _write(fakes)
        assert await daemon.reload()
        new_port = daemon.gateways["web"].port
        assert new_port != first_port
        assert ct.calls[-1] == {zone: new_port}
        assert ct.flows == [_flow(zone + 1, 1)]
    finally:
        await daemon.stop()


async def test_a_failed_clean_up_is_logged_and_start_goes_on(tmp_path: Path) -> None:
    """A conntrack error at start is logged; the daemon starts and enforces all the same."""
    ct = FakeConntrack(fail=FirewallError("conntrack: dump DNS flows", "Operation not permitted"))
    daemon = _daemon(Fakes(tmp_path), ct)
    out = io.StringIO()
    daemon.log = Logger(out)
    try:
        await daemon.start()
        assert daemon.state.installed
        assert "event=dns_flows_not_forgotten" in out.getvalue()
    finally:
        await daemon.stop()
