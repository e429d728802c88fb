"""Unit tests of tests.netns: which leftovers are stale, and killing processes by PID."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

from tests.netns import alive, kill_pids, leftovers

PATTERN = re.compile(r"^fdt-(\d+)-\d+-(?:[cs]|k\d+)$")


def test_leftovers_are_names_of_dead_owners_only() -> None:
    """Only names of the maker's scheme whose owner PID is dead are returned, in order."""
    names = ["fdt-10-1-c", "fdt-20-1-s", "fdt-10-2-k3", "fbn-10-1x", "fdt-10-1-x", "fdt-x-1-c"]
    assert leftovers(names, PATTERN, lambda pid: pid == 20) == ["fdt-10-1-c", "fdt-10-2-k3"]


def test_leftovers_ask_about_each_owner() -> None:
    """The liveness check is asked with the PID from the name, and a live owner keeps all."""
    asked: list[int] = []

    def is_alive(pid: int) -> bool:
        asked.append(pid)
        return True

    assert leftovers(["fdt-7-1-c", "fdt-8-2-s", "other"], PATTERN, is_alive) == []
    assert asked == [7, 8]


def test_alive_sees_this_process_and_not_a_reaped_child() -> None:
    """alive() is true for this process and false once a child has exited and been reaped."""
    assert alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not alive(child.pid)


def test_kill_pids_escalates_to_sigkill() -> None:
    """A child ignoring SIGTERM is killed with SIGKILL after the grace time and reaped."""
    code = (
        "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(60)"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    started = time.monotonic()
    assert kill_pids([child.pid], grace=0.2) == []
    assert time.monotonic() - started >= 0.2  # SIGTERM did not end it
    assert not alive(child.pid)


def test_kill_pids_never_signals_itself_or_init() -> None:
    """PID 1 and the calling process are left alone (and not reported as survivors)."""
    assert kill_pids([1, os.getpid()], grace=0.1) == []
    assert alive(os.getpid())
