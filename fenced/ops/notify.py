"""The systemd notification protocol (sd_notify), without libsystemd.

A service of ``Type=notify`` tells systemd how it is doing by sending datagrams of
newline-separated ``KEY=VALUE`` lines to the AF_UNIX socket named in ``NOTIFY_SOCKET``:
``READY=1`` once it serves, ``RELOADING=1`` while it reloads, ``STOPPING=1`` when it
shuts down, ``WATCHDOG=1`` as a keep-alive, ``STATUS=...`` as a one-line status for
``systemctl status``. See sd_notify(3).

Outside systemd (``NOTIFY_SOCKET`` unset) every method is a no-op, so the daemon calls
them unconditionally. Sending never raises: a failed notification is logged and the
daemon goes on (systemd will act on what it did not hear, e.g. a missed watchdog).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

from fenced.log import Logger, log

#: How long one send may block when the receiver's queue is full (seconds).
SEND_TIMEOUT = 1.0


def parse_socket_address(value: str) -> str | bytes | None:
    """The ``socket.sendto`` address for a ``NOTIFY_SOCKET`` value, or None if unusable.

    ``/path`` is a file-system socket (returned unchanged); ``@name`` is a socket in the
    abstract namespace (returned as bytes with a leading NUL). Anything else (an empty
    or relative path, systemd's ``vsock:`` addresses) is unsupported and gives None.
    """
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return b"\0" + os.fsencode(value[1:])
    return None


def parse_watchdog_usec(usec: str | None, watchdog_pid: str | None, pid: int) -> int | None:
    """The watchdog timeout in µs that applies to process ``pid``, or None.

    None when ``usec`` is missing, not a positive integer, or when ``watchdog_pid`` is
    set and names another process (systemd meant the watchdog for that one).
    """
    if not usec:
        return None
    if watchdog_pid:
        try:
            if int(watchdog_pid) != pid:
                return None
        except ValueError:
            return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value if value > 0 else None


def _one_line(text: str) -> str:
    """``text`` with line breaks turned into spaces (a STATUS value is one line)."""
    return " ".join(text.splitlines())


class Notifier:
    """Sends sd_notify messages to one socket; a no-op when ``address`` is None.

    ``address`` is a ``socket.sendto`` address (see :func:`parse_socket_address`),
    ``watchdog_usec`` the watchdog timeout systemd set for this process (None: no
    watchdog). Every sending method returns True when the datagram was sent and False
    when the notifier is disabled or the send failed (which is logged); none raises.
    A failed send is logged as a warning once, until a send succeeds again, so that a
    watchdog ping every few seconds cannot flood the log.
    """

    def __init__(
        self,
        address: str | bytes | None,
        watchdog_usec: int | None = None,
        *,
        logger: Logger = log,
        timeout: float = SEND_TIMEOUT,
    ) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec
        self.log = logger
        self.timeout = timeout
        self._failing = False

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        pid: int | None = None,
        logger: Logger = log,
    ) -> Notifier:
        """A notifier for the socket and watchdog systemd gave this process.

        Reads ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` from ``environ``
        (``os.environ`` by default); ``pid`` is this process's id (``os.getpid()`` by
        default) and decides whether ``WATCHDOG_PID`` is ours. An unset
        ``NOTIFY_SOCKET`` gives a disabled notifier; an unsupported one is logged and
        gives a disabled notifier too. The environment is not changed.
        """
        env = os.environ if environ is None else environ
        own_pid = os.getpid() if pid is None else pid
        raw = env.get("NOTIFY_SOCKET", "")
        address = parse_socket_address(raw) if raw else None
        if raw and address is None:
            logger.warning(
                "notify_socket_unsupported",
                socket=raw,
                reason="not an absolute path or @abstract name",
            )
        watchdog = parse_watchdog_usec(env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID"), own_pid)
        return cls(address, watchdog if address is not None else None, logger=logger)

    @property
    def enabled(self) -> bool:
        """Whether messages are sent anywhere (False outside systemd)."""
        return self.address is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between two ``watchdog()`` calls: half the watchdog timeout, or None.

        None means no watchdog applies to this process (and ``watchdog()`` need not be
        called). Half the timeout is what sd_watchdog_enabled(3) recommends.
        """
        if self.watchdog_usec is None or not self.enabled:
            return None
        return self.watchdog_usec / 2 / 1_000_000

    # ------------------------------------------------------------------ messages
    def ready(self, status: str | None = None) -> bool:
        """Send ``READY=1`` (start-up is done), with ``STATUS=status`` if given."""
        return self.send(("READY", "1"), ("STATUS", status))

    def reloading(self, status: str | None = None) -> bool:
        """Send ``RELOADING=1`` and ``MONOTONIC_USEC=<now>`` as a reload begins.

        ``MONOTONIC_USEC`` is CLOCK_MONOTONIC in µs, which ``Type=notify-reload`` needs to
        tell this reload from an earlier one. Follow with :meth:`ready_after_reload`.
        """
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send(("RELOADING", "1"), ("MONOTONIC_USEC", str(now_usec)), ("STATUS", status))

    def ready_after_reload(self, status: str | None = None) -> bool:
        """Send ``READY=1`` again: the reload is over (whether it succeeded or not)."""
        return self.send(("READY", "1"), ("STATUS", status))

    def stopping(self, status: str | None = None) -> bool:
        """Send ``STOPPING=1``: the service is shutting down."""
        return self.send(("STOPPING", "1"), ("STATUS", status))

    def watchdog(self) -> bool:
        """Send ``WATCHDOG=1``, the keep-alive due every :meth:`watchdog_interval` s."""
        return self.send(("WATCHDOG", "1"))

    def status(self, text: str) -> bool:
        """Send ``STATUS=text`` (line breaks become spaces), shown by ``systemctl status``."""
        return self.send(("STATUS", text))

    def send(self, *fields: tuple[str, str | None]) -> bool:
        """Send ``KEY=VALUE`` lines (fields whose value is None are left out) as one datagram.

        Values are made one line. Returns True when sent, False when disabled, when no
        field is left, or when the send failed (logged, never raised).
        """
        if self.address is None:
            return False
        lines = [f"{key}={_one_line(value)}" for key, value in fields if value is not None]
        if not lines:
            return False
        message = "\n".join(lines)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.settimeout(self.timeout)
                s.sendto(message.encode(), self.address)
        except OSError as exc:
            if not self._failing:
                self._failing = True
                self.log.warning(
                    "notify_failed",
                    socket=_shown(self.address),
                    message=lines[0],
                    error=exc.strerror or str(exc),
                )
            return False
        if self._failing:
            self._failing = False
            self.log.info("notify_recovered", socket=_shown(self.address))
        return True


def _shown(address: str | bytes) -> str:
    """An address as ``NOTIFY_SOCKET`` writes it (``@name`` for abstract ones)."""
    if isinstance(address, bytes):
        return "@" + os.fsdecode(address[1:])
    return address


__all__ = ["SEND_TIMEOUT", "Notifier", "parse_socket_address", "parse_watchdog_usec"]
