"""Smoke tests of the test bed itself, without fenced.

The bed must work before fenced can be tested on it. Run with
``python -m pytest tests/bed -q -x`` (root needed).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.bed.bed import Bed, BedError, Cgroup, cgroup2_mount
from tests.bed.constants import (
    CLIENT_V4,
    CLIENT_V6,
    CLOSED_PORT,
    GID_ONLY_UID,
    RESOLVER_V6,
    ROGUE_ANSWER,
    ROGUE_V4,
    ROGUE_V6,
    SERVERS_V4_A,
    SERVERS_V4_B,
    SERVERS_V6,
    UID,
)
from tests.bed.fixtures import bed_unavailable

pytestmark = pytest.mark.bed

V4A, V4B, V6 = SERVERS_V4_A[0], SERVERS_V4_B[3], SERVERS_V6[2]
#: (host, tcp port, udp port) covering both v4 ranges and v6.
TARGETS = [(V4A, 80, 123), (V4B, 443, 8050), (V6, 8000, 9000)]


def _reachable_everywhere(
    bed: Bed, uid: int | None = None, gid: int | None = None, cgroup: Cgroup | None = None
) -> None:
    for host, tcp_port, udp_port in TARGETS:
        tcp = bed.probe("tcp", host, tcp_port, uid=uid, gid=gid, cgroup=cgroup)
        assert tcp.outcome == "connected" and tcp["server"] == host, tcp.data
        udp = bed.probe("udp", host, udp_port, uid=uid, gid=gid, cgroup=cgroup)
        assert udp.outcome == "reply" and udp["server"] == host, udp.data
        icmp = bed.probe("icmp", host, uid=uid, gid=gid, cgroup=cgroup)
        assert icmp.outcome == "reply", icmp.data


def test_outbound_as_uid(bed: Bed) -> None:
    """TCP, UDP and ICMP to v4 and v6 servers work as uid 64123 (no supplementary groups)."""
    _reachable_everywhere(bed, uid=UID)
    r = bed.probe("tcp", V4A, 22, uid=UID)
    assert (r["uid"], r["gid"], r["groups"]) == (UID, UID, [])


def test_outbound_as_gid_only(bed: Bed) -> None:
    """A gid-only identity runs as uid 64999 with that gid, and reaches the servers."""
    _reachable_everywhere(bed, gid=64200)
    r = bed.probe("udp", V4B, 123, gid=64200)
    assert (r["uid"], r["gid"], r["groups"]) == (GID_ONLY_UID, 64200, [])


def test_outbound_in_cgroup(bed: Bed) -> None:
    """A probe started in a bed cgroup is in it (as seen in /proc) and reaches the servers."""
    cg = bed.cgroup("svc/app")
    assert cg.id == os.stat(cg.abspath).st_ino and cg.level == 3
    _reachable_everywhere(bed, uid=UID, cgroup=cg)
    r = bed.probe("tcp", V4A, 80, uid=UID, cgroup="svc/app")
    assert r["cgroup"] == "/" + cg.path


def test_closed_port_is_refused(bed: Bed) -> None:
    """TCP and UDP to a port without a listener are refused, on v4 and v6."""
    for host in (V4A, V6):
        for kind in ("tcp", "udp"):
            r = bed.probe(kind, host, CLOSED_PORT, uid=UID)
            assert r.outcome == "refused", r.data


def test_loopback_in_client_namespace(bed: Bed) -> None:
    """Loopback works inside the client namespace (a listener on 127.0.0.1 and ::1)."""
    with_listener = bed.listen("tcp", 8080, uid=UID, bind=["127.0.0.1", "::1"])
    assert with_listener.first is not None and with_listener.first["uid"] == UID
    for host in ("127.0.0.1", "::1"):
        r = bed.probe("tcp", host, 8080, uid=UID)
        assert r.outcome == "connected" and r["server"] == host, r.data


def test_dns_records_and_ttls(bed: Bed) -> None:
    """A, AAAA, TXT and a CNAME chain are answered with their TTLs, NXDOMAIN/NODATA too."""
    bed.dns.set("www.example.com", "A", ["198.51.100.10", "198.51.100.11"], ttl=120)
    bed.dns.set("www.example.com", "AAAA", "2001:db8:1::10", ttl=60)
    bed.dns.set("txt.example.com", "TXT", ["hello world"], ttl=30)
    bed.dns.set("alias.example.org", "CNAME", "mid.example.net", ttl=300)
    bed.dns.set("mid.example.net", "CNAME", "www.example.com.", ttl=200)
    a = bed.resolve("www.example.com", uid=UID)
    assert (a.outcome, a["rcode"], sorted(a["addresses"])) == (
        "answer",
        "NOERROR",
        ["198.51.100.10", "198.51.100.11"],
    )
    assert {x["ttl"] for x in a["answers"]} == {120}
    aaaa = bed.resolve("WWW.Example.com.", "AAAA", server=RESOLVER_V6)
    assert aaaa["addresses"] == ["2001:db8:1::10"] and aaaa["answers"][0]["ttl"] == 60
    txt = bed.resolve("txt.example.com", "TXT")
    assert txt["answers"] == [
        {"name": "txt.example.com", "type": "TXT", "ttl": 30, "value": "hello world"}
    ]
    chain = bed.resolve("alias.example.org", "A")
    assert [(x["name"], x["type"], x["ttl"]) for x in chain["answers"]] == [
        ("alias.example.org", "CNAME", 300),
        ("mid.example.net", "CNAME", 200),
        ("www.example.com", "A", 120),
        ("www.example.com", "A", 120),
    ]
    assert sorted(chain["addresses"]) == ["198.51.100.10", "198.51.100.11"]
    nx = bed.resolve("nothing.example.com")
    assert (nx["rcode"], nx["answers"]) == ("NXDOMAIN", [])
    nodata = bed.resolve("txt.example.com", "AAAA")
    assert (nodata["rcode"], nodata["answers"]) == ("NOERROR", [])
    logged = bed.dns.queries()
    assert ("www.example.com", "AAAA", "udp", CLIENT_V6) in logged
    assert ("alias.example.org", "A", "udp", CLIENT_V4) in logged


def test_dns_changes_at_run_time(bed: Bed) -> None:
    """Zone edits apply to the very next query (set, replace, remove)."""
    bed.dns.set("api.example.com", "A", "198.51.100.12", ttl=5)
    assert bed.resolve("api.example.com")["addresses"] == ["198.51.100.12"]
    bed.dns.set("api.example.com", "A", ["203.0.113.13"], ttl=7)
    r = bed.resolve("api.example.com")
    assert r["addresses"] == ["203.0.113.13"] and r["answers"][0]["ttl"] == 7
    bed.dns.remove("api.example.com")
    assert bed.resolve("api.example.com")["rcode"] == "NXDOMAIN"


def test_dns_rotation(bed: Bed) -> None:
    """A rotated name answers a different subset of its pool on consecutive queries."""
    pool = list(SERVERS_V4_A[:5])
    bed.dns.rotate("pool.example.com", "A", pool, per_query=2, ttl=10)
    seen = [frozenset(bed.resolve("pool.example.com")["addresses"]) for _ in range(3)]
    assert all(len(s) == 2 and s <= set(pool) for s in seen)
    assert seen[0] != seen[1] != seen[2]
    assert frozenset().union(*seen) == set(pool)


def test_dns_tcp_large_answer(bed: Bed) -> None:
    """100 A records: UDP is truncated (TC), TCP carries them all; EDNS raises the limit."""
    many = [f"198.51.{i // 200}.{i % 200 + 1}" for i in range(100)]
    bed.dns.set("big.example.com", "A", many)
    udp = bed.resolve("big.example.com", extra=["--no-fallback"])
    assert (udp["tc"], udp["answers"]) == (True, [])
    fallback = bed.resolve("big.example.com")
    assert fallback["transport"] == "tcp" and len(fallback["addresses"]) == 100
    tcp = bed.resolve("big.example.com", tcp=True, uid=UID)
    assert tcp.outcome == "answer" and sorted(tcp["addresses"]) == sorted(many)
    edns = bed.resolve("big.example.com", extra=["--no-fallback", "--edns", "4096"])
    assert not edns["tc"] and len(edns["addresses"]) == 100
    transports = {q.transport for q in bed.dns.queries() if q.name == "big.example.com"}
    assert transports == {"udp", "tcp"}


def test_dns_servfail_delay_drop(bed: Bed) -> None:
    """servfail answers SERVFAIL, delay answers late, drop never answers (but is logged)."""
    bed.dns.set("slow.example.com", "A", "198.51.100.14")
    bed.dns.servfail("bad.example.com")
    assert bed.resolve("bad.example.com")["rcode"] == "SERVFAIL"
    bed.dns.delay("slow.example.com", 0.8)
    t0 = time.monotonic()
    slow = bed.resolve("slow.example.com", timeout=3)
    assert slow["addresses"] == ["198.51.100.14"] and time.monotonic() - t0 >= 0.8
    bed.dns.delay("slow.example.com", 0)
    bed.dns.drop("slow.example.com")
    assert bed.resolve("slow.example.com", timeout=0.5).outcome == "timeout"
    assert bed.dns.wait_for_query("slow.example.com", "A").transport == "udp"
    bed.dns.drop("slow.example.com", on=False)
    assert bed.resolve("slow.example.com")["addresses"] == ["198.51.100.14"]
    bed.dns.blackhole()
    assert bed.resolve("slow.example.com", timeout=0.5).outcome == "timeout"


def test_dns_stop_and_start(bed: Bed) -> None:
    """Stopping the resolver makes queries fail (refused); starting it restores the zone."""
    bed.dns.set("db.example.com", "A", "203.0.113.14")
    old_pid = bed.dns.pid
    bed.dns.stop()
    assert not bed.dns.running and old_pid is not None and not Path(f"/proc/{old_pid}").exists()
    assert bed.resolve("db.example.com").outcome == "refused"
    assert bed.resolve("db.example.com", tcp=True).outcome == "refused"
    bed.dns.start()
    assert bed.resolve("db.example.com")["addresses"] == ["203.0.113.14"]


def test_rogue_dns_server(bed: Bed) -> None:
    """The rogue server answers every A query with 203.0.113.99, on v4 and v6, and logs it."""
    bed.dns.set("www.example.com", "A", "198.51.100.10")
    for server in (ROGUE_V4, ROGUE_V6):
        r = bed.resolve("www.example.com", server=server, uid=UID)
        assert r["addresses"] == [ROGUE_ANSWER], r.data
    assert bed.resolve("anything.invalid", server=ROGUE_V4, tcp=True)["addresses"] == [ROGUE_ANSWER]
    assert [q.client for q in bed.rogue.queries()] == [CLIENT_V4, CLIENT_V6, CLIENT_V4]
    assert bed.dns.queries() == []


def test_nft_rules_confine_only_the_client_namespace(bed: Bed) -> None:
    """nft rules in the client ns match uid, gid and cgroup and never reach the host."""
    cg = bed.cgroup("confined")
    bed.nft(
        "add table inet bedtest\n"
        "add chain inet bedtest out { type filter hook output priority 0; policy accept; }\n"
        f"add rule inet bedtest out meta skuid {UID} tcp dport 80 reject with tcp reset\n"
        "add rule inet bedtest out meta skgid 64200 meta l4proto udp reject\n"
        f'add rule inet bedtest out socket cgroupv2 level {cg.level} "{cg.nft_path}" drop\n'
    )
    assert bed.probe("tcp", V4A, 80, uid=UID).outcome == "refused"
    assert bed.probe("tcp", V6, 80, uid=UID).outcome == "refused"
    assert bed.probe("tcp", V4A, 443, uid=UID).outcome == "connected"
    assert bed.probe("tcp", V4A, 80, uid=UID + 1).outcome == "connected"
    # A reject in output fails the UDP send itself with EPERM (the ICMP comes too late).
    assert bed.probe("udp", V4A, 123, gid=64200).outcome == "denied"
    assert bed.probe("udp", V4A, 123, gid=64201).outcome == "reply"
    # A drop in output: TCP retransmits its SYN until the timeout, a v4 ping's send gets EPERM.
    assert bed.probe("tcp", V4A, 443, cgroup=cg, timeout=0.5).outcome == "timeout"
    assert bed.probe("icmp", V4A, cgroup=cg).outcome == "denied"
    assert bed.probe("icmp", V4A, cgroup=bed.cgroup("free")).outcome == "reply"
    assert "table inet bedtest" in bed.nft("list ruleset").stdout
    host = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True)
    assert "bedtest" not in host.stdout


def test_cgroup_ids_change_on_recreate(bed: Bed) -> None:
    """recreate_cgroup kills the members and gives the same path a new id."""
    first = bed.cgroup("worker")
    assert bed.cgroup("worker") == first
    member = bed.listen("udp", 9999, uid=UID, cgroup=first)
    assert (first.abspath / "cgroup.procs").read_text().split() == [str(member.pid)]
    second = bed.recreate_cgroup("worker")
    assert second.path == first.path and second.id != first.id
    assert member.wait(5) is not None
    assert (second.abspath / "cgroup.procs").read_text() == ""


def test_inbound_listener_reachable_from_server(bed: Bed) -> None:
    """A listener in the client ns is reachable from the server ns over v4 and v6."""
    tcp = bed.listen("tcp", 8443, uid=UID)
    udp = bed.listen("udp", 5353, uid=UID)
    for host in (CLIENT_V4, CLIENT_V6):
        r = bed.connect_from_server(host, 8443, "tcp")
        assert r.outcome == "connected" and r["server"] == host, r.data
        event = tcp.read_json()
        assert (event["event"], event["local"]) == ("accepted", host)
        u = bed.connect_from_server(host, 5353, "udp")
        assert u.outcome == "reply" and u["server"] == host, u.data
        assert bed.connect_from_server(host, 0, "icmp").outcome == "reply"
    assert bed.connect_from_server(CLIENT_V4, 8444).outcome == "refused"
    assert udp.alive


def test_hold_keeps_a_connection(bed: Bed) -> None:
    """A held connection carries lines on demand; killing the server ends it."""
    held = bed.hold(V6, 9000, uid=UID)
    assert held.first is not None and held.first.outcome == "connected"
    assert held.exchange("hello").data["reply"] == "hello"
    assert held.exchange("WHO").data["reply"] == V6
    bed.echo.stop()
    assert held.exchange("again").outcome in ("closed", "reset")


def test_cleanup_removes_everything() -> None:
    """After a bed closes (even on an exception), no namespace, cgroup or process remains."""
    reason = bed_unavailable()
    if reason is not None:
        pytest.skip(reason)
    b = Bed()
    with pytest.raises(RuntimeError, match="test failure"), b:
        cg = b.cgroup("a/b")
        b.listen("tcp", 8080, uid=UID, cgroup=cg)
        b.hold(V4A, 80, uid=UID)
        daemon = b.ns_exec(["sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!"]).stdout
        pids = set(b.started_pids) | {int(daemon)}
        assert len(pids) >= 6 and all(Path(f"/proc/{p}").exists() for p in pids)
        raise RuntimeError("test failure")
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    assert b.client_ns not in names.stdout and b.server_ns not in names.stdout
    mount = cgroup2_mount()
    assert mount is not None and not (mount / b.cgroup_parent_name).exists()
    assert not any(Path(f"/proc/{p}").exists() for p in pids)
    assert not b.tmpdir.exists()
    b.close()  # idempotent


def test_run_as_identity(bed: Bed) -> None:
    """bed.run switches identity with setpriv and refuses programs the uid cannot read."""
    cp = bed.run(["id", "-u"], uid=UID, check=True)
    assert cp.stdout.strip() == str(UID)
    cp = bed.run(["id", "-G"], gid=64200, check=True)
    assert cp.stdout.split() == ["64200"]
    with pytest.raises(BedError):
        bed.run(["/root/no-such-dir/prog"], uid=UID)


def test_spawned_output_never_blocks(bed: Bed) -> None:
    """A spawned process can print far more than a pipe holds without anyone reading."""
    proc = bed.spawn(["sh", "-c", "seq 1 100000; echo done"], stdin=False)
    assert proc.wait(10) == 0
    lines = [proc.readline(1) for _ in range(100001)]
    assert lines[-1] == "done" and proc.readline(1) is None


async def test_async_probe(bed: Bed) -> None:
    """Bed.aprobe lets an async test probe while its event loop keeps running."""
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    ticker = asyncio.create_task(tick())
    r = await bed.aprobe("tcp", V4A, 80, uid=UID)
    ticker.cancel()
    assert r.outcome == "connected" and ticks > 3
