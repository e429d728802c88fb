"""A confined process tries to get out: every attempt must fail, for uid, gid and cgroup.

Tests named ``test_limit_*`` show what fenced documents it cannot do (docs/security.md):
they assert the limit as it is, so that a change of behaviour is noticed either way.
"""

from __future__ import annotations

import os
import time

import pytest

from tests.adversarial.common import (
    ALLOWED_V4,
    ALLOWED_V6,
    DENIED_V4,
    DENIED_V6,
    KINDS,
    OUTBOUND,
    UDP_V4,
    Subject,
    attack,
    expect,
    expect_blocked,
    record,
    start_fenced,
    subject,
)
from tests.bed import constants as C
from tests.bed.bed import Bed

pytestmark = pytest.mark.bed

SAME_HOST_V6 = C.SERVERS_V6[0]  # "the same host" as ALLOWED_V4 (198.51.100.10)
SAME_HOST_V4 = ALLOWED_V4  # "the same host" as ALLOWED_V6 (2001:db8:1::10)


@pytest.mark.parametrize("kind", KINDS)
def test_direct_addresses_other_ports_and_protocols(bed: Bed, kind: str) -> None:
    """Unlisted addresses, an allowed address on another port or protocol: all refused."""
    subj = subject(bed, kind)
    start_fenced(bed, subj)
    expect(
        "allowed address, port and protocol (control)",
        kind,
        "connected",
        attack(bed, subj, "connect", "tcp", ALLOWED_V4, 80),
    )
    for what, args in (
        ("direct IPv4 address not listed", ("tcp", DENIED_V4, 80)),
        ("direct IPv6 address not listed", ("tcp", DENIED_V6, 443)),
        ("allowed IPv4 address, other port", ("tcp", ALLOWED_V4, 443)),
        ("allowed IPv4 address (tcp 80), udp 80", ("udp", ALLOWED_V4, 80)),
        ("allowed udp 123 address, tcp 123", ("tcp", UDP_V4, 123)),
        ("allowed IPv6 address, other port", ("tcp", ALLOWED_V6, 80)),
    ):
        expect_blocked(what, kind, attack(bed, subj, "connect", *args))


@pytest.mark.parametrize("kind", KINDS)
def test_other_family_and_v4_mapped_addresses(bed: Bed, kind: str) -> None:
    """v6 to a host allowed by v4 and the reverse; v4-mapped v6 is judged as the v4 address."""
    bed.dns.set("v4only.example.com", "A", [C.SERVERS_V4_A[2]], ttl=60)
    bed.dns.set("v6only.example.com", "AAAA", [C.SERVERS_V6[3]], ttl=60)
    subj = subject(bed, kind)
    start_fenced(
        bed,
        subj,
        outbound=[
            f"{ALLOWED_V4}:80/tcp",
            f"[{ALLOWED_V6}]:443/tcp",
            "v4only.example.com:80/tcp",
            "v6only.example.com:80/tcp",
        ],
    )
    expect(
        "name with A only, its v4 address (control)",
        kind,
        "connected",
        attack(bed, subj, "connect", "tcp", C.SERVERS_V4_A[2], 80),
    )
    for what, args in (
        ("IPv6 of a host allowed only by its IPv4 address", ("tcp", SAME_HOST_V6, 80)),
        ("IPv4 of a host allowed only by its IPv6 address", ("tcp", SAME_HOST_V4, 443)),
        ("IPv6 of a name that has only A records", ("tcp", C.SERVERS_V6[2], 80)),
        ("IPv4 of a name that has only AAAA records", ("tcp", C.SERVERS_V4_A[3], 80)),
        ("NAT64 form of an allowed IPv4 address", ("tcp", "64:ff9b::c633:640a", 80)),
    ):
        expect_blocked(what, kind, attack(bed, subj, "connect", *args))
    # An AF_INET6 socket to ::ffff:a.b.c.d sends IPv4: it is judged as a.b.c.d.
    expect(
        "v4-mapped ::ffff: form of an allowed IPv4 address and port",
        kind,
        "connected",
        attack(bed, subj, "connect", "tcp", ALLOWED_V4, 80, "--v6"),
    )
    for what, args in (
        ("v4-mapped ::ffff: form of a denied IPv4 address", ("tcp", DENIED_V4, 80)),
        ("v4-mapped ::ffff: form of an allowed IPv4 address, other port", ("tcp", ALLOWED_V4, 22)),
        ("v4-mapped ::ffff: form, udp to a denied IPv4 address", ("udp", DENIED_V4, 123)),
    ):
        expect_blocked(what, kind, attack(bed, subj, "connect", *args, "--v6"))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dns", ["gateway", "direct"])
def test_dns_to_other_servers_ports_and_dot(bed: Bed, kind: str, dns: str) -> None:
    """DNS never reaches another server (gateway: intercepted; direct: refused); DoT fails."""
    bed.dns.set("www.example.com", "A", [ALLOWED_V4], ttl=60)
    subj = subject(bed, kind)
    start_fenced(bed, subj, dns=dns, outbound=[*OUTBOUND, "www.example.com:80/tcp"])
    dot = bed.listen("tcp", 853, ns="server")  # a DoT port on every server address
    assert dot.first is not None
    assert attack(bed, None, "connect", "tcp", C.RESOLVER_V4, 853).outcome == "connected"
    who = subj.probe_who
    for tcp in (False, True):
        r = bed.resolve("www.example.com", tcp=tcp, **who)
        expect(
            f"DNS to the configured resolver, {'tcp' if tcp else 'udp'} 53 (control, {dns})",
            kind,
            "answer",
            r,
        )
    for what, server, tcp in (
        ("another server, udp 53", C.ROGUE_V4, False),
        ("another server, tcp 53", C.ROGUE_V4, True),
        ("another server over IPv6, udp 53", C.ROGUE_V6, False),
        ("the resolver's IPv6 address (not configured), udp 53", C.RESOLVER_V6, False),
    ):
        r = bed.resolve("www.example.com", server=server, tcp=tcp, **who)
        attempt = f"DNS to {what} (dns = {dns})"
        if dns == "direct":
            expect_blocked(attempt, kind, r)
        else:  # intercepted: fenced's gateway answers, never the other server
            got = f"{r.outcome}: {','.join(r.get('addresses') or []) or r.get('rcode')}"
            record(attempt, kind, f"answered by fenced ({ALLOWED_V4}), not the server", got)
            assert r.outcome == "answer" and r["addresses"] == [ALLOWED_V4], r.data
    if dns == "gateway":  # a tunnel needs names the policy does not list: refused
        r = bed.resolve("c2VjcmV0.exfil.example.net", server=C.ROGUE_V4, **who)
        record(
            "DNS tunnel: unlisted name asked of another server (dns = gateway)",
            kind,
            "NXDOMAIN from fenced, nothing forwarded",
            f"{r.outcome}, {r.get('rcode')}",
        )
        assert r["rcode"] == "NXDOMAIN" and not r["addresses"], r.data
        assert all("exfil" not in q.name for q in bed.dns.queries())
    for what, args in (
        ("DNS-over-TLS (tcp 853) to the resolver", ("tcp", C.RESOLVER_V4, 853)),
        ("DNS-over-TLS (tcp 853) to another server", ("tcp", C.ROGUE_V4, 853)),
        ("the resolver's address on another port (tcp 80)", ("tcp", C.RESOLVER_V4, 80)),
        ("the resolver's address on another port (udp 123)", ("udp", C.RESOLVER_V4, 123)),
    ):
        expect_blocked(f"{what} (dns = {dns})", kind, attack(bed, subj, "connect", *args))
    assert bed.rogue.queries() == []


@pytest.mark.parametrize("kind", KINDS)
def test_icmp_and_udp_tunnels_to_denied_hosts(bed: Bed, kind: str) -> None:
    """ICMP echo and UDP (any port, 53 included) to denied hosts get nothing through."""
    subj = subject(bed, kind)
    fenced = start_fenced(bed, subj)
    who = subj.probe_who
    for what, host in (
        ("ICMP echo to a denied IPv4 host", DENIED_V4),
        ("ICMPv6 echo to a denied IPv6 host", DENIED_V6),
        ("ICMP echo to a host allowed for tcp only", ALLOWED_V4),
        ("ICMP echo to the resolver", C.RESOLVER_V4),
    ):
        expect_blocked(what, kind, bed.probe("icmp", host, **who))
    for what, args in (
        ("UDP to a denied host, port 123", ("udp", DENIED_V4, 123)),
        ("UDP to a denied host, port 443 (QUIC)", ("udp", DENIED_V4, 443)),
        ("UDP to a denied IPv6 host", ("udp", DENIED_V6, 123)),
        ("UDP to a denied host, port 53 (DNS tunnel to a non-resolver)", ("udp", DENIED_V4, 53)),
    ):
        expect_blocked(what, kind, attack(bed, subj, "connect", *args))
    assert fenced.nft_counter("denied_web_out") >= 7


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("how", ["child", "grandchild", "daemon"])
def test_descendants_stay_confined(bed: Bed, kind: str, how: str) -> None:
    """A child, a grandchild and a double-forked daemon of a confined process are confined."""
    subj = subject(bed, kind)
    start_fenced(bed, subj)
    r = attack(bed, subj, "descendant", how, "tcp", DENIED_V4, 80)
    assert r["pid"] != r["top"], r.data
    if how == "daemon":
        assert r["sid"] != r["top_sid"] and r["ppid"] != r["top"], r.data
    expect_blocked(f"a {how} of the confined process, tcp", kind, r)
    r = attack(bed, subj, "descendant", how, "udp", DENIED_V4, 123)
    expect_blocked(f"a {how} of the confined process, udp", kind, r)
    if how == "daemon":
        ok = attack(bed, subj, "descendant", how, "tcp", ALLOWED_V4, 80)
        expect("a daemon of the confined process, allowed address (control)", kind, "connected", ok)


@pytest.mark.parametrize("kind", KINDS)
def test_changing_gid_without_capabilities_fails(bed: Bed, kind: str) -> None:
    """Without CAP_SETGID a process cannot change or add a group; its sockets stay confined."""
    subj = subject(bed, kind)
    start_fenced(bed, subj)
    other = C.OTHER_UID if subj.gid != C.OTHER_UID else C.UID
    for target in (other, 0):
        r = attack(bed, subj, "setgid", target, "tcp", DENIED_V4, 80)
        for call in ("setgid", "setegid", "setresgid", "setgroups"):
            assert r[call] == "EPERM", r.data
        assert r["gid"] == subj.gid and r["groups"] == [], r.data
        expect_blocked(
            f"setgid/setgroups to gid {target} without CAP_SETGID, then connect", kind, r
        )


@pytest.mark.parametrize("kind", KINDS)
def test_socket_made_confined_and_used_unconfined_stays_confined(bed: Bed, kind: str) -> None:
    """A socket the confined process made, passed out (SCM_RIGHTS) and back, is still denied."""
    subj = subject(bed, kind)
    start_fenced(bed, subj)
    for proto, host, port in (("tcp", DENIED_V4, 80), ("udp", DENIED_V4, 123)):
        r = attack(bed, None, *_scm_args(subj, "out", proto, host, port))
        assert "child_error" not in r.data, r.data
        expect_blocked(
            f"confined socket passed to an unconfined process, {proto}",
            kind,
            r["confined_socket_in_unconfined"]["outcome"],
        )
        expect_blocked(
            f"confined socket passed out and back in, {proto}",
            kind,
            r["back_in_confined"]["outcome"],
        )


@pytest.mark.parametrize("kind", KINDS)
def test_limit_socket_passed_in_from_unconfined_is_not_confined(bed: Bed, kind: str) -> None:
    """Documented limit: a socket an unconfined process made and passed in is not confined."""
    subj = subject(bed, kind)
    start_fenced(bed, subj)
    r = attack(bed, None, *_scm_args(subj, "in", "tcp", DENIED_V4, 80))
    assert "child_error" not in r.data, r.data
    got = r["passed_in_confined"]["outcome"]
    record(
        "LIMIT: socket made unconfined, passed in, used by the confined process",
        kind,
        "connected (documented limit)",
        got,
    )
    assert got == "connected", r.data


def _scm_args(subj: Subject, mode: str, proto: str, host: str, port: int) -> list[object]:
    args: list[object] = ["scm", mode, proto, host, port]
    args += ["--confined-uid", subj.uid, "--confined-gid", subj.gid]
    args += ["--free-uid", C.OTHER_UID if subj.kind != "cgroup" else C.OTHER_UID + 1]
    if subj.cgroup is not None:
        args += ["--cgroup-procs", subj.cgroup.abspath / "cgroup.procs"]
    return args


@pytest.mark.parametrize("kind", KINDS)
def test_loopback_services_when_loopback_is_off(bed: Bed, kind: str) -> None:
    """With loopback = false no local service is reachable: 127/8, ::1, own addresses, mapped."""
    tcp = bed.listen("tcp", 5000)
    udp = bed.listen("udp", 5001)
    assert tcp.first is not None and udp.first is not None
    subj = subject(bed, kind)
    start_fenced(bed, subj)
    assert attack(bed, None, "connect", "tcp", "127.0.0.1", 5000).outcome == "connected"
    for what, args in (
        ("loopback 127.0.0.1, tcp", ("tcp", "127.0.0.1", 5000)),
        ("loopback 127.0.0.2 (another 127/8 address), tcp", ("tcp", "127.0.0.2", 5000)),
        ("loopback ::1, tcp", ("tcp", "::1", 5000)),
        ("loopback 127.0.0.1, udp", ("udp", "127.0.0.1", 5001)),
        ("own IPv4 address (local service, not 127/8)", ("tcp", C.CLIENT_V4, 5000)),
        ("own IPv6 address (local service, not ::1)", ("tcp", C.CLIENT_V6, 5000)),
    ):
        expect_blocked(what, kind, attack(bed, subj, "connect", *args))
    expect_blocked(
        "v4-mapped ::ffff:127.0.0.1",
        kind,
        attack(bed, subj, "connect", "tcp", "127.0.0.1", 5000, "--v6"),
    )


@pytest.mark.parametrize("kind", KINDS)
def test_source_address_and_device_tricks(bed: Bed, kind: str) -> None:
    """Binding another source address, port or device before connecting changes nothing."""
    subj = subject(bed, kind)
    start_fenced(bed, subj)
    # Let unprivileged processes bind ports below 1024 (in the bed's namespace only).
    bed.ns_exec(["sysctl", "-q", "-w", "net.ipv4.ip_unprivileged_port_start=0"])
    for what, args in (
        (
            "bind 127.0.0.2, then connect to a denied host",
            ("tcp", DENIED_V4, 80, "--bind", "127.0.0.2"),
        ),
        ("bind the client's own IPv4, then connect", ("tcp", DENIED_V4, 80, "--bind", C.CLIENT_V4)),
        (
            "bind the client's own IPv6, then connect",
            ("tcp", DENIED_V6, 443, "--bind", C.CLIENT_V6),
        ),
        (
            "bind source port 53 (a resolver port), then connect",
            ("tcp", DENIED_V4, 80, "--sport", "53"),
        ),
        (
            "bind source port 53, udp to a denied host's port 53",
            ("udp", DENIED_V4, 53, "--sport", "53"),
        ),
        ("bind source port 123, udp to a denied host", ("udp", DENIED_V4, 123, "--sport", "123")),
        ("SO_BINDTODEVICE veth0, then connect", ("tcp", DENIED_V4, 80, "--device", "veth0")),
        ("SO_BINDTODEVICE lo, then connect", ("tcp", DENIED_V4, 80, "--device", "lo")),
    ):
        expect_blocked(what, kind, attack(bed, subj, "connect", *args))


@pytest.mark.parametrize("kind", KINDS)
def test_broadcast_and_multicast(bed: Bed, kind: str) -> None:
    """UDP to broadcast and multicast addresses is refused (unconfined senders get it out)."""
    subj = subject(bed, kind)
    fenced = start_fenced(bed, subj)
    targets = (
        ("subnet broadcast 192.0.2.255", ("192.0.2.255", 9, "--broadcast")),
        ("limited broadcast 255.255.255.255", ("255.255.255.255", 9, "--broadcast")),
        ("multicast 224.0.0.251 (mDNS)", ("224.0.0.251", 5353)),
        ("multicast 239.1.2.3", ("239.1.2.3", 9)),
        ("IPv6 multicast ff02::fb (mDNS)", ("ff02::fb", 5353)),
        ("IPv6 all-nodes ff02::1", ("ff02::1", 9)),
    )
    before = fenced.nft_counter("denied_web_out")
    for what, args in targets:
        assert attack(bed, None, "send", *args).outcome == "sent", what
        expect_blocked(what, kind, attack(bed, subj, "send", *args))
    assert fenced.nft_counter("denied_web_out") >= before + len(targets)


def test_cgroup_child_cgroup_does_not_escape(bed: Bed) -> None:
    """A delegated cgroup's process that moves itself into a child cgroup stays confined."""
    subj = subject(bed, "cgroup")
    assert subj.cgroup is not None
    start_fenced(bed, subj)
    d = subj.cgroup.abspath
    for path in (d, d / "cgroup.procs", d / "cgroup.threads", d / "cgroup.subtree_control"):
        os.chown(path, subj.uid, subj.gid)  # what systemd's Delegate=yes does
    r = attack(bed, subj, "cgroup-escape", d, "tcp", DENIED_V4, 80)
    assert r["steps"]["to_child"] == "ok", r.data
    assert r["in_child"]["cgroup"].endswith("/app.service/escape"), r.data
    expect_blocked(
        "move itself into a child cgroup it created, then connect",
        "cgroup",
        r["in_child"]["outcome"],
    )
    assert r["steps"]["to_parent"] == "EACCES" and r["steps"]["to_root"] == "EACCES", r.data
    expect_blocked(
        "move itself to the parent or root cgroup (EACCES), then connect",
        "cgroup",
        r["after"]["outcome"],
    )


def test_cgroup_removed_and_recreated_50_times(bed: Bed) -> None:
    """A service cgroup recreated 50 times in a row is confined each time (probe at once)."""
    subj = subject(bed, "cgroup")
    assert subj.cgroup is not None
    fenced = start_fenced(bed, subj)
    outcomes: list[str] = []
    started = time.monotonic()
    for _ in range(50):
        cg = bed.recreate_cgroup("app.service")
        outcomes.append(bed.probe("tcp", DENIED_V4, 80, uid=subj.uid, cgroup=cg).outcome)
    took = time.monotonic() - started
    got = "all refused" if set(outcomes) == {"refused"} else ",".join(outcomes)
    record(
        "service cgroup removed and recreated 50 times, probe right after each",
        "cgroup",
        "blocked every time",
        f"{got} ({took:.0f} s)",
    )
    assert set(outcomes) == {"refused"}, outcomes
    assert bed.probe("tcp", ALLOWED_V4, 80, uid=subj.uid, cgroup=cg).outcome == "connected"
    assert fenced.proc is not None and fenced.proc.alive


@pytest.mark.parametrize("kind", ["uid", "gid"])
def test_limit_inbound_udp_reaches_uid_listener(bed: Bed, kind: str) -> None:
    """Documented limit: inbound UDP reaches a uid/gid-matched listener; only replies drop."""
    subj = subject(bed, kind)
    start_fenced(bed, subj, inbound=["8080/tcp"])
    listener = bed.listen("udp", 9093, **subj.probe_who)
    r = bed.connect_from_server(C.CLIENT_V4, 9093, "udp")
    expect_blocked("inbound UDP to an unlisted port: reply to the sender", kind, r)
    event = listener.read_json(5.0)
    got = "datagram delivered" if event.get("event") == "datagram" else str(event.data)
    record(
        "LIMIT: inbound UDP to a uid/gid listener on an unlisted port",
        kind,
        "datagram delivered (documented limit)",
        got,
    )
    assert event.get("event") == "datagram", event.data
