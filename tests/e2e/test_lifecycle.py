"""The daemon's life: tampering repaired, SIGKILL and restart, reloads, in the bed."""

from __future__ import annotations

import signal
import time

import pytest

from tests.bed import constants as C
from tests.bed.bed import Bed
from tests.bed.fenced_proc import Fenced, daemon_section, eventually, policy_section
from tests.e2e.test_dns_refresh import tcp

pytestmark = pytest.mark.bed

IP_A, IP_B = C.SERVERS_V4_A[0], C.SERVERS_V4_A[1]
DENIED = C.SERVERS_V4_B[0]
FAST = {"min_ttl": 1, "grace": 1, "stale": 3}


def _config(**daemon: object) -> str:
    return daemon_section(**{**FAST, **daemon}) + policy_section(
        "web", uids=[C.UID], outbound=["api.example.com:80/tcp"]
    )


def _running(bed: Bed, ttl: int = 30, **daemon: object) -> Fenced:
    bed.dns.set("api.example.com", "A", [IP_A], ttl=ttl)
    fenced = Fenced(bed, _config(**daemon)).start()
    eventually(lambda: tcp(bed, IP_A) == "connected", 2.0, "allowed name reachable")
    assert tcp(bed, DENIED) == "refused"
    return fenced


def _set_of(bed: Bed) -> str:
    listing = bed.nft(["list", "table", "inet", "fenced"]).stdout
    for line in listing.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "set" and words[1].endswith("_4"):
            return words[1]
    raise AssertionError(f"no v4 domain set in:\n{listing}")


@pytest.mark.parametrize(
    "tamper",
    [
        "delete table inet fenced",
        "flush table inet fenced",
        "flush chain inet fenced output",
        "delete element",
        "flush set",
    ],
)
def test_tampering_is_noticed_and_repaired(bed: Bed, tamper: str) -> None:
    """Deleting or flushing the table, a chain or set elements by hand is undone in seconds."""
    fenced = _running(bed)
    if tamper == "delete element":
        bed.nft(["delete", "element", "inet", "fenced", _set_of(bed), f"{{ {IP_A} }}"])
    elif tamper == "flush set":
        bed.nft(["flush", "set", "inet", "fenced", _set_of(bed)])
    else:
        bed.nft(tamper)
    fenced.wait_log("event=table_repaired", timeout=5.0)
    eventually(lambda: tcp(bed, DENIED) == "refused", 3.0, "denied again")
    eventually(lambda: tcp(bed, IP_A) == "connected", 3.0, "allowed again")
    assert fenced.count("event=table_tampered") >= 1
    assert fenced.proc is not None and fenced.proc.alive


def test_own_writes_are_not_taken_for_tampering(bed: Bed) -> None:
    """fenced's own reloads and set writes never trigger a repair."""
    fenced = _running(bed, ttl=1)
    fenced.reload()
    bed.dns.set("api.example.com", "A", [IP_B], ttl=1)
    eventually(lambda: tcp(bed, IP_B) == "connected", 5.0, "moved address reachable")
    time.sleep(0.5)
    assert fenced.count("event=table_tampered") == 0
    assert fenced.count("event=table_repaired") == 0


def test_own_writes_are_recognised_in_a_pid_namespace(bed: Bed) -> None:
    """In its own PID namespace (a container) fenced still knows its writes; tampering is seen."""
    bed.dns.set("api.example.com", "A", [IP_A], ttl=1)
    fenced = Fenced(bed, _config()).start(wrapper=["unshare", "--pid", "--fork", "--mount-proc"])
    eventually(lambda: tcp(bed, IP_A) == "connected", 2.0, "allowed name reachable")
    time.sleep(2.5)  # a few refreshes (TTL 1 s) write the set
    assert fenced.count("event=table_tampered") == 0
    bed.nft("flush table inet fenced")
    fenced.wait_log("event=table_repaired", timeout=5.0)
    time.sleep(1.0)
    assert fenced.count("event=table_repaired") == 1
    assert tcp(bed, DENIED) == "refused"


def test_sigkill_then_restart_never_opens_and_keeps_allowed(bed: Bed) -> None:
    """After SIGKILL confined probes stay refused, allowed addresses and live flows keep working."""
    fenced = _running(bed, on_exit="keep", grace=30)
    held = bed.hold(IP_A, 80, uid=C.UID)
    assert held.first is not None and held.first.outcome == "connected"
    fenced.stop(signal.SIGKILL)
    assert tcp(bed, DENIED) == "refused"
    assert tcp(bed, IP_A) == "connected"
    # the resolver is gone while fenced restarts: adopted addresses must survive
    bed.dns.stop()
    again = Fenced(bed, _config(on_exit="keep", grace=30), name="second").start()
    for _ in range(10):
        assert tcp(bed, DENIED) == "refused"
        assert tcp(bed, IP_A) == "connected"
    assert held.exchange("after restart").outcome == "reply"
    assert again.count("adopted=") >= 1
    again.stop()


def test_sighup_with_broken_config_changes_nothing(bed: Bed) -> None:
    """A SIGHUP with an invalid file logs it and keeps every rule and address in force."""
    fenced = _running(bed)
    before = bed.nft(["list", "table", "inet", "fenced"]).stdout
    fenced.reload(
        _config().replace("uids = [64123]", "uids = [64123]\nbogus = 1"),
        expect="event=config_invalid",
    )
    assert "policy.web.bogus" in fenced.log()
    assert tcp(bed, IP_A) == "connected"
    assert tcp(bed, DENIED) == "refused"
    after = bed.nft(["list", "table", "inet", "fenced"]).stdout
    assert _rules(after) == _rules(before)


def _rules(listing: str) -> list[str]:
    """The listing without set elements and counters (those move on their own)."""
    return [
        line
        for line in listing.splitlines()
        if "expires" not in line and "packets" not in line and "elements" not in line
    ]


def test_sighup_with_new_config_keeps_shared_names_without_a_gap(bed: Bed) -> None:
    """A reload that keeps a name never refuses it, adds new names and drops removed ones."""
    bed.dns.set("new.example.com", "A", [IP_B], ttl=30)
    bed.dns.set("gone.example.com", "A", [C.SERVERS_V4_A[2]], ttl=30)
    bed.dns.set("api.example.com", "A", [IP_A], ttl=30)
    first = daemon_section(**FAST) + policy_section(
        "web", uids=[C.UID], outbound=["api.example.com:80/tcp", "gone.example.com:80/tcp"]
    )
    second = daemon_section(**FAST) + policy_section(
        "web", uids=[C.UID], outbound=["api.example.com:80/tcp", "new.example.com:80/tcp"]
    )
    fenced = Fenced(bed, first).start()
    eventually(lambda: tcp(bed, IP_A) == "connected", 2.0, "api reachable")
    eventually(lambda: tcp(bed, C.SERVERS_V4_A[2]) == "connected", 2.0, "gone reachable")
    held = bed.hold(IP_A, 80, uid=C.UID)
    fenced.write(second)
    fenced.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:  # keep probing through the reload
        assert tcp(bed, IP_A) == "connected"
    fenced.wait_log("event=reloaded")
    eventually(lambda: tcp(bed, IP_B) == "connected", 2.0, "new name reachable")
    eventually(lambda: tcp(bed, C.SERVERS_V4_A[2]) == "refused", 3.0, "removed name refused")
    assert held.exchange("through the reload").outcome == "reply"
