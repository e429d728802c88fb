"""Namespace cleanup on the real system: processes inside are killed by PID, namespaces go."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bed.bed import reap_stale
from tests.netns import NETNS_DIR, alive, delete_netns, late_link, scratch_netns

pytestmark = [
    pytest.mark.bed,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("nsenter") is None,
        reason="needs root, ip and nsenter",
    ),
]

#: A process that ignores SIGTERM, so only SIGKILL ends it.
STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(60)"
)


def _start_inside(path: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        ["nsenter", f"--net={path}", "--", sys.executable, "-c", STUBBORN],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


@pytest.fixture
def dead_pid() -> int:
    """The PID of a child that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture
def made() -> Iterator[list[str]]:
    """Names of namespaces a test made by hand; deleted afterwards if still there."""
    names: list[str] = []
    yield names
    for name in names:
        delete_netns(name)


def test_scratch_netns_kills_what_runs_inside_and_goes() -> None:
    """Leaving scratch_netns kills a process inside (ignoring SIGTERM) and deletes the namespace."""
    with scratch_netns("fdk") as path:
        proc = _start_inside(path)
        assert Path(path).exists() and alive(proc.pid)
    assert not Path(path).exists()
    assert not alive(proc.pid)


def test_reap_stale_removes_only_namespaces_of_dead_owners(dead_pid: int, made: list[str]) -> None:
    """reap_stale deletes fdt-<dead pid>-... (killing its process) and keeps a live owner's."""
    stale, live = f"fdt-{dead_pid}-1-c", f"fdt-{os.getpid()}-9999-s"
    for name in (stale, live):
        subprocess.run(["ip", "netns", "add", name], check=True)
        made.append(name)
    proc = _start_inside(str(NETNS_DIR / stale))
    reap_stale()
    assert not (NETNS_DIR / stale).exists()
    assert not alive(proc.pid)
    assert (NETNS_DIR / live).exists()


def test_late_link_waits_for_carrier_and_names_a_link_that_stays_down() -> None:
    """late_link is None once both veth ends are up and names the end left down otherwise."""
    with scratch_netns("fdk") as a_path, scratch_netns("fdk") as b_path:
        a, b = Path(a_path).name, Path(b_path).name
        subprocess.run(
            ["ip", "-n", a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", b],
            check=True,
        )
        subprocess.run(["ip", "-n", a, "link", "set", "va", "up"], check=True)
        assert late_link([(a, "va")], 0.3) == (a, "va")  # no carrier while vb is down
        subprocess.run(["ip", "-n", b, "link", "set", "vb", "up"], check=True)
        assert late_link([(a, "va"), (b, "vb")], 10) is None
        with pytest.raises(RuntimeError):
            late_link([(a, "no_such_dev")], 1)
