"""Unit tests of fenced.log: key=value lines, timestamps unless stderr is the journal."""

from __future__ import annotations

import io
import os
import tempfile

import pytest

from fenced.log import Logger, format_line


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
