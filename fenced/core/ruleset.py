"""The nftables ruleset fenced installs, computed from a configuration. Pure: no I/O.

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
    maps: tuple[str, ...]
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
        return tuple(s.name for s in self.domain_sets) + self.maps


def policy_chain(policy: str, kind: Literal["out", "in", "reply", "zone"]) -> str:
    """Name of a policy's chain of the given kind."""
    return f"p_{policy}_{kind}"


def denied_counter(policy: str, direction: Direction) -> str:
    """Name of the named counter of denials of ``policy`` in ``direction``."""
    return f"denied_{policy}_{direction}"


def cgroup_map(kind: Literal["out", "in", "zone"], level: int) -> str:
    """Name of the verdict map of ``kind`` for cgroups at ``level`` (depth below the root)."""
    return f"m_cg_{kind}_{level}"


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
    maps: list[str] = []
    if uses_uid:
        maps += ["m_uid_out", "m_uid_reply"]
    if uses_gid:
        maps += ["m_gid_out", "m_gid_reply"]
    if any(p.uids for p in gateway):
        maps.append("m_uid_zone")
    if any(p.gids for p in gateway):
        maps.append("m_gid_zone")
    for level in sorted(levels):
        maps += [cgroup_map("out", level), cgroup_map("in", level)]
    maps += [cgroup_map("zone", level) for level in sorted(zone_levels)]
    forwarded = [p for p in config.policies if p.interfaces or p.sources]
    if forwarded:
        chains.append("forward")
    families = {n.version for p in forwarded for n in p.sources}
    kinds = (["if"] if any(p.interfaces for p in forwarded) else []) + [
        f"src{v}" for v in (4, 6) if v in families
    ]
    for kind in kinds:
        maps += [f"m_{kind}_fwd", f"m_{kind}_fin"]
    fwd_gateway = [p for p in forwarded if p.name in zones]
    if fwd_gateway:
        chains += ["dns_zone_in", "dns_redirect_in"]
        if any(p.interfaces for p in fwd_gateway):
            maps.append("m_if_zone")
        for v in (4, 6):
            if any(n.version == v for p in fwd_gateway for n in p.sources):
                maps.append(f"m_src{v}_zone")
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


# ---------------------------------------------------------------------------- rendering


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


def _map_decl(
    name: str,
    key: str,
    elements: Mapping[int, str] | Mapping[str, str],
    *,
    interval: bool = False,
) -> list[str]:
    """A verdict map ``key -> jump chain``; ``interval`` for maps keyed by networks."""
    lines = [f"map {name} {{", f"type {key} : verdict"]
    if interval:
        lines.append("flags interval")
    if elements:
        items = ", ".join(f"{k} : jump {v}" for k, v in sorted(elements.items()))
        lines.append(f"elements = {{ {items} }}")
    return [*lines, "}"]


def _chain(name: str, rules: Sequence[str], hook: str | None = None) -> list[str]:
    lines = [f"chain {name} {{"]
    if hook is not None:
        lines.append(f"type filter hook {hook} priority filter; policy accept;")
    return [*lines, *rules, "}"]


#: ICMP port unreachable errors about a UDP datagram, up to the quoted datagram's destination
#: port (matched against a gateway's port): the quoted header starts 8 bytes into the ICMP
#: message; its protocol is byte 9 of an IPv4 header (no options: fenced's redirected
#: datagrams carry none) or byte 6 of an IPv6 one, the UDP destination port 2 bytes into
#: the UDP header that follows (20 or 40 bytes later).
_UNREACHABLE = (
    "icmp type destination-unreachable icmp code port-unreachable @th,136,8 17 @th,240,16",
    "icmpv6 type destination-unreachable icmpv6 code port-unreachable @th,112,8 17 @th,400,16",
)


def _gateway_chains(lay: Layout, gateway_ports: Mapping[str, int]) -> list[str]:
    """The raw chain that zones gateway DNS flows and the nat chain that redirects them."""
    zone_rules: list[str] = []
    dns = "meta l4proto { tcp, udp } th dport 53"
    if "m_uid_zone" in lay.maps:
        zone_rules.append(f"{dns} meta skuid vmap @m_uid_zone")
    if "m_gid_zone" in lay.maps:
        zone_rules.append(f"{dns} meta skgid vmap @m_gid_zone")
    for level in sorted({c.level for c in lay.cgroups if c.zone_map is not None}):
        zone_rules.append(f"{dns} socket cgroupv2 level {level} vmap @{cgroup_map('zone', level)}")
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
    lines = ["chain dns_zone {", "type filter hook output priority raw; policy accept;"]
    lines += [*zone_rules, "}", "chain dns_redirect {"]
    lines += ["type nat hook output priority -100; policy accept;", *redirect_rules, "}"]
    if "dns_zone_in" in lay.chains:
        # forwarded subjects (containers, VMs): the same, as their packets come in
        in_zone: list[str] = []
        if "m_if_zone" in lay.maps:
            in_zone.append(f"{dns} iifname vmap @m_if_zone")
        for v, addr in ((4, "ip"), (6, "ip6")):
            if f"m_src{v}_zone" in lay.maps:
                in_zone.append(f"{dns} {addr} saddr vmap @m_src{v}_zone")
        lines += ["chain dns_zone_in {", "type filter hook prerouting priority raw; policy accept;"]
        lines += [*in_zone, "}", "chain dns_redirect_in {"]
        lines += ["type nat hook prerouting priority -100; policy accept;", *redirect_rules, "}"]
    return lines


def _collapse(networks: Iterable[IPNetwork]) -> list[IPNetwork]:
    """Networks merged so that none overlaps another (interval maps refuse overlaps)."""
    nets = list(networks)
    v4 = [n for n in nets if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in nets if isinstance(n, ipaddress.IPv6Network)]
    return [*ipaddress.collapse_addresses(v4), *ipaddress.collapse_addresses(v6)]


def _forward_maps(config: Config, lay: Layout) -> list[str]:
    """Verdict maps from interface / source network to the policy chains, forwarded path."""
    lines: list[str] = []
    fwd = [p for p in config.policies if p.interfaces or p.sources]
    kinds: tuple[tuple[str, Literal["out", "in", "zone"]], ...] = (
        ("fwd", "out"),
        ("fin", "in"),
        ("zone", "zone"),
    )
    for kind, chain_kind in kinds:
        pols = [p for p in fwd if kind != "zone" or p.name in lay.zones]
        if f"m_if_{kind}" in lay.maps:
            ifs = {f'"{i}"': policy_chain(p.name, chain_kind) for p in pols for i in p.interfaces}
            lines += _map_decl(f"m_if_{kind}", "ifname", ifs)
        for v in (4, 6):
            if f"m_src{v}_{kind}" in lay.maps:
                nets = {
                    str(n): policy_chain(p.name, chain_kind)
                    for p in pols
                    for n in _collapse(p.sources)
                    if n.version == v
                }
                key = "ipv4_addr" if v == 4 else "ipv6_addr"
                lines += _map_decl(f"m_src{v}_{kind}", key, nets, interval=True)
    return lines


def table_body(
    config: Config, lay: Layout, gateway_ports: Mapping[str, int] | None = None
) -> list[str]:
    """Declarations of every object of the table (no elements of dynamic sets or maps).

    ``gateway_ports`` gives the loopback port of each gateway policy's DNS listener; every
    policy in ``lay.gateways`` needs one (TransactionError otherwise).
    """
    gateway_ports = dict(gateway_ports or {})
    missing = [name for name in lay.gateways if name not in gateway_ports]
    if missing:
        raise TransactionError(f"no gateway port for policies {', '.join(missing)}")
    policies = config.policies
    lines: list[str] = []
    for c in lay.counters:
        lines += [f"counter {c} {{", "}"]
    for ds in lay.domain_sets:
        key = "ipv4_addr" if ds.family == 4 else "ipv6_addr"
        lines += [
            f"set {ds.name} {{",
            f"type {key}",
            "flags timeout",
            f'comment "{ds.policy}: {ds.spec.describe()}"',
            "}",
        ]
    uid_out = {u: policy_chain(p.name, "out") for p in policies for u in p.uids}
    uid_reply = {u: policy_chain(p.name, "reply") for p in policies for u in p.uids}
    gid_out = {g: policy_chain(p.name, "out") for p in policies for g in p.gids}
    gid_reply = {g: policy_chain(p.name, "reply") for p in policies for g in p.gids}
    if "m_uid_out" in lay.maps:
        lines += _map_decl("m_uid_out", "uid", uid_out)
        lines += _map_decl("m_uid_reply", "uid", uid_reply)
    if "m_gid_out" in lay.maps:
        lines += _map_decl("m_gid_out", "gid", gid_out)
        lines += _map_decl("m_gid_reply", "gid", gid_reply)
    if "m_uid_zone" in lay.maps:
        zone_uids = {
            u: policy_chain(p.name, "zone") for p in policies if p.name in lay.zones for u in p.uids
        }
        lines += _map_decl("m_uid_zone", "uid", zone_uids)
    if "m_gid_zone" in lay.maps:
        zone_gids = {
            g: policy_chain(p.name, "zone") for p in policies if p.name in lay.zones for g in p.gids
        }
        lines += _map_decl("m_gid_zone", "gid", zone_gids)
    cg_maps = [m for m in lay.maps if m.startswith("m_cg_")]
    for m in cg_maps:
        lines += _map_decl(m, "cgroupsv2", {})
    lines += _forward_maps(config, lay)
    for p in policies:
        lines += _chain(policy_chain(p.name, "out"), _out_chain(config, p, lay))
        lines += _chain(policy_chain(p.name, "in"), _in_chain(p, reply=False))
        lines += _chain(policy_chain(p.name, "reply"), _in_chain(p, reply=True))

    reply_rules = [
        "meta l4proto tcp tcp flags & (syn | ack) != syn | ack accept",
        "meta l4proto != { tcp, udp } accept",
    ]
    if "m_uid_reply" in lay.maps:
        reply_rules.append("meta skuid vmap @m_uid_reply")
    if "m_gid_reply" in lay.maps:
        reply_rules.append("meta skgid vmap @m_gid_reply")
    lines += _chain("output_reply", reply_rules)

    for name, zone in sorted(lay.zones.items()):
        lines += _chain(policy_chain(name, "zone"), [f"ct zone set {zone} accept"])
    if lay.zones:
        lines += _gateway_chains(lay, gateway_ports)

    levels = sorted({c.level for c in lay.cgroups})
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
    if "m_uid_out" in lay.maps:
        out_rules.append("meta skuid vmap @m_uid_out")
    if "m_gid_out" in lay.maps:
        out_rules.append("meta skgid vmap @m_gid_out")
    out_rules += [f"socket cgroupv2 level {lv} vmap @{cgroup_map('out', lv)}" for lv in levels]
    lines += _chain("output", out_rules, hook="output")

    in_rules = [
        f"ct mark & {REFUSED_MARK:#x} == {REFUSED_MARK:#x} meta l4proto tcp reject with tcp reset"
    ]
    if "dns_zone_in" in lay.chains:
        # forwarded subjects' DNS arrives at the gateway port through input: same guard
        for name, zone in sorted(lay.zones.items()):
            port = gateway_ports[name]
            in_rules += [
                f"meta l4proto {{ tcp, udp }} th dport {port} ct zone {zone} accept",
                f"meta l4proto {{ tcp, udp }} th dport {port} drop",
            ]
    in_rules.append("ct state established,related accept")
    in_rules += [f"socket cgroupv2 level {lv} vmap @{cgroup_map('in', lv)}" for lv in levels]
    lines += _chain("input", in_rules, hook="input")
    if "forward" in lay.chains:
        fwd_rules = ["ct state established,related accept"]
        if "m_if_fwd" in lay.maps:
            fwd_rules.append("iifname vmap @m_if_fwd")
        for v, addr in ((4, "ip"), (6, "ip6")):
            if f"m_src{v}_fwd" in lay.maps:
                fwd_rules.append(f"{addr} saddr vmap @m_src{v}_fwd")
        if "m_if_fin" in lay.maps:
            fwd_rules.append("oifname vmap @m_if_fin")
        for v, addr in ((4, "ip"), (6, "ip6")):
            if f"m_src{v}_fin" in lay.maps:
                fwd_rules.append(f"{addr} daddr vmap @m_src{v}_fin")
        lines += _chain("forward", fwd_rules, hook="forward")
    return lines


@dataclass(frozen=True)
class Existing:
    """Names of the objects already in the table (from a terse listing), by kind."""

    chains: frozenset[str] = frozenset()
    sets: frozenset[str] = frozenset()
    counters: frozenset[str] = frozenset()


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


def script(
    config: Config,
    lay: Layout,
    existing: Existing | None = None,
    *,
    keep_chains: Iterable[str] = (),
    gateway_ports: Mapping[str, int] | None = None,
) -> str:
    """The nft script that installs ``config`` in one atomic transaction.

    It creates the table if missing, flushes every rule (set and map elements stay, so
    allowed addresses and cgroup ids survive), empties the static uid/gid maps (re-filled
    from the file), deletes objects of ``existing`` that ``lay`` no longer has, and
    declares everything (``gateway_ports``: see ``table_body``). Chains in ``keep_chains``
    are not deleted even if stale (cgroup map elements may still jump to them; the caller
    deletes them once those are gone).
    """
    existing = existing or Existing()
    t = f"inet {lay.table}"
    keep = set(keep_chains)
    head = [
        f"# fenced ruleset for table {t}; generated, do not edit",
        f"add table {t}",
        f"flush table {t}",
    ]
    static_maps = [m for m in lay.maps if not m.startswith("m_cg_")]
    head += [f"flush map {t} {m}" for m in static_maps if m in existing.sets]
    wanted_sets = set(lay.set_names)
    head += [f"delete set {t} {s}" for s in sorted(existing.sets - wanted_sets)]
    wanted_chains = set(lay.chains)
    head += [f"delete chain {t} {c}" for c in sorted(existing.chains - wanted_chains - keep)]
    head += [f"delete counter {t} {c}" for c in sorted(existing.counters - set(lay.counters))]
    body = [f"table {t} {{", *table_body(config, lay, gateway_ports), "}"]
    return "\n".join(head) + "\n" + _indent(body) + "\n"


def delete_chains_script(table: str, chains: Iterable[str]) -> str:
    """An nft script that deletes ``chains`` of ``inet table`` (rules already flushed)."""
    return "".join(f"delete chain inet {table} {c}\n" for c in sorted(chains))


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
