"""Unit tests of the pure ruleset renderer (fenced.core.ruleset)."""

from __future__ import annotations

import ipaddress

import pytest

from fenced.core.elements import (
    DumpedElement,
    Element,
    SetOp,
    Verdict,
    cgroup_key,
    key_to_cgroup_id,
)
from fenced.core.model import Config, DaemonConfig, Listen, Policy, PortRange, PortSpec, Target
from fenced.core.ruleset import (
    ZONE_BASE,
    ZONE_SPAN,
    AddTable,
    Delete,
    Existing,
    Flush,
    MapSpec,
    Table,
    cgroup_elements,
    cgroup_level,
    cgroup_maps_in,
    cgroup_ops,
    cleanup,
    dns_zones,
    install,
    layout,
    policy_chain,
    render,
    script,
    stale_chains,
)
from fenced.errors import TransactionError

TCP443 = PortSpec(("tcp",), (PortRange(443, 443),))
TCPUDP = PortSpec(("tcp", "udp"), ())


def _cfg(*policies: Policy, table: str = "fenced") -> Config:
    daemon = DaemonConfig(table=table, resolvers=(ipaddress.ip_address("192.0.2.53"),))
    return Config(daemon=daemon, policies=tuple(policies))


def _web(**kw: object) -> Policy:
    base: dict[str, object] = {
        "name": "web",
        "uids": (4242,),
        "outbound": (
            Target("api.example.com:443/tcp", TCP443, domain="api.example.com"),
            Target("cdn.example.com:443/tcp", TCP443, domain="cdn.example.com"),
            Target(
                "198.51.100.0/24:443/tcp", TCP443, network=ipaddress.ip_network("198.51.100.0/24")
            ),
            Target("db.example.com", TCPUDP, domain="db.example.com"),
        ),
        "inbound": (Listen("8080/tcp", PortSpec(("tcp",), (PortRange(8080, 8080),))),),
        "dns": "direct",
    }
    base.update(kw)
    return Policy(**base)  # type: ignore[arg-type]


def test_domains_sharing_a_port_spec_share_sets() -> None:
    """Names with the same ports share one set per family; other specs get their own."""
    lay = layout(_cfg(_web()))
    names = {ds.name for ds in lay.sets_for("api.example.com")}
    assert names == {ds.name for ds in lay.sets_for("cdn.example.com")}
    assert len(names) == 2
    assert names.isdisjoint(ds.name for ds in lay.sets_for("db.example.com"))
    assert {ds.family for ds in lay.sets_for("db.example.com")} == {4, 6}


def test_set_names_are_stable_when_other_entries_change() -> None:
    """Adding an unrelated entry does not rename an existing group's sets (IPs survive reloads)."""
    before = {ds.name for ds in layout(_cfg(_web())).sets_for("api.example.com")}
    extra = (
        *_web().outbound,
        Target(
            "x.example.com:22/tcp", PortSpec(("tcp",), (PortRange(22, 22),)), domain="x.example.com"
        ),
    )
    after = {ds.name for ds in layout(_cfg(_web(outbound=extra))).sets_for("api.example.com")}
    assert before == after


def test_out_chain_allows_resolvers_groups_and_rejects_the_rest() -> None:
    """The policy's out chain returns for resolvers, static and dynamic entries, then rejects."""
    cfg = _cfg(_web())
    text = script(cfg, layout(cfg))
    assert "ip daddr { 192.0.2.53 } meta l4proto { tcp, udp } th dport 53 return" in text
    assert "ip daddr { 198.51.100.0/24 } tcp dport { 443 } return" in text
    ds4 = next(d for d in layout(cfg).sets_for("api.example.com") if d.family == 4)
    assert f"ip daddr @{ds4.name} tcp dport {{ 443 }} return" in text
    assert 'counter name "denied_web_out"' in text
    assert 'log prefix "fenced web out "' in text
    assert "reject with icmpx admin-prohibited" in text
    assert "127.0.0.0/8" not in text  # loopback defaults to false


def test_loopback_true_allows_loopback() -> None:
    """loopback = true adds returns for 127.0.0.0/8 and ::1."""
    cfg = _cfg(_web(loopback=True))
    text = script(cfg, layout(cfg))
    assert "ip daddr 127.0.0.0/8 return" in text
    assert "ip6 daddr ::1 return" in text


def test_audit_mode_counts_logs_and_returns() -> None:
    """Audit mode never rejects or drops; it counts, logs with an audit prefix and returns."""
    cfg = _cfg(_web(mode="audit"))
    text = script(cfg, layout(cfg))
    assert "reject" not in text.split("chain output_reply")[0].split("chain p_web_out")[1]
    assert 'log prefix "fenced web out audit "' in text
    assert " drop" not in text and "\tdrop" not in text


def test_uid_maps_carry_numbers_and_inbound_uses_reply_trick() -> None:
    """uid maps jump to policy chains; replies from unlisted ports are marked and dropped."""
    cfg = _cfg(_web())
    text = script(cfg, layout(cfg))
    assert "elements = { 4242 : jump p_web_out }" in text
    assert "elements = { 4242 : jump p_web_reply }" in text
    reply = text.split("chain p_web_reply {")[1].split("\n\t}")[0]
    assert "tcp sport { 8080 } return" in reply
    assert "ct mark set ct mark or 0x40000000" in text
    assert "ct mark & 0x40000000 == 0x40000000 meta l4proto tcp reject with tcp reset" in text


def test_cgroup_maps_per_level_and_elements() -> None:
    """cgroups get one verdict map per depth and direction; absent cgroups get no element."""
    p = _web(uids=(), cgroups=("system.slice/web.service", "a/b/c"))
    lay = layout(_cfg(p))
    assert cgroup_level("system.slice/web.service") == 2
    assert {m.name for m in lay.maps} == {"m_cg_out_2", "m_cg_in_2", "m_cg_out_3", "m_cg_in_3"}
    text = script(_cfg(p), lay)
    assert "socket cgroupv2 level 2 vmap @m_cg_out_2" in text
    assert "socket cgroupv2 level 3 vmap @m_cg_in_3" in text
    wanted = cgroup_elements(lay, {"system.slice/web.service": 77, "a/b/c": None})
    assert wanted["m_cg_out_2"] == {77: policy_chain("web", "out")}
    assert wanted["m_cg_in_2"] == {77: policy_chain("web", "in")}
    assert wanted["m_cg_out_3"] == {}


def test_reload_script_deletes_stale_objects_but_keeps_referenced_chains() -> None:
    """Objects the new config lacks are deleted, except chains cgroup elements still jump to."""
    cfg = _cfg(_web())
    lay = layout(cfg)
    existing = Existing(
        chains=frozenset({*lay.chains, "p_old_out", "p_old_in", "p_old_reply"}),
        sets=frozenset({*lay.set_names, "d_old_00000000_4"}),
        counters=frozenset({*lay.counters, "denied_old_out"}),
    )
    text = script(cfg, lay, existing, keep_chains={"p_old_out"})
    assert "delete chain inet fenced p_old_in" in text
    assert "delete chain inet fenced p_old_out" not in text
    assert "delete set inet fenced d_old_00000000_4" in text
    assert "delete counter inet fenced denied_old_out" in text
    assert "flush map inet fenced m_uid_out" in text
    head, _, _ = text.partition("table inet fenced {")
    assert head.index("flush table") < head.index("delete chain")


def test_no_closing_braces_share_a_line() -> None:
    """nft 1.0.6 rejects '} }' on one line; the renderer never writes it."""
    cfg = _cfg(_web(cgroups=("x/y",)))
    text = script(cfg, layout(cfg))
    assert "} }" not in text.replace("{ ", "").replace("} :", "")
    for line in text.splitlines():
        assert line.count("}") <= 1 or "{" in line


def test_gateway_policies_get_a_zone_redirect_and_guard() -> None:
    """A gateway policy's DNS is zoned, redirected to its port, and only its zone may reach it."""
    cfg = _cfg(_web(dns="gateway", cgroups=("a/b",)))
    lay = layout(cfg)
    zone = lay.zones["web"]
    assert ZONE_BASE <= zone < ZONE_BASE + ZONE_SPAN
    text = script(cfg, lay, gateway_ports={"web": 20001})
    assert f"ct zone {zone} meta l4proto {{ tcp, udp }} th dport 53 redirect to :20001" in text
    assert "meta l4proto { tcp, udp } th dport 53 meta skuid vmap @m_uid_zone" in text
    assert "socket cgroupv2 level 2 vmap @m_cg_zone_2" in text
    assert f"meta l4proto {{ tcp, udp }} th sport 20001 ct zone set {zone}" in text
    guard = f"meta l4proto {{ tcp, udp }} ip daddr 127.0.0.1 th dport 20001 ct zone {zone} accept"
    output = text.split("chain output {")[1]
    assert output.index(guard) < output.index("ct state established,related accept")
    assert "th dport 20001 drop" in output
    # resolvers are not opened directly for gateway policies
    assert "192.0.2.53" not in text.split("chain p_web_out {")[1].split("}")[0]
    wanted = cgroup_elements(lay, {"a/b": 5})
    assert wanted["m_cg_zone_2"] == {5: policy_chain("web", "zone")}


def test_port_unreachable_from_a_stopped_gateway_joins_its_zone() -> None:
    """ICMP port unreachable quoting a datagram to a gateway's port gets that policy's zone."""
    cfg = _cfg(_web(dns="gateway"))
    lay = layout(cfg)
    zone = lay.zones["web"]
    text = script(cfg, lay, gateway_ports={"web": 20001})
    raw = text.split("chain dns_zone {")[1].split("\n\t}")[0]
    assert (
        "icmp type destination-unreachable icmp code port-unreachable "
        f"@th,136,8 17 @th,240,16 20001 ct zone set {zone}"
    ) in raw
    assert (
        "icmpv6 type destination-unreachable icmpv6 code port-unreachable "
        f"@th,112,8 17 @th,400,16 20001 ct zone set {zone}"
    ) in raw


def test_gateway_policy_without_a_port_is_refused() -> None:
    """Rendering a gateway policy without its listener port is a build error, not a bad ruleset."""
    cfg = _cfg(_web(dns="gateway"))
    with pytest.raises(TransactionError, match="web"):
        script(cfg, layout(cfg))


def test_direct_policies_have_no_gateway_objects() -> None:
    """dns = direct renders no zone, redirect or guard, and keeps the resolvers open."""
    cfg = _cfg(_web())
    lay = layout(cfg)
    text = script(cfg, lay)
    assert lay.zones == {}
    assert "dns_redirect" not in text and "ct zone" not in text


def test_zones_are_distinct_and_stable() -> None:
    """Every policy gets its own zone; adding another policy keeps the existing zones."""
    names = [f"p{i}" for i in range(300)]
    zones = dns_zones(names)
    assert len(set(zones.values())) == len(names)
    assert dns_zones(["p1", "p2"])["p1"] == dns_zones(["p1", "p2", "zz"])["p1"]


def test_forwarded_subjects_use_the_same_policy_chains() -> None:
    """interfaces/sources send new forwarded flows through the policy's out and in chains."""
    nets = (
        ipaddress.ip_network("203.0.113.128/26"),
        ipaddress.ip_network("203.0.113.128/27"),  # inside the first: merged, no overlap
        ipaddress.ip_network("2001:db8:c1::/64"),
    )
    cfg = _cfg(_web(uids=(), interfaces=("br-app",), sources=nets))
    lay = layout(cfg)
    text = script(cfg, lay)
    fwd = text.split("chain forward {")[1]
    assert "type filter hook forward priority filter; policy accept;" in fwd
    assert fwd.index("ct state established,related accept") < fwd.index("iifname vmap")
    for rule in (
        "iifname vmap @m_if_fwd",
        "ip saddr vmap @m_src4_fwd",
        "ip6 saddr vmap @m_src6_fwd",
        "oifname vmap @m_if_fin",
        "ip daddr vmap @m_src4_fin",
        "ip6 daddr vmap @m_src6_fin",
    ):
        assert rule in fwd
    assert 'elements = { "br-app" : jump p_web_out }' in text
    assert "elements = { 203.0.113.128/26 : jump p_web_out }" in text
    assert "elements = { 2001:db8:c1::/64 : jump p_web_in }" in text
    assert "dns_redirect_in" not in text  # a direct policy: no gateway for its containers


def test_forwarded_gateway_policy_redirects_in_prerouting() -> None:
    """A gateway policy's containers have their DNS zoned and redirected as it comes in."""
    cfg = _cfg(_web(uids=(), interfaces=("br-app",), dns="gateway"))
    lay = layout(cfg)
    zone = lay.zones["web"]
    text = script(cfg, lay, gateway_ports={"web": 20001})
    zone_in = text.split("chain dns_zone_in {")[1].split("\n\t}")[0]
    assert "type filter hook prerouting priority raw" in zone_in
    assert "th dport 53 iifname vmap @m_if_zone" in zone_in
    redirect_in = text.split("chain dns_redirect_in {")[1]
    assert (
        f"ct zone {zone} meta l4proto {{ tcp, udp }} th dport 53 redirect to :20001" in redirect_in
    )
    inp = text.split("chain input {")[1]
    assert inp.index(f"th dport 20001 ct zone {zone} accept") < inp.index("established")


def _dumped(cid: int, chain: str) -> DumpedElement:
    """A dumped cgroup map element: ``cid`` jumps to ``chain``."""
    return DumpedElement(cgroup_key(cid), None, None, Verdict("jump", chain))


def test_layout_maps_are_typed_and_found_by_what_they_match() -> None:
    """Maps carry selector, role and level; only cgroup maps are dynamic."""
    p = _web(cgroups=("a/b",), dns="gateway")
    lay = layout(_cfg(p))
    assert lay.map("uid", "out") == MapSpec("m_uid_out", "uid", "out")
    assert lay.map("uid", "zone") == MapSpec("m_uid_zone", "uid", "zone")
    assert lay.map("gid", "out") is None
    assert lay.map("cgroup", "zone", 2) == MapSpec("m_cg_zone_2", "cgroup", "zone", 2)
    assert lay.map("cgroup", "out", 3) is None
    assert [m.name for m in lay.maps if m.dynamic] == ["m_cg_out_2", "m_cg_in_2", "m_cg_zone_2"]
    assert not lay.forwarded and not lay.forwarded_gateway
    fwd = layout(_cfg(_web(uids=(), interfaces=("veth0",), dns="gateway")))
    assert fwd.forwarded and fwd.forwarded_gateway
    assert fwd.map("if", "fin") == MapSpec("m_if_fin", "if", "fin")


def test_install_is_a_value_the_script_renders() -> None:
    """install() lists head commands then the table; script() is its rendering."""
    cfg = _cfg(_web(cgroups=("a/b",)))
    lay = layout(cfg)
    existing = Existing(
        chains=frozenset({*lay.chains, "p_old_out"}),
        sets=frozenset({*lay.set_names, "d_old_00000000_4"}),
        counters=frozenset(lay.counters),
    )
    value = install(cfg, lay, existing)
    *head, tbl = value.commands
    assert head == [
        AddTable("fenced"),
        Flush("table", "fenced"),
        Flush("map", "fenced", "m_uid_out"),
        Flush("map", "fenced", "m_uid_reply"),
        Delete("set", "fenced", "d_old_00000000_4"),
        Delete("chain", "fenced", "p_old_out"),
    ]
    assert isinstance(tbl, Table)
    assert {c.name for c in tbl.chains} == set(lay.chains)
    assert [m.name for m in tbl.maps] == [m.name for m in lay.maps]
    assert [m.elements for m in tbl.maps if m.key == "cgroupsv2"] == [(), ()]
    assert render(value) == script(cfg, lay, existing)


def test_cleanup_deletes_kept_chains_and_a_renamed_table() -> None:
    """cleanup() deletes stale chains, then the old table (added first so it may be gone)."""
    value = cleanup("new", {"p_old_in", "p_old_out"}, "old")
    assert render(value) == (
        "delete chain inet new p_old_in\n"
        "delete chain inet new p_old_out\n"
        "add table inet old\n"
        "delete table inet old\n"
    )
    assert render(cleanup("new", ())) == ""


def test_cgroup_maps_in_knows_the_prefix() -> None:
    """Only the cgroup maps of an existing table are picked, sorted."""
    existing = Existing(sets=frozenset({"m_uid_out", "m_cg_in_2", "m_cg_out_2", "d_x_1_4"}))
    assert cgroup_maps_in(existing) == ("m_cg_in_2", "m_cg_out_2")


def test_cgroup_ops_delete_wrong_and_add_missing_elements() -> None:
    """Unwanted ids and wrong verdicts are deleted, missing ones added, right maps untouched."""
    wanted = {"m_cg_out_2": {5: "p_web_out", 6: "p_web_out"}, "m_cg_in_2": {5: "p_web_in"}}
    have = {
        "m_cg_out_2": [_dumped(5, "p_old_out"), _dumped(9, "p_web_out")],
        "m_cg_in_2": [_dumped(5, "p_web_in")],
    }
    assert cgroup_ops("fenced", wanted, have) == [
        SetOp(
            "delete",
            "inet",
            "fenced",
            "m_cg_out_2",
            (Element(cgroup_key(5)), Element(cgroup_key(9))),
        ),
        SetOp(
            "add",
            "inet",
            "fenced",
            "m_cg_out_2",
            (
                Element(cgroup_key(5), verdict=Verdict("jump", "p_web_out")),
                Element(cgroup_key(6), verdict=Verdict("jump", "p_web_out")),
            ),
        ),
    ]
    assert cgroup_ops("fenced", {"m_cg_in_2": {5: "p_web_in"}}, have) == []


def test_stale_chains_are_the_referenced_ones_the_layout_lacks() -> None:
    """Chains cgroup elements jump to are stale only when the new layout has no such chain."""
    lay = layout(_cfg(_web(cgroups=("a/b",))))
    have = {
        "m_cg_out_2": [_dumped(5, "p_old_out"), _dumped(6, "p_web_out")],
        "m_cg_in_2": [_dumped(5, "p_old_in")],
    }
    assert stale_chains(lay, have) == {"p_old_out", "p_old_in"}
    assert stale_chains(lay, {}) == frozenset()


def test_cgroup_keys_give_back_their_id() -> None:
    """key_to_cgroup_id inverts cgroup_key and refuses keys of another length."""
    assert key_to_cgroup_id(cgroup_key(10171)) == 10171
    assert key_to_cgroup_id(cgroup_key(2**64 - 1)) == 2**64 - 1
    with pytest.raises(ValueError):
        key_to_cgroup_id(b"\0" * 4)
