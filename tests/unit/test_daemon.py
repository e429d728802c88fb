"""Unit tests of the Daemon on the fakes: FakeFirewall, FakeResolver, a fake change monitor.

The gateways listen on 127.0.0.1 (free ports) and forward to an in-process upstream on
127.0.0.1; nothing else is touched (no namespace, no nft, no port 53).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import ipaddress
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from fenced.core.elements import key_to_cgroup_id, key_to_ip
from fenced.core.model import Config, IPAddress
from fenced.daemon import Daemon
from fenced.dns.answers import Answer
from fenced.dns.resolver import DnsResolver, FakeResolver
from fenced.kernel.firewall import FakeFirewall
from fenced.kernel.monitor import Commit
from fenced.log import Logger
from tests.fakes import Fakes, load_numeric, policy_text

TABLE = "fenced"


# ------------------------------------------------------------------------------ upstream


class _Upstream(asyncio.DatagramProtocol):
    """Answers A/AAAA queries from ``records`` (name -> addresses, TTL 600); else NXDOMAIN."""

    def __init__(self, records: Mapping[str, list[str]]) -> None:
        self.records = records
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        query = dns.message.from_wire(data)
        q = query.question[0]
        name = q.name.to_text(omit_final_dot=True)
        reply = dns.message.make_response(query)
        if name not in self.records:
            reply.set_rcode(dns.rcode.NXDOMAIN)
        family = 4 if q.rdtype == dns.rdatatype.A else 6
        ips = [
            ip for ip in self.records.get(name, []) if ipaddress.ip_address(ip).version == family
        ]
        if ips and q.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            rtype = dns.rdatatype.to_text(q.rdtype)
            reply.answer.append(dns.rrset.from_text_list(q.name, 600, "IN", rtype, ips))
        assert self.transport is not None
        self.transport.sendto(reply.to_wire(), addr)


@contextlib.asynccontextmanager
async def upstream(records: Mapping[str, list[str]]) -> AsyncIterator[int]:
    """A DNS server on 127.0.0.1 (UDP, free port) answering from ``records``; its port."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _Upstream(records), local_addr=("127.0.0.1", 0)
    )
    try:
        yield int(transport.get_extra_info("sockname")[1])
    finally:
        transport.close()


# ------------------------------------------------------------------------------ monitor


class FakeMonitor:
    """Stands in for NftMonitor: ``push`` a commit and the daemon's reader sees it."""

    def __init__(self, table: str) -> None:
        self.table = table
        self.overrun = False
        self._commits: list[Commit] = []
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)

    def fileno(self) -> int:
        """The readable end the daemon watches."""
        return self._r.fileno()

    def push(self, commit: Commit) -> None:
        """Report ``commit`` as if the kernel had sent it."""
        self._commits.append(commit)
        self._w.send(b"x")

    def read(self) -> list[Commit]:
        """Every pushed commit not read yet."""
        with contextlib.suppress(BlockingIOError):
            self._r.recv(4096)
        commits, self._commits = self._commits, []
        return commits

    def close(self) -> None:
        """Close both ends."""
        self._r.close()
        self._w.close()


#: What another process's ``nft flush ruleset`` looks like to the monitor.
FOREIGN = Commit(generation=7, pid=1, process="nft", changes={"DELTABLE": 1}, portid=0x7FFF0001)


# ------------------------------------------------------------------------------ helpers


async def eventually(check: Callable[[], Awaitable[bool]], within: float) -> float:
    """Poll ``check`` until it holds; return how long that took (fail after ``within`` s)."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > within:
            pytest.fail(f"not true within {within} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


def contents(fw: FakeFirewall) -> dict[str, set[IPAddress]]:
    """Every domain set of the table and the addresses it holds."""
    t = fw.tables.get(TABLE)
    if t is None:
        return {}
    return {n: {key_to_ip(k) for k in s} for n, s in t.sets.items() if n.startswith("d_")}


async def ask(port: int, name: str, rdtype: str = "A") -> dns.message.Message:
    """One UDP query to a gateway on 127.0.0.1."""
    q = dns.message.make_query(name, rdtype)
    return await dns.asyncquery.udp(q, "127.0.0.1", timeout=5, port=port)


def ip(text: str) -> IPAddress:
    """An address from text."""
    return ipaddress.ip_address(text)


# ------------------------------------------------------------------------------ bug 1

#: The entries of the gateway policy that :func:`gateway_daemon` runs.
GATEWAY_ENTRIES = ("a.test:443/tcp", "*.cdn.test:8443/tcp")


def _tamper_flush(fw: FakeFirewall) -> None:
    """``nft flush ruleset``: the table and everything in it is gone."""
    del fw.tables[TABLE]


def _tamper_element(fw: FakeFirewall) -> None:
    """``nft delete element``: one learned address leaves the wildcard's set."""
    for elems in fw.tables[TABLE].sets.values():
        for key in list(elems):
            if key_to_ip(key) == ip("198.51.100.10"):
                del elems[key]


@contextlib.asynccontextmanager
async def gateway_daemon(
    tmp_path: Path, records: Mapping[str, list[str]]
) -> AsyncIterator[tuple[Daemon, FakeFirewall, FakeMonitor, int]]:
    """A running Daemon of GATEWAY_ENTRIES on the fakes: (daemon, firewall, monitor, port).

    Its gateway (on ``port``) asks an upstream that answers from ``records``.
    """
    fakes = Fakes(tmp_path)
    fakes.write(*GATEWAY_ENTRIES)
    fakes.resolver.script("a.test", Answer.ok(["192.0.2.1", "2001:db8::1"], ttl=600))
    fw = fakes.fw
    monitors: list[FakeMonitor] = []

    def monitor(table: str) -> FakeMonitor:
        monitors.append(FakeMonitor(table))
        return monitors[-1]

    daemon = fakes.daemon(monitor_factory=monitor)  # type: ignore[arg-type]
    async with upstream(records) as up_port:
        task = asyncio.create_task(daemon.run())
        try:

            async def started() -> bool:
                return daemon.state.last_reload == "ok"

            await eventually(started, 5.0)
            gw = daemon.gateways["web"]
            gw.upstream_port = up_port
            yield daemon, fw, monitors[-1], gw.port
        finally:
            daemon.request("stop")
            await task


@pytest.mark.parametrize("tamper", [_tamper_flush, _tamper_element], ids=["flush", "element"])
async def test_repair_restores_sets_and_keeps_learning_for_exact_and_wildcard(
    tmp_path: Path, tamper: Callable[[FakeFirewall], None]
) -> None:
    """Within 1 s of a repair the sets hold all they held, and later answers reach them."""
    records = {
        "a.test": ["192.0.2.7"],
        "x.cdn.test": ["198.51.100.10", "2001:db8::10"],
        "y.cdn.test": ["198.51.100.11"],
    }
    async with gateway_daemon(tmp_path, records) as (daemon, fw, monitor, port):
        lay = daemon.layout
        assert lay is not None
        exact4 = next(s.name for s in lay.sets_for("a.test") if s.family == 4)
        wild4 = next(s.name for s in lay.sets_for("*.cdn.test") if s.family == 4)
        wild6 = next(s.name for s in lay.sets_for("*.cdn.test") if s.family == 6)
        assert exact4 != wild4  # the wildcard's sets are fed by it alone
        for name in ("a.test", "x.cdn.test"):
            for rdtype in ("A", "AAAA"):
                assert (await ask(port, name, rdtype)).rcode() == dns.rcode.NOERROR
        before = contents(fw)
        assert before[exact4] == {ip("192.0.2.1"), ip("192.0.2.7")}
        assert before[wild4] == {ip("198.51.100.10")}
        assert before[wild6] == {ip("2001:db8::10")}

        tamper(fw)
        monitor.push(FOREIGN)

        async def restored() -> bool:
            return daemon.state.repairs == 1 and contents(fw) == before

        await eventually(restored, 1.0)

        records["a.test"] = ["192.0.2.8"]
        assert (await ask(port, "a.test")).rcode() == dns.rcode.NOERROR
        assert (await ask(port, "y.cdn.test")).rcode() == dns.rcode.NOERROR
        after = contents(fw)
        assert ip("192.0.2.8") in after[exact4]
        assert after[wild4] == {ip("198.51.100.10"), ip("198.51.100.11")}
        assert daemon.health() == (True, "ok")


# ------------------------------------------------------------------------------ bug 6


async def test_status_and_metrics_show_gateway_learned_names(tmp_path: Path) -> None:
    """/status lists every gateway-learned name with addresses; fenced_allowed_ips counts them."""
    records = {"a.test": ["192.0.2.7"], "x.cdn.test": ["198.51.100.10", "2001:db8::10"]}
    async with gateway_daemon(tmp_path, records) as (daemon, _fw, _monitor, port):
        for name, rdtype in (("a.test", "A"), ("x.cdn.test", "A"), ("x.cdn.test", "AAAA")):
            assert (await ask(port, name, rdtype)).rcode() == dns.rcode.NOERROR
        web: Any = daemon.status()["policies"]
        web = web["web"]
        assert web["wildcards"] == ["*.cdn.test"]
        assert sorted(web["learned"]) == ["a.test", "x.cdn.test"]
        x = web["learned"]["x.cdn.test"]
        assert [i["ip"] for i in x["ips"]] == ["198.51.100.10", "2001:db8::10"]
        assert all(600 < i["seconds_left"] <= 630 and not i["stale"] for i in x["ips"])
        assert x["ttl"] == 600.0 and abs(x["last_answer"] - time.time()) < 5
        assert [i["ip"] for i in web["learned"]["a.test"]["ips"]] == ["192.0.2.7"]
        await daemon.refresh_counters()
        metrics = daemon.metrics.registry
        # a.test: 192.0.2.1 (resolved) and 192.0.2.7 (learned); x.cdn.test: one of each family
        assert (
            metrics.get_sample_value("fenced_allowed_ips", {"policy": "web", "family": "ipv4"}) == 3
        )
        assert (
            metrics.get_sample_value("fenced_allowed_ips", {"policy": "web", "family": "ipv6"}) == 2
        )


# ------------------------------------------------------------------------------ bug 8


def _resolvers_config(resolvers: str, name: str) -> str:
    """A direct-DNS policy for ``name``:443/tcp whose daemon asks ``resolvers`` (TOML array)."""
    return policy_text(f"{name}:443/tcp", dns="direct", resolvers=resolvers)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_open_fds_stay_flat_over_reloads_that_change_resolvers(tmp_path: Path) -> None:
    """50 reloads alternating two resolver lists leave the daemon's open fds flat."""
    path = tmp_path / "fenced.toml"
    lists = ('["127.0.0.1"]', '["127.0.0.1", "127.0.0.2"]')
    names = ("a.test", "b.test")  # a new name each time: the new resolver opens its sockets
    records = {"a.test": ["192.0.2.1", "2001:db8::1"], "b.test": ["192.0.2.2"]}
    async with upstream(records) as up_port:

        def resolver(cfg: Config) -> DnsResolver:
            return DnsResolver([str(r) for r in cfg.daemon.resolvers], port=up_port, timeout=1.0)

        path.write_text(_resolvers_config(lists[0], names[0]))
        daemon = Daemon(
            str(path),
            FakeFirewall(),
            loader=load_numeric,
            logger=Logger(io.StringIO()),
            resolver_factory=resolver,
        )
        await daemon.start()
        try:

            async def answered(name: str) -> bool:
                assert daemon.refresher is not None
                ns = daemon.refresher.status().get(name)
                return ns is not None and ns.last_status == "ok"

            await eventually(lambda: answered(names[0]), 5.0)
            before = _open_fds()
            for i in range(1, 51):
                path.write_text(_resolvers_config(lists[i % 2], names[i % 2]))
                assert await daemon.reload()
                await eventually(lambda: answered(names[i % 2]), 5.0)  # noqa: B023
            assert _open_fds() <= before + 2
        finally:
            await daemon.stop()


# ------------------------------------------------------------------------------ telemetry


async def test_gateway_queries_and_reloads_reach_metrics_and_removed_policies_leave(
    tmp_path: Path,
) -> None:
    """Gateway queries and reloads are counted; a policy removed by a reload loses its series."""
    records = {"a.test": ["192.0.2.7"]}
    async with gateway_daemon(tmp_path, records) as (daemon, _fw, _monitor, port):
        metrics = daemon.metrics.registry
        assert (await ask(port, "a.test")).rcode() == dns.rcode.NOERROR
        assert (await ask(port, "b.test")).rcode() == dns.rcode.NXDOMAIN  # not allowed
        web = {"policy": "web", "result": "allowed"}
        assert metrics.get_sample_value("fenced_gateway_queries_total", web) == 1
        denied = {"policy": "web", "result": "denied"}
        assert metrics.get_sample_value("fenced_gateway_queries_total", denied) == 1
        assert metrics.get_sample_value("fenced_config_reloads_total", {"result": "ok"}) == 0

        (tmp_path / "fenced.toml").write_text(policy_text(*GATEWAY_ENTRIES, name="api"))
        assert await daemon.reload()
        await daemon.refresh_counters()
        assert metrics.get_sample_value("fenced_config_reloads_total", {"result": "ok"}) == 1
        assert metrics.get_sample_value("fenced_gateway_queries_total", web) is None
        assert metrics.get_sample_value("fenced_gateway_queries_total", denied) is None
        assert metrics.get_sample_value("fenced_domains", {"policy": "api"}) == 1


async def test_reload_hands_the_refresher_a_new_resolver_only_when_resolvers_change(
    tmp_path: Path,
) -> None:
    """A reload with other resolvers gives the refresher a new one and closes the old."""
    path = tmp_path / "fenced.toml"
    path.write_text(_resolvers_config('["127.0.0.1"]', "a.test"))
    made: list[FakeResolver] = []

    def resolver(_cfg: Config) -> FakeResolver:
        made.append(FakeResolver())
        return made[-1]

    daemon = Daemon(
        str(path),
        FakeFirewall(),
        loader=load_numeric,
        logger=Logger(io.StringIO()),
        resolver_factory=resolver,
    )
    await daemon.start()
    try:
        path.write_text(_resolvers_config('["127.0.0.1"]', "b.test"))
        assert await daemon.reload()
        assert len(made) == 1 and made[0].closed == 0
        path.write_text(_resolvers_config('["127.0.0.2"]', "b.test"))
        assert await daemon.reload()
        assert daemon.refresher is not None and daemon.refresher.resolver is made[1]
        assert made[0].closed == 1 and made[1].closed == 0
    finally:
        await daemon.stop()
    assert made[1].closed == 1


# ------------------------------------------------------------------------------ transactions


def _cgroup_config(table: str, *policies: str) -> str:
    """A config in ``table`` with a direct-DNS policy per name, confining cgroup ``a/<name>``."""
    text = f'[daemon]\nlisten = ""\ntable = "{table}"\nresolvers = ["127.0.0.1"]\n'
    for name in policies:
        text += f'[policy.{name}]\ncgroups = ["a/{name}"]\ndns = "direct"\n'
    return text


async def test_reloads_make_one_install_one_batch_and_one_cleanup(tmp_path: Path) -> None:
    """A reload dropping a cgroup policy, then one renaming the table: install, batch, cleanup."""
    root = tmp_path / "cg"
    for name in ("web", "old"):
        (root / "a" / name).mkdir(parents=True)
    path = tmp_path / "fenced.toml"
    path.write_text(_cgroup_config("fenced", "web", "old"))
    fw = FakeFirewall()
    daemon = Daemon(
        str(path),
        fw,
        loader=load_numeric,
        cgroup_root=str(root),
        logger=Logger(io.StringIO()),
        resolver_factory=lambda _cfg: FakeResolver(),
    )
    await daemon.start()
    try:
        old_id = (root / "a" / "old").stat().st_ino
        held = fw.tables[TABLE].sets["m_cg_out_2"]
        assert old_id in {key_to_cgroup_id(k) for k in held}
        fw.calls.clear()
        path.write_text(_cgroup_config("fenced", "web"))
        assert await daemon.reload()
        assert fw.calls == ["install", "apply", "install"]
        assert not any(c.startswith("p_old_") for c in fw.tables[TABLE].chains)
        fw.calls.clear()
        path.write_text(_cgroup_config("renamed", "web"))
        assert await daemon.reload()
        assert fw.calls == ["install", "apply", "install"]
        assert set(fw.tables) == {"renamed"}
        assert len(fw.tables["renamed"].sets["m_cg_out_2"]) == 1
    finally:
        await daemon.stop()
