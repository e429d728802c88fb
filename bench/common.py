"""Helpers shared by the benchmarks: namespaces, processes, statistics and tables.

Everything a benchmark creates lives in network namespaces named
``fbn-<pid>-<n>`` (``/run/netns``); nothing is configured in the host's own namespace.
Namespaces and processes are removed by name/PID when the ``Netns`` context closes
(``tests.netns``, shared with the test bed).
"""

from __future__ import annotations

import itertools
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

from tests.netns import NETNS_DIR, delete_netns, late_link

PREFIX = "fbn"
_counter = itertools.count(1)


def run(argv: Sequence[str], *, input: str | None = None, check: bool = True) -> str:
    """Run ``argv`` and return its stdout; RuntimeError with stderr if it fails."""
    cp = subprocess.run(list(argv), input=input, capture_output=True, text=True, check=False)
    if check and cp.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:6])} failed ({cp.returncode}): {cp.stderr.strip()}")
    return cp.stdout


class Netns:
    """A network namespace made for one benchmark; ``with Netns() as ns: ...``.

    ``ns.name`` is its name, ``ns.path`` its ``/run/netns`` path. Closing kills (by PID)
    every process still inside it, then deletes it. ``lo`` is brought up.
    """

    def __init__(self, tag: str = "x") -> None:
        self.name = f"{PREFIX}-{os.getpid()}-{next(_counter)}{tag}"
        self.path = str(NETNS_DIR / self.name)
        self._made = False

    def __enter__(self) -> Netns:
        """Create the namespace."""
        run(["ip", "netns", "add", self.name])
        self._made = True
        self.ip("link set lo up")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Kill what is left inside and delete the namespace."""
        self.close()

    def close(self) -> None:
        """See ``__exit__`` (idempotent)."""
        if not self._made:
            return
        self._made = False
        delete_netns(self.name)

    def ip(self, *commands: str) -> None:
        """Run ``ip -n NAME -batch`` with ``commands``."""
        run(["ip", "-n", self.name, "-batch", "-"], input="\n".join(commands) + "\n")

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` prefixed to run inside the namespace (nsenter, not ip netns exec)."""
        return ["nsenter", f"--net={self.path}", "--", *argv]

    def exec(self, argv: Sequence[str], *, input: str | None = None, check: bool = True) -> str:
        """Run ``argv`` inside the namespace; return stdout."""
        return run(self.argv(argv), input=input, check=check)

    def nft(self, script: str) -> None:
        """Load an nft script (``nft -f -``) inside the namespace."""
        self.exec(["nft", "-f", "-"], input=script)

    def spawn(
        self, argv: Sequence[str], *, stdout: int | None = subprocess.PIPE
    ) -> subprocess.Popen[str]:
        """Start ``argv`` inside the namespace (stdout piped, stderr inherited)."""
        return subprocess.Popen(self.argv(argv), stdout=stdout, stdin=subprocess.DEVNULL, text=True)

    def sysctl(self, *settings: str) -> None:
        """Set sysctls inside the namespace (``key=value`` each)."""
        self.exec(["sysctl", "-q", "-w", *settings])


def veth_pair(
    a: Netns,
    b: Netns,
    a_addrs: Sequence[str],
    b_addrs: Sequence[str],
    *,
    a_if: str = "va",
    b_if: str = "vb",
) -> None:
    """Join ``a`` and ``b`` by a veth pair ``a_if``/``b_if`` with the given addresses (CIDR)."""
    a.ip(
        f"link add {a_if} type veth peer name {b_if} netns {b.name}",
        *(f"addr add {x} dev {a_if}" + (" nodad" if ":" in x else "") for x in a_addrs),
        f"link set {a_if} up",
    )
    b.ip(
        *(f"addr add {x} dev {b_if}" + (" nodad" if ":" in x else "") for x in b_addrs),
        f"link set {b_if} up",
    )
    for ns, dev in ((a, a_if), (b, b_if)):
        if late_link([(ns.name, dev)], 10) is not None:
            raise RuntimeError(f"{dev} in {ns.name} does not come up")


def py_module(module: str, *args: str) -> list[str]:
    """argv running ``python -m module args`` with this interpreter, from the repo root."""
    return [sys.executable, "-m", module, *args]


def wait_line(proc: subprocess.Popen[str], want: str, timeout: float = 20.0) -> None:
    """Read ``proc``'s stdout until a line equal to ``want``; RuntimeError otherwise."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{proc.args!r} exited before printing {want!r}")
        if line.strip() == want:
            return
    raise RuntimeError(f"{proc.args!r} did not print {want!r} in {timeout} s")


def stop(proc: subprocess.Popen[str]) -> None:
    """Stop a process started by a benchmark (by PID: SIGTERM, then SIGKILL)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# ------------------------------------------------------------------------------ numbers


@dataclass(frozen=True)
class Summary:
    """min/median/max of repeated measurements."""

    lo: float
    med: float
    hi: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        """Summarize ``values`` (at least one)."""
        return cls(min(values), statistics.median(values), max(values), len(values))


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0-100, nearest rank) of ``values``; nan if empty."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(p / 100 * len(s) + 0.5) - 1))
    return s[k]


def fmt(x: float, digits: int = 3) -> str:
    """A number with ``digits`` significant digits (k/M suffix above 10^4)."""
    if math.isnan(x):
        return "-"
    if abs(x) >= 1e6:
        return f"{x / 1e6:.{max(digits - 1, 1)}f}M"
    if abs(x) >= 1e4:
        return f"{x / 1e3:.{max(digits - 2, 0)}f}k"
    if abs(x) >= 10 ** (digits - 1):
        return f"{x:.0f}"
    return f"{x:.{digits}g}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table (pads columns so it also reads well in a terminal)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    sep = "| " + " | ".join("-" * w for w in widths) + " |"
    body = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows
    ]
    return "\n".join([line, sep, *body])


def mmm(s: Summary, digits: int = 3) -> str:
    """``min / median / max`` as text."""
    return f"{fmt(s.lo, digits)} / {fmt(s.med, digits)} / {fmt(s.hi, digits)}"


def machine() -> str:
    """One line describing this machine: cores, kernel, nft and Python versions."""
    nft = run(["nft", "--version"], check=False).strip()
    return (
        f"{os.cpu_count()} cores, kernel {os.uname().release}, {nft}, "
        f"Python {sys.version.split()[0]}, load avg {os.getloadavg()[0]:.2f} at start"
    )
