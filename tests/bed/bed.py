"""The test bed: two network namespaces, servers, confined probes and cgroups.

``Bed`` is a context manager. Entering it creates a client namespace (where fenced and the
confined processes run) and a server namespace ("the internet", holding every server
address on ``lo``) joined by a veth pair, and starts in the server namespace a TCP/UDP echo
server, the resolver (``bed.dns``, a ``Zone`` the test edits) and a rogue DNS server.
Leaving it kills every process it started or that is still in its namespaces or cgroups
(by PID), removes its cgroups and namespaces and its temporary directory, even when the
test failed. Nothing is ever configured in the host's own network namespace.

Names are unique per process and bed (``fdt-<pid>-<n>-c``/``-s``, cgroup parent
``fenced-test-<pid>-<n>``), so parallel runs do not collide; leftovers of runs whose
process is gone are removed when the first bed of a process starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import itertools
import json
import os
import queue
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, ClassVar, Literal

from tests.bed import constants as C
from tests.bed.zone import QueryLog, Zone
from tests.netns import (
    NETNS_DIR,
    alive,
    delete_netns,
    kill_pids,
    late_link,
    leftovers,
    netns_pids,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
CGROUP_FS = Path("/sys/fs/cgroup")
NS_PREFIX = "fdt"
CGROUP_PREFIX = "fenced-test"
CLIENT_IF = "veth0"
SERVER_IF = "veth1"
READY_TIMEOUT = 20.0
KILL_GRACE = 2.0
PROBE_MODULE = "tests.bed.probe"
PR_SET_CHILD_SUBREAPER = 36

Namespace = Literal["client", "server"]

_counter = itertools.count(1)
_reaped: list[bool] = []  # non-empty once reap_stale ran in this process


class BedError(RuntimeError):
    """The bed could not be set up, a helper process misbehaved, or cleanup left something."""


# --------------------------------------------------------------------------------------
# small helpers


def cgroup2_mount() -> Path | None:
    """Return where the cgroup2 hierarchy is mounted (from /proc/self/mounts), or None."""
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[2] == "cgroup2":
                return Path(parts[1].replace("\\040", " "))
    return None


def _check(cp: subprocess.CompletedProcess[str], what: str) -> subprocess.CompletedProcess[str]:
    if cp.returncode != 0:
        raise BedError(f"{what} failed ({cp.returncode}): {cp.args}\n{cp.stdout}{cp.stderr}")
    return cp


def _host_run(argv: Sequence[str], input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a host command (only ``ip netns add/del`` and ``ip -n NS``) and check it."""
    cp = subprocess.run(
        list(argv), input=input, capture_output=True, text=True, timeout=60, check=False
    )
    return _check(cp, " ".join(argv[:3]))


def become_subreaper() -> None:
    """Make this process the reaper of its orphaned descendants (PR_SET_CHILD_SUBREAPER).

    PID 1 on some machines (e.g. a Firecracker init) never reaps orphans, so a process a
    test daemonized would stay a zombie forever; as a subreaper the bed can reap it.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise BedError(f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(ctypes.get_errno())}")


def _world_reachable(path: Path) -> bool:
    """Whether any user can search every directory above ``path`` and read/exec it."""
    p = path.resolve()
    for d in [p, *p.parents]:
        try:
            mode = d.stat().st_mode
        except OSError:
            return False
        if not mode & stat.S_IXOTH:
            return False
    return True


def reap_stale() -> None:
    """Remove namespaces, cgroups and temporary directories of dead earlier test runs.

    Only names made by this module (``fdt-<pid>-...``, ``fenced-test-<pid>-...``) whose
    ``<pid>`` is no longer alive are touched; processes still inside them are killed by
    PID first.
    """
    # -c/-s: client and server; -k<n>: containers (tests/bed/containers.py).
    pat = re.compile(rf"^{NS_PREFIX}-(\d+)-\d+-(?:[cs]|k\d+)$")
    with contextlib.suppress(FileNotFoundError):
        for name in leftovers(os.listdir(NETNS_DIR), pat, alive):
            delete_netns(name, grace=0.5)
    tmp = Path(tempfile.gettempdir())
    tpat = re.compile(rf"^{NS_PREFIX}-(\d+)-\d+-")
    for name in leftovers((d.name for d in tmp.iterdir()), tpat, alive):
        if (tmp / name).is_dir():
            shutil.rmtree(tmp / name, ignore_errors=True)
    mount = cgroup2_mount()
    if mount is None:
        return
    cpat = re.compile(rf"^{CGROUP_PREFIX}-(\d+)-\d+$")
    for name in leftovers((d.name for d in mount.iterdir()), cpat, alive):
        if (mount / name).is_dir():
            with contextlib.suppress(OSError):
                _remove_cgroup_tree(mount / name)


def _cgroup_pids(d: Path) -> list[int]:
    try:
        return [int(x) for x in (d / "cgroup.procs").read_text().split()]
    except FileNotFoundError:
        return []


def _remove_cgroup_tree(top: Path) -> None:
    """Kill (by PID) the processes of ``top`` and its descendants, then rmdir bottom-up."""
    dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts))
    dirs = [top, *dirs]
    pids = [pid for d in dirs for pid in _cgroup_pids(d)]
    left = kill_pids(pids)
    if left:
        raise BedError(f"processes {left} in {top} survived SIGKILL")
    for d in reversed(dirs):
        deadline = time.monotonic() + 5.0
        while True:
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError as e:
                if e.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise BedError(f"cannot remove cgroup {d}: {e}") from e
                kill_pids(_cgroup_pids(d), grace=0.1)
                time.sleep(0.02)


# --------------------------------------------------------------------------------------
# results and process handles


@dataclass(frozen=True)
class ProbeResult:
    """The JSON outcome of one probe (``tests.bed.probe``); ``result["key"]`` reads it."""

    outcome: str
    """E.g. "connected", "reply", "answer", "refused", "timeout", "denied", "unreachable"."""
    data: dict[str, Any]
    """The whole JSON object printed by the probe (``outcome`` included)."""
    stderr: str = ""

    def __getitem__(self, key: str) -> Any:
        """Return ``data[key]``."""
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        """Return ``data.get(key, default)``."""
        return self.data.get(key, default)

    @classmethod
    def parse_line(cls, line: str, stderr: str = "") -> ProbeResult:
        """Build a result from one JSON line printed by a probe."""
        data = json.loads(line)
        return cls(str(data.get("outcome", data.get("event", ""))), data, stderr)

    @classmethod
    def from_completed(cls, cp: subprocess.CompletedProcess[str]) -> ProbeResult:
        """Build a result from a finished probe; BedError if it printed no outcome."""
        for line in cp.stdout.splitlines():
            if line.startswith("{"):
                res = cls.parse_line(line, cp.stderr)
                if "outcome" in res.data:
                    return res
        raise BedError(f"probe printed no outcome (exit {cp.returncode}): {cp.args}\n{cp.stderr}")


@dataclass(frozen=True)
class Cgroup:
    """A cgroup2 directory made by ``Bed.cgroup``."""

    path: str
    """Path relative to the cgroup2 mount, no leading slash (what fenced's config takes)."""
    id: int
    """The cgroup id: the inode number of its directory (what nft matches over netlink)."""
    abspath: Path
    """The directory in the file system."""

    @property
    def level(self) -> int:
        """Depth in the cgroup2 hierarchy (for ``socket cgroupv2 level N``)."""
        return len(self.path.split("/"))

    @property
    def nft_path(self) -> str:
        """The path as ``nft``'s text syntax wants it (relative to /sys/fs/cgroup)."""
        try:
            return str(self.abspath.relative_to(CGROUP_FS))
        except ValueError:
            return self.path


@dataclass(eq=False)
class Proc:
    """A process started by the bed (``Bed.spawn``); killed by PID when the bed closes.

    A thread drains its stdout into a queue as it arrives, so a chatty process never blocks
    on a full pipe; read the lines with ``readline``/``read_json``.
    """

    popen: subprocess.Popen[bytes]
    argv: list[str]
    stderr_path: Path
    first: ProbeResult | None = None
    """For probes: the first outcome line (``listening``, or the ``hold`` connect outcome)."""
    _lines: queue.Queue[bytes | None] = field(default_factory=queue.Queue)
    _eof: bool = False

    def __post_init__(self) -> None:
        """Start draining stdout."""
        out = self.popen.stdout
        if out is None:
            self._eof = True
            return
        threading.Thread(target=self._drain, args=(out,), daemon=True).start()

    def _drain(self, out: IO[bytes]) -> None:
        try:
            for line in out:
                self._lines.put(line)
        except (OSError, ValueError):
            pass
        finally:
            self._lines.put(None)
            with contextlib.suppress(OSError):
                out.close()

    @property
    def pid(self) -> int:
        """The process id (stable through nsenter/sh/setpriv: they exec)."""
        return self.popen.pid

    @property
    def stdin(self) -> IO[bytes] | None:
        """The process's stdin pipe (None if started without one)."""
        return self.popen.stdin

    @property
    def alive(self) -> bool:
        """Whether the process has not exited yet."""
        return self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit status, or None while it runs."""
        return self.popen.poll()

    def send(self, line: str) -> None:
        """Write ``line`` and a newline to stdin and flush."""
        if self.popen.stdin is None:
            raise BedError("process has no stdin pipe")
        self.popen.stdin.write(line.encode() + b"\n")
        self.popen.stdin.flush()

    def readline(self, timeout: float = 10.0) -> str | None:
        """Return the next stdout line (without newline), or None at end of output.

        Raises TimeoutError if no line arrives within ``timeout`` seconds.
        """
        if self._eof:
            return None
        try:
            raw = self._lines.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            raise TimeoutError(f"no output line from {self.argv} within {timeout} s") from None
        if raw is None:
            self._eof = True
            return None
        return raw.decode(errors="replace").rstrip("\n")

    def read_json(self, timeout: float = 10.0) -> ProbeResult:
        """Return the next JSON line from stdout as a ``ProbeResult`` (skips other lines).

        Raises BedError at end of output, TimeoutError after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            line = self.readline(max(deadline - time.monotonic(), 0.0))
            if line is None:
                raise BedError(f"{self.argv} ended: {self.stderr_text()}")
            if line.startswith("{"):
                return ProbeResult.parse_line(line)

    def exchange(self, line: str, timeout: float = 10.0) -> ProbeResult:
        """For a ``hold`` probe: send ``line`` through the held connection, return the outcome."""
        self.send(line)
        return self.read_json(timeout)

    def stderr_text(self) -> str:
        """Return what the process wrote to stderr so far."""
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait(self, timeout: float = 10.0) -> int:
        """Wait for the process to exit and return its status (TimeoutExpired if it does not)."""
        return self.popen.wait(timeout)

    def kill(self, grace: float = KILL_GRACE) -> int | None:
        """Stop the process: SIGTERM, then SIGKILL after ``grace`` s; return its exit status."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        if self.popen.stdin is not None:
            with contextlib.suppress(OSError):
                self.popen.stdin.close()
        return self.popen.returncode


class ServerProcess:
    """A server of the bed (echo, resolver, rogue resolver) that can be stopped and restarted."""

    def __init__(self, bed: Bed, name: str, argv: list[str]) -> None:
        """Describe the server ``name`` run as ``argv`` (as root) in the server namespace."""
        self._bed = bed
        self.name = name
        self.argv = argv
        self.proc: Proc | None = None

    def launch(self) -> None:
        """Start the process without waiting for it (see ``wait_ready``)."""
        self.proc = self._bed.spawn(self.argv, ns="server", stdin=False, label=self.name)

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Wait until the server prints ``ready``; BedError if it exits or takes too long."""
        assert self.proc is not None
        try:
            while True:
                line = self.proc.readline(timeout)
                if line is None:
                    raise BedError(f"{self.name} server exited: {self.proc.stderr_text()}")
                if line.strip() == "ready":
                    return
        except TimeoutError as e:
            raise BedError(f"{self.name} not ready: {self.proc.stderr_text()}") from e

    def start(self) -> None:
        """Start the server and wait until it is ready."""
        self.launch()
        self.wait_ready()

    def stop(self) -> None:
        """Kill the server by PID (its addresses stay: UDP queries get port unreachable)."""
        if self.proc is not None:
            self.proc.kill()
            self._bed._forget(self.proc)
            self.proc = None

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self.proc is not None and self.proc.alive

    @property
    def pid(self) -> int | None:
        """The server's PID, or None when stopped."""
        return self.proc.pid if self.proc is not None else None


# --------------------------------------------------------------------------------------
# the bed


class Bed:
    """Two namespaces, servers, probes and cgroups for one test; see the module docstring.

    Use as ``with Bed() as bed:`` (or the pytest fixture ``bed``). Addresses and identities
    are class attributes (copies of ``tests.bed.constants``).
    """

    CLIENT_V4: ClassVar[str] = C.CLIENT_V4
    CLIENT_V6: ClassVar[str] = C.CLIENT_V6
    GATEWAY_V4: ClassVar[str] = C.GATEWAY_V4
    GATEWAY_V6: ClassVar[str] = C.GATEWAY_V6
    SERVERS_V4: ClassVar[tuple[str, ...]] = C.SERVERS_V4
    SERVERS_V4_A: ClassVar[tuple[str, ...]] = C.SERVERS_V4_A
    SERVERS_V4_B: ClassVar[tuple[str, ...]] = C.SERVERS_V4_B
    SERVERS_V6: ClassVar[tuple[str, ...]] = C.SERVERS_V6
    RESOLVER_V4: ClassVar[str] = C.RESOLVER_V4
    RESOLVER_V6: ClassVar[str] = C.RESOLVER_V6
    ROGUE_V4: ClassVar[str] = C.ROGUE_V4
    ROGUE_V6: ClassVar[str] = C.ROGUE_V6
    ROGUE_ANSWER: ClassVar[str] = C.ROGUE_ANSWER
    ECHO_PORTS: ClassVar[tuple[int, ...]] = C.ECHO_PORTS
    CLOSED_PORT: ClassVar[int] = C.CLOSED_PORT
    UID: ClassVar[int] = C.UID
    GID: ClassVar[int] = C.GID
    GID_ONLY_UID: ClassVar[int] = C.GID_ONLY_UID
    OTHER_UID: ClassVar[int] = C.OTHER_UID

    def __init__(self, *, start_servers: bool = True) -> None:
        """Choose unique names; nothing is created before ``start()``/``__enter__``.

        With ``start_servers=False`` the topology is built but no server runs (``dns``,
        ``rogue`` and ``echo`` exist and can be started with their ``start()``).
        """
        self.n = next(_counter)
        base = f"{NS_PREFIX}-{os.getpid()}-{self.n}"
        self.client_ns = f"{base}-c"
        """Name of the client namespace (``/run/netns/<name>``)."""
        self.server_ns = f"{base}-s"
        """Name of the server namespace."""
        self.cgroup_parent_name = f"{CGROUP_PREFIX}-{os.getpid()}-{self.n}"
        self.repo_root = REPO_ROOT
        self._start_servers = start_servers
        self._tmp: Path | None = None
        self._made_ns: list[str] = []
        self._procs: list[Proc] = []
        self._cgroup_root: Path | None = None
        self.started_pids: set[int] = set()
        """Every PID the bed started (servers, spawned processes), for leak checks."""
        self._closed = False
        self._tmp = Path(tempfile.mkdtemp(prefix=f"{base}-"))
        self._tmp.chmod(0o755)
        py = [sys.executable, "-m"]
        self.echo = ServerProcess(self, "echo", [*py, "tests.bed.echoserver"])
        """The TCP/UDP echo server (``start()``/``stop()``/``pid``)."""
        self._dns_server = ServerProcess(
            self,
            "dns",
            [
                *py,
                "tests.bed.dnsserver",
                "--listen",
                C.RESOLVER_V4,
                "--listen",
                C.RESOLVER_V6,
                "--zone",
                str(self._tmp / "zone.json"),
                "--log",
                str(self._tmp / "queries.jsonl"),
            ],
        )
        self._rogue_server = ServerProcess(
            self,
            "rogue",
            [
                *py,
                "tests.bed.dnsserver",
                "--listen",
                C.ROGUE_V4,
                "--listen",
                C.ROGUE_V6,
                "--rogue",
                C.ROGUE_ANSWER,
                "--log",
                str(self._tmp / "rogue.jsonl"),
            ],
        )
        self.dns = Zone(self._tmp / "zone.json", self._tmp / "queries.jsonl", self._dns_server)
        """The resolver's zone, query log and process control (``Zone``)."""
        self.rogue = QueryLog(self._tmp / "rogue.jsonl", self._rogue_server)
        """The rogue DNS server's query log and process control (``QueryLog``)."""

    # -- lifecycle --------------------------------------------------------------------
    def __enter__(self) -> Bed:
        """Build the bed (see ``start``) and return it."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Tear everything down (see ``close``)."""
        self.close()

    def start(self) -> None:
        """Create the namespaces, the link, the addresses and start the servers.

        On any failure everything made so far is removed before the error propagates.
        """
        if not _reaped:
            _reaped.append(True)
            become_subreaper()
            reap_stale()
        try:
            self._build()
            if self._start_servers:
                servers = (self.echo, self._dns_server, self._rogue_server)
                for s in servers:
                    s.launch()
                for s in servers:
                    s.wait_ready()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        c, s = self.client_ns, self.server_ns
        for name in (c, s):
            _host_run(["ip", "netns", "add", name])
            self._made_ns.append(name)
        common = [
            "net.ipv4.icmp_ratelimit=0",
            "net.ipv6.icmp.ratelimit=0",
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ]
        # Unprivileged ICMP echo sockets for every gid (the probe's icmp kind), in both.
        common.append("net.ipv4.ping_group_range=0 2147483647")
        self.ns_exec(["sysctl", "-q", "-w", *common])
        self.ns_exec(["sysctl", "-q", "-w", *common], ns="server")
        client_cmds = [
            "link set lo up",
            f"link add {CLIENT_IF} type veth peer name {SERVER_IF} netns {s}",
            f"addr add {C.CLIENT_V4}/{C.CLIENT_PREFIX_V4} dev {CLIENT_IF}",
            f"addr add {C.CLIENT_V6}/{C.CLIENT_PREFIX_V6} dev {CLIENT_IF} nodad",
            f"link set {CLIENT_IF} up",
        ]
        _host_run(["ip", "-n", c, "-batch", "-"], "\n".join(client_cmds) + "\n")
        lo_v4 = [*C.SERVERS_V4, C.RESOLVER_V4, C.ROGUE_V4]
        lo_v6 = [*C.SERVERS_V6, C.RESOLVER_V6, C.ROGUE_V6]
        server_cmds = [
            "link set lo up",
            *(f"addr add {a}/32 dev lo" for a in lo_v4),
            *(f"addr add {a}/128 dev lo nodad" for a in lo_v6),
            f"addr add {C.GATEWAY_V4}/{C.CLIENT_PREFIX_V4} dev {SERVER_IF}",
            f"addr add {C.GATEWAY_V6}/{C.CLIENT_PREFIX_V6} dev {SERVER_IF} nodad",
            f"link set {SERVER_IF} up",
        ]
        _host_run(["ip", "-n", s, "-batch", "-"], "\n".join(server_cmds) + "\n")
        routes = [f"route add default via {C.GATEWAY_V4}", f"route add default via {C.GATEWAY_V6}"]
        _host_run(["ip", "-n", c, "-batch", "-"], "\n".join(routes) + "\n")
        late = late_link(((c, CLIENT_IF), (s, SERVER_IF)), READY_TIMEOUT)
        if late is not None:
            raise BedError(f"{late[1]} in {late[0]} does not come up")

    def close(self) -> None:
        """Kill every process, remove cgroups, namespaces and files of the bed (idempotent).

        Processes are stopped by PID: first those the bed started, then any still in its
        namespaces or cgroups. Raises BedError after trying everything if anything is left.
        """
        if self._closed:
            return
        self._closed = True
        problems: list[str] = []
        for proc in reversed(self._procs):
            try:
                proc.kill()
            except Exception as e:
                problems.append(f"kill {proc.pid}: {e}")
        self._procs.clear()
        for name in self._made_ns:
            left = kill_pids(netns_pids(name))
            if left:
                problems.append(f"processes {left} in {name} survived SIGKILL")
        if self._cgroup_root is not None:
            try:
                _remove_cgroup_tree(self._cgroup_root)
            except Exception as e:
                problems.append(str(e))
        for name in reversed(self._made_ns):
            cp = subprocess.run(
                ["ip", "netns", "delete", name], capture_output=True, text=True, check=False
            )
            if cp.returncode != 0 and (NETNS_DIR / name).exists():
                problems.append(f"ip netns delete {name}: {cp.stderr.strip()}")
        self._made_ns.clear()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
        if problems:
            raise BedError("bed cleanup: " + "; ".join(problems))

    @property
    def tmpdir(self) -> Path:
        """The bed's private directory (zone file, logs); removed at close."""
        assert self._tmp is not None
        return self._tmp

    def netns_path(self, ns: Namespace = "client") -> str:
        """Return ``/run/netns/<name>`` for ``ns`` ("client" or "server")."""
        return str(NETNS_DIR / self._ns_name(ns))

    def _ns_name(self, ns: Namespace) -> str:
        if ns == "client":
            return self.client_ns
        if ns == "server":
            return self.server_ns
        raise ValueError(f"ns must be 'client' or 'server', not {ns!r}")

    # -- commands ---------------------------------------------------------------------
    @staticmethod
    def probe_argv(kind: str, *args: object, timeout: float = C.PROBE_TIMEOUT) -> list[str]:
        """Return the argv that runs ``tests.bed.probe KIND ARGS`` with ``timeout``."""
        return [
            sys.executable,
            "-m",
            PROBE_MODULE,
            "--timeout",
            str(timeout),
            kind,
            *map(str, args),
        ]

    @staticmethod
    def identity(uid: int | None, gid: int | None) -> tuple[int, int] | None:
        """Resolve the identity rules: uid only -> (uid, uid); gid only -> (64999, gid).

        Returns None for "stay root" (both None).
        """
        if uid is None:
            return None if gid is None else (C.GID_ONLY_UID, int(gid))
        return int(uid), int(uid if gid is None else gid)

    def _command(
        self,
        argv: Sequence[str],
        uid: int | None,
        gid: int | None,
        cgroup: Cgroup | str | None,
        ns: Namespace,
    ) -> list[str]:
        cmd = ["nsenter", f"--net={self.netns_path(ns)}", "--"]
        if cgroup is not None:
            cg = cgroup if isinstance(cgroup, Cgroup) else self.cgroup(cgroup)
            cmd += ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(cg.abspath / "cgroup.procs")]
        argv = [str(a) for a in argv]
        who = self.identity(uid, gid)
        if who is not None:
            u, g = who
            if argv[:3] == [sys.executable, "-m", PROBE_MODULE]:
                # The probe drops root itself, after its imports (see probe.py).
                argv = [*argv[:3], "--as-uid", str(u), "--as-gid", str(g), *argv[3:]]
            else:
                prog = shutil.which(argv[0]) or argv[0]
                if not _world_reachable(Path(prog)) or (
                    Path(prog).resolve() == Path(sys.executable).resolve()
                    and not _world_reachable(Path(sys.prefix))
                ):
                    raise BedError(
                        f"{prog} is not readable by uid {u} (its directory is private): use "
                        "Bed.probe, or a program installed for every user"
                    )
                cmd += ["setpriv", f"--reuid={u}", f"--regid={g}", "--clear-groups", "--"]
        return cmd + argv

    def _env(self, extra: dict[str, str] | None) -> dict[str, str]:
        env = dict(os.environ)
        pp = env.get("PYTHONPATH")
        env["PYTHONPATH"] = str(self.repo_root) + (os.pathsep + pp if pp else "")
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["PYTHONUNBUFFERED"] = "1"
        if extra:
            env.update(extra)
        return env

    def run(
        self,
        argv: Sequence[str],
        *,
        uid: int | None = None,
        gid: int | None = None,
        cgroup: Cgroup | str | None = None,
        ns: Namespace = "client",
        timeout: float = 60.0,
        input: str | None = None,
        env: dict[str, str] | None = None,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` to completion in namespace ``ns`` as a confined identity.

        ``uid``/``gid``: see ``identity`` (no supplementary groups; None/None = root).
        ``cgroup``: a ``Cgroup`` or a path given to ``self.cgroup`` (created if needed);
        the process joins it before it runs ``argv``, so every socket it opens is in it.
        The working directory is the repository root and PYTHONPATH includes it. A probe
        argv (``probe_argv``) drops root itself; other programs go through
        ``setpriv`` and must be readable by the uid. Output is captured as text; on
        ``timeout`` the process is killed and TimeoutExpired raised; ``check`` raises
        CalledProcessError on a non-zero exit.
        """
        cmd = self._command(argv, uid, gid, cgroup, ns)
        return subprocess.run(
            cmd,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.repo_root,
            env=self._env(env),
            check=check,
        )

    def spawn(
        self,
        argv: Sequence[str],
        *,
        uid: int | None = None,
        gid: int | None = None,
        cgroup: Cgroup | str | None = None,
        ns: Namespace = "client",
        env: dict[str, str] | None = None,
        stdin: bool = True,
        label: str = "proc",
    ) -> Proc:
        """Start ``argv`` like ``run`` but return at once with a ``Proc`` handle.

        stdout is a pipe (read it with ``Proc.readline``/``read_json``), stderr goes to a
        file (``Proc.stderr_text``), stdin is a pipe when ``stdin`` is true. The bed kills
        the process by PID when it closes, if the test did not.
        """
        cmd = self._command(argv, uid, gid, cgroup, ns)
        err = self.tmpdir / f"{label}-{len(self.started_pids)}-{time.monotonic_ns()}.err"
        with open(err, "wb") as errf:
            popen = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=errf,
                cwd=self.repo_root,
                env=self._env(env),
                start_new_session=True,
            )
        proc = Proc(popen, cmd, err)
        self._procs.append(proc)
        self.started_pids.add(proc.pid)
        return proc

    def _forget(self, proc: Proc) -> None:
        with contextlib.suppress(ValueError):
            self._procs.remove(proc)

    def ns_exec(
        self,
        argv: Sequence[str],
        ns: Namespace = "client",
        *,
        check: bool = True,
        input: str | None = None,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` as root in namespace ``ns``; output captured as text.

        With ``check`` (the default) a non-zero exit raises BedError with the output.
        """
        cp = self.run(argv, ns=ns, timeout=timeout, input=input)
        return _check(cp, " ".join(map(str, argv[:3]))) if check else cp

    def nft(
        self, args: str | Sequence[str], *, check: bool = True, ns: Namespace = "client"
    ) -> subprocess.CompletedProcess[str]:
        """Run ``nft`` in the client namespace (as root).

        A string is fed to ``nft -f -`` (one or more commands, e.g. a whole ruleset or
        ``"list ruleset"``); a sequence is passed as arguments (``["-j", "list", "ruleset"]``).
        """
        if isinstance(args, str):
            return self.ns_exec(["nft", "-f", "-"], ns, input=args + "\n", check=check)
        return self.ns_exec(["nft", *args], ns, check=check)

    # -- probes -----------------------------------------------------------------------
    def probe(
        self,
        kind: str,
        *args: object,
        uid: int | None = None,
        gid: int | None = None,
        cgroup: Cgroup | str | None = None,
        ns: Namespace = "client",
        timeout: float = C.PROBE_TIMEOUT,
    ) -> ProbeResult:
        """Run one probe (``tcp HOST PORT``, ``udp HOST PORT``, ``icmp HOST``, ``dns NAME ...``).

        Identity and cgroup as in ``run``. Returns the probe's outcome; BedError if the
        probe crashed without printing one.
        """
        if kind in ("listen", "hold"):
            raise ValueError(f"{kind} runs until stopped: use Bed.{kind}")
        cp = self.run(
            self.probe_argv(kind, *args, timeout=timeout),
            uid=uid,
            gid=gid,
            cgroup=cgroup,
            ns=ns,
            timeout=timeout * 3 + 30,
        )
        return ProbeResult.from_completed(cp)

    async def aprobe(self, kind: str, *args: object, **kw: Any) -> ProbeResult:
        """``probe`` in a worker thread, for async tests (the event loop keeps running)."""
        return await asyncio.to_thread(self.probe, kind, *args, **kw)

    def resolve(
        self,
        name: str,
        rtype: str = "A",
        *,
        server: str = C.RESOLVER_V4,
        tcp: bool = False,
        uid: int | None = None,
        gid: int | None = None,
        cgroup: Cgroup | str | None = None,
        timeout: float = C.PROBE_TIMEOUT,
        extra: Sequence[str] = (),
    ) -> ProbeResult:
        """Run a ``dns`` probe for ``name``/``rtype`` against ``server`` from the client."""
        args = [name, "--server", server, "--type", rtype, *(["--tcp"] if tcp else []), *extra]
        return self.probe("dns", *args, uid=uid, gid=gid, cgroup=cgroup, timeout=timeout)

    def listen(
        self,
        proto: Literal["tcp", "udp"],
        port: int,
        *,
        uid: int | None = None,
        gid: int | None = None,
        cgroup: Cgroup | str | None = None,
        bind: Sequence[str] = (),
        ns: Namespace = "client",
    ) -> Proc:
        """Start an echo listener (a ``listen`` probe) and wait until it is bound.

        ``proc.first`` holds the "listening" outcome; later JSON lines are events
        (``proc.read_json()``). Unprivileged uids need a port >= 1024. BedError if binding
        fails.
        """
        extra = [x for b in bind for x in ("--bind", b)]
        proc = self.spawn(
            self.probe_argv("listen", proto, port, *extra),
            uid=uid,
            gid=gid,
            cgroup=cgroup,
            ns=ns,
            stdin=False,
            label="listen",
        )
        proc.first = proc.read_json(READY_TIMEOUT)
        if proc.first.outcome != "listening":
            raise BedError(f"listener did not start: {proc.first.data} {proc.stderr_text()}")
        return proc

    def hold(
        self,
        host: str,
        port: int,
        *,
        uid: int | None = None,
        gid: int | None = None,
        cgroup: Cgroup | str | None = None,
        timeout: float = C.PROBE_TIMEOUT,
    ) -> Proc:
        """Open a TCP connection from the client and keep it (a ``hold`` probe).

        ``proc.first`` is the connect outcome ("connected", "refused", ...); then
        ``proc.exchange("text")`` sends a line through the same connection and returns its
        outcome ("reply" with ``reply``, or "timeout", "reset", "closed", ...).
        """
        proc = self.spawn(
            self.probe_argv("hold", host, port, timeout=timeout),
            uid=uid,
            gid=gid,
            cgroup=cgroup,
            label="hold",
        )
        proc.first = proc.read_json(timeout + READY_TIMEOUT)
        return proc

    def connect_from_server(
        self, host: str, port: int, proto: str = "tcp", timeout: float = C.PROBE_TIMEOUT
    ) -> ProbeResult:
        """Probe from the server namespace (as root) towards ``host`` (a client address).

        ``proto`` is "tcp", "udp" or "icmp" (``port`` is ignored for icmp).
        """
        args: tuple[object, ...] = (host,) if proto == "icmp" else (host, port)
        return self.probe(proto, *args, ns="server", timeout=timeout)

    # -- cgroups ----------------------------------------------------------------------
    @property
    def cgroup_root(self) -> Path:
        """The bed's cgroup parent directory (created on first use)."""
        if self._cgroup_root is None:
            mount = cgroup2_mount()
            if mount is None:
                raise BedError("no cgroup2 hierarchy is mounted")
            root = mount / self.cgroup_parent_name
            root.mkdir(exist_ok=True)
            self._cgroup_root = root
        return self._cgroup_root

    def _cgroup_dir(self, relpath: str) -> Path:
        rel = relpath.strip("/")
        parts = rel.split("/")
        if not rel or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"bad cgroup path {relpath!r}")
        return self.cgroup_root.joinpath(*parts)

    def cgroup(self, relpath: str) -> Cgroup:
        """Create (or return, if it exists) the cgroup ``relpath`` under the bed's parent.

        Returns its path relative to the cgroup2 mount and its id. Parents are created too.
        """
        d = self._cgroup_dir(relpath)
        d.mkdir(parents=True, exist_ok=True)
        mount = cgroup2_mount()
        assert mount is not None
        return Cgroup(str(d.relative_to(mount)), os.stat(d).st_ino, d)

    def remove_cgroup(self, relpath: str) -> None:
        """Kill the processes of cgroup ``relpath`` and its children (by PID) and remove it."""
        d = self._cgroup_dir(relpath)
        if d.exists():
            _remove_cgroup_tree(d)

    def recreate_cgroup(self, relpath: str) -> Cgroup:
        """Remove cgroup ``relpath`` (killing its processes) and create it again (new id)."""
        self.remove_cgroup(relpath)
        return self.cgroup(relpath)

    # -- introspection ----------------------------------------------------------------
    def live_pids(self) -> list[int]:
        """Return the PIDs of all processes now in the bed's namespaces."""
        return [pid for ns in self._made_ns for pid in netns_pids(ns)]


__all__ = [
    "REPO_ROOT",
    "Bed",
    "BedError",
    "Cgroup",
    "ProbeResult",
    "Proc",
    "QueryLog",
    "ServerProcess",
    "Zone",
    "cgroup2_mount",
    "reap_stale",
]
