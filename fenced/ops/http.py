"""The HTTP endpoint: ``/healthz``, ``/status`` and ``/metrics`` (aiohttp).

Only ``GET`` (and ``HEAD``) of these three paths are routed: any other path is 404, any
other method 405. Handlers never block the event loop: health and status come from the
daemon's memory through a :class:`StatusProvider`; the one piece of I/O, reading the
kernel's denial counters for ``/metrics``, is the provider's ``refresh_counters``
coroutine, awaited with a timeout, shared by concurrent scrapes and cached for
``counters_max_age`` seconds. No access log is written; idle and half-sent connections
are closed after ``keepalive_timeout``, request bodies are refused past 1 KiB.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from typing import Protocol

from aiohttp import web

from fenced.config.entries import parse_listen
from fenced.errors import HttpError
from fenced.log import Logger, log
from fenced.ops.metrics import CONTENT_TYPE, Metrics


class StatusProvider(Protocol):
    """What the HTTP server asks the daemon. ``health`` and ``status`` must not block."""

    def health(self) -> tuple[bool, str]:
        """``(True, "ok")``, or ``(False, reason)`` with a one-line reason.

        Healthy means the ruleset is installed and the refresher's loop is alive.
        """
        ...

    def status(self) -> dict[str, object]:
        """The JSON-able ``/status`` document (``fenced.ops.status.build_status``)."""
        ...

    async def refresh_counters(self) -> None:
        """Read the kernel's counters into the ``Metrics`` (``Metrics.update_denied``)."""
        ...


def split_listen(listen: str) -> tuple[str, int]:
    """``daemon.listen`` (``HOST:PORT``, ``[V6]:PORT``) as ``(host, port)``.

    As ``fenced.config.entries.parse_listen``, except that port 0 (any free port) is accepted.
    Raises ``HttpError`` when the value is malformed.
    """
    head, sep, port = listen.rpartition(":")
    try:
        if sep and port == "0":
            return parse_listen(head + ":1")[0], 0
        return parse_listen(listen)
    except ValueError as exc:
        raise HttpError(f"cannot listen on {listen!r}: {exc}") from exc


class HttpServer:
    """Serves a provider's health and status and a ``Metrics`` registry on ``listen``.

    ``await start()`` binds (raising ``HttpError`` when the address is taken, unknown
    or not local) and returns; requests are then served by the running event loop until
    ``await stop()``. ``counters_timeout`` bounds how long a scrape waits for
    ``refresh_counters`` (after that the last values are served);
    ``counters_max_age`` is how long one read of the counters is reused. A malformed
    ``listen`` raises ``HttpError`` here already.
    """

    def __init__(
        self,
        listen: str,
        provider: StatusProvider,
        metrics: Metrics,
        *,
        logger: Logger = log,
        counters_timeout: float = 2.0,
        counters_max_age: float = 5.0,
        keepalive_timeout: float = 15.0,
    ) -> None:
        self.listen = listen
        self.host, self.port = split_listen(listen)
        self.provider = provider
        self.metrics = metrics
        self.log = logger
        self.counters_timeout = counters_timeout
        self.counters_max_age = counters_max_age
        self.keepalive_timeout = keepalive_timeout
        self._runner: web.AppRunner | None = None
        self._counters_task: asyncio.Task[None] | None = None
        self._counters_at: float | None = None
        self._counters_error: str | None = None

    # ------------------------------------------------------------------ life cycle
    def _app(self) -> web.Application:
        app = web.Application(client_max_size=1024)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/status", self._status)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def start(self) -> None:
        """Bind ``listen`` and serve; ``HttpError`` when that is impossible."""
        if self._runner is not None:
            raise RuntimeError("HTTP server already started")
        runner = web.AppRunner(
            self._app(),
            access_log=None,
            handle_signals=False,
            keepalive_timeout=self.keepalive_timeout,
            max_line_size=4096,
            max_field_size=4096,
            max_headers=32,
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, backlog=64)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            if isinstance(exc, socket.gaierror) or not exc.errno or exc.errno < 0:
                reason = exc.strerror or str(exc)
            else:
                reason = os.strerror(exc.errno)
            raise HttpError(f"cannot listen on {self.listen}: {reason}") from exc
        self._runner = runner
        self.log.info("http_listening", listen=self.listen, addresses=self.urls)

    async def stop(self) -> None:
        """Stop listening and close every connection. Safe to call when not started."""
        task, self._counters_task = self._counters_task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    @property
    def bound(self) -> list[tuple[str, int]]:
        """The ``(host, port)`` pairs listened on (empty before ``start``)."""
        if self._runner is None:
            return []
        return [(str(a[0]), int(a[1])) for a in self._runner.addresses]

    @property
    def urls(self) -> list[str]:
        """Base URLs of the server, e.g. ``http://127.0.0.1:9100`` (empty before start)."""
        return [f"http://[{h}]:{p}" if ":" in h else f"http://{h}:{p}" for h, p in self.bound]

    # ------------------------------------------------------------------ handlers
    async def _healthz(self, request: web.Request) -> web.Response:
        try:
            ok, reason = self.provider.health()
        except Exception as exc:
            self.log.error("http_health_failed", error=f"{type(exc).__name__}: {exc}")
            ok, reason = False, "health check failed"
        return web.Response(
            status=200 if ok else 503,
            text=("ok" if ok else reason) + "\n",
            headers={"Cache-Control": "no-store"},
        )

    async def _status(self, request: web.Request) -> web.Response:
        try:
            body = json.dumps(self.provider.status(), separators=(",", ":")) + "\n"
        except Exception as exc:
            self.log.error("http_status_failed", error=f"{type(exc).__name__}: {exc}")
            return web.Response(status=500, text="status unavailable\n")
        return web.Response(
            text=body, content_type="application/json", headers={"Cache-Control": "no-store"}
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        await self._refresh_counters()
        try:
            body = self.metrics.render()
        except Exception as exc:
            self.log.error("http_metrics_failed", error=f"{type(exc).__name__}: {exc}")
            return web.Response(status=500, text="metrics unavailable\n")
        return web.Response(
            body=body, headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"}
        )

    # ------------------------------------------------------------------ counters
    async def _read_counters(self) -> None:
        try:
            await self.provider.refresh_counters()
        finally:
            self._counters_at = time.monotonic()

    async def _refresh_counters(self) -> None:
        """Make the denial counters at most ``counters_max_age`` old, waiting briefly."""
        at = self._counters_at
        if at is not None and time.monotonic() - at < self.counters_max_age:
            return
        task = self._counters_task
        if task is None or task.done():
            task = self._counters_task = asyncio.create_task(
                self._read_counters(), name="fenced-http-counters"
            )
        try:
            await asyncio.wait_for(asyncio.shield(task), self.counters_timeout)
        except TimeoutError:
            self._counters_failed(f"no answer within {self.counters_timeout:g} s")
        except Exception as exc:
            self._counters_failed(f"{type(exc).__name__}: {exc}")
        else:
            if self._counters_error is not None:
                self.log.info("counters_read_recovered")
            self._counters_error = None

    def _counters_failed(self, error: str) -> None:
        """Count a failed read; log it when the failure is new (not once per scrape)."""
        self.metrics.counter_read_failed()
        if self._counters_error is None:
            self.log.warning(
                "counters_read_failed", error=error, note="serving the last values read"
            )
        self._counters_error = error


__all__ = ["HttpServer", "StatusProvider", "split_listen"]
