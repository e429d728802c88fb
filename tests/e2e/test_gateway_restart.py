"""The DNS gateway across stops, restarts and reloads: clients that keep their socket, fail fast."""

from __future__ import annotations

import signal
import sys
import time

import pytest

from tests.bed import constants as C
from tests.bed.bed import Bed, ProbeResult
from tests.bed.fenced_proc import Fenced, daemon_section, policy_section

pytestmark = pytest.mark.bed

NAME = "api.example.com"
IP = C.SERVERS_V4_A[0]


def _config(dns: str = "gateway") -> str:
    return daemon_section(on_exit="keep", min_ttl=1, grace=5) + policy_section(
        "web", uids=[C.UID], outbound=[f"{NAME}:80/tcp"], dns=dns
    )


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
