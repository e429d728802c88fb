"""The DNS refresh engine in the bed: domains' addresses follow the authoritative answers."""

from __future__ import annotations

import time

import pytest

from tests.bed import constants as C
from tests.bed.bed import Bed
from tests.bed.fenced_proc import Fenced, daemon_section, eventually, policy_section

pytestmark = pytest.mark.bed

IP_A, IP_B, IP_C = C.SERVERS_V4_A[0], C.SERVERS_V4_A[1], C.SERVERS_V4_A[2]
IP6_A = C.SERVERS_V6[0]
FAST = {"min_ttl": 1, "grace": 1, "stale": 3}


def tcp(bed: Bed, ip: str, port: int = 80) -> str:
    """Outcome of a TCP probe as the confined uid (short timeout)."""
    return bed.probe("tcp", ip, port, uid=C.UID, timeout=1.0).outcome


def _fenced(bed: Bed, outbound: list[str], **daemon: object) -> Fenced:
    cfg = daemon_section(**{**FAST, **daemon}) + policy_section(
        "web", uids=[C.UID], outbound=outbound
    )
    return Fenced(bed, cfg).start()


def test_domain_reachable_within_a_second_of_start(bed: Bed) -> None:
    """A listed name's address is reachable within a second of fenced starting."""
    bed.dns.set("api.example.com", "A", [IP_A], ttl=30)
    fenced = _fenced(bed, ["api.example.com:80/tcp"])
    took = eventually(lambda: tcp(bed, IP_A) == "connected", 1.0, "api.example.com reachable")
    assert took < 1.0
    assert tcp(bed, IP_A, 443) == "refused"
    assert tcp(bed, IP_B) == "refused"
    assert fenced.proc is not None and fenced.proc.alive


def test_changed_answer_moves_access_after_ttl_and_grace(bed: Bed) -> None:
    """After the answer changes, the new IP opens once the TTL ends; the old closes after grace."""
    bed.dns.set("api.example.com", "A", [IP_A], ttl=2)
    _fenced(bed, ["api.example.com:80/tcp"], grace=2)
    eventually(lambda: tcp(bed, IP_A) == "connected", 1.0, "old IP reachable")
    held = bed.hold(IP_A, 80, uid=C.UID)
    assert held.first is not None and held.first.outcome == "connected"
    changed = time.monotonic()
    bed.dns.set("api.example.com", "A", [IP_B], ttl=2)
    # the new address opens right after the old TTL (2 s) ends, plus jitter
    eventually(lambda: tcp(bed, IP_B) == "connected", 4.0, "new IP reachable")
    # the old one is still allowed during its grace ...
    assert time.monotonic() - changed < 3.5
    assert tcp(bed, IP_A) == "connected"
    # ... and refused once deadline + grace has passed
    eventually(lambda: tcp(bed, IP_A) == "refused", 6.0, "old IP refused")
    assert time.monotonic() - changed >= 2.0
    # an established connection to the expired address keeps working
    assert held.exchange("still there").outcome == "reply"


def test_nxdomain_lets_addresses_run_out(bed: Bed) -> None:
    """NXDOMAIN adds nothing; known addresses leave at deadline + grace."""
    bed.dns.set("api.example.com", "A", [IP_A], ttl=1)
    fenced = _fenced(bed, ["api.example.com:80/tcp"])
    eventually(lambda: tcp(bed, IP_A) == "connected", 1.0, "reachable")
    bed.dns.remove("api.example.com")
    eventually(lambda: tcp(bed, IP_A) == "refused", 5.0, "refused after NXDOMAIN")
    assert fenced.proc is not None and fenced.proc.alive


@pytest.mark.parametrize("failure", ["servfail", "dead", "blackhole"])
def test_dns_failure_keeps_known_addresses_until_stale(bed: Bed, failure: str) -> None:
    """SERVFAIL, a stopped or silent resolver keep known IPs until deadline + stale, then not."""
    bed.dns.set("api.example.com", "A", [IP_A], ttl=1)
    fenced = _fenced(bed, ["api.example.com:80/tcp"], stale=4)
    eventually(lambda: tcp(bed, IP_A) == "connected", 1.0, "reachable")
    failed = time.monotonic()
    if failure == "servfail":
        bed.dns.servfail("api.example.com")
    elif failure == "dead":
        bed.dns.stop()
    else:
        bed.dns.blackhole()
    time.sleep(2.5)  # past deadline (1 s) + grace (1 s): only `stale` keeps it
    assert tcp(bed, IP_A) == "connected", fenced.log()
    eventually(lambda: tcp(bed, IP_A) == "refused", 8.0, "refused after stale")
    assert time.monotonic() - failed >= 4.0
    assert fenced.proc is not None and fenced.proc.alive
    assert fenced.count("dns_") >= 1


def test_slow_resolver_still_fills_the_set(bed: Bed) -> None:
    """A resolver that answers after 1 s still gets its addresses allowed."""
    bed.dns.set("api.example.com", "A", [IP_A], ttl=30)
    bed.dns.delay("api.example.com", 1.0)
    _fenced(bed, ["api.example.com:80/tcp"])
    eventually(lambda: tcp(bed, IP_A) == "connected", 4.0, "reachable despite a slow resolver")


def test_private_answers_are_refused_unless_allowed(bed: Bed) -> None:
    """With allow_private = false a private answer never enters the set; with true it does."""
    bed.dns.set("intranet.example.com", "A", ["10.1.2.3", IP_A], ttl=30)
    cfg = (
        daemon_section(**FAST)
        + policy_section("strict", uids=[C.UID], outbound=["intranet.example.com:80/tcp"])
        + policy_section(
            "lax",
            uids=[C.OTHER_UID],
            outbound=["intranet.example.com:80/tcp"],
            allow_private=True,
        )
    )
    Fenced(bed, cfg).start()
    eventually(lambda: tcp(bed, IP_A) == "connected", 2.0, "public address allowed")

    def members(policy: str) -> str:
        sets = bed.nft(["list", "table", "inet", "fenced"]).stdout
        names = [
            line.split()[1]
            for line in sets.splitlines()
            if line.strip().startswith(f"set d_{policy}_") and line.strip().endswith("_4 {")
        ]
        return "".join(bed.nft(["list", "set", "inet", "fenced", n]).stdout for n in names)

    eventually(lambda: "10.1.2.3" in members("lax"), 2.0, "private address in the lax set")
    assert "10.1.2.3" not in members("strict")
    assert IP_A in members("strict")


def test_cname_chains_and_aaaa(bed: Bed) -> None:
    """A name that is a CNAME chain to A and AAAA records opens both families."""
    bed.dns.set("www.example.com", "CNAME", ["edge.cdn.example.net"], ttl=30)
    bed.dns.set("edge.cdn.example.net", "CNAME", ["host.cdn.example.net"], ttl=30)
    bed.dns.set("host.cdn.example.net", "A", [IP_C], ttl=30)
    bed.dns.set("host.cdn.example.net", "AAAA", [IP6_A], ttl=30)
    _fenced(bed, ["www.example.com:80/tcp"])
    eventually(lambda: tcp(bed, IP_C) == "connected", 2.0, "v4 via CNAME chain")
    eventually(lambda: tcp(bed, IP6_A) == "connected", 2.0, "v6 via CNAME chain")
    assert tcp(bed, IP_A) == "refused"


def test_policies_sharing_a_name_cause_one_query(bed: Bed) -> None:
    """Two policies listing one name share its lookups: one A and one AAAA query per TTL."""
    bed.dns.set("api.example.com", "A", [IP_A], ttl=30)
    cfg = (
        daemon_section(**FAST)
        + policy_section("a", uids=[C.UID], outbound=["api.example.com:80/tcp"])
        + policy_section("b", uids=[C.OTHER_UID], outbound=["api.example.com:443/tcp"])
    )
    Fenced(bed, cfg).start()
    eventually(lambda: tcp(bed, IP_A) == "connected", 2.0, "reachable")
    time.sleep(0.5)
    asked = [q for q in bed.dns.queries() if q.name.rstrip(".") == "api.example.com"]
    assert sorted(q.rtype for q in asked) == ["A", "AAAA"], asked
    assert bed.probe("tcp", IP_A, 443, uid=C.OTHER_UID).outcome == "connected"
    assert bed.probe("tcp", IP_A, 80, uid=C.OTHER_UID).outcome == "refused"


def test_shared_ip_stays_while_another_name_holds_it(bed: Bed) -> None:
    """Two names share an IP; when one moves away the IP stays for the other."""
    bed.dns.set("a.example.com", "A", [IP_A], ttl=1)
    bed.dns.set("b.example.com", "A", [IP_A], ttl=1)
    _fenced(bed, ["a.example.com:80/tcp", "b.example.com:80/tcp"])
    eventually(lambda: tcp(bed, IP_A) == "connected", 1.0, "shared IP reachable")
    bed.dns.set("a.example.com", "A", [IP_B], ttl=1)
    eventually(lambda: tcp(bed, IP_B) == "connected", 3.0, "a's new IP reachable")
    time.sleep(3.0)  # well past a's old deadline + grace
    assert tcp(bed, IP_A) == "connected"


def test_name_missing_at_start_is_picked_up_within_its_negative_ttl(bed: Bed) -> None:
    """A name NXDOMAIN at start (SOA minimum 2 s) is reachable within 2 s + 1 s of creation."""
    bed.dns.negative_ttl(2)
    cfg = daemon_section(**FAST) + policy_section(
        "web", uids=[C.UID], outbound=["late.example.com:80/tcp"], dns="direct"
    )
    fenced = Fenced(bed, cfg).start()
    bed.dns.wait_for_query("late.example.com", "A", timeout=5.0)
    # Several NXDOMAIN answers in: a backoff (min_ttl 1 s doubling: asks at 0, 1, 3, 7, 15 s)
    # would not ask again for 7 s after this point.
    time.sleep(7.3)
    assert tcp(bed, IP_A) == "refused"
    asked = [q for q in bed.dns.queries() if q.name == "late.example.com" and q.rtype == "A"]
    assert len(asked) >= 4, asked  # every 2 s (+ jitter), not backing off
    bed.dns.set("late.example.com", "A", [IP_A], ttl=30)
    took = eventually(lambda: tcp(bed, IP_A) == "connected", 3.0, "late name reachable")
    assert took <= 3.0, fenced.log()
    assert fenced.count("negative_ttl=2") >= 1
