"""Network namespaces made by tests and benchmarks: the processes inside, and their cleanup.

Shared by ``tests/bed`` and ``bench`` (which runs as ``python -m bench.NAME`` from the repo
root, so ``tests.netns`` is importable there too). Processes are only ever stopped by PID,
never by name; namespaces are named ``<prefix>-<owner pid>-...`` by their makers, so that
leftovers of runs whose process is gone can be told apart from those of live runs
(:func:`leftovers`, pure). Nothing here touches the host's own network namespace.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

__all__ = [
    "NETNS_DIR",
    "alive",
    "delete_netns",
    "kill_pids",
    "late_link",
    "leftovers",
    "netns_pids",
    "reap",
    "scratch_netns",
    "wait_gone",
]

NETNS_DIR = Path("/run/netns")
_counter = itertools.count()


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError, ProcessLookupError):
        return False


def reap(pids: Iterable[int]) -> None:
    """Collect the exit status of those ``pids`` that are our (possibly adopted) children."""
    for pid in pids:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait up to ``timeout`` s for ``pids`` to exit (reaping them); return those still alive."""
    deadline = time.monotonic() + timeout
    while True:
        reap(pids)
        pids = [p for p in pids if alive(p)]
        if not pids or time.monotonic() >= deadline:
            return pids
        time.sleep(0.02)


def kill_pids(pids: Iterable[int], grace: float = 2.0) -> list[int]:
    """SIGTERM ``pids``, SIGKILL those alive after ``grace`` s; return those still alive.

    PID 1 and this process are never signalled. After SIGKILL it waits up to 5 s.
    """
    targets = [p for p in pids if p > 1 and p != os.getpid()]
    left = targets
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if not left:
            break
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        left = wait_gone(left, wait)
    reap(targets)
    return left


def netns_pids(name: str) -> list[int]:
    """PIDs of the processes whose network namespace is ``/run/netns/<name>`` ([] if none)."""
    try:
        st = os.stat(NETNS_DIR / name)
    except FileNotFoundError:
        return []
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ns = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (ns.st_dev, ns.st_ino) == (st.st_dev, st.st_ino):
            out.append(int(entry))
    return out


def delete_netns(name: str, grace: float = 2.0) -> list[int]:
    """Kill (by PID) what runs in namespace ``name``, then delete it; return PIDs that survived.

    A namespace that does not exist is not an error (``ip netns delete`` fails quietly).
    """
    left = kill_pids(netns_pids(name), grace=grace)
    subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
    return left


@contextlib.contextmanager
def scratch_netns(prefix: str) -> Iterator[str]:
    """A new network namespace ``<prefix>-<our pid>-<n>``; yields its ``/run/netns`` path.

    On leaving, what still runs inside is killed by PID and the namespace is deleted (also
    when the body raised). Raises CalledProcessError if ``ip netns add`` fails.
    """
    name = f"{prefix}-{os.getpid()}-{next(_counter)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield str(NETNS_DIR / name)
    finally:
        delete_netns(name)


def late_link(links: Sequence[tuple[str, str]], timeout: float) -> tuple[str, str] | None:
    """Wait until each ``(namespace name, device)`` has carrier (LOWER_UP), ``timeout`` s in all.

    Returns the first link still down at the deadline, or None when all are up. Raises
    RuntimeError (with ip's message) if ``ip link show`` fails, e.g. for a missing device.
    """
    deadline = time.monotonic() + timeout
    for ns, dev in links:
        while True:
            cp = subprocess.run(
                ["ip", "-n", ns, "-o", "link", "show", dev],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if cp.returncode != 0:
                raise RuntimeError(f"ip -n {ns} link show {dev} failed: {cp.stderr.strip()}")
            if "LOWER_UP" in cp.stdout:
                break
            if time.monotonic() > deadline:
                return ns, dev
            time.sleep(0.01)
    return None


def leftovers(
    names: Iterable[str], pattern: re.Pattern[str], is_alive: Callable[[int], bool]
) -> list[str]:
    r"""The ``names`` that ``pattern`` matches and whose owner (group 1, a PID) is dead.

    ``pattern`` is the naming scheme of one maker (e.g. ``^fdt-(\d+)-\d+-[cs]$``); names
    it does not match, and those of live owners, are never returned. Pure: ``is_alive``
    is asked about each owner (:func:`alive` for real use).
    """
    out = []
    for name in names:
        m = pattern.match(name)
        if m is not None and not is_alive(int(m.group(1))):
            out.append(name)
    return out
