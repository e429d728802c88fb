"""The validated configuration: plain, immutable values that the rest of fenced reads.

Nothing here touches the system. ``fenced.config`` builds these values from TOML files;
the ruleset renderer, the DNS engine and the daemon only ever see them.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field
from typing import Literal

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

Proto = Literal["tcp", "udp", "icmp"]
Mode = Literal["enforce", "audit"]
OnExit = Literal["keep", "remove"]
DnsMode = Literal["gateway", "direct"]
DenyResponse = Literal["nxdomain", "refused"]
#: How much fenced logs: ``debug`` shows routine refreshes, ``error`` only failures.
LogLevel = Literal["debug", "info", "warning", "error"]

#: Protocols an outbound entry without ``/proto`` allows.
DEFAULT_PROTOS: frozenset[Proto] = frozenset(("tcp", "udp"))


# ------------------------------------------------------------------- restricted ranges
_V4_RESTRICTED = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # unspecified / "this network"
        "10.0.0.0/8",  # RFC 1918
        "100.64.0.0/10",  # CGNAT (RFC 6598)
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local, incl. cloud metadata 169.254.169.254
        "172.16.0.0/12",  # RFC 1918
        "192.168.0.0/16",  # RFC 1918
        "224.0.0.0/4",  # multicast
        "255.255.255.255/32",  # limited broadcast
    )
)
_V6_RESTRICTED = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "::/128",  # unspecified
        "::1/128",  # loopback
        "fc00::/7",  # unique local, incl. metadata fd00:ec2::254
        "fe80::/10",  # link-local
        "ff00::/8",  # multicast
    )
)
_V4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


@functools.lru_cache(maxsize=1 << 16)
def is_restricted(ip: IPAddress) -> bool:
    """Whether ``ip`` is in a range a domain answer must not open by default.

    Private, loopback, link-local, CGNAT, multicast, unspecified, broadcast or cloud
    metadata, v4 or v6; a v4-mapped ``::ffff:a.b.c.d`` or NAT64 ``64:ff9b::a.b.c.d``
    address is judged by its v4 part.

    An explicit list, not ``ipaddress``'s ``is_private``: that one also counts the
    documentation ranges (192.0.2.0/24, 2001:db8::/32, ...) as private. Results are
    memoised (a pure function of the address; the memo is bounded), so callers that meet
    the same address many times need no memo of their own.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _V4_MAPPED or ip in _NAT64:
            return is_restricted(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        return any(ip in net for net in _V6_RESTRICTED)
    return any(ip in net for net in _V4_RESTRICTED)


@dataclass(frozen=True, order=True)
class PortRange:
    """An inclusive range of ports, ``1 <= first <= last <= 65535``."""

    first: int
    last: int

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"


@dataclass(frozen=True, order=True)
class PortSpec:
    """Which protocols and ports an entry opens.

    ``protos`` is never empty. ``ports`` is sorted, merged (no two ranges overlap or
    touch) and empty when every port is meant; it is always empty for ``icmp``.
    Two entries with equal specs share one rule group (and one set per family).
    """

    protos: tuple[Proto, ...]
    ports: tuple[PortRange, ...] = ()

    def describe(self) -> str:
        """Canonical text, e.g. ``tcp,udp:80,443,8000-8100`` or ``icmp``; stable across runs."""
        protos = ",".join(self.protos)
        if not self.ports:
            return protos
        return protos + ":" + ",".join(str(r) for r in self.ports)


@dataclass(frozen=True)
class Target:
    """One ``outbound`` entry: a domain name or a network, and the ports it opens.

    Exactly one of ``domain`` and ``network`` is set. ``domain`` is lower case with no
    trailing dot; it may be a wildcard, ``*.example.com`` (``*`` as the whole first label,
    at least two labels after it), which matches every name below ``example.com`` at any
    depth but not ``example.com`` itself. ``text`` is the entry as written, for messages.
    """

    text: str
    spec: PortSpec
    domain: str | None = None
    network: IPNetwork | None = None

    @property
    def wildcard(self) -> bool:
        """Whether ``domain`` is a wildcard (``*.example.com``): only the gateway can serve it."""
        return self.domain is not None and self.domain.startswith("*.")


@dataclass(frozen=True)
class Listen:
    """One ``inbound`` entry: ports local listeners of the policy may accept on."""

    text: str
    spec: PortSpec


@dataclass(frozen=True)
class Policy:
    """A named policy: which processes it confines and what they may reach.

    ``uids`` and ``gids`` are numeric (names were looked up when the file was read).
    ``cgroups`` are paths relative to the cgroup2 mount, without leading or trailing
    ``/``, e.g. ``system.slice/web.service``; each confines its whole subtree.
    ``interfaces`` and ``sources`` name traffic the host *forwards* (containers, VMs):
    packets entering from those interfaces, or from those source networks.
    """

    name: str
    uids: tuple[int, ...] = ()
    gids: tuple[int, ...] = ()
    cgroups: tuple[str, ...] = ()
    interfaces: tuple[str, ...] = ()
    sources: tuple[IPNetwork, ...] = ()
    mode: Mode = "enforce"
    outbound: tuple[Target, ...] = ()
    inbound: tuple[Listen, ...] = ()
    loopback: bool = False
    allow_private: bool = False
    dns: DnsMode = "gateway"
    deny_response: DenyResponse = "nxdomain"

    def admits(self, ip: IPAddress) -> bool:
        """Whether a domain answer's ``ip`` may go in this policy's sets.

        Always with ``allow_private``; otherwise only when it is not :func:`is_restricted`.
        """
        return self.allow_private or not is_restricted(ip)

    @property
    def domains(self) -> tuple[str, ...]:
        """Every exact domain name the policy's outbound entries list, sorted, each once.

        Wildcards are left out (they cannot be resolved ahead of time): see ``wildcards``.
        """
        return tuple(
            sorted({t.domain for t in self.outbound if t.domain is not None and not t.wildcard})
        )

    @property
    def wildcards(self) -> tuple[str, ...]:
        """Every wildcard domain (``*.example.com``) the policy lists, sorted, each once."""
        return tuple(
            sorted({t.domain for t in self.outbound if t.domain is not None and t.wildcard})
        )


@dataclass(frozen=True)
class DaemonConfig:
    """The ``[daemon]`` table. Times are in seconds."""

    listen: str = "127.0.0.1:9100"
    table: str = "fenced"
    resolvers: tuple[IPAddress, ...] = ()
    min_ttl: int = 5
    max_ttl: int = 3600
    grace: int = 30
    stale: int = 300
    max_ips_per_name: int = 64
    on_exit: OnExit = "keep"
    log_level: LogLevel = "info"


@dataclass(frozen=True)
class Config:
    """A whole validated configuration: the daemon settings and the policies by name order.

    ``files`` lists every file it was read from, main file first.
    """

    daemon: DaemonConfig
    policies: tuple[Policy, ...] = ()
    files: tuple[str, ...] = field(default=())

    def policy(self, name: str) -> Policy:
        """The policy called ``name``; KeyError if there is none."""
        for p in self.policies:
            if p.name == name:
                return p
        raise KeyError(name)
