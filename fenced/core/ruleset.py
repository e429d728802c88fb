"""The nftables ruleset fenced installs, as values built from a configuration. Pure: no I/O.

Each transaction is a :class:`Ruleset` value (commands; the table's counters, sets, verdict
maps and chains as objects); :func:`render` is the one place that writes nft text.

fenced owns one table, ``inet <daemon.table>``. Its chains hold static rules that change
only when the configuration does; everything that changes at run time lives in named sets
and maps that fenced writes over netlink:

* ``d_<policy>_<hash>_<4|6>``: addresses of allowed domains, one set per policy, port
  spec and family, each element with its own timeout (filled by the DNS engine);
* ``m_cg_<out|in>_<level>``: cgroup id -> ``jump`` to the policy chain, one verdict map
  per direction and cgroup depth (filled by the cgroup watcher: ids change whenever a
  cgroup is recreated, and nft's text syntax can only name a cgroup by path).

uid and gid verdict maps are static (numbers known from the file) and are rendered here
with their elements.

Traffic path (see docs/ruleset.md for the reasoning):

* ``output``: replies of local listeners go to ``output_reply``; established and related
  flows are accepted; new flows are dispatched by socket uid, gid and cgroup to
  ``p_<policy>_out``, which returns when the packet is allowed and rejects otherwise.
  A packet matched by several policies must pass each of them.
* ``output_reply``: a TCP SYN-ACK or a UDP reply of a uid/gid-matched listener goes to
  ``p_<policy>_reply``; a port not listed in ``inbound`` has its reply dropped and the flow
  marked, so ``input`` resets the client's retransmitted SYN (the kernel names no socket
  owner for an incoming SYN).
* ``input``: marked flows are reset; established and related accepted; new flows to
  sockets of matched cgroups go to ``p_<policy>_in`` (a socket lookup finds the owner).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from fenced.core.elements import (
    DumpedElement,
    Element,
    SetOp,
    Verdict,
    cgroup_key,
    key_to_cgroup_id,
)
from fenced.core.model import Config, IPNetwork, Policy, PortSpec
from fenced.errors import TransactionError

Family = Literal[4, 6]
Direction = Literal["out", "in"]
FAMILIES: tuple[Family, ...] = (4, 6)

#: The conntrack mark bit fenced sets on inbound flows it refused by uid/gid.
REFUSED_MARK = 0x40000000
#: Denial log lines are limited to this many per second per policy and direction.
LOG_RATE = "10/second burst 20 packets"


def _spec_hash(spec: PortSpec) -> str:
    return hashlib.sha256(spec.describe().encode()).hexdigest()[:8]


@dataclass(frozen=True)
class DomainSet:
    """A dynamic set of one family holding addresses of the domains of one port group."""

    name: str
    policy: str
    family: Family
    spec: PortSpec
    domains: tuple[str, ...]


@dataclass(frozen=True)
class CgroupSubject:
    """A cgroup path a policy confines, with the verdict-map names its ids go in.

    ``zone_map`` is set when the policy's DNS goes through the gateway.
    """

    policy: str
    path: str
    level: int
    out_map: str
    in_map: str
    zone_map: str | None = None


#: What a verdict map's key matches: socket owner uid or gid, socket cgroup (ids written
#: at run time), or, for forwarded traffic, the interface or the IPv4 / IPv6 network.
Selector = Literal["uid", "gid", "cgroup", "if", "src4", "src6"]
#: Which chains of its policies a verdict map jumps to: ``out``/``in``/``reply``/``zone`` for
#: local sockets; ``fwd`` (to ``p_<policy>_out``) and ``fin`` (to ``p_<policy>_in``) for
#: forwarded traffic, whose ``zone`` maps jump to ``p_<policy>_zone`` too.
Role = Literal["out", "in", "reply", "zone", "fwd", "fin"]
#: The selectors of forwarded traffic (containers, VMs).
FORWARD_SELECTORS: tuple[Selector, ...] = ("if", "src4", "src6")
#: The source-network selectors of forwarded traffic, with their IP version.
_SOURCES: tuple[tuple[Family, Selector], ...] = ((4, "src4"), (6, "src6"))


@dataclass(frozen=True)
class MapSpec:
    """A verdict map of the layout: what its key matches and which policy chains it jumps to.

    ``level`` is the cgroup depth of a ``cgroup`` map (None for the others). Only cgroup
    maps are dynamic (``dynamic``): their elements are written at run time; the others
    are rendered with their elements from the configuration.
    """

    name: str
    selector: Selector
    role: Role
    level: int | None = None

    @property
    def dynamic(self) -> bool:
        """Whether the map's elements are written at run time (cgroup ids), not rendered."""
        return self.selector == "cgroup"


@dataclass(frozen=True)
class Layout:
    """Names of every object in fenced's table, and what the run-time writers put where.

    Derived from a ``Config`` by ``layout()``; equal configs give equal layouts, and a
    policy or port group that stays in a new config keeps its set names, so its
    addresses survive a reload.
    """

    table: str
    domain_sets: tuple[DomainSet, ...]
    cgroups: tuple[CgroupSubject, ...]
    chains: tuple[str, ...]
    maps: tuple[MapSpec, ...]
    counters: tuple[str, ...]
    zones: Mapping[str, int] = field(default_factory=dict)
    _by_domain: Mapping[str, tuple[DomainSet, ...]] = field(default_factory=dict, repr=False)

    @property
    def gateways(self) -> tuple[str, ...]:
        """Names of the policies whose DNS goes through the gateway, sorted."""
        return tuple(sorted(self.zones))

    def sets_for(self, domain: str) -> tuple[DomainSet, ...]:
        """Every domain set (all policies, both families) that ``domain``'s addresses go in."""
        return self._by_domain.get(domain, ())

    @property
    def set_names(self) -> tuple[str, ...]:
        """Names of all sets and maps of the table."""
        return tuple(s.name for s in self.domain_sets) + tuple(m.name for m in self.maps)

    def map(self, selector: Selector, role: Role, level: int | None = None) -> MapSpec | None:
        """The map matching ``selector`` that jumps to ``role`` chains, if the table has one."""
        for m in self.maps:
            if (m.selector, m.role, m.level) == (selector, role, level):
                return m
        return None

    @property
    def forwarded(self) -> bool:
        """Whether a policy confines forwarded traffic (the table has a ``forward`` chain)."""
        return any(m.selector in FORWARD_SELECTORS for m in self.maps)

    @property
    def forwarded_gateway(self) -> bool:
        """Whether forwarded traffic's DNS goes through a gateway (``dns_zone_in`` chains)."""
        return any(m.selector in FORWARD_SELECTORS and m.role == "zone" for m in self.maps)


def policy_chain(policy: str, kind: Literal["out", "in", "reply", "zone"]) -> str:
    """Name of a policy's chain of the given kind."""
    return f"p_{policy}_{kind}"


def denied_counter(policy: str, direction: Direction) -> str:
    """Name of the named counter of denials of ``policy`` in ``direction``."""
    return f"denied_{policy}_{direction}"


#: The prefix of cgroup verdict maps' names: the one place that knows it (the kernel's
#: listing of an existing table gives names only).
CGROUP_MAP_PREFIX = "m_cg_"


def cgroup_map(kind: Literal["out", "in", "zone"], level: int) -> str:
    """Name of the verdict map of ``kind`` for cgroups at ``level`` (depth below the root)."""
    return f"{CGROUP_MAP_PREFIX}{kind}_{level}"


def cgroup_maps_in(existing: Existing) -> tuple[str, ...]:
    """The cgroup verdict maps among the objects of an existing table, sorted by name."""
    return tuple(sorted(m for m in existing.sets if m.startswith(CGROUP_MAP_PREFIX)))


#: Conntrack zones fenced gives gateway policies' DNS flows: [ZONE_BASE, ZONE_BASE+ZONE_SPAN).
ZONE_BASE = 0x4600
ZONE_SPAN = 0x1000


def dns_zones(policies: Iterable[str]) -> dict[str, int]:
    """A distinct conntrack zone for each policy name, stable across runs and reloads.

    The zone is taken from a hash of the name (linear probing on a collision, in name
    order), so adding or removing other policies rarely moves a policy's zone.
    """
    zones: dict[str, int] = {}
    used: set[int] = set()
    for name in sorted(policies):
        z = int(hashlib.sha256(name.encode()).hexdigest(), 16) % ZONE_SPAN
        while ZONE_BASE + z in used:
            z = (z + 1) % ZONE_SPAN
        zones[name] = ZONE_BASE + z
        used.add(ZONE_BASE + z)
    return zones


def cgroup_level(path: str) -> int:
    """Depth of a cgroup path relative to the cgroup2 root (``a/b`` is level 2)."""
    return len([part for part in path.split("/") if part])


def _groups(policy: Policy) -> dict[PortSpec, list[str | IPNetwork]]:
    groups: dict[PortSpec, list[str | IPNetwork]] = {}
    for target in policy.outbound:
        dest: str | IPNetwork
        if target.domain is not None:
            dest = target.domain
        elif target.network is not None:
            dest = target.network
        else:  # pragma: no cover - model guarantees one of them
            continue
        groups.setdefault(target.spec, []).append(dest)
    return groups


def layout(config: Config) -> Layout:
    """Compute the object names and the domain->set mapping of ``config``."""
    domain_sets: list[DomainSet] = []
    cgroups: list[CgroupSubject] = []
    chains = ["output", "output_reply", "input"]
    counters: list[str] = []
    uses_uid = any(p.uids for p in config.policies)
    uses_gid = any(p.gids for p in config.policies)
    gateway = [p for p in config.policies if p.dns == "gateway"]
    zones = dns_zones(p.name for p in gateway)
    levels: set[int] = set()
    zone_levels: set[int] = set()
    if gateway:
        chains += ["dns_zone", "dns_redirect"]
    for policy in config.policies:
        chains += [policy_chain(policy.name, k) for k in ("out", "in", "reply")]
        if policy.name in zones:
            chains.append(policy_chain(policy.name, "zone"))
        counters += [denied_counter(policy.name, d) for d in ("out", "in")]
        for spec, dests in sorted(_groups(policy).items()):
            domains = tuple(sorted({d for d in dests if isinstance(d, str)}))
            if not domains:
                continue
            for fam in FAMILIES:
                name = f"d_{policy.name}_{_spec_hash(spec)}_{fam}"
                domain_sets.append(DomainSet(name, policy.name, fam, spec, domains))
        for path in policy.cgroups:
            level = cgroup_level(path)
            levels.add(level)
            zone_map = None
            if policy.name in zones:
                zone_levels.add(level)
                zone_map = cgroup_map("zone", level)
            cgroups.append(
                CgroupSubject(
                    policy.name,
                    path,
                    level,
                    cgroup_map("out", level),
                    cgroup_map("in", level),
                    zone_map,
                )
            )
    maps: list[MapSpec] = []
    if uses_uid:
        maps += [MapSpec("m_uid_out", "uid", "out"), MapSpec("m_uid_reply", "uid", "reply")]
    if uses_gid:
        maps += [MapSpec("m_gid_out", "gid", "out"), MapSpec("m_gid_reply", "gid", "reply")]
    if any(p.uids for p in gateway):
        maps.append(MapSpec("m_uid_zone", "uid", "zone"))
    if any(p.gids for p in gateway):
        maps.append(MapSpec("m_gid_zone", "gid", "zone"))
    for level in sorted(levels):
        maps += [
            MapSpec(cgroup_map("out", level), "cgroup", "out", level),
            MapSpec(cgroup_map("in", level), "cgroup", "in", level),
        ]
    maps += [
        MapSpec(cgroup_map("zone", level), "cgroup", "zone", level) for level in sorted(zone_levels)
    ]
    forwarded = [p for p in config.policies if p.interfaces or p.sources]
    if forwarded:
        chains.append("forward")
    families = {n.version for p in forwarded for n in p.sources}
    selectors: list[Selector] = ["if"] if any(p.interfaces for p in forwarded) else []
    selectors += [sel for v, sel in _SOURCES if v in families]
    for sel in selectors:
        maps += [MapSpec(f"m_{sel}_fwd", sel, "fwd"), MapSpec(f"m_{sel}_fin", sel, "fin")]
    fwd_gateway = [p for p in forwarded if p.name in zones]
    if fwd_gateway:
        chains += ["dns_zone_in", "dns_redirect_in"]
        if any(p.interfaces for p in fwd_gateway):
            maps.append(MapSpec("m_if_zone", "if", "zone"))
        for v, sel in _SOURCES:
            if any(n.version == v for p in fwd_gateway for n in p.sources):
                maps.append(MapSpec(f"m_{sel}_zone", sel, "zone"))
    by_domain: dict[str, list[DomainSet]] = {}
    for ds in domain_sets:
        for d in ds.domains:
            by_domain.setdefault(d, []).append(ds)
    return Layout(
        table=config.daemon.table,
        domain_sets=tuple(domain_sets),
        cgroups=tuple(cgroups),
        chains=tuple(chains),
        maps=tuple(maps),
        counters=tuple(counters),
        zones=zones,
        _by_domain={k: tuple(v) for k, v in by_domain.items()},
    )


# ---------------------------------------------------------------------------- the ruleset as values


def _l4_match(spec: PortSpec) -> str:
    """The part of a rule that matches a port spec's protocols and ports."""
    if spec.protos == ("icmp",):
        return "meta l4proto { icmp, ipv6-icmp }"
    ports = ", ".join(str(r) for r in spec.ports)
    if len(spec.protos) == 1:
        proto = spec.protos[0]
        return f"{proto} dport {{ {ports} }}" if ports else f"meta l4proto {proto}"
    protos = ", ".join(p if p != "icmp" else "icmp, ipv6-icmp" for p in spec.protos)
    if "icmp" in spec.protos:
        # Mixed specs are not produced by the parser (icmp takes no ports); keep it simple.
        return f"meta l4proto {{ {protos} }}"
    if ports:
        return f"meta l4proto {{ {protos} }} th dport {{ {ports} }}"
    return f"meta l4proto {{ {protos} }}"


def _addr_match(family: Family, elements: str) -> str:
    return f"{'ip' if family == 4 else 'ip6'} daddr {elements}"


def _deny(policy: Policy, direction: Direction, *, reply: bool = False) -> list[str]:
    counter = denied_counter(policy.name, direction)
    audit = policy.mode == "audit"
    prefix = f"fenced {policy.name} {direction}{' audit' if audit else ''} "
    lines = [
        f'counter name "{counter}"',
        f'limit rate {LOG_RATE} log prefix "{prefix}" level info',
    ]
    if audit:
        lines.append("return")
    elif reply:
        lines += [f"ct mark set ct mark or {REFUSED_MARK:#x}", "drop"]
    else:
        lines += ["meta l4proto tcp reject with tcp reset", "reject with icmpx admin-prohibited"]
    return lines


def _split(networks: Iterable[IPNetwork]) -> dict[Family, list[IPNetwork]]:
    out: dict[Family, list[IPNetwork]] = {4: [], 6: []}
    for n in networks:
        out[4 if n.version == 4 else 6].append(n)
    return out


def _set_literal(networks: Sequence[IPNetwork]) -> str:
    def one(n: IPNetwork) -> str:
        return str(n.network_address) if n.prefixlen == n.max_prefixlen else str(n)

    ordered = sorted(networks, key=lambda n: (n.version, int(n.network_address), n.prefixlen))
    return "{ " + ", ".join(one(n) for n in ordered) + " }"


def _out_chain(config: Config, policy: Policy, lay: Layout) -> list[str]:
    rules: list[str] = []
    # Gateway policies' port-53 traffic is redirected to fenced before this chain runs.
    direct = policy.name not in lay.zones
    resolvers = _split(ipaddress.ip_network(r) for r in config.daemon.resolvers)
    for fam in FAMILIES if direct else ():
        if resolvers[fam]:
            rules.append(
                f"{_addr_match(fam, _set_literal(resolvers[fam]))} "
                "meta l4proto { tcp, udp } th dport 53 return"
            )
    if policy.loopback:
        rules += ["ip daddr 127.0.0.0/8 return", "ip6 daddr ::1 return"]
    sets: dict[tuple[PortSpec, Family], str] = {
        (s.spec, s.family): s.name for s in lay.domain_sets if s.policy == policy.name
    }
    for spec, dests in sorted(_groups(policy).items()):
        l4 = _l4_match(spec)
        static = _split(d for d in dests if not isinstance(d, str))
        for fam in FAMILIES:
            if static[fam]:
                rules.append(f"{_addr_match(fam, _set_literal(static[fam]))} {l4} return")
        for fam in FAMILIES:
            name = sets.get((spec, fam))
            if name is not None:
                rules.append(f"{_addr_match(fam, '@' + name)} {l4} return")
    return rules + _deny(policy, "out")


def _ports_by_proto(policy: Policy) -> dict[str, list[str]]:
    ports: dict[str, list[str]] = {"tcp": [], "udp": []}
    for entry in policy.inbound:
        for proto in entry.spec.protos:
            if proto in ports:
                ports[proto] += [str(r) for r in entry.spec.ports]
    return ports


def _in_chain(policy: Policy, *, reply: bool) -> list[str]:
    field_ = "sport" if reply else "dport"
    rules = [
        f"{proto} {field_} {{ {', '.join(ports)} }} return"
        for proto, ports in _ports_by_proto(policy).items()
        if ports
    ]
    return rules + _deny(policy, "in", reply=reply)


#: ICMP port unreachable errors about a UDP datagram, up to the quoted datagram's destination
#: port (matched against a gateway's port): the quoted header starts 8 bytes into the ICMP
#: message; its protocol is byte 9 of an IPv4 header (no options: fenced's redirected
#: datagrams carry none) or byte 6 of an IPv6 one, the UDP destination port 2 bytes into
#: the UDP header that follows (20 or 40 bytes later).
_UNREACHABLE = (
    "icmp type destination-unreachable icmp code port-unreachable @th,136,8 17 @th,240,16",
    "icmpv6 type destination-unreachable icmpv6 code port-unreachable @th,112,8 17 @th,400,16",
)


def _collapse(networks: Iterable[IPNetwork]) -> list[IPNetwork]:
    """Networks merged so that none overlaps another (interval maps refuse overlaps)."""
    nets = list(networks)
    v4 = [n for n in nets if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in nets if isinstance(n, ipaddress.IPv6Network)]
    return [*ipaddress.collapse_addresses(v4), *ipaddress.collapse_addresses(v6)]


@dataclass(frozen=True)
class VerdictMap:
    """A verdict map as declared: key type, and its ``key : jump chain`` elements in order.

    ``elements`` holds the keys as nft text (empty for maps written at run time);
    ``interval`` for maps keyed by networks.
    """

    name: str
    key: str
    elements: tuple[tuple[str, str], ...] = ()
    interval: bool = False


@dataclass(frozen=True)
class Hook:
    """The hook of a base chain: ``type <type> hook <hook> priority <priority>``."""

    type: Literal["filter", "nat"]
    hook: Literal["output", "input", "forward", "prerouting"]
    priority: str


@dataclass(frozen=True)
class Chain:
    """A chain with its rules (nft text, one per rule); ``hook`` set for a base chain."""

    name: str
    rules: tuple[str, ...]
    hook: Hook | None = None


@dataclass(frozen=True)
class Table:
    """The declaration of every object of ``inet <name>``, in the order they are declared."""

    name: str
    counters: tuple[str, ...]
    sets: tuple[DomainSet, ...]
    maps: tuple[VerdictMap, ...]
    chains: tuple[Chain, ...]


@dataclass(frozen=True)
class AddTable:
    """Create ``inet <table>`` if it does not exist (``add table``)."""

    table: str


@dataclass(frozen=True)
class Flush:
    """Empty a table of its rules (``kind`` table: elements stay) or a map of its elements."""

    kind: Literal["table", "map"]
    table: str
    name: str = ""


@dataclass(frozen=True)
class Delete:
    """Delete an object of ``inet <table>`` (or, ``kind`` table, the table); it must exist."""

    kind: Literal["table", "set", "chain", "counter"]
    table: str
    name: str = ""


#: One command of a transaction.
Command = AddTable | Flush | Delete | Table


@dataclass(frozen=True)
class Ruleset:
    """One nft transaction as values: its commands in order, applied all or none.

    :func:`render` turns it into the nft script ``nft -f`` runs; the fake firewall applies
    the values themselves. ``comment`` is the script's first line (without ``# ``).
    """

    commands: tuple[Command, ...]
    comment: str | None = None


#: The nft address keyword of each IP version.
_ADDR: Mapping[Family, str] = {4: "ip", 6: "ip6"}


def _policy_maps(config: Config, lay: Layout) -> list[VerdictMap]:
    """The uid, gid and (empty) cgroup verdict maps of local sockets, in declaration order."""
    kinds: tuple[tuple[Selector, Role, Literal["out", "reply", "zone"]], ...] = (
        ("uid", "out", "out"),
        ("uid", "reply", "reply"),
        ("gid", "out", "out"),
        ("gid", "reply", "reply"),
        ("uid", "zone", "zone"),
        ("gid", "zone", "zone"),
    )
    maps: list[VerdictMap] = []
    for selector, role, chain in kinds:
        spec = lay.map(selector, role)
        if spec is None:
            continue
        pols = [p for p in config.policies if role != "zone" or p.name in lay.zones]
        ids = {
            i: policy_chain(p.name, chain)
            for p in pols
            for i in (p.uids if selector == "uid" else p.gids)
        }
        maps.append(
            VerdictMap(spec.name, selector, tuple((str(k), v) for k, v in sorted(ids.items())))
        )
    maps += [VerdictMap(m.name, "cgroupsv2") for m in lay.maps if m.dynamic]
    return maps


def _forward_maps(config: Config, lay: Layout) -> list[VerdictMap]:
    """Verdict maps from interface / source network to the policy chains, forwarded path."""
    maps: list[VerdictMap] = []
    fwd = [p for p in config.policies if p.interfaces or p.sources]
    kinds: tuple[tuple[Role, Literal["out", "in", "zone"]], ...] = (
        ("fwd", "out"),
        ("fin", "in"),
        ("zone", "zone"),
    )
    for role, chain_kind in kinds:
        pols = [p for p in fwd if role != "zone" or p.name in lay.zones]
        spec = lay.map("if", role)
        if spec is not None:
            ifs = {f'"{i}"': policy_chain(p.name, chain_kind) for p in pols for i in p.interfaces}
            maps.append(VerdictMap(spec.name, "ifname", tuple(sorted(ifs.items()))))
        for v, sel in _SOURCES:
            spec = lay.map(sel, role)
            if spec is not None:
                nets = {
                    str(n): policy_chain(p.name, chain_kind)
                    for p in pols
                    for n in _collapse(p.sources)
                    if n.version == v
                }
                key = "ipv4_addr" if v == 4 else "ipv6_addr"
                maps.append(VerdictMap(spec.name, key, tuple(sorted(nets.items())), True))
    return maps


def _vmap(match: str, spec: MapSpec | None) -> list[str]:
    """The rule dispatching by ``match`` through map ``spec``, or none when there is no map."""
    return [] if spec is None else [f"{match} vmap @{spec.name}"]


def _gateway_chains(lay: Layout, gateway_ports: Mapping[str, int]) -> list[Chain]:
    """The raw chain that zones gateway DNS flows and the nat chain that redirects them."""
    zone_rules: list[str] = []
    dns = "meta l4proto { tcp, udp } th dport 53"
    zone_rules += _vmap(f"{dns} meta skuid", lay.map("uid", "zone"))
    zone_rules += _vmap(f"{dns} meta skgid", lay.map("gid", "zone"))
    for m in lay.maps:
        if m.dynamic and m.role == "zone":
            zone_rules += _vmap(f"{dns} socket cgroupv2 level {m.level}", m)
    redirect_rules: list[str] = []
    for name, zone in sorted(lay.zones.items()):
        port = gateway_ports[name]
        # the gateway's answers (its port is fenced's) belong to the zone they answer
        zone_rules.append(f"meta l4proto {{ tcp, udp }} th sport {port} ct zone set {zone}")
        # so does the port unreachable the kernel sends while no gateway listens (fenced
        # stopped with on_exit = "keep"): in the zone it is related to the client's flow,
        # un-NATed and delivered, so the lookup fails at once instead of timing out
        zone_rules += [f"{rule} {port} ct zone set {zone}" for rule in _UNREACHABLE]
        redirect_rules.append(f"ct zone {zone} {dns} redirect to :{port}")
    chains = [
        Chain("dns_zone", tuple(zone_rules), Hook("filter", "output", "raw")),
        Chain("dns_redirect", tuple(redirect_rules), Hook("nat", "output", "-100")),
    ]
    if lay.forwarded_gateway:
        # forwarded subjects (containers, VMs): the same, as their packets come in
        in_zone = _vmap(f"{dns} iifname", lay.map("if", "zone"))
        for v, sel in _SOURCES:
            in_zone += _vmap(f"{dns} {_ADDR[v]} saddr", lay.map(sel, "zone"))
        chains += [
            Chain("dns_zone_in", tuple(in_zone), Hook("filter", "prerouting", "raw")),
            Chain("dns_redirect_in", tuple(redirect_rules), Hook("nat", "prerouting", "-100")),
        ]
    return chains


def declarations(
    config: Config, lay: Layout, gateway_ports: Mapping[str, int] | None = None
) -> Table:
    """Declarations of every object of the table (no elements of dynamic sets or maps).

    ``gateway_ports`` gives the loopback port of each gateway policy's DNS listener; every
    policy in ``lay.gateways`` needs one (TransactionError otherwise).
    """
    gateway_ports = dict(gateway_ports or {})
    missing = [name for name in lay.gateways if name not in gateway_ports]
    if missing:
        raise TransactionError(f"no gateway port for policies {', '.join(missing)}")
    chains: list[Chain] = []
    for p in config.policies:
        chains += [
            Chain(policy_chain(p.name, "out"), tuple(_out_chain(config, p, lay))),
            Chain(policy_chain(p.name, "in"), tuple(_in_chain(p, reply=False))),
            Chain(policy_chain(p.name, "reply"), tuple(_in_chain(p, reply=True))),
        ]
    reply_rules = [
        "meta l4proto tcp tcp flags & (syn | ack) != syn | ack accept",
        "meta l4proto != { tcp, udp } accept",
        *_vmap("meta skuid", lay.map("uid", "reply")),
        *_vmap("meta skgid", lay.map("gid", "reply")),
    ]
    chains.append(Chain("output_reply", tuple(reply_rules)))
    for name, zone in sorted(lay.zones.items()):
        chains.append(Chain(policy_chain(name, "zone"), (f"ct zone set {zone} accept",)))
    if lay.zones:
        chains += _gateway_chains(lay, gateway_ports)

    out_rules = ["ct direction reply jump output_reply"]
    for name, zone in sorted(lay.zones.items()):
        port = gateway_ports[name]
        for addr in ("ip daddr 127.0.0.1", "ip6 daddr ::1"):
            # Only the policy's own (zoned, redirected) DNS flows reach its gateway port,
            # whatever conntrack remembers of earlier flows on the same addresses.
            out_rules += [
                f"meta l4proto {{ tcp, udp }} {addr} th dport {port} ct zone {zone} accept",
                f"meta l4proto {{ tcp, udp }} {addr} th dport {port} drop",
            ]
    out_rules.append("ct state established,related accept")
    out_rules += _vmap("meta skuid", lay.map("uid", "out"))
    out_rules += _vmap("meta skgid", lay.map("gid", "out"))
    levels = sorted({c.level for c in lay.cgroups})
    for lv in levels:
        out_rules += _vmap(f"socket cgroupv2 level {lv}", lay.map("cgroup", "out", lv))
    chains.append(Chain("output", tuple(out_rules), Hook("filter", "output", "filter")))

    in_rules = [
        f"ct mark & {REFUSED_MARK:#x} == {REFUSED_MARK:#x} meta l4proto tcp reject with tcp reset"
    ]
    if lay.forwarded_gateway:
        # forwarded subjects' DNS arrives at the gateway port through input: same guard
        for name, zone in sorted(lay.zones.items()):
            port = gateway_ports[name]
            in_rules += [
                f"meta l4proto {{ tcp, udp }} th dport {port} ct zone {zone} accept",
                f"meta l4proto {{ tcp, udp }} th dport {port} drop",
            ]
    in_rules.append("ct state established,related accept")
    for lv in levels:
        in_rules += _vmap(f"socket cgroupv2 level {lv}", lay.map("cgroup", "in", lv))
    chains.append(Chain("input", tuple(in_rules), Hook("filter", "input", "filter")))
    if lay.forwarded:
        fwd_rules = ["ct state established,related accept", *_vmap("iifname", lay.map("if", "fwd"))]
        for v, sel in _SOURCES:
            fwd_rules += _vmap(f"{_ADDR[v]} saddr", lay.map(sel, "fwd"))
        fwd_rules += _vmap("oifname", lay.map("if", "fin"))
        for v, sel in _SOURCES:
            fwd_rules += _vmap(f"{_ADDR[v]} daddr", lay.map(sel, "fin"))
        chains.append(Chain("forward", tuple(fwd_rules), Hook("filter", "forward", "filter")))
    return Table(
        lay.table,
        lay.counters,
        lay.domain_sets,
        (*_policy_maps(config, lay), *_forward_maps(config, lay)),
        tuple(chains),
    )


@dataclass(frozen=True)
class Existing:
    """Names of the objects already in the table (from a terse listing), by kind."""

    chains: frozenset[str] = frozenset()
    sets: frozenset[str] = frozenset()
    counters: frozenset[str] = frozenset()


def install(
    config: Config,
    lay: Layout,
    existing: Existing | None = None,
    *,
    keep_chains: Iterable[str] = (),
    gateway_ports: Mapping[str, int] | None = None,
) -> Ruleset:
    """The transaction that installs ``config``, atomically.

    It creates the table if missing, flushes every rule (set and map elements stay, so
    allowed addresses and cgroup ids survive), empties the static uid/gid maps (re-filled
    from the file), deletes objects of ``existing`` that ``lay`` no longer has, and
    declares everything (``gateway_ports``: see :func:`declarations`). Chains in ``keep_chains``
    are not deleted even if stale (cgroup map elements may still jump to them; the caller
    deletes them once those are gone, with :func:`cleanup`).
    """
    existing = existing or Existing()
    t = lay.table
    keep = set(keep_chains)
    head: list[Command] = [AddTable(t), Flush("table", t)]
    head += [Flush("map", t, m.name) for m in lay.maps if not m.dynamic and m.name in existing.sets]
    head += [Delete("set", t, s) for s in sorted(existing.sets - set(lay.set_names))]
    head += [Delete("chain", t, c) for c in sorted(existing.chains - set(lay.chains) - keep)]
    head += [Delete("counter", t, c) for c in sorted(existing.counters - set(lay.counters))]
    return Ruleset(
        (*head, declarations(config, lay, gateway_ports)),
        comment=f"fenced ruleset for table inet {t}; generated, do not edit",
    )


def cleanup(table: str, chains: Iterable[str], old_table: str | None = None) -> Ruleset:
    """The transaction ending a reload: delete ``chains`` of ``inet table``, drop a renamed one.

    ``chains`` are stale chains the install kept because cgroup elements jumped to them
    (their rules are already flushed). ``old_table``, when given, is deleted whether or
    not it still exists (it is added first, which is a no-op when it does).
    """
    commands: list[Command] = [Delete("chain", table, c) for c in sorted(chains)]
    if old_table is not None:
        commands += [AddTable(old_table), Delete("table", old_table)]
    return Ruleset(tuple(commands))


def _hook_line(hook: Hook) -> str:
    return f"type {hook.type} hook {hook.hook} priority {hook.priority}; policy accept;"


def _table_lines(tbl: Table) -> list[str]:
    """The ``table inet <name> { ... }`` block, one declaration line per entry, unindented."""
    lines = [f"table inet {tbl.name} {{"]
    for c in tbl.counters:
        lines += [f"counter {c} {{", "}"]
    for ds in tbl.sets:
        key = "ipv4_addr" if ds.family == 4 else "ipv6_addr"
        lines += [
            f"set {ds.name} {{",
            f"type {key}",
            "flags timeout",
            f'comment "{ds.policy}: {ds.spec.describe()}"',
            "}",
        ]
    for m in tbl.maps:
        lines += [f"map {m.name} {{", f"type {m.key} : verdict"]
        if m.interval:
            lines.append("flags interval")
        if m.elements:
            items = ", ".join(f"{k} : jump {v}" for k, v in m.elements)
            lines.append(f"elements = {{ {items} }}")
        lines.append("}")
    for ch in tbl.chains:
        lines.append(f"chain {ch.name} {{")
        if ch.hook is not None:
            lines.append(_hook_line(ch.hook))
        lines += [*ch.rules, "}"]
    return [*lines, "}"]


def _indent(lines: Sequence[str]) -> str:
    out: list[str] = []
    depth = 0
    for line in lines:
        if line == "}":
            depth -= 1
        out.append("\t" * depth + line)
        if line.endswith("{"):
            depth += 1
    return "\n".join(out)


def _command_line(cmd: AddTable | Flush | Delete) -> str:
    if isinstance(cmd, AddTable):
        return f"add table inet {cmd.table}"
    verb = "flush" if isinstance(cmd, Flush) else "delete"
    if cmd.kind == "table":
        return f"{verb} table inet {cmd.table}"
    return f"{verb} {cmd.kind} inet {cmd.table} {cmd.name}"


def render(ruleset: Ruleset) -> str:
    """The nft script of ``ruleset``: one line per command, a table block indented by tabs."""
    parts: list[str] = []
    if ruleset.comment is not None:
        parts.append(f"# {ruleset.comment}")
    for cmd in ruleset.commands:
        if isinstance(cmd, Table):
            parts.append(_indent(_table_lines(cmd)))
        else:
            parts.append(_command_line(cmd))
    return "".join(f"{p}\n" for p in parts)


def script(
    config: Config,
    lay: Layout,
    existing: Existing | None = None,
    *,
    keep_chains: Iterable[str] = (),
    gateway_ports: Mapping[str, int] | None = None,
) -> str:
    """The nft script of :func:`install` (what ``fenced render`` prints)."""
    return render(
        install(config, lay, existing, keep_chains=keep_chains, gateway_ports=gateway_ports)
    )


def cgroup_elements(lay: Layout, ids: Mapping[str, int | None]) -> dict[str, dict[int, str]]:
    """Wanted cgroup map contents: map name -> {cgroup id: chain to jump to}.

    ``ids`` gives the current id of each configured cgroup path (None: does not exist).
    """
    wanted: dict[str, dict[int, str]] = {}
    for c in lay.cgroups:
        wanted.setdefault(c.out_map, {})
        wanted.setdefault(c.in_map, {})
        if c.zone_map is not None:
            wanted.setdefault(c.zone_map, {})
        cid = ids.get(c.path)
        if cid is None:
            continue
        wanted[c.out_map][cid] = policy_chain(c.policy, "out")
        wanted[c.in_map][cid] = policy_chain(c.policy, "in")
        if c.zone_map is not None:
            wanted.setdefault(c.zone_map, {})[cid] = policy_chain(c.policy, "zone")
    return wanted


def cgroup_ops(
    table: str,
    wanted: Mapping[str, Mapping[int, str]],
    have: Mapping[str, Sequence[DumpedElement]],
) -> list[SetOp]:
    """The element changes turning the cgroup maps of ``inet table`` from ``have`` to ``wanted``.

    ``wanted`` is :func:`cgroup_elements`'s result, ``have`` each of those maps' dumped
    elements. An element whose id is not wanted, or that jumps elsewhere, is deleted
    (before its replacement is added, in the same batch); a wanted one that is missing is
    added. Maps already right give no operation.
    """
    ops: list[SetOp] = []
    for name, want in wanted.items():
        held: dict[int, str | None] = {
            key_to_cgroup_id(e.key): e.verdict.chain if e.verdict else None
            for e in have.get(name, ())
        }
        remove = [cid for cid, chain in held.items() if want.get(cid) != chain]
        add = [cid for cid, target in want.items() if held.get(cid) != target]
        if remove:
            keys = tuple(Element(cgroup_key(c)) for c in remove)
            ops.append(SetOp("delete", "inet", table, name, keys))
        if add:
            elements = tuple(Element(cgroup_key(c), verdict=Verdict("jump", want[c])) for c in add)
            ops.append(SetOp("add", "inet", table, name, elements))
    return ops


def stale_chains(lay: Layout, have: Mapping[str, Sequence[DumpedElement]]) -> frozenset[str]:
    """Chains that elements of the dumped cgroup maps ``have`` jump to and ``lay`` no longer has.

    The install must keep them (the kernel refuses to delete a chain a map element
    jumps to) until :func:`cgroup_ops` removed those elements; :func:`cleanup` deletes them.
    """
    referenced = {
        e.verdict.chain
        for elements in have.values()
        for e in elements
        if e.verdict is not None and e.verdict.chain is not None
    }
    return frozenset(referenced - set(lay.chains))
