"""Containers in the test bed: namespaces behind a bridge in the client, routed and NATed.

A container is a network namespace whose ``eth0`` is a veth port of a Linux bridge in the
bed's client namespace (the "host", where fenced runs). The bridge carries the container's
default gateways; the client forwards its traffic and masquerades it towards the server
namespace, so the server needs no routes back, the way Docker sets up a bridge network::

    c = add_container(bed, "br-app", 1)  # 203.0.113.130 / 2001:db8:c1::2 behind br-app
    r = container_probe(bed, c, "tcp", "198.51.100.10", 443, uid=UID)
    listener = container_listen(bed, c, "tcp", 8080)
    publish(bed, c, 8080, 18080)  # 192.0.2.2:18080 and [2001:db8:ff::2]:18080 -> c:8080
    bed.connect_from_server(C.CLIENT_V4, 18080)

The NAT lives in a table of the bed's own (``table inet bednat``) in the client namespace.
Container namespaces are registered with the bed: ``Bed.close()`` kills their processes by
PID and deletes them; the bridges and veth pairs vanish with the namespaces.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from tests.bed import constants as C
from tests.bed.bed import (
    CLIENT_IF,
    READY_TIMEOUT,
    Bed,
    BedError,
    ProbeResult,
    Proc,
    _check,
    _host_run,
)
from tests.netns import NETNS_DIR, late_link

#: The bed's own nftables table in the client namespace (masquerade and published ports).
NAT_TABLE = "bednat"
#: The container's end of its veth pair (inside the container namespace).
CONTAINER_IF = "eth0"
#: ``index`` -> (IPv4 /26 network base, IPv6 /64 prefix); disjoint from tests.bed.constants.
SUBNETS: dict[int, tuple[str, str]] = {
    1: ("203.0.113.128", "2001:db8:c1::"),
    2: ("203.0.113.192", "2001:db8:c2::"),
}
MAX_IFNAME = 15


@dataclass(frozen=True)
class Container:
    """A container namespace behind ``bridge`` in the client namespace (``add_container``)."""

    name: str
    """Its network namespace (``/run/netns/<name>``)."""
    bridge: str
    """The bridge in the client namespace its ``eth0`` is a port of."""
    v4: str
    """The container's IPv4 address (on its ``eth0``)."""
    v6: str
    """The container's IPv6 address."""
    gateway_v4: str
    """The bridge's IPv4 address (the container's default route)."""
    gateway_v6: str
    """The bridge's IPv6 address (the container's default route)."""
    subnet_v4: str
    """The IPv4 network of the bridge, e.g. ``203.0.113.128/26``."""
    subnet_v6: str
    """The IPv6 network of the bridge, e.g. ``2001:db8:c1::/64``."""
    host_if: str
    """The client's end of the veth pair (a port of ``bridge``)."""

    @property
    def netns_path(self) -> str:
        """``/run/netns/<name>`` (for ``nsenter --net=...``)."""
        return str(NETNS_DIR / self.name)


def _ensure_nat_table(bed: Bed) -> None:
    """Create ``table inet bednat`` with its two nat chains in the client (idempotent)."""
    bed.nft(
        f"add table inet {NAT_TABLE}\n"
        f"add chain inet {NAT_TABLE} prerouting "
        "{ type nat hook prerouting priority dstnat; policy accept; }\n"
        f"add chain inet {NAT_TABLE} postrouting "
        "{ type nat hook postrouting priority srcnat; policy accept; }"
    )


def add_container(bed: Bed, bridge: str, index: int) -> Container:
    """Create container ``index`` (1 or 2) behind a new bridge ``bridge`` in the client ns.

    Index 1 gets 203.0.113.128/26 and 2001:db8:c1::/64 (bridge .129 and ::1, container .130
    and ::2), index 2 gets 203.0.113.192/26 and 2001:db8:c2::/64. The client namespace
    forwards (v4 and v6) and masquerades the container's subnets out of its veth towards
    the server namespace. The namespace is registered with the bed, which removes it (and
    kills its processes) on close. BedError if a step fails.
    """
    if index not in SUBNETS:
        raise ValueError(f"container index must be one of {sorted(SUBNETS)}, not {index}")
    if not bridge or len(bridge) > MAX_IFNAME or "/" in bridge or " " in bridge:
        raise ValueError(f"bad bridge name {bridge!r} (at most {MAX_IFNAME} characters)")
    base4, base6 = SUBNETS[index]
    octets = base4.split(".")
    last = int(octets[3])
    prefix4 = ".".join(octets[:3])
    c = Container(
        name=f"{bed.client_ns[:-2]}-k{index}",
        bridge=bridge,
        v4=f"{prefix4}.{last + 2}",
        v6=f"{base6}2",
        gateway_v4=f"{prefix4}.{last + 1}",
        gateway_v6=f"{base6}1",
        subnet_v4=f"{base4}/26",
        subnet_v6=f"{base6}/64",
        host_if=f"veth-k{index}",
    )
    if (NETNS_DIR / c.name).exists():
        raise BedError(f"container {index} already exists in this bed ({c.name})")

    _host_run(["ip", "netns", "add", c.name])
    bed._made_ns.append(c.name)  # Bed.close() kills its processes and deletes it
    sysctls = [
        "net.ipv4.icmp_ratelimit=0",
        "net.ipv6.icmp.ratelimit=0",
        "net.ipv6.conf.all.accept_dad=0",
        "net.ipv6.conf.default.accept_dad=0",
        "net.ipv4.ping_group_range=0 2147483647",
    ]
    container_exec(bed, c, ["sysctl", "-q", "-w", *sysctls])
    bed.ns_exec(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"])

    client_cmds = [
        f"link add {bridge} type bridge",
        f"link add {c.host_if} type veth peer name {CONTAINER_IF} netns {c.name}",
        f"link set {c.host_if} master {bridge}",
        f"addr add {c.gateway_v4}/26 dev {bridge}",
        f"addr add {c.gateway_v6}/64 dev {bridge} nodad",
        f"link set {c.host_if} up",
        f"link set {bridge} up",
    ]
    _host_run(["ip", "-n", bed.client_ns, "-batch", "-"], "\n".join(client_cmds) + "\n")
    container_cmds = [
        "link set lo up",
        f"addr add {c.v4}/26 dev {CONTAINER_IF}",
        f"addr add {c.v6}/64 dev {CONTAINER_IF} nodad",
        f"link set {CONTAINER_IF} up",
        f"route add default via {c.gateway_v4}",
        f"route add default via {c.gateway_v6}",
    ]
    _host_run(["ip", "-n", c.name, "-batch", "-"], "\n".join(container_cmds) + "\n")

    _ensure_nat_table(bed)
    # Only the container's subnets: the client's own traffic is never NATed.
    bed.nft(
        f"add rule inet {NAT_TABLE} postrouting "
        f'oifname "{CLIENT_IF}" ip saddr {c.subnet_v4} masquerade\n'
        f"add rule inet {NAT_TABLE} postrouting "
        f'oifname "{CLIENT_IF}" ip6 saddr {c.subnet_v6} masquerade'
    )

    late = late_link(((c.name, CONTAINER_IF), (bed.client_ns, bridge)), READY_TIMEOUT)
    if late is not None:
        raise BedError(f"{late[1]} in {late[0]} does not come up")
    return c


def publish(
    bed: Bed, c: Container, port: int, host_port: int, proto: Literal["tcp", "udp"] = "tcp"
) -> None:
    """Publish ``c``'s ``port`` as ``host_port`` of the client (like ``docker run -p``).

    A DNAT in the client's prerouting (``table inet bednat``) sends ``proto`` traffic for
    ``host_port`` on the client's veth addresses (``C.CLIENT_V4``, ``C.CLIENT_V6``) to the
    container's v4/v6 address and ``port``. Only traffic arriving from outside (e.g.
    ``bed.connect_from_server``) is translated, not the client's own connections.
    """
    _ensure_nat_table(bed)
    bed.nft(
        f"add rule inet {NAT_TABLE} prerouting ip daddr {C.CLIENT_V4} "
        f"{proto} dport {host_port} dnat ip to {c.v4}:{port}\n"
        f"add rule inet {NAT_TABLE} prerouting ip6 daddr {C.CLIENT_V6} "
        f"{proto} dport {host_port} dnat ip6 to [{c.v6}]:{port}"
    )


def _command(bed: Bed, c: Container, argv: Sequence[object], uid: int | None) -> list[str]:
    """``nsenter`` into ``c``; a probe argv gets ``--as-uid``/``--as-gid`` for ``uid``."""
    args = [str(a) for a in argv]
    who = bed.identity(uid, None)
    if who is not None:
        probe = bed.probe_argv("x")[:3]
        if args[:3] != probe:
            raise BedError("only probes run as another uid in a container (see Bed.probe)")
        args = [*args[:3], "--as-uid", str(who[0]), "--as-gid", str(who[1]), *args[3:]]
    return ["nsenter", f"--net={c.netns_path}", "--", *args]


def _run(
    bed: Bed,
    c: Container,
    argv: Sequence[object],
    *,
    uid: int | None,
    input: str | None,
    timeout: float,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _command(bed, c, argv, uid),
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=bed.repo_root,
        env=bed._env(None),
        check=False,
    )


def container_exec(
    bed: Bed,
    c: Container,
    argv: Sequence[object],
    *,
    check: bool = True,
    input: str | None = None,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as root in container ``c`` (like ``Bed.ns_exec``); output as text.

    With ``check`` (the default) a non-zero exit raises BedError with the output.
    """
    cp = _run(bed, c, argv, uid=None, input=input, timeout=timeout)
    return _check(cp, " ".join(map(str, argv[:3]))) if check else cp


def container_probe(
    bed: Bed,
    c: Container,
    kind: str,
    *args: object,
    uid: int | None = None,
    timeout: float = C.PROBE_TIMEOUT,
) -> ProbeResult:
    """Run one probe (``tcp HOST PORT``, ``udp``, ``icmp HOST``, ``dns NAME ...``) in ``c``.

    Like ``Bed.probe``: ``uid`` runs it as uid:uid (the probe drops root itself), None as
    root. BedError if the probe crashed without printing an outcome.
    """
    if kind in ("listen", "hold"):
        raise ValueError(f"{kind} runs until stopped: use container_listen")
    argv = bed.probe_argv(kind, *args, timeout=timeout)
    cp = _run(bed, c, argv, uid=uid, input=None, timeout=timeout * 3 + 30)
    return ProbeResult.from_completed(cp)


def container_spawn(
    bed: Bed, c: Container, argv: Sequence[object], *, uid: int | None = None, label: str = "proc"
) -> Proc:
    """Start ``argv`` in ``c`` and return a ``Proc`` the bed kills by PID when it closes.

    As root, or as ``uid`` for a probe argv (``Bed.probe_argv``). stdout is a pipe, stderr
    a file in the bed's directory, stdin is closed.
    """
    cmd = _command(bed, c, argv, uid)
    err = bed.tmpdir / f"{c.name}-{label}-{len(bed.started_pids)}-{time.monotonic_ns()}.err"
    with open(err, "wb") as errf:
        popen = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=errf,
            cwd=bed.repo_root,
            env=bed._env(None),
            start_new_session=True,
        )
    proc = Proc(popen, cmd, err)
    bed._procs.append(proc)
    bed.started_pids.add(proc.pid)
    return proc


def container_listen(
    bed: Bed,
    c: Container,
    proto: Literal["tcp", "udp"],
    port: int,
    *,
    uid: int | None = None,
) -> Proc:
    """Start an echo listener (a ``listen`` probe) in ``c`` on every address; wait until bound.

    Like ``Bed.listen``: ``proc.first`` is the "listening" outcome, later JSON lines are
    events (``proc.read_json()``: ``peer``, ``local``, ...). BedError if binding fails.
    """
    proc = container_spawn(bed, c, bed.probe_argv("listen", proto, port), uid=uid, label="listen")
    proc.first = proc.read_json(READY_TIMEOUT)
    if proc.first.outcome != "listening":
        raise BedError(f"listener did not start: {proc.first.data} {proc.stderr_text()}")
    return proc


__all__ = [
    "NAT_TABLE",
    "SUBNETS",
    "Container",
    "add_container",
    "container_exec",
    "container_listen",
    "container_probe",
    "container_spawn",
    "publish",
]
