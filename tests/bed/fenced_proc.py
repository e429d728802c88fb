"""Run the real fenced daemon as a subprocess inside a test bed's client namespace."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from tests.bed import constants as C
from tests.bed.bed import Bed, BedError, Proc

STARTUP_TIMEOUT = 20.0


def eventually(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``check`` until it is true; return the seconds it took; fail after ``timeout``."""
    start = time.monotonic()
    while True:
        if check():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            pytest.fail(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def daemon_section(**overrides: object) -> str:
    """A ``[daemon]`` table for tests: the bed's resolver, no HTTP, table removed at exit."""
    values: dict[str, object] = {
        "listen": "",
        "resolvers": [C.RESOLVER_V4],
        "on_exit": "remove",
    }
    values.update(overrides)
    lines = ["[daemon]"]
    for key, value in values.items():
        lines.append(f"{key} = {_toml(value)}")
    return "\n".join(lines) + "\n"


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def policy_section(name: str, **keys: object) -> str:
    """A ``[policy.NAME]`` table with the given keys."""
    lines = [f"[policy.{name}]"]
    lines += [f"{k} = {_toml(v)}" for k, v in keys.items()]
    return "\n".join(lines) + "\n"


class Fenced:
    """A fenced daemon in ``bed``'s client namespace, configured by ``config`` (TOML text).

    ``start()`` waits until the daemon logs ``event=started``; the bed kills it by PID when
    it closes if the test did not stop it.
    """

    def __init__(self, bed: Bed, config: str, *, name: str = "fenced") -> None:
        self.bed = bed
        self.dir = bed.tmpdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "fenced.toml"
        self.path.write_text(config)
        self.proc: Proc | None = None

    def write(self, config: str) -> None:
        """Replace the main config file (atomically, as an editor with rename would)."""
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(config)
        tmp.replace(self.path)

    def dropin(self, name: str, text: str) -> Path:
        """Write ``fenced.d/NAME`` beside the main file."""
        d = self.dir / "fenced.d"
        d.mkdir(exist_ok=True)
        p = d / name
        p.write_text(text)
        return p

    def start(
        self,
        *,
        wait: bool = True,
        env: dict[str, str] | None = None,
        wrapper: Sequence[str] = (),
    ) -> Fenced:
        """Start ``fenced run`` as root in the client namespace.

        ``env``: extra variables; ``wrapper``: a command prefix (e.g. ``unshare --pid``).
        """
        self.proc = self.bed.spawn(
            [*wrapper, sys.executable, "-m", "fenced", "run", "-c", str(self.path)],
            ns="client",
            stdin=False,
            label="fenced",
            env=env,
        )
        if wait:
            self.wait_log("event=started", STARTUP_TIMEOUT)
        return self

    @property
    def pid(self) -> int:
        """The daemon's PID."""
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        """Everything the daemon wrote to stderr so far."""
        return self.proc.stderr_text() if self.proc is not None else ""

    def count(self, needle: str) -> int:
        """How many log lines contain ``needle``."""
        return sum(needle in line for line in self.log().splitlines())

    def wait_log(self, needle: str, timeout: float = 10.0, *, at_least: int = 1) -> None:
        """Wait until ``needle`` appears in ``at_least`` log lines; BedError if it doesn't."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.count(needle) >= at_least:
                return
            if not self.proc.alive:
                raise BedError(
                    f"fenced exited ({self.proc.returncode}) before {needle!r}:\n{self.log()}"
                )
            time.sleep(0.02)
        raise BedError(f"fenced did not log {needle!r} within {timeout} s:\n{self.log()}")

    def send_signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the daemon."""
        assert self.proc is not None
        self.proc.popen.send_signal(sig)

    def reload(self, config: str | None = None, *, expect: str = "event=reloaded") -> None:
        """Optionally write a new config, send SIGHUP, and wait for ``expect`` once more."""
        if config is not None:
            self.write(config)
        before = self.count(expect)
        self.send_signal(signal.SIGHUP)
        self.wait_log(expect, at_least=before + 1)

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Stop the daemon with ``sig`` and return its exit code."""
        assert self.proc is not None
        self.send_signal(sig)
        return self.proc.wait(timeout)

    def http(self, path: str, method: str = "GET", port: int = 9100) -> tuple[int, str]:
        """(status, body) of an HTTP request to the daemon, made inside the client namespace."""
        code = (
            "import sys, urllib.request, urllib.error\n"
            "req = urllib.request.Request(sys.argv[1], method=sys.argv[2])\n"
            "opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))\n"
            "try:\n"
            "    r = opener.open(req, timeout=5); print(r.status); print(r.read().decode())\n"
            "except urllib.error.HTTPError as e:\n"
            "    print(e.code); print(e.read().decode())\n"
        )
        url = f"http://127.0.0.1:{port}{path}"
        cp = self.bed.ns_exec([sys.executable, "-c", code, url, method])
        status, _, body = cp.stdout.partition("\n")
        return int(status), body.rstrip("\n")

    def metric(self, name: str, port: int = 9100) -> float:
        """The value of one sample (``name`` with its labels, as printed) from /metrics."""
        status, body = self.http("/metrics", port=port)
        assert status == 200, body
        for line in body.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        raise BedError(f"no sample {name!r} in /metrics")

    def nft_counter(self, name: str, table: str = "fenced") -> int:
        """Packets counted so far by the named counter ``name`` of fenced's table."""
        out = self.bed.nft(["list", "counter", "inet", table, name]).stdout
        for word, value in zip(out.split(), out.split()[1:], strict=False):
            if word == "packets":
                return int(value)
        raise BedError(f"no packets in counter listing: {out}")
