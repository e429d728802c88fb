"""The DNS gateway in front of BIND with a signed zone: host, nslookup, delv and dig as clients.

named is the upstream (authoritative for a zone signed in the test); the clients run as
the confined uid and ask an address where no DNS server listens, so every answer they
get came through fenced's gateway.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.bed import constants as C
from tests.bed.bed import Bed
from tests.bed.bind import BIND_V4, SignedZone
from tests.bed.fenced_proc import Fenced, daemon_section, policy_section

pytestmark = pytest.mark.bed

NOWHERE = "203.0.113.53"  # a documentation address where no DNS server exists
EDGE_V4 = C.SERVERS_V4_A[0]  # 198.51.100.10
EDGE_V6 = C.SERVERS_V6[0]  # 2001:db8:1::10
MIXED_V4 = C.SERVERS_V4_A[1]  # 198.51.100.11
RECORDS = [
    "www 120 CNAME cdn",
    "cdn 120 CNAME edge",
    f"edge 120 A {EDGE_V4}",
    f"edge 120 AAAA {EDGE_V6}",
    "mixed 120 A 10.0.0.1",  # private: the gateway removes it (allow_private = false)
    f"mixed 120 A {MIXED_V4}",
]


def _start(bed: Bed) -> tuple[SignedZone, Fenced]:
    zone = SignedZone(bed, "example.com", RECORDS).start()
    cfg = daemon_section(resolvers=[BIND_V4], min_ttl=1, grace=5) + policy_section(
        "web",
        uids=[C.UID],
        outbound=["www.example.com:80/tcp", "mixed.example.com:80/tcp"],
    )
    return zone, Fenced(bed, cfg).start()


def _records(dig_output: str, owner: str) -> list[list[str]]:
    """The records of ``owner`` that dig printed, each split into its fields."""
    return [line.split() for line in dig_output.splitlines() if line.startswith(owner)]


def _as_uid(bed: Bed, argv: list[str]) -> subprocess.CompletedProcess[str]:
    return bed.run(argv, uid=C.UID, timeout=60)


def test_host_nslookup_and_delv_work_on_a_cnamed_allowed_name(bed: Bed) -> None:
    """host, nslookup and delv (trust anchor for the zone) resolve www -> cdn -> edge cleanly."""
    zone, _ = _start(bed)
    host = _as_uid(bed, ["host", "-W", "3", "www.example.com", NOWHERE])
    out = host.stdout + host.stderr
    assert host.returncode == 0, out
    assert "www.example.com is an alias for cdn.example.com." in out
    assert f"edge.example.com has address {EDGE_V4}" in out
    assert f"edge.example.com has IPv6 address {EDGE_V6}" in out
    assert "NXDOMAIN" not in out and "not found" not in out

    ns = _as_uid(bed, ["nslookup", "-timeout=3", "www.example.com", NOWHERE])
    out = ns.stdout + ns.stderr
    assert ns.returncode == 0, out
    assert "canonical name = edge.example.com." in out
    assert f"Address: {EDGE_V4}" in out and f"Address: {EDGE_V6}" in out
    assert "can't find" not in out and "NXDOMAIN" not in out

    for rtype in ("A", "AAAA"):
        delv = _as_uid(
            bed,
            [
                "delv",
                f"@{NOWHERE}",
                "-a",
                str(zone.anchor),
                "+root=example.com",
                "www.example.com",
                rtype,
            ],
        )
        out = delv.stdout + delv.stderr
        assert delv.returncode == 0 and "; fully validated" in out, out
        assert "edge.example.com." in out
    assert bed.probe("tcp", EDGE_V4, 80, uid=C.UID).outcome == "connected"
    assert bed.probe("tcp", EDGE_V4, 443, uid=C.UID).outcome != "connected"  # www's port only


def test_dnssec_answer_loses_the_rrsig_of_a_filtered_rrset(bed: Bed) -> None:
    """A DO query's A RRset that lost a private address comes without its RRSIG."""
    zone, _ = _start(bed)
    dig = _as_uid(
        bed, ["dig", "+dnssec", "+time=3", "+tries=1", f"@{NOWHERE}", "mixed.example.com", "A"]
    )
    assert dig.returncode == 0 and "status: NOERROR" in dig.stdout, dig.stdout
    through = _records(dig.stdout, "mixed.example.com.")
    assert [r[3:] for r in through if r[3] == "A"] == [["A", MIXED_V4]]
    assert [r for r in through if r[3] == "RRSIG"] == [], dig.stdout
    direct = bed.run(
        ["dig", "+dnssec", "+norec", "+time=3", f"@{BIND_V4}", "mixed.example.com", "A"],
        ns="server",
    )
    # named did sign the A RRset: the gateway took the RRSIG out with the private address
    assert [r[4] for r in _records(direct.stdout, "mixed.example.com.") if r[3] == "RRSIG"] == ["A"]
    delv = _as_uid(
        bed,
        ["delv", f"@{NOWHERE}", "-a", str(zone.anchor), "+root=example.com", "mixed.example.com"],
    )
    out = delv.stdout + delv.stderr
    assert "fully validated" not in out
    assert "RRSIG failed to verify" not in out and "FORMERR" not in out, out


def _flags(dig_output: str) -> set[str]:
    """The header flags dig printed (``;; flags: qr aa rd; QUERY: ...``)."""
    for line in dig_output.splitlines():
        if line.startswith(";; flags:"):
            return set(line.split(";")[2].split(":")[1].split())
    raise AssertionError(f"no flags line in {dig_output!r}")


def test_refused_and_ra_of_a_non_recursive_server_reach_the_client(bed: Bed) -> None:
    """BIND without recursion refuses a name outside its zone: dig gets REFUSED, and never RA."""
    SignedZone(bed, "example.com", RECORDS).start()
    cfg = daemon_section(resolvers=[BIND_V4], min_ttl=1, grace=5) + policy_section(
        "web", uids=[C.UID], outbound=["www.example.com:80/tcp", "api.example.org:80/tcp"]
    )
    Fenced(bed, cfg).start()
    base = ["dig", "+time=5", "+tries=1", f"@{NOWHERE}"]
    refused = _as_uid(bed, [*base, "api.example.org", "A"])
    assert "status: REFUSED" in refused.stdout, refused.stdout
    assert "ra" not in _flags(refused.stdout)
    answered = _as_uid(bed, [*base, "www.example.com", "A"])
    assert "status: NOERROR" in answered.stdout, answered.stdout
    assert {"qr", "aa", "rd"} <= _flags(answered.stdout)
    assert "ra" not in _flags(answered.stdout)  # named said so; the gateway does not add it


def test_delv_validates_a_chain_across_zones_from_the_root(bed: Bed) -> None:
    """delv with the root's key validates www.example.com -> edge.example.net (another zone)."""
    zone = SignedZone(
        bed,
        ".",
        [],
        {
            "example.com": ["www 120 CNAME edge.example.net."],
            "example.net": [f"edge 120 A {EDGE_V4}"],
        },
    ).start()
    cfg = daemon_section(resolvers=[BIND_V4], min_ttl=1, grace=5) + policy_section(
        "web", uids=[C.UID], outbound=["www.example.com:80/tcp"], deny_response="refused"
    )
    Fenced(bed, cfg).start()
    delv = _as_uid(bed, ["delv", f"@{NOWHERE}", "-a", str(zone.anchor), "www.example.com", "A"])
    out = delv.stdout + delv.stderr
    assert delv.returncode == 0 and "; fully validated" in out, out
    assert EDGE_V4 in out, out
    stray = bed.resolve("other.example.net", "DS", server=NOWHERE, uid=C.UID)
    # not an ancestor of a live name: fenced refuses it (named would say NXDOMAIN)
    assert stray.outcome == "answer" and stray["rcode"] == "REFUSED", stray.data
