"""Unit tests of fenced.ops.http: the three endpoints, routing, counters, binding (127.0.0.1)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest

from fenced.errors import HttpError
from fenced.log import Logger
from fenced.ops.http import HttpServer, split_listen
from fenced.ops.metrics import Metrics

DOC: dict[str, object] = {"version": "test", "policies": {"web": {"mode": "enforce"}}}


class FakeProvider:
    """A StatusProvider whose answers, counter reads and failures tests control."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.healthy: tuple[bool, str] = (True, "ok")
        self.doc: dict[str, object] = dict(DOC)
        self.reads = 0
        self.packets = 0
        self.gate: asyncio.Event | None = None
        self.fail: Exception | None = None
        self.status_error: Exception | None = None

    def health(self) -> tuple[bool, str]:
        """The scripted health."""
        return self.healthy

    def status(self) -> dict[str, object]:
        """The scripted document (or the scripted error)."""
        if self.status_error is not None:
            raise self.status_error
        return self.doc

    async def refresh_counters(self) -> None:
        """Count the read, wait for ``gate`` if set, fail if told to, push a value."""
        self.reads += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        self.packets += 10
        self.metrics.set_denied("web", "out", self.packets)


class Rig:
    """A started server, its provider, metrics, log and one client session."""

    def __init__(
        self,
        server: HttpServer,
        provider: FakeProvider,
        logs: io.StringIO,
        http: aiohttp.ClientSession,
    ) -> None:
        self.server = server
        self.provider = provider
        self.metrics = provider.metrics
        self.logs = logs
        self.http = http
        self.url = server.urls[0]

    async def get(self, path: str, method: str = "GET") -> tuple[int, str, aiohttp.ClientResponse]:
        """One request: status, body text and the response (for headers)."""
        async with self.http.request(method, self.url + path) as resp:
            return resp.status, await resp.text(), resp


@contextlib.asynccontextmanager
async def serving(**kw: float) -> AsyncIterator[Rig]:
    """An HttpServer on 127.0.0.1, any free port, with a FakeProvider."""
    metrics = Metrics()
    provider = FakeProvider(metrics)
    logs = io.StringIO()
    server = HttpServer("127.0.0.1:0", provider, metrics, logger=Logger(logs, level="debug"), **kw)
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            yield Rig(server, provider, logs, http)
    finally:
        await server.stop()


async def test_healthz_ok() -> None:
    """GET /healthz answers 200 'ok' when the provider is healthy."""
    async with serving() as r:
        status, body, resp = await r.get("/healthz")
        assert (status, body) == (200, "ok\n")
        assert resp.headers["Content-Type"].startswith("text/plain")


async def test_healthz_unhealthy_is_503_with_reason() -> None:
    """GET /healthz answers 503 and the provider's reason when unhealthy."""
    async with serving() as r:
        r.provider.healthy = (False, "refresher stopped")
        status, body, _ = await r.get("/healthz")
        assert (status, body) == (503, "refresher stopped\n")


async def test_status_is_the_providers_json() -> None:
    """GET /status serves the provider's document as JSON."""
    async with serving() as r, r.http.get(r.url + "/status") as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        assert await resp.json() == DOC


async def test_status_error_is_500_and_server_goes_on() -> None:
    """A provider that raises gives 500 (logged); the next request is served normally."""
    async with serving() as r:
        r.provider.status_error = RuntimeError("bug")
        status, body, _ = await r.get("/status")
        assert (status, body) == (500, "status unavailable\n")
        assert "event=http_status_failed" in r.logs.getvalue()
        r.provider.status_error = None
        assert (await r.get("/status"))[0] == 200


async def test_metrics_text_with_fresh_counters() -> None:
    """GET /metrics reads the counters first and serves Prometheus text 0.0.4."""
    async with serving() as r:
        status, body, resp = await r.get("/metrics")
        assert status == 200
        assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert r.provider.reads == 1
        assert 'fenced_denied_packets_total{direction="out",policy="web"} 10.0' in body
        assert "# TYPE fenced_dns_queries_total counter" in body


async def test_metrics_counters_cached_for_max_age() -> None:
    """Scrapes within counters_max_age reuse one read; with max age 0 each scrape reads."""
    async with serving(counters_max_age=60.0) as r:
        await r.get("/metrics")
        await r.get("/metrics")
        assert r.provider.reads == 1
    async with serving(counters_max_age=0.0) as r:
        await r.get("/metrics")
        await r.get("/metrics")
        assert r.provider.reads == 2


async def test_concurrent_scrapes_share_one_read() -> None:
    """Scrapes arriving while a read is in flight wait for that read, not a new one."""
    async with serving(counters_max_age=0.0) as r:
        r.provider.gate = asyncio.Event()
        scrapes = [asyncio.create_task(r.get("/metrics")) for _ in range(5)]
        while r.provider.reads == 0:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        r.provider.gate.set()
        results = await asyncio.gather(*scrapes)
        assert [s for s, _, _ in results] == [200] * 5
        assert r.provider.reads == 1


async def test_slow_counter_read_times_out_and_serves_last_values() -> None:
    """A read slower than counters_timeout is not waited for: last values, failure counted."""
    async with serving(counters_timeout=0.1, counters_max_age=0.0) as r:
        await r.get("/metrics")
        r.provider.gate = asyncio.Event()
        status, body, _ = await r.get("/metrics")
        assert status == 200
        assert 'fenced_denied_packets_total{direction="out",policy="web"} 10.0' in body
        assert "fenced_denied_read_failures_total 1.0" in body
        await r.get("/metrics")  # still the same read in flight: no second read started
        assert r.provider.reads == 2
        assert r.logs.getvalue().count("event=counters_read_failed") == 1
        r.provider.gate.set()


async def test_failing_counter_read_serves_metrics_and_logs_once() -> None:
    """A read that raises still gives 200; failures are counted each scrape, logged once."""
    async with serving(counters_max_age=0.0) as r:
        r.provider.fail = OSError("nft not found")
        for _ in range(3):
            assert (await r.get("/metrics"))[0] == 200
        assert r.metrics.registry.get_sample_value("fenced_denied_read_failures_total") == 3
        assert r.logs.getvalue().count("event=counters_read_failed") == 1
        r.provider.fail = None
        await r.get("/metrics")
        assert "event=counters_read_recovered" in r.logs.getvalue()


async def test_unknown_path_is_404() -> None:
    """Any path but the three is 404."""
    async with serving() as r:
        for path in ("/", "/metrics/", "/status.json", "/healthz/x"):
            assert (await r.get(path))[0] == 404, path


async def test_other_methods_are_405() -> None:
    """POST, PUT, DELETE and OPTIONS on the three paths are 405 with Allow: GET,HEAD."""
    async with serving() as r:
        for method in ("POST", "PUT", "DELETE", "OPTIONS"):
            for path in ("/healthz", "/status", "/metrics"):
                status, _, resp = await r.get(path, method)
                assert status == 405, (method, path)
                assert set(resp.headers["Allow"].split(",")) == {"GET", "HEAD"}


async def test_post_body_is_not_read_into_memory() -> None:
    """A large POST body is refused (405), and the server keeps serving."""
    async with serving() as r:
        async with r.http.post(r.url + "/status", data=b"x" * (1 << 20)) as resp:
            assert resp.status == 405
        assert (await r.get("/healthz"))[0] == 200


async def test_head_answers_without_body() -> None:
    """HEAD on each path answers like GET with an empty body."""
    async with serving() as r:
        for path, code in (("/healthz", 200), ("/status", 200), ("/metrics", 200)):
            status, body, _ = await r.get(path, "HEAD")
            assert (status, body) == (code, ""), path
        r.provider.healthy = (False, "no ruleset")
        assert (await r.get("/healthz", "HEAD"))[0] == 503


async def test_no_access_log() -> None:
    """Requests write no access log lines, fenced's or aiohttp's."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    access = logging.getLogger("aiohttp.access")
    handler, level = Keep(), access.level
    access.addHandler(handler)
    access.setLevel(logging.DEBUG)
    try:
        async with serving() as r:
            for path in ("/healthz", "/status", "/metrics", "/nope"):
                await r.get(path)
            assert [
                line.split("event=")[1].split()[0] for line in r.logs.getvalue().splitlines()
            ] == ["http_listening"]
    finally:
        access.removeHandler(handler)
        access.setLevel(level)
    assert records == []


async def test_idle_and_half_sent_connections_are_closed() -> None:
    """Connections that send nothing, or never finish a request, close after the timeout."""
    async with serving(keepalive_timeout=0.3) as r:
        host, port = r.server.bound[0]
        for payload in (b"", b"GET /healthz HTTP/1.1\r\nHost: x\r\n"):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(payload)
            await writer.drain()
            assert await asyncio.wait_for(reader.read(), 5.0) == b"", payload
            writer.close()


async def test_port_taken_raises_http_error() -> None:
    """Listening on a port another socket holds raises HttpError naming the address."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        server = HttpServer(f"127.0.0.1:{port}", FakeProvider(Metrics()), Metrics())
        with pytest.raises(
            HttpError, match=f"cannot listen on 127.0.0.1:{port}: Address already in use"
        ):
            await server.start()
        assert server.bound == []
        await server.stop()


async def test_stop_closes_the_port() -> None:
    """After stop() nothing answers on the port; stop() twice is harmless."""
    async with serving() as r:
        url = r.url
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectionError):
            async with http.get(url + "/healthz"):
                pass
    await r.server.stop()


async def test_start_twice_is_refused() -> None:
    """start() on a running server raises instead of binding twice."""
    async with serving() as r:
        with pytest.raises(RuntimeError):
            await r.server.start()


def test_split_listen() -> None:
    """split_listen takes daemon.listen forms, port 0 too, and rejects malformed ones."""
    assert split_listen("127.0.0.1:9100") == ("127.0.0.1", 9100)
    assert split_listen("[::1]:9100") == ("::1", 9100)
    assert split_listen("[::1]:0") == ("::1", 0)
    assert split_listen("localhost:0") == ("localhost", 0)
    for bad in ("127.0.0.1", "::1:9100", "127.0.0.1:70000", "host:x", ""):
        with pytest.raises(HttpError, match="cannot listen on"):
            split_listen(bad)
