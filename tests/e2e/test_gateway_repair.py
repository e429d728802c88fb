"""A table repair in the bed keeps the DNS gateway's wildcard entries working (issue 11, bug 1)."""

from __future__ import annotations

import re

import pytest

from tests.bed import constants as C
from tests.bed.bed import Bed
from tests.bed.fenced_proc import Fenced, daemon_section, eventually, policy_section

pytestmark = pytest.mark.bed

EXACT = C.SERVERS_V4_A[0]  # 198.51.100.10: the exact name's address (port 443)
FIRST = C.SERVERS_V4_B[0]  # 203.0.113.10: learned under the wildcard before the repair
LATER = C.SERVERS_V4_B[2]  # 203.0.113.12: learned under the wildcard after it


def _sets_configured(fenced: Fenced) -> list[int]:
    """The ``sets=`` of every ``dns_names_configured`` log line, in order."""
    return [
        int(m.group(1))
        for line in fenced.log().splitlines()
        if "event=dns_names_configured" in line and (m := re.search(r"\bsets=(\d+)", line))
    ]


def test_wildcard_names_connect_after_nft_flush_ruleset(bed: Bed) -> None:
    """After `nft flush ruleset` and the repair, wildcard names learned before and after connect."""
    bed.dns.set("api.example.com", "A", [EXACT], ttl=60)
    bed.dns.set("a.cdn.example.net", "A", [FIRST], ttl=60)
    bed.dns.set("b.cdn.example.net", "A", [LATER], ttl=60)
    cfg = daemon_section(min_ttl=1, grace=5) + policy_section(
        "web",
        uids=[C.UID],
        # the wildcard's port differs: its sets are fed by gateway answers alone
        outbound=["api.example.com:443/tcp", "*.cdn.example.net:80/tcp"],
    )
    fenced = Fenced(bed, cfg).start()
    r = bed.resolve("a.cdn.example.net", uid=C.UID)
    assert r.outcome == "answer" and r["addresses"] == [FIRST], r.data
    assert bed.probe("tcp", FIRST, 80, uid=C.UID).outcome == "connected"
    assert bed.probe("tcp", EXACT, 443, uid=C.UID).outcome == "connected"

    bed.nft(["flush", "ruleset"])  # what Debian's /etc/nftables.conf starts with
    fenced.wait_log("event=table_repaired", timeout=5.0)
    eventually(
        lambda: bed.probe("tcp", FIRST, 80, uid=C.UID).outcome == "connected",
        1.0,
        "the address learned before the repair connects within 1 s of it",
    )
    assert bed.probe("tcp", EXACT, 443, uid=C.UID).outcome == "connected"
    assert bed.probe("tcp", LATER, 80, uid=C.UID).outcome == "refused"  # not learned yet

    r = bed.resolve("b.cdn.example.net", uid=C.UID)
    assert r.outcome == "answer" and r["addresses"] == [LATER], r.data
    assert bed.probe("tcp", LATER, 80, uid=C.UID).outcome == "connected"
    sets = _sets_configured(fenced)
    assert len(sets) >= 2 and len(set(sets)) == 1, sets  # the repair kept every set
