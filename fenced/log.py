"""One log line an event, with stable ``key=value`` fields.

``event`` names what happened (``ruleset_installed``, ``dns_failed``, ...); fields such
as ``policy``, ``domain``, ``ips``, ``ttl`` and ``error`` follow in the order given.
Lines carry an ISO timestamp unless stderr is the systemd journal (``JOURNAL_STREAM``
names stderr's device and inode), which stamps lines itself. Booleans are written
``true`` and ``false``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable
from typing import TextIO

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


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


class Logger:
    """Writes ``format_line`` lines to a stream, with timestamps unless it is the journal."""

    def __init__(self, stream: TextIO | None = None, level: str = "info") -> None:
        self.stream = stream or sys.stderr
        self.threshold = _LEVELS[level]
        self.timestamps = not _stderr_is_journal(self.stream)

    def log(self, level: str, event: str, **fields: object) -> None:
        """Write one event at ``level`` (debug, info, warning, error)."""
        if _LEVELS[level] < self.threshold:
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


#: The process-wide logger; ``fenced.__main__`` may replace its stream or level.
log = Logger()
