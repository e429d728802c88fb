"""Unit tests of the status document (fenced.ops.status) and ``fenced status``. 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import contextlib
import io
import ipaddress
import json
import socket
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from fenced.__main__ import main
from fenced.core.cache import CacheEntry
from fenced.core.model import Config, DaemonConfig, Listen, Policy, PortRange, PortSpec, Target
from fenced.daemon import State
from fenced.dns.refresher import Learned, NameStatus
from fenced.log import Logger
from fenced.ops.http import HttpServer
from fenced.ops.metrics import Metrics
from fenced.ops.status import build_status, duration, format_status, status_url

A = ipaddress.ip_address("192.0.2.10")
V6 = ipaddress.ip_address("2001:db8::10")
PRIV = ipaddress.ip_address("10.1.2.3")
B = ipaddress.ip_address("198.51.100.7")
X = ipaddress.ip_address("192.0.2.20")
Y = ipaddress.ip_address("198.51.100.9")
TCP443 = PortSpec(("tcp",), (PortRange(443, 443),))
TCP22 = PortSpec(("tcp",), (PortRange(22, 22),))
WALL, MONO = 1_700_000_000.0, 500.0


def sample_doc() -> dict[str, object]:
    """Three policies: a healthy name, a failing one, names learned under a wildcard."""
    web = Policy(
        "web",
        uids=(1000,),
        gids=(100,),
        cgroups=("system.slice/web.service",),
        outbound=(
            Target("a.test:443", TCP443, domain="a.test"),
            Target("192.0.2.0/24:22", TCP22, network=ipaddress.ip_network("192.0.2.0/24")),
        ),
        inbound=(Listen("8080/tcp", PortSpec(("tcp",), (PortRange(8080, 8080),))),),
    )
    lab = Policy(
        "lab",
        cgroups=("user.slice",),
        mode="audit",
        dns="direct",
        outbound=(Target("b.test", PortSpec(("tcp", "udp")), domain="b.test"),),
    )
    edge = Policy(
        "edge",
        uids=(1002,),
        outbound=(Target("*.cdn.test:443", TCP443, domain="*.cdn.test"),),
    )
    state = State(
        "/etc/fenced/fenced.toml",
        started=WALL - 3600,
        generation=2,
        installed=True,
        last_reload="ok",
        last_reload_time=WALL - 300,
        cgroup_ids={"system.slice/web.service": 4242, "user.slice": None},
    )
    fresh = CacheEntry(deadline=550.0, expires=580.0, seen=490.0)
    names = {
        "a.test": NameStatus(
            "a.test", 560.0, False, "ok", "", 490.0, {A: fresh, V6: fresh, PRIV: fresh}
        ),
        "b.test": NameStatus(
            "b.test",
            502.0,
            False,
            "servfail",
            "SERVFAIL from 192.0.2.53",
            495.0,
            {B: CacheEntry(deadline=480.0, expires=780.0, seen=420.0)},
        ),
    }
    learned = {
        Learned("edge", "y.cdn.test"): {Y: CacheEntry(deadline=495.0, expires=525.0, seen=435.0)},
        Learned("edge", "x.cdn.test"): {X: CacheEntry(deadline=530.0, expires=560.0, seen=470.0)},
        Learned("gone", "z.test"): {X: fresh},  # a policy no longer configured: not shown
    }
    return build_status(
        state,
        Config(DaemonConfig(), (web, lab, edge)),
        names,
        mono_now=MONO,
        wall_now=WALL,
        health=(True, "ok"),
        learned=learned,
    )


EXPECTED = """\
fenced 0.1.0: healthy; up 1h00m (since 2023-11-14T21:13:20Z)
config /etc/fenced/fenced.toml; table inet fenced, generation 2
last reload: ok 5m00s ago
policy web (enforce)
  subjects: uids 1000; gids 100; cgroups system.slice/web.service (id 4242)
  inbound: tcp:8080
  static: 192.0.2.0/24 (tcp:22)
  domains: 1
    a.test (tcp:443): ok 10s ago, ttl 60s, next in 1m00s
      10.1.2.3 (1m20s left, not in set: private)
      192.0.2.10 (1m20s left)
      2001:db8::10 (1m20s left)
  learned from DNS answers: 0
policy lab (audit)
  subjects: cgroups user.slice (absent)
  inbound: none
  domains: 1
    b.test (tcp,udp): servfail 5s ago (SERVFAIL from 192.0.2.53), ttl 60s, next in 2s
      198.51.100.7 (4m40s left, stale)
policy edge (enforce)
  subjects: uids 1002
  inbound: none
  domains: 0
  wildcards: *.cdn.test
  learned from DNS answers: 2
    x.cdn.test: answered 30s ago, ttl 60s
      192.0.2.20 (1m00s left)
    y.cdn.test: answered 1m05s ago, ttl 60s
      198.51.100.9 (25s left, stale)
"""


def test_build_status_document() -> None:
    """build_status gives wall times, seconds left, TTL, subjects, statics and errors."""
    doc = sample_doc()
    assert json.loads(json.dumps(doc)) == doc  # JSON-able as it is
    assert doc["time"] == WALL and doc["started"] == WALL - 3600
    assert doc["last_reload"] == {"result": "ok", "time": WALL - 300, "error": None}
    assert (doc["generation"], doc["installed"], doc["repairs"]) == (2, True, 0)
    web = doc["policies"]["web"]  # type: ignore[index]
    assert web["subjects"] == {
        "uids": [1000],
        "gids": [100],
        "cgroups": {"system.slice/web.service": 4242},
    }
    assert web["inbound"] == ["tcp:8080"]
    assert web["static"] == [{"network": "192.0.2.0/24", "ports": "tcp:22"}]
    a = web["domains"]["a.test"]
    assert a["ttl"] == 60.0
    assert a["next_refresh"] == WALL + 60
    assert a["last_resolution"] == {"status": "ok", "time": WALL - 10, "detail": ""}
    assert a["last_error"] is None
    assert a["ips"][1] == {"ip": "192.0.2.10", "seconds_left": 80.0, "stale": False, "in_set": True}
    assert a["ips"][0]["in_set"] is False  # 10.1.2.3: private, the policy does not allow it
    b = doc["policies"]["lab"]["domains"]["b.test"]  # type: ignore[index]
    assert b["last_error"]["status"] == "servfail" and b["last_error"]["failed"] is True
    assert b["ips"] == [
        {"ip": "198.51.100.7", "seconds_left": 280.0, "stale": True, "in_set": True}
    ]


def test_build_status_lists_learned_names_per_policy() -> None:
    """Every name a gateway answer gave is listed under its policy with addresses and times."""
    policies: Any = sample_doc()["policies"]
    assert set(policies) == {"web", "lab", "edge"}
    edge = policies["edge"]
    assert (edge["dns"], edge["wildcards"], edge["domains"]) == ("gateway", ["*.cdn.test"], {})
    assert list(edge["learned"]) == ["x.cdn.test", "y.cdn.test"]
    assert edge["learned"]["x.cdn.test"] == {
        "last_answer": WALL - 30,
        "ttl": 60.0,
        "ips": [{"ip": "192.0.2.20", "seconds_left": 60.0, "stale": False, "in_set": True}],
    }
    assert edge["learned"]["y.cdn.test"]["ips"] == [
        {"ip": "198.51.100.9", "seconds_left": 25.0, "stale": True, "in_set": True}
    ]
    assert policies["web"]["learned"] == {} and policies["web"]["wildcards"] == []


def test_build_status_before_any_config() -> None:
    """Without a config (start failed) the document still builds, with no policies."""
    doc = build_status(State("/x.toml"), None, {}, mono_now=0.0, wall_now=WALL)
    assert doc["table"] is None and doc["policies"] == {} and "health" not in doc
    assert (
        format_status(doc).splitlines()[1]
        == "config /x.toml; no table, generation 0, NOT INSTALLED"
    )


def test_format_status_sample() -> None:
    """format_status renders the sample document as the expected text."""
    assert format_status(sample_doc()) == EXPECTED


def test_format_status_unhealthy_and_failed_reload() -> None:
    """An unhealthy daemon, repairs and a failed reload are shown, with their reasons."""
    doc = sample_doc()
    doc["health"] = {"ok": False, "reason": "refresher stopped"}
    doc["last_reload"] = {"result": "error", "time": WALL - 30, "error": "bad.toml: no such file"}
    doc["repairs"] = 2
    lines = format_status(doc).splitlines()
    assert lines[0].startswith("fenced 0.1.0: UNHEALTHY: refresher stopped; up 1h00m")
    assert (
        lines[1] == "config /etc/fenced/fenced.toml; table inet fenced, generation 2, repaired 2x"
    )
    assert lines[2] == "last reload: error 30s ago: bad.toml: no such file"


def test_format_status_tolerates_odd_documents() -> None:
    """Missing or mistyped fields print as unknown instead of failing."""
    assert format_status({}).startswith("fenced ?: health unknown")
    odd = {"policies": {"p": {"domains": {"x.test": {"ips": [{"ip": "192.0.2.1"}]}}}}, "time": "x"}
    text = format_status(odd)
    assert "    x.test: not resolved yet" in text
    assert "      192.0.2.1 (0s left)" in text
    assert format_status({"policies": ["not", "a", "dict"]}).count("\n") == 3


def test_duration() -> None:
    """duration() picks two units at most."""
    assert [duration(s) for s in (0, 45, 248, 7380, 273600, -5)] == [
        "0s",
        "45s",
        "4m08s",
        "2h03m",
        "3d04h",
        "0s",
    ]


def test_status_url() -> None:
    """The /status URL comes from a base URL, with or without slash or /status."""
    for given in ("http://h:1", "http://h:1/", "http://h:1/status", "http://h:1/status/"):
        assert status_url(given) == "http://h:1/status"


# ------------------------------------------------------------------------------ CLI


class Provider:
    """A StatusProvider serving the sample document."""

    def __init__(self) -> None:
        self.doc: dict[str, object] = sample_doc()
        self.broken = False

    def health(self) -> tuple[bool, str]:
        """Always healthy."""
        return True, "ok"

    def status(self) -> dict[str, object]:
        """The sample document, or an error when ``broken``."""
        if self.broken:
            raise RuntimeError("broken")
        return self.doc

    async def refresh_counters(self) -> None:
        """Nothing to read."""


@contextlib.asynccontextmanager
async def daemon_url() -> AsyncIterator[tuple[str, Provider]]:
    """A status server on 127.0.0.1 (free port): its base URL and provider."""
    provider = Provider()
    server = HttpServer("127.0.0.1:0", provider, Metrics(), logger=Logger(io.StringIO()))
    await server.start()
    try:
        yield server.urls[0], provider
    finally:
        await server.stop()


async def run_cli(args: Sequence[str]) -> int:
    """Run ``fenced ARGS`` in a thread (the CLI is synchronous); its exit code."""

    def call() -> int:
        try:
            main(list(args))
        except SystemExit as exc:
            return int(exc.code or 0)
        return 0

    return await asyncio.to_thread(call)


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_cli_prints_summary(capsys: pytest.CaptureFixture[str]) -> None:
    """`fenced status --url URL` fetches /status and prints format_status's text."""
    async with daemon_url() as (url, _):
        assert await run_cli(["status", "--url", url]) == 0
    out, err = capsys.readouterr()
    assert out == EXPECTED and err == ""


async def test_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    """`fenced status --json` prints the raw document."""
    async with daemon_url() as (url, provider):
        assert await run_cli(["status", "--url", url + "/", "--json"]) == 0
    out, _ = capsys.readouterr()
    assert json.loads(out) == provider.doc


async def test_cli_ignores_proxy_settings(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proxy in the environment is not used to reach the daemon."""
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    async with daemon_url() as (url, _):
        assert await run_cli(["status", "--url", url]) == 0
    assert capsys.readouterr().out == EXPECTED


async def test_cli_daemon_down(capsys: pytest.CaptureFixture[str]) -> None:
    """With nothing listening, `fenced status` exits 1 with one line on stderr."""
    url = f"http://127.0.0.1:{closed_port()}"
    assert await run_cli(["status", "--url", url]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"fenced status: {url}/status: no answer (Connection refused)\n"


async def test_cli_http_error(capsys: pytest.CaptureFixture[str]) -> None:
    """A daemon answering 500 makes `fenced status` exit 1 with one line naming the code."""
    async with daemon_url() as (url, provider):
        provider.broken = True
        assert await run_cli(["status", "--url", url]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert (
        err == f"fenced status: {url}/status: the daemon answered HTTP 500 Internal Server Error\n"
    )


async def test_cli_not_json(capsys: pytest.CaptureFixture[str]) -> None:
    """An answer that is not JSON makes `fenced status` exit 1 with one line."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n<html>hi</html>")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        assert await run_cli(["status", "--url", f"http://127.0.0.1:{port}"]) == 1
    finally:
        server.close()
        await server.wait_closed()
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith(f"fenced status: http://127.0.0.1:{port}/status: the answer is not JSON")
