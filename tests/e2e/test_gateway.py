"""The DNS gateway in the bed: confined processes get only allowed answers, opened first."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.bed import constants as C
from tests.bed.bed import Bed, ProbeResult
from tests.bed.fenced_proc import Fenced, daemon_section, eventually, policy_section
from tests.e2e.test_core import Who, who_of

pytestmark = pytest.mark.bed

POOL = list(C.SERVERS_V4_A[:8])  # round-robin pool: 198.51.100.10-17
CDN = C.SERVERS_V4_B[0]  # 203.0.113.10: behind the wildcard
DENIED = C.SERVERS_V4_B[1]  # 203.0.113.11: what a denied name resolves to
SILENT_DNS = "203.0.113.53"  # a documentation address where no DNS server exists


def _start(
    bed: Bed, kind: str, daemon: dict[str, object] | None = None, **policy: object
) -> tuple[Fenced, Who]:
    keys: dict[str, object] = {
        "outbound": ["rr.example.com:80/tcp", "*.cdn.example.net:80/tcp", "big.example.com:80/tcp"]
    }
    who = who_of(bed, kind)
    if kind == "uid":
        keys["uids"] = [C.UID]
    else:
        keys["cgroups"] = [bed.cgroup("app.service").path]
    keys.update(policy)
    settings: dict[str, object] = {"listen": "127.0.0.1:9100", "min_ttl": 1, "grace": 5}
    settings.update(daemon or {})
    cfg = daemon_section(**settings) + policy_section("web", **keys)
    return Fenced(bed, cfg).start(), who


def _resolv_conf(bed: Bed) -> str:
    path = bed.tmpdir / "resolv.conf"
    path.write_text(f"nameserver {SILENT_DNS}\noptions timeout:2 attempts:1\n")
    path.chmod(0o644)
    return str(path)


def _gai(bed: Bed, name: str, who: Who, family: int = 4) -> ProbeResult:
    """Resolve ``name`` with libc (getaddrinfo) as the confined identity, via resolv.conf."""
    argv = [
        sys.executable,
        "-m",
        "tests.bed.probe",
        "--resolv-conf",
        _resolv_conf(bed),
        "--timeout",
        "5",
        "gai",
        name,
        "--family",
        str(family),
    ]
    return ProbeResult.from_completed(bed.run(argv, timeout=30, **who))


@pytest.mark.parametrize("kind", ["uid", "cgroup"])
def test_round_robin_answers_are_always_reachable(bed: Bed, kind: str) -> None:
    """Whatever subset of a round-robin pool the process is given, it can connect to it."""
    bed.dns.rotate("rr.example.com", "A", POOL, per_query=2, ttl=30)
    _, who = _start(bed, kind)
    seen: set[str] = set()
    for _ in range(6):
        r = _gai(bed, "rr.example.com", who)
        assert r.outcome == "resolved", r.data
        for ip in r["addresses"]:
            seen.add(ip)
            assert bed.probe("tcp", ip, 80, **who).outcome == "connected", ip
    # the resolver really handed out different subsets; and since nothing listens at the
    # address resolv.conf names, every answer came through fenced's gateway
    assert len(seen) >= 4


@pytest.mark.parametrize("kind", ["uid", "cgroup"])
def test_wildcard_opens_subdomains_not_the_apex(bed: Bed, kind: str) -> None:
    """*.cdn.example.net answers and opens any depth below it; the apex is denied."""
    bed.dns.set("a.b.cdn.example.net", "A", [CDN], ttl=30)
    bed.dns.set("cdn.example.net", "A", [DENIED], ttl=30)
    _, who = _start(bed, kind)
    assert bed.probe("tcp", CDN, 80, **who).outcome == "refused"  # nothing known yet
    r = _gai(bed, "a.b.cdn.example.net", who)
    assert r.outcome == "resolved" and r["addresses"] == [CDN]
    assert bed.probe("tcp", CDN, 80, **who).outcome == "connected"
    apex = _gai(bed, "cdn.example.net", who)
    assert apex.outcome == "gaierror"
    assert bed.probe("tcp", DENIED, 80, **who).outcome == "refused"


@pytest.mark.parametrize("kind", ["uid", "cgroup"])
def test_denied_name_gets_nxdomain_and_its_address_stays_refused(bed: Bed, kind: str) -> None:
    """A name no entry allows gets NXDOMAIN without asking upstream; typing its IP fails."""
    bed.dns.set("evil.example.org", "A", [DENIED], ttl=30)
    fenced, who = _start(bed, kind)
    r = bed.resolve("evil.example.org", server=C.RESOLVER_V4, **who)
    assert r.outcome == "answer" and r["rcode"] == "NXDOMAIN", r.data
    assert _gai(bed, "evil.example.org", who).outcome == "gaierror"
    assert bed.probe("tcp", DENIED, 80, **who).outcome == "refused"
    assert not [q for q in bed.dns.queries() if "evil" in q.name]
    assert fenced.metric('fenced_gateway_queries_total{policy="web",result="denied"}') >= 2


@pytest.mark.parametrize("kind", ["uid", "cgroup"])
def test_queries_to_other_servers_are_answered_by_fenced(bed: Bed, kind: str) -> None:
    """A query sent to any other DNS server address is answered by fenced, not that server."""
    bed.dns.set("a.cdn.example.net", "A", [CDN], ttl=30)
    _, who = _start(bed, kind)
    for server in (C.ROGUE_V4, C.ROGUE_V6, SILENT_DNS):
        for tcp in (False, True):
            r = bed.resolve("a.cdn.example.net", server=server, tcp=tcp, **who)
            assert r.outcome == "answer" and r["addresses"] == [CDN], (server, tcp, r.data)
    assert bed.rogue.queries() == []
    assert bed.probe("tcp", CDN, 80, **who).outcome == "connected"


@pytest.mark.parametrize("kind", ["uid", "cgroup"])
def test_txt_of_denied_names_never_leaves_the_host(bed: Bed, kind: str) -> None:
    """TXT lookups of denied names (DNS tunnelling) are answered locally, never forwarded."""
    bed.dns.set("x1.tunnel.example.org", "TXT", ["payload"], ttl=30)
    _, who = _start(bed, kind)
    for i in range(5):
        for tcp in (False, True):
            name = f"c2hlbGwK{i}.tunnel.example.org"
            r = bed.resolve(name, rtype="TXT", server=C.ROGUE_V4, tcp=tcp, **who)
            assert r.outcome == "answer" and r["rcode"] == "NXDOMAIN"
    assert not [q for q in bed.dns.queries() if "tunnel" in q.name]
    assert bed.rogue.queries() == []


@pytest.mark.parametrize("kind", ["uid", "cgroup"])
def test_large_answer_over_tcp(bed: Bed, kind: str) -> None:
    """An answer too big for UDP is truncated there and complete over TCP; all of it opens."""
    many = [f"198.51.100.{i}" for i in range(100, 200)]  # ~1.7 KB: over EDNS 1232
    bed.dns.set("big.example.com", "A", many, ttl=30)
    _, who = _start(bed, kind, daemon={"max_ips_per_name": 200})
    udp = bed.resolve("big.example.com", server=C.RESOLVER_V4, extra=["--no-fallback"], **who)
    assert udp.outcome == "answer" and udp["tc"] is True
    tcp = bed.resolve("big.example.com", server=C.RESOLVER_V4, tcp=True, **who)
    assert tcp.outcome == "answer" and sorted(tcp["addresses"]) == sorted(many)
    for ip in (many[0], many[-1]):  # nothing listens there: not refused means allowed
        assert bed.probe("tcp", ip, 80, timeout=0.5, **who).outcome != "refused"


_MUSL_GAI = textwrap.dedent(
    """\
    #include <arpa/inet.h>
    #include <netdb.h>
    #include <stdio.h>
    #include <string.h>

    int main(int argc, char **argv) {
        struct addrinfo hints, *res, *p;
        char text[INET_ADDRSTRLEN];
        memset(&hints, 0, sizeof hints);
        hints.ai_family = AF_INET;
        hints.ai_socktype = SOCK_STREAM;
        int rc = getaddrinfo(argv[1], NULL, &hints, &res);
        if (rc != 0) {
            printf("error %s\\n", gai_strerror(rc));
            return 1;
        }
        for (p = res; p != NULL; p = p->ai_next) {
            struct sockaddr_in *sin = (struct sockaddr_in *)p->ai_addr;
            printf("%s\\n", inet_ntop(AF_INET, &sin->sin_addr, text, sizeof text));
        }
        return 0;
    }
    """
)


def _musl_gai(bed: Bed) -> str:
    """Compile a getaddrinfo program against musl into the bed's directory; its path."""
    if shutil.which("musl-gcc") is None:
        if os.environ.get("CI"):
            pytest.fail("musl-gcc is missing, and CI must run this test")
        pytest.skip("musl-gcc is not installed")
    src = bed.tmpdir / "gai.c"
    src.write_text(_MUSL_GAI)
    prog = bed.tmpdir / "gai-musl"
    subprocess.run(["musl-gcc", "-static", "-O1", "-o", str(prog), str(src)], check=True)
    prog.chmod(0o755)
    return str(prog)


def test_musl_resolves_a_name_whose_answer_is_truncated(bed: Bed) -> None:
    """musl (no TCP retry) resolves a 30-address name from the cut UDP answer; all are open."""
    many = [f"198.51.100.{i}" for i in range(100, 130)]  # 30 A records: over 512 bytes
    bed.dns.set("many.cdn.example.net", "A", many, ttl=30)
    prog = _musl_gai(bed)
    _start(bed, "uid")
    # musl reads /etc/resolv.conf: a private mount namespace gets the bed's, naming a
    # server that does not exist, so every answer comes through the gateway
    script = (
        'mount --bind "$0" /etc/resolv.conf && '
        f'exec setpriv --reuid={C.UID} --regid={C.UID} --clear-groups -- "$1" "$2"'
    )
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
    cp = bed.run([*argv, _resolv_conf(bed), prog, "many.cdn.example.net"], timeout=30)
    got = cp.stdout.split()
    assert cp.returncode == 0, (cp.stdout, cp.stderr)
    assert 20 <= len(got) < 30 and set(got) <= set(many), got
    for ip in got:  # nothing listens there: not refused means the firewall holds it
        assert bed.probe("tcp", ip, 80, timeout=0.5, uid=C.UID).outcome != "refused", ip


def test_dig_edns_version_1_gets_badvers(bed: Bed) -> None:
    """dig with EDNS version 1 gets BADVERS and an OPT of version 0; with version 0, the answer."""
    if shutil.which("dig") is None:
        if os.environ.get("CI"):
            pytest.fail("dig is missing, and CI must run this test")
        pytest.skip("dig is not installed")
    bed.dns.set("a.cdn.example.net", "A", [CDN], ttl=30)
    _start(bed, "uid")
    base = ["dig", f"@{C.RESOLVER_V4}", "a.cdn.example.net", "A", "+tries=1", "+time=3"]
    v1 = bed.run([*base, "+edns=1", "+noednsneg"], uid=C.UID, timeout=30)
    assert "status: BADVERS" in v1.stdout and "EDNS: version: 0" in v1.stdout, v1.stdout
    v0 = bed.run([*base, "+edns=0", "+short"], uid=C.UID, timeout=30)
    assert v0.stdout.split() == [CDN], v0.stdout


_BLAST = """
import socket, sys
import dns.message
wire = dns.message.make_query("blast.example.org", "A").to_wire()
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    s.connect((sys.argv[1], 53))
    for _ in range(int(sys.argv[2])):
        s.send(wire)
"""


def _udp_rcvbuf_errors(bed: Bed) -> int:
    """The client namespace's UDP RcvbufErrors counter (/proc/net/snmp)."""
    lines = [ln.split() for ln in bed.ns_exec(["cat", "/proc/net/snmp"]).stdout.splitlines()]
    head, values = [ln for ln in lines if ln[0] == "Udp:"]
    return int(values[head.index("RcvbufErrors")])


def test_queries_the_kernel_drops_are_counted(bed: Bed) -> None:
    """Queries lost on the gateway's full socket are counted dropped, as many as the kernel lost."""
    fenced, who = _start(bed, "cgroup")
    cg = who["cgroup"]
    before = _udp_rcvbuf_errors(bed)
    fenced.send_signal(signal.SIGSTOP)  # the gateway reads nothing: its socket fills up
    try:
        # root in the policy's cgroup (the interpreter is not readable by other uids);
        # the socket is closed before fenced answers, so only the gateway's can overflow
        bed.run([sys.executable, "-c", _BLAST, C.RESOLVER_V4, "3000"], cgroup=cg, check=True)
    finally:
        fenced.send_signal(signal.SIGCONT)
    lost = _udp_rcvbuf_errors(bed) - before
    assert lost > 0
    # the kernel tells the socket its drop count with the next query it delivers
    r = bed.resolve("blast.example.org", server=C.RESOLVER_V4, cgroup=cg)
    assert r.outcome == "answer" and r["rcode"] == "NXDOMAIN"
    dropped = 'fenced_gateway_queries_total{policy="web",result="dropped"}'
    eventually(lambda: fenced.metric(dropped) == lost, 10, f"{lost} drops counted")
    denied = fenced.metric('fenced_gateway_queries_total{policy="web",result="denied"}')
    assert denied + lost == 3001


def test_answer_is_capped_to_what_fenced_keeps(bed: Bed) -> None:
    """With more addresses than max_ips_per_name the client gets only those fenced keeps."""
    many = [f"198.51.100.{i}" for i in range(100, 200)]
    # a wildcard-only name: no refresh engine lookup adds its own 64 of the 100
    bed.dns.set("big.cdn.example.net", "A", many, ttl=30)
    _, who = _start(bed, "uid")
    tcp = bed.resolve("big.cdn.example.net", server=C.RESOLVER_V4, tcp=True, **who)
    got = tcp["addresses"]
    assert len(got) == 64 and set(got) <= set(many)
    for ip in (got[0], got[-1]):
        assert bed.probe("tcp", ip, 80, timeout=0.5, **who).outcome != "refused"
    withheld = sorted(set(many) - set(got))[0]
    assert bed.probe("tcp", withheld, 80, **who).outcome == "refused"


def test_other_identities_keep_their_own_dns(bed: Bed) -> None:
    """Processes no policy matches talk to DNS servers directly, unredirected."""
    _start(bed, "uid")
    r = bed.resolve("anything.example.org", server=C.ROGUE_V4, uid=C.OTHER_UID)
    assert r.outcome == "answer" and r["addresses"] == [C.ROGUE_ANSWER]
    assert len(bed.rogue.queries()) == 1


def test_gateway_answer_is_in_the_set_before_the_client_has_it(bed: Bed) -> None:
    """The first connection right after the answer succeeds: the kernel had the IP first."""
    bed.dns.set("fresh.cdn.example.net", "A", [CDN], ttl=30)
    _, who = _start(bed, "uid")
    for _ in range(3):
        started = time.monotonic()
        r = _gai(bed, "fresh.cdn.example.net", who)
        assert r.outcome == "resolved"
        assert bed.probe("tcp", CDN, 80, **who).outcome == "connected"
        assert time.monotonic() - started < 10
