"""Unit tests of fenced.log: key=value lines, timestamps unless stderr is the journal."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
import tempfile
from collections.abc import Iterator

import pytest

from fenced.log import Logger, format_line, route_library_logs


def test_lines_are_stable_key_value_pairs() -> None:
    """Fields keep their order; spaces, quotes and newlines are quoted; lists comma-joined."""
    line = format_line(
        "warning",
        "dns_failed",
        [
            ("domain", "api.example.com"),
            ("ips", ["192.0.2.1", "2001:db8::1"]),
            ("error", 'a "b"\nc'),
        ],
    )
    assert line == (
        "level=warning event=dns_failed domain=api.example.com ips=192.0.2.1,2001:db8::1 "
        'error="a \\"b\\"\\nc"'
    )
    assert (
        format_line("info", "x", [("skipped", None), ("empty", "")])
        == 'level=info event=x empty=""'
    )


def test_timestamps_unless_stderr_is_the_journal(monkeypatch: pytest.MonkeyPatch) -> None:
    """A ts= field is written, except when JOURNAL_STREAM names the stream's device:inode."""
    with tempfile.TemporaryFile("w+") as f:
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
        Logger(f).info("started")
        st = os.fstat(f.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        Logger(f).info("again")
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")  # another stream
        Logger(f).info("third")
        f.seek(0)
        first, second, third = f.read().splitlines()
    assert first.startswith("ts=") and first.endswith("level=info event=started")
    assert second == "level=info event=again"
    assert third.startswith("ts=")


def test_level_threshold() -> None:
    """Events below the logger's level are not written."""
    out = io.StringIO()
    log = Logger(out, level="warning")
    log.info("quiet")
    log.error("loud", error="boom")
    assert "quiet" not in out.getvalue()
    assert "event=loud error=boom" in out.getvalue()


def test_booleans_are_written_true_and_false() -> None:
    """A boolean field reads `true`/`false` (as in TOML and JSON), not Python's True/False."""
    assert (
        format_line("info", "stopped", [("table", "fenced"), ("table_kept", True)])
        == "level=info event=stopped table=fenced table_kept=true"
    )
    assert format_line("info", "x", [("ok", False), ("flags", [True, False])]) == (
        "level=info event=x ok=false flags=true,false"
    )


def test_set_level_changes_the_threshold_and_refuses_unknown_names() -> None:
    """set_level takes effect for the next event; an unknown name raises and changes nothing."""
    out = io.StringIO()
    log = Logger(out)
    log.debug("hidden")
    log.set_level("debug")
    log.debug("shown")
    with pytest.raises(ValueError, match="unknown log level 'verbose': use debug, info"):
        log.set_level("verbose")
    log.debug("still_shown")
    assert [line.split("event=")[1] for line in out.getvalue().splitlines()] == [
        "shown",
        "still_shown",
    ]


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, with its handlers and level put back after the test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def test_library_logs_use_the_same_format_and_level(root_logger: logging.Logger) -> None:
    """aiohttp's and asyncio's logging records become key=value lines at fenced's level."""
    out = io.StringIO()
    log = Logger(out, level="info")
    route_library_logs(log)
    route_library_logs(log)  # a second call replaces the first routing: one line per record
    logging.getLogger("aiohttp.server").debug("below the level")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("aiohttp.server").exception("Error handling request")
    loop = asyncio.new_event_loop()
    try:
        loop.call_exception_handler({"message": "Task was destroyed but it is pending!"})
    finally:
        loop.close()
    log.set_level("debug")
    logging.getLogger("aiohttp.web").debug("now shown")
    lines = out.getvalue().splitlines()
    assert len(lines) == 3, lines
    first, second, third = lines
    assert re.fullmatch(
        r"ts=\S+ level=error event=library_log logger=aiohttp\.server "
        r'message="Error handling request" traceback="Traceback \(most recent call last\):'
        r'\\n.*RuntimeError: boom"',
        first,
    ), first
    assert second.endswith(
        "level=error event=library_log logger=asyncio "
        'message="Task was destroyed but it is pending!"'
    )
    assert third.endswith('level=debug event=library_log logger=aiohttp.web message="now shown"')
