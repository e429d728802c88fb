"""Enforcement proven by packets: fenced runs in the bed and confined probes try to connect."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import TypedDict, Unpack

import pytest

from tests.bed import constants as C
from tests.bed.bed import Bed, Cgroup
from tests.bed.fenced_proc import Fenced, daemon_section, policy_section

pytestmark = pytest.mark.bed

ALLOWED_V4 = C.SERVERS_V4_A[0]  # 198.51.100.10: tcp 80 only
UDP_V4 = C.SERVERS_V4_A[1]  # 198.51.100.11: udp 123 only
ICMP_V4 = C.SERVERS_V4_A[2]  # 198.51.100.12: icmp only
DENIED_V4 = C.SERVERS_V4_B[0]  # 203.0.113.10: nothing
ALLOWED_V6 = C.SERVERS_V6[0]  # 2001:db8:1::10: tcp 443 only
DENIED_V6 = C.SERVERS_V6[1]

OUTBOUND = [
    f"{ALLOWED_V4}:80/tcp",
    f"{UDP_V4}:123/udp",
    f"{ICMP_V4}/icmp",
    f"[{ALLOWED_V6}]:443/tcp",
]
BLOCKED = {"refused", "timeout", "unreachable", "denied", "reset"}


class Who(TypedDict, total=False):
    """The identity a probe runs as (keyword arguments of Bed.probe)."""

    uid: int
    gid: int
    cgroup: Cgroup


def who_of(bed: Bed, kind: str) -> Who:
    """The probe identity a policy of ``kind`` (uid, gid, cgroup) matches."""
    if kind == "uid":
        return {"uid": C.UID}
    if kind == "gid":
        return {"gid": C.GID}
    return {"uid": C.OTHER_UID, "cgroup": bed.cgroup("app.service")}


def _subject(bed: Bed, kind: str) -> tuple[dict[str, object], Who]:
    """Policy keys that confine ``kind``, and the probe identity that matches them."""
    if kind == "uid":
        return {"uids": [C.UID]}, who_of(bed, kind)
    if kind == "gid":
        return {"gids": [C.GID]}, who_of(bed, kind)
    return {"cgroups": [bed.cgroup("app.service").path]}, who_of(bed, kind)


def _start(bed: Bed, kind: str, **policy: object) -> tuple[Fenced, Who]:
    keys, who = _subject(bed, kind)
    keys.setdefault("outbound", OUTBOUND)
    keys.setdefault("dns", "direct")  # the DNS gateway has its own tests
    keys.update(policy)
    cfg = daemon_section() + policy_section("web", **keys)
    return Fenced(bed, cfg).start(), who


def _outcome(bed: Bed, kind: str, *args: object, **who: Unpack[Who]) -> str:
    return bed.probe(kind, *args, **who).outcome


@pytest.mark.parametrize("kind", ["uid", "gid", "cgroup"])
def test_outbound_allows_only_listed_addresses_ports_and_protocols(bed: Bed, kind: str) -> None:
    """A confined process reaches its allowed address+port+proto and nothing else."""
    fenced, who = _start(bed, kind)
    assert _outcome(bed, "tcp", ALLOWED_V4, 80, **who) == "connected"
    assert _outcome(bed, "tcp", ALLOWED_V6, 443, **who) == "connected"
    assert _outcome(bed, "udp", UDP_V4, 123, **who) == "reply"
    assert _outcome(bed, "icmp", ICMP_V4, **who) == "reply"
    # wrong port, wrong protocol, wrong address, either family
    assert _outcome(bed, "tcp", ALLOWED_V4, 443, **who) in BLOCKED
    assert _outcome(bed, "udp", ALLOWED_V4, 80, **who) in BLOCKED
    assert _outcome(bed, "tcp", UDP_V4, 123, **who) in BLOCKED
    assert _outcome(bed, "tcp", DENIED_V4, 80, **who) in BLOCKED
    assert _outcome(bed, "tcp", DENIED_V6, 443, **who) in BLOCKED
    assert _outcome(bed, "udp", DENIED_V4, 123, **who) in BLOCKED
    assert _outcome(bed, "icmp", DENIED_V4, **who) in BLOCKED
    assert _outcome(bed, "icmp", ALLOWED_V4, **who) in BLOCKED
    # TCP is refused at once with a reset, not left to time out
    assert _outcome(bed, "tcp", DENIED_V4, 80, **who) == "refused"
    assert fenced.nft_counter("denied_web_out") >= 8


@pytest.mark.parametrize("kind", ["uid", "gid", "cgroup"])
def test_dns_only_to_the_configured_resolvers(bed: Bed, kind: str) -> None:
    """The resolvers answer on port 53 (udp and tcp); any other DNS server is unreachable."""
    bed.dns.set("www.example.com", "A", [ALLOWED_V4], ttl=60)
    _start(bed, kind)
    ok = bed.resolve("www.example.com", **who_of(bed, kind))
    assert ok.outcome == "answer" and ok["addresses"] == [ALLOWED_V4]
    ok_tcp = bed.resolve("www.example.com", tcp=True, **who_of(bed, kind))
    assert ok_tcp.outcome == "answer"
    rogue = bed.resolve("www.example.com", server=C.ROGUE_V4, **who_of(bed, kind))
    assert rogue.outcome != "answer"
    rogue_tcp = bed.resolve("www.example.com", server=C.ROGUE_V4, tcp=True, **who_of(bed, kind))
    assert rogue_tcp.outcome != "answer"
    assert bed.rogue.queries() == []


def test_other_identities_are_untouched(bed: Bed) -> None:
    """Processes that no policy matches reach everything, while the policy's uid does not."""
    _start(bed, "uid")
    assert _outcome(bed, "tcp", DENIED_V4, 80, uid=C.UID) == "refused"
    assert _outcome(bed, "tcp", DENIED_V4, 80, uid=C.OTHER_UID) == "connected"
    assert _outcome(bed, "tcp", DENIED_V4, 80) == "connected"  # root
    assert _outcome(bed, "icmp", DENIED_V6, uid=C.OTHER_UID) == "reply"


@pytest.mark.parametrize("loopback", [False, True])
def test_loopback_follows_the_policy(bed: Bed, loopback: bool) -> None:
    """Connections to 127.0.0.1 and ::1 are allowed exactly when loopback = true."""
    listener = bed.listen("tcp", 5000, bind=["127.0.0.1", "::1"])
    assert listener.first is not None
    _start(bed, "uid", loopback=loopback)
    want = "connected" if loopback else "refused"
    assert _outcome(bed, "tcp", "127.0.0.1", 5000, uid=C.UID) == want
    assert _outcome(bed, "tcp", "::1", 5000, uid=C.UID) == want
    assert _outcome(bed, "tcp", "127.0.0.1", 5000, uid=C.OTHER_UID) == "connected"


@pytest.mark.parametrize("kind", ["uid", "cgroup"])
def test_audit_mode_lets_everything_through_and_counts(bed: Bed, kind: str) -> None:
    """In audit mode denied connections succeed but are counted and logged."""
    fenced, who = _start(bed, kind, mode="audit")
    assert _outcome(bed, "tcp", DENIED_V4, 80, **who) == "connected"
    assert _outcome(bed, "udp", DENIED_V4, 123, **who) == "reply"
    assert fenced.nft_counter("denied_web_out") >= 2


def test_restarted_cgroup_stays_confined(bed: Bed) -> None:
    """A cgroup removed and created again (new id) is confined again at once, many times over."""
    fenced, _ = _start(bed, "cgroup")
    old_id = bed.cgroup("app.service").id
    for round_ in range(5):
        cg: Cgroup = bed.recreate_cgroup("app.service")
        assert cg.id != old_id
        old_id = cg.id
        fenced.wait_log(f"id={cg.id}", timeout=1.0)
        r = bed.probe("tcp", DENIED_V4, 80, uid=C.OTHER_UID, cgroup=cg)
        assert r.outcome == "refused", f"round {round_}: {r.data}"
        assert _outcome(bed, "tcp", ALLOWED_V4, 80, uid=C.OTHER_UID, cgroup=cg) == "connected"


def test_cgroup_created_after_start_is_confined(bed: Bed) -> None:
    """A configured cgroup that does not exist when fenced starts is confined once it appears."""
    path = f"{bed.cgroup_parent_name}/late.service"
    cfg = daemon_section() + policy_section("web", cgroups=[path], outbound=OUTBOUND)
    fenced = Fenced(bed, cfg).start()
    cg = bed.cgroup("late.service")
    fenced.wait_log(f"id={cg.id}", timeout=1.0)
    assert _outcome(bed, "tcp", DENIED_V4, 80, uid=C.OTHER_UID, cgroup=cg) == "refused"


def test_child_cgroup_is_confined_by_its_parent_policy(bed: Bed) -> None:
    """A process in a child cgroup of a confined cgroup is confined too (whole subtree)."""
    _start(bed, "cgroup")
    child = bed.cgroup("app.service/worker")
    assert _outcome(bed, "tcp", DENIED_V4, 80, uid=C.OTHER_UID, cgroup=child) == "refused"
    assert _outcome(bed, "tcp", ALLOWED_V4, 80, uid=C.OTHER_UID, cgroup=child) == "connected"


@pytest.mark.parametrize("kind", ["uid", "cgroup"])
def test_inbound_allows_listed_ports_and_refuses_others(bed: Bed, kind: str) -> None:
    """Listeners of a confined process accept on listed ports only; others are refused."""
    fenced, who = _start(bed, kind, inbound=["8080/tcp", "9090/udp"])
    bed.listen("tcp", 8080, **who)
    bed.listen("tcp", 8081, **who)
    bed.listen("udp", 9090, **who)
    assert bed.connect_from_server(C.CLIENT_V4, 8080).outcome == "connected"
    assert bed.connect_from_server(C.CLIENT_V6, 8080).outcome == "connected"
    assert bed.connect_from_server(C.CLIENT_V4, 9090, "udp").outcome == "reply"
    started = time.monotonic()
    refused = bed.connect_from_server(C.CLIENT_V4, 8081, timeout=5.0)
    assert refused.outcome == "refused", refused.data
    assert time.monotonic() - started < 5.0
    assert bed.connect_from_server(C.CLIENT_V6, 8081, timeout=5.0).outcome == "refused"
    assert fenced.nft_counter("denied_web_in") >= 2
    # an unconfined listener on the same kind of port is reachable
    bed.listen("tcp", 8082, uid=C.OTHER_UID if kind == "uid" else None)
    assert bed.connect_from_server(C.CLIENT_V4, 8082).outcome == "connected"


def test_cgroup_inbound_udp_is_refused(bed: Bed) -> None:
    """A cgroup-confined UDP listener on an unlisted port gets nothing (socket lookup in input)."""
    _start(bed, "cgroup", inbound=["8080/tcp"])
    bed.listen("udp", 9091, **who_of(bed, "cgroup"))
    assert bed.connect_from_server(C.CLIENT_V4, 9091, "udp").outcome != "reply"


def test_a_process_matched_by_two_policies_must_satisfy_both(bed: Bed) -> None:
    """uid in one policy and cgroup in another: only what both allow gets through."""
    cg = bed.cgroup("app.service")
    cfg = (
        daemon_section()
        + policy_section("a", uids=[C.UID], outbound=[f"{ALLOWED_V4}/tcp", f"{DENIED_V4}:80/tcp"])
        + policy_section("b", cgroups=[cg.path], outbound=[f"{ALLOWED_V4}:80/tcp"])
    )
    Fenced(bed, cfg).start()
    assert _outcome(bed, "tcp", ALLOWED_V4, 80, uid=C.UID, cgroup=cg) == "connected"
    assert _outcome(bed, "tcp", DENIED_V4, 80, uid=C.UID, cgroup=cg) == "refused"
    assert _outcome(bed, "tcp", ALLOWED_V4, 443, uid=C.UID, cgroup=cg) == "refused"
    assert _outcome(bed, "tcp", DENIED_V4, 80, uid=C.UID) == "connected"


def test_stop_keeps_the_table_when_asked_and_restart_takes_over(bed: Bed) -> None:
    """on_exit=keep leaves processes confined after SIGTERM; a new fenced takes over the table."""
    keys, who = _subject(bed, "uid")
    cfg = daemon_section(on_exit="keep") + policy_section("web", outbound=OUTBOUND, **keys)
    fenced = Fenced(bed, cfg).start()
    assert fenced.stop() == 0
    assert _outcome(bed, "tcp", DENIED_V4, 80, **who) == "refused"
    assert _outcome(bed, "tcp", ALLOWED_V4, 80, **who) == "connected"
    again = Fenced(bed, cfg, name="second").start()
    assert _outcome(bed, "tcp", DENIED_V4, 80, **who) == "refused"
    again.stop()


def test_stop_removes_the_table_when_asked(bed: Bed) -> None:
    """on_exit=remove deletes fenced's table on SIGINT, and nothing else."""
    bed.nft("add table inet other")
    fenced, who = _start(bed, "uid")
    assert fenced.stop(signal.SIGINT) == 0
    tables = bed.nft(["list", "tables"]).stdout
    assert "inet fenced" not in tables and "inet other" in tables
    assert _outcome(bed, "tcp", DENIED_V4, 80, **who) == "connected"


def test_bad_config_fails_start_with_a_clear_error(bed: Bed) -> None:
    """fenced run on a broken file exits 1 naming the file and key, and installs nothing."""
    cfg = daemon_section() + policy_section("web", uids=[C.UID], outbound=["bad entry::"])
    fenced = Fenced(bed, cfg)
    path = fenced.path
    cp = bed.run([sys.executable, "-m", "fenced", "run", "-c", str(path)], timeout=30)
    assert cp.returncode == 1
    assert f"{path}: policy.web.outbound[0]" in cp.stderr
    assert "inet fenced" not in bed.nft(["list", "tables"]).stdout


def test_run_without_cap_net_admin_fails_with_one_line(bed: Bed) -> None:
    """Without CAP_NET_ADMIN fenced run says so in one line and exits 1."""
    fenced = Fenced(bed, daemon_section() + policy_section("web", uids=[C.UID]))
    cp = bed.run(
        [
            "setpriv",
            "--inh-caps=-net_admin",
            "--bounding-set=-net_admin",
            sys.executable,
            "-m",
            "fenced",
            "run",
            "-c",
            str(fenced.path),
        ],
        timeout=30,
    )
    assert cp.returncode == 1, cp.stderr
    lines = cp.stderr.strip().splitlines()
    assert lines == [
        "fenced: cannot start: CAP_NET_ADMIN is missing (run as root or grant the capability)"
    ]


def test_shipped_example_config_confines_its_demo_uid(bed: Bed) -> None:
    """config/fenced.toml runs as shipped (resolver pinned to the bed's) and confines uid 64123."""
    shipped = (Path(__file__).resolve().parents[2] / "config" / "fenced.toml").read_text()
    assert "[daemon]\n" in shipped
    text = shipped.replace("[daemon]\n", f'[daemon]\nresolvers = ["{C.RESOLVER_V4}"]\n', 1)
    bed.dns.set("example.com", "A", [ALLOWED_V4], ttl=30)
    fenced = Fenced(bed, text).start()
    assert _outcome(bed, "tcp", C.GATEWAY_V4, 80, uid=64123) == "connected"  # 192.0.2.0/24:80
    assert _outcome(bed, "tcp", ALLOWED_V4, 443, uid=64123) == "connected"  # example.com
    assert _outcome(bed, "tcp", DENIED_V4, 80, uid=64123) == "refused"
    assert _outcome(bed, "tcp", DENIED_V4, 80, uid=C.OTHER_UID) == "connected"
    assert fenced.http("/healthz") == (200, "ok")
