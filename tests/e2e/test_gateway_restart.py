"""The DNS gateway across stops, restarts and reloads: clients that keep their socket, fail fast."""

from __future__ import annotations

import signal
import sys
import time

import pytest

from tests.bed import constants as C
from tests.bed.bed import Bed, ProbeResult, Proc
from tests.bed.containers import add_container, container_probe
from tests.bed.fenced_proc import Fenced, daemon_section, policy_section

pytestmark = pytest.mark.bed

NAME = "api.example.com"
IP = C.SERVERS_V4_A[0]
SPORT = 40053  # the stub's fixed source port
WAIT = 0.9  # how long the stub waits for each answer (it asks every second)


def _config(dns: str = "gateway") -> str:
    return daemon_section(on_exit="keep", min_ttl=1, grace=5) + policy_section(
        "web", uids=[C.UID], outbound=[f"{NAME}:80/tcp"], dns=dns
    )


def _stub(bed: Bed, server: str = C.RESOLVER_V4) -> Proc:
    """A confined stub asking for NAME every second from one socket on a fixed source port."""
    argv = bed.probe_argv(
        "dnsloop", NAME, "--server", server, "--sport", SPORT, "--count", 60, timeout=WAIT
    )
    return bed.spawn(argv, uid=C.UID, stdin=False, label="stub")


def _queries_until(stub: Proc, until: float) -> list[ProbeResult]:
    """The stub's outcomes, read until one of a query sent after ``until`` (wall clock)."""
    seen: list[ProbeResult] = []
    while not seen or seen[-1]["sent"] < until:
        seen.append(stub.read_json(timeout=5.0))
    return seen


def _answered(r: ProbeResult) -> bool:
    return r.outcome == "answer" and r["rcode"] == "NOERROR" and r["addresses"] == [IP]


def _answered_stub(bed: Bed) -> tuple[Fenced, Proc]:
    """fenced running with a gateway policy, and a stub it answered for a few seconds."""
    bed.dns.set(NAME, "A", [IP], ttl=30)
    fenced = Fenced(bed, _config()).start()
    stub = _stub(bed)
    before = _queries_until(stub, time.time() + 2.5)
    assert all(_answered(r) for r in before), [r.data for r in before]
    return fenced, stub


def test_stub_keeping_its_socket_is_answered_after_a_restart(bed: Bed) -> None:
    """A stub on a fixed source port asking every second misses only what fenced was down for."""
    first, stub = _answered_stub(bed)
    stopping = time.time()
    first.stop(signal.SIGTERM)
    gone = time.time()
    time.sleep(1.5)
    starting = time.time()
    Fenced(bed, _config(), name="second").start()
    up = time.time()
    during = _queries_until(stub, up)
    after = _queries_until(stub, up + 4.0)
    shown = [r.data for r in during + after]
    # answered until fenced was asked to stop (a query it had in flight then may be lost)
    assert all(_answered(r) for r in during if r["sent"] < stopping - WAIT), shown
    # what the stub sent while no fenced ran fails at once (refused), never hangs
    assert all(r.outcome == "refused" for r in during if gone < r["sent"] < starting), shown
    assert len(after) >= 4
    assert all(_answered(r) for r in after), shown
    stub.kill()


def test_stub_keeping_its_socket_is_answered_by_a_gateway_a_reload_started(bed: Bed) -> None:
    """gateway -> direct -> gateway by SIGHUP: the new gateway (new port) answers the same flow."""
    fenced, stub = _answered_stub(bed)
    fenced.reload(_config(dns="direct"))
    direct = _queries_until(stub, time.time() + 1.5)
    assert _answered(direct[-1]), [r.data for r in direct]  # straight from the resolver
    fenced.reload(_config())
    up = time.time()
    after = _queries_until(stub, up + 4.0)
    answered_after = [r for r in after if r["sent"] > up]
    assert len(answered_after) >= 4
    assert all(_answered(r) for r in answered_after), [r.data for r in after]
    assert fenced.count("event=dns_flows_forgotten") == 1
    stub.kill()


def test_stopped_gateway_fails_lookups_at_once(bed: Bed) -> None:
    """With on_exit = keep and fenced stopped, UDP and TCP lookups are refused within 1 s."""
    bed.dns.set(NAME, "A", [IP], ttl=30)
    fenced = Fenced(bed, _config()).start()
    for server in (C.RESOLVER_V4, C.RESOLVER_V6):
        assert bed.resolve(NAME, server=server, uid=C.UID).outcome == "answer"
    fenced.stop(signal.SIGTERM)
    for server in (C.RESOLVER_V4, C.RESOLVER_V6):
        for tcp in (False, True):
            r = bed.resolve(NAME, server=server, tcp=tcp, uid=C.UID, timeout=1.0)
            assert r.outcome == "refused", (server, tcp, r.data)
    # glibc's getaddrinfo gives up at once too, not after its 3 s timeout
    conf = bed.tmpdir / "resolv.conf"
    conf.write_text(f"nameserver {C.RESOLVER_V4}\noptions timeout:3 attempts:2\n")
    conf.chmod(0o644)
    argv = [sys.executable, "-m", "tests.bed.probe", "--resolv-conf", str(conf), "gai", NAME]
    t0 = time.monotonic()
    r = ProbeResult.from_completed(bed.run(argv, uid=C.UID, timeout=30))
    assert r.outcome == "gaierror" and time.monotonic() - t0 < 2.5, r.data
    # unconfined processes are not redirected: their DNS still works
    assert bed.resolve(NAME, uid=C.OTHER_UID).outcome == "answer"


def test_stopped_gateway_fails_container_lookups_at_once(bed: Bed) -> None:
    """Forwarded subjects too: with fenced stopped (on_exit = keep) a lookup is refused at once."""
    bed.dns.set(NAME, "A", [IP], ttl=30)
    c = add_container(bed, "br-app", 1)
    cfg = daemon_section(on_exit="keep") + policy_section(
        "app", interfaces=[c.bridge], outbound=[f"{NAME}:80/tcp"], dns="gateway"
    )
    fenced = Fenced(bed, cfg).start()
    assert container_probe(bed, c, "dns", NAME, "--server", C.RESOLVER_V4).outcome == "answer"
    fenced.stop(signal.SIGTERM)
    for tcp in ([], ["--tcp"]):
        r = container_probe(bed, c, "dns", NAME, "--server", C.RESOLVER_V4, *tcp, timeout=1.0)
        assert r.outcome == "refused", (tcp, r.data)
