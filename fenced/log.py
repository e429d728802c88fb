"""One log line an event, with stable ``key=value`` fields.

``event`` names what happened (``ruleset_installed``, ``dns_failed``, ...); fields such
as ``policy``, ``domain``, ``ips``, ``ttl`` and ``error`` follow in the order given.
Lines carry an ISO timestamp unless stderr is the systemd journal (``JOURNAL_STREAM``
names stderr's device and inode), which stamps lines itself. Booleans are written
``true`` and ``false``.

Libraries that log through the standard :mod:`logging` module (aiohttp, asyncio) are
written in the same format once :func:`route_library_logs` ran: one
``event=library_log`` line per record, with its ``logger`` and ``message`` (and the
``traceback`` of an exception).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable
from typing import Final, TextIO

from fenced.core.model import LogLevel

#: Each level's rank; the numbers are the standard ``logging`` module's.
_LEVELS: Final[dict[str, int]] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _stderr_is_journal(stream: TextIO) -> bool:
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in value.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def _text(value: object) -> str:
    """A value as written in a line: booleans as ``true``/``false``, others with ``str``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _quote(value: object) -> str:
    if isinstance(value, (list, tuple, set, frozenset)):
        text = ",".join(_text(v) for v in value)
    else:
        text = _text(value)
    if text == "" or any(c in text for c in ' "=\n\t'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def format_line(level: str, event: str, fields: Iterable[tuple[str, object]]) -> str:
    """The text of one log line, without timestamp. Pure."""
    parts = [f"level={level}", f"event={event}"]
    parts += [f"{k}={_quote(v)}" for k, v in fields if v is not None]
    return " ".join(parts)


def _rank(level: str) -> int:
    """The rank of a level name; ValueError naming the allowed ones when it is none."""
    try:
        return _LEVELS[level]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}: use {', '.join(_LEVELS)}") from None


class Logger:
    """Writes ``format_line`` lines to a stream, with timestamps unless it is the journal.

    Events below ``level`` (``debug`` < ``info`` < ``warning`` < ``error``) are not
    written; an unknown level name raises ``ValueError``.
    """

    def __init__(self, stream: TextIO | None = None, level: str = "info") -> None:
        self.stream = stream or sys.stderr
        self.threshold = _rank(level)
        self.timestamps = not _stderr_is_journal(self.stream)

    def set_level(self, level: str) -> None:
        """Write only events at ``level`` or above from now on, library records included.

        Raises ``ValueError`` for an unknown level name (and changes nothing).
        """
        self.threshold = _rank(level)
        root = logging.getLogger()
        if any(isinstance(h, LibraryHandler) and h.target is self for h in root.handlers):
            root.setLevel(self.threshold)

    def log(self, level: str, event: str, **fields: object) -> None:
        """Write one event at ``level`` (debug, info, warning, error)."""
        if _rank(level) < self.threshold:
            return
        line = format_line(level, event, fields.items())
        if self.timestamps:
            now = time.time()
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
            line = f"ts={stamp}.{int(now % 1 * 1000):03d}Z {line}"
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def debug(self, event: str, **fields: object) -> None:
        """Log at debug level."""
        self.log("debug", event, **fields)

    def info(self, event: str, **fields: object) -> None:
        """Log at info level."""
        self.log("info", event, **fields)

    def warning(self, event: str, **fields: object) -> None:
        """Log at warning level."""
        self.log("warning", event, **fields)

    def error(self, event: str, **fields: object) -> None:
        """Log at error level."""
        self.log("error", event, **fields)


def _level_of(levelno: int) -> LogLevel:
    """The fenced level of a standard ``logging`` level number (CRITICAL counts as error)."""
    if levelno >= logging.ERROR:
        return "error"
    if levelno >= logging.WARNING:
        return "warning"
    if levelno >= logging.INFO:
        return "info"
    return "debug"


class LibraryHandler(logging.Handler):
    """Writes standard ``logging`` records to ``target`` as ``event=library_log`` lines.

    Fields: ``logger`` (the record's logger name, e.g. ``aiohttp.server``), ``message``
    (the formatted message) and, when the record carries an exception, ``traceback``.
    """

    def __init__(self, target: Logger) -> None:
        super().__init__()
        self.target = target
        self._tracebacks = logging.Formatter()

    def emit(self, record: logging.LogRecord) -> None:
        """Write ``record`` through the target logger (its own level applies)."""
        try:
            trace = None
            if record.exc_info:
                trace = self._tracebacks.formatException(record.exc_info)
            self.target.log(
                _level_of(record.levelno),
                "library_log",
                logger=record.name,
                message=record.getMessage(),
                traceback=trace,
            )
        except Exception:  # logging must never raise into the code that logs
            self.handleError(record)


def route_library_logs(target: Logger) -> None:
    """Send every standard ``logging`` record (aiohttp, asyncio, ...) through ``target``.

    Adds one :class:`LibraryHandler` to the root logger (replacing one added before) and
    sets the root level to ``target``'s, which :meth:`Logger.set_level` keeps in step.
    With a handler on the root logger, ``logging``'s last-resort printing of bare
    messages to stderr no longer happens.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, LibraryHandler):
            root.removeHandler(handler)
    root.addHandler(LibraryHandler(target))
    root.setLevel(target.threshold)


#: The process-wide logger; ``fenced.__main__`` may replace its stream or level.
log = Logger()
