"""Unit tests of fenced.ops.notify against real AF_UNIX datagram sockets.

Each test binds a receiver where systemd's would be (a path in tmp_path, or a name in
the abstract namespace), points a Notifier at it the way systemd does (through the
environment), and checks the exact bytes that arrive.
"""

from __future__ import annotations

import io
import os
import socket
import struct
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fenced.log import Logger
from fenced.ops.notify import Notifier, parse_socket_address, parse_watchdog_usec


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket and the NOTIFY_SOCKET value that names it."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(2.0)
        yield sock, str(path)


@pytest.fixture
def abstract_receiver() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket bound in the abstract namespace and its ``@name``."""
    name = f"fenced-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(2.0)
        yield sock, "@" + name


def _logger() -> tuple[Logger, io.StringIO]:
    out = io.StringIO()
    return Logger(out), out


def _notifier(value: str, **env: str) -> tuple[Notifier, io.StringIO]:
    logger, out = _logger()
    return Notifier.from_env({"NOTIFY_SOCKET": value, **env}, logger=logger), out


def _recv(sock: socket.socket) -> bytes:
    return sock.recv(4096)


def _nothing_queued(sock: socket.socket) -> bool:
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        sock.recv(4096)
    except BlockingIOError:
        return True
    finally:
        sock.settimeout(timeout)
    return False


def test_ready_sends_exactly_ready(receiver: tuple[socket.socket, str]) -> None:
    """ready() sends the single line READY=1, with no trailing newline."""
    sock, value = receiver
    n, _ = _notifier(value)
    assert n.ready() is True
    assert _recv(sock) == b"READY=1"


def test_ready_with_status(receiver: tuple[socket.socket, str]) -> None:
    """ready(status=...) sends READY=1 and STATUS in one datagram."""
    sock, value = receiver
    n, _ = _notifier(value)
    assert n.ready(status="serving 2 policies")
    assert _recv(sock) == b"READY=1\nSTATUS=serving 2 policies"
    assert _nothing_queued(sock)


def test_reloading_sends_monotonic_usec(receiver: tuple[socket.socket, str]) -> None:
    """reloading() sends RELOADING=1 and MONOTONIC_USEC read from CLOCK_MONOTONIC now."""
    sock, value = receiver
    n, _ = _notifier(value)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert n.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = _recv(sock).split(b"\n")
    assert first == b"RELOADING=1"
    key, _, usec = second.partition(b"=")
    assert key == b"MONOTONIC_USEC"
    assert usec.isdigit()
    assert before <= int(usec) <= after


def test_ready_after_reload_sends_ready(receiver: tuple[socket.socket, str]) -> None:
    """ready_after_reload() sends READY=1 (what ends a reload for systemd)."""
    sock, value = receiver
    n, _ = _notifier(value)
    assert n.ready_after_reload()
    assert _recv(sock) == b"READY=1"


def test_stopping_watchdog_status(receiver: tuple[socket.socket, str]) -> None:
    """stopping(), watchdog() and status() each send their one exact message."""
    sock, value = receiver
    n, _ = _notifier(value)
    assert n.stopping()
    assert n.watchdog()
    assert n.status("reloading: 3 policies")
    assert n.stopping(status="table kept")
    assert _recv(sock) == b"STOPPING=1"
    assert _recv(sock) == b"WATCHDOG=1"
    assert _recv(sock) == b"STATUS=reloading: 3 policies"
    assert _recv(sock) == b"STOPPING=1\nSTATUS=table kept"


def test_status_is_one_line(receiver: tuple[socket.socket, str]) -> None:
    """A status with line breaks is sent as one line, so it cannot inject other keys."""
    sock, value = receiver
    n, _ = _notifier(value)
    assert n.status("bad\nREADY=1\r\nend")
    assert _recv(sock) == b"STATUS=bad READY=1 end"


def test_abstract_namespace(abstract_receiver: tuple[socket.socket, str]) -> None:
    """NOTIFY_SOCKET=@name reaches a socket in the abstract namespace."""
    sock, value = abstract_receiver
    n, _ = _notifier(value)
    assert n.enabled
    assert n.ready()
    assert n.watchdog()
    assert _recv(sock) == b"READY=1"
    assert _recv(sock) == b"WATCHDOG=1"


def test_sender_is_this_process(receiver: tuple[socket.socket, str]) -> None:
    """The kernel credits the datagram to our pid, which NotifyAccess=main requires."""
    sock, value = receiver
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    n, _ = _notifier(value)
    assert n.ready()
    data, ancdata, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(12))
    assert data == b"READY=1"
    creds = [d for level, kind, d in ancdata if (level, kind) == (socket.SOL_SOCKET, 2)]
    assert len(creds) == 1  # SCM_CREDENTIALS
    pid, uid, gid = struct.unpack("iII", creds[0][:12])
    assert (pid, uid, gid) == (os.getpid(), os.getuid(), os.getgid())


def test_disabled_without_notify_socket() -> None:
    """Without NOTIFY_SOCKET every method is a no-op returning False, and nothing is logged."""
    logger, out = _logger()
    n = Notifier.from_env({"WATCHDOG_USEC": "30000000"}, logger=logger)
    assert not n.enabled
    assert n.watchdog_interval() is None
    results = [
        n.ready(),
        n.ready(status="x"),
        n.reloading(),
        n.ready_after_reload(),
        n.stopping(),
        n.watchdog(),
        n.status("x"),
    ]
    assert results == [False] * len(results)
    assert out.getvalue() == ""


def test_from_env_defaults_to_os_environ(
    receiver: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """from_env() without arguments reads os.environ and our own pid."""
    sock, value = receiver
    monkeypatch.setenv("NOTIFY_SOCKET", value)
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    n = Notifier.from_env()
    assert n.watchdog_interval() == 5.0
    assert n.ready()
    assert _recv(sock) == b"READY=1"


@pytest.mark.parametrize("value", ["relative/path", "vsock:2:1234", "@"])
def test_unsupported_socket_is_logged_and_disabled(value: str) -> None:
    """An unusable NOTIFY_SOCKET disables the notifier with one warning, never an error."""
    n, out = _notifier(value)
    assert not n.enabled
    assert not n.ready()
    assert out.getvalue().count("event=notify_socket_unsupported") == 1
    assert "level=warning" in out.getvalue()


def test_send_failure_is_logged_once_and_not_raised(tmp_path: Path) -> None:
    """A send to a missing socket returns False, logs one warning per failure streak."""
    path = tmp_path / "gone"
    n, out = _notifier(str(path))
    assert n.ready() is False
    assert n.watchdog() is False
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    assert "level=warning event=notify_failed" in lines[0]
    assert f"socket={path}" in lines[0]
    assert 'message="READY=1"' in lines[0]
    assert "error=" in lines[0]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        assert n.watchdog() is True
        assert sock.recv(4096) == b"WATCHDOG=1"
    assert "event=notify_recovered" in out.getvalue().splitlines()[1]
    assert n.ready() is False
    assert out.getvalue().count("event=notify_failed") == 2


def test_send_to_full_queue_times_out(receiver: tuple[socket.socket, str]) -> None:
    """A receiver that never reads makes sends fail after the timeout, not block forever."""
    _sock, value = receiver
    logger, out = _logger()
    n = Notifier(parse_socket_address(value), logger=logger, timeout=0.05)
    sent = 0
    started = time.monotonic()
    while n.status("x" * 1000):
        sent += 1
        assert sent < 100_000, "the receiver's queue never filled"
    assert sent > 0
    assert time.monotonic() - started < 5.0
    assert n.watchdog() is False
    assert out.getvalue().count("event=notify_failed") == 1
    assert "error=" in out.getvalue()


@pytest.mark.parametrize(
    ("env", "interval"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4243"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, None),
        ({"WATCHDOG_USEC": "1500"}, 0.00075),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "30s"}, None),
        ({"WATCHDOG_USEC": ""}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], interval: float | None) -> None:
    """watchdog_interval() is half of WATCHDOG_USEC, only when WATCHDOG_PID is absent or ours."""
    logger, _ = _logger()
    n = Notifier.from_env({"NOTIFY_SOCKET": "/run/x", **env}, pid=4242, logger=logger)
    assert n.watchdog_interval() == interval


def test_parse_socket_address() -> None:
    """Paths stay strings, @names become NUL-prefixed bytes, anything else is None."""
    assert parse_socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert parse_socket_address("@org/sd") == b"\0org/sd"
    assert parse_socket_address("") is None
    assert parse_socket_address("notify") is None
    assert parse_socket_address("vsock:2:1") is None


def test_parse_watchdog_usec() -> None:
    """The timeout applies only to the pid WATCHDOG_PID names, and must be positive."""
    assert parse_watchdog_usec("20000000", None, 7) == 20_000_000
    assert parse_watchdog_usec("20000000", "7", 7) == 20_000_000
    assert parse_watchdog_usec("20000000", "8", 7) is None
    assert parse_watchdog_usec(None, "7", 7) is None
    assert parse_watchdog_usec("0", None, 7) is None
