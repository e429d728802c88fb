"""The world misbehaves around fenced: it must keep enforcing, recover and say so in its log.

Every test checks the same four things: confined probes never reach what they should not,
allowed ones recover once the fault is gone, the daemon does not crash, and the log tells
the story.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.adversarial.common import (
    DENIED_V4,
    FAST,
    alive,
    eventually,
    expect_blocked,
    record,
    set_elements,
)
from tests.bed import constants as C
from tests.bed.bed import Bed, BedError
from tests.bed.dnsserver import GARBAGE_MODES, GARBAGE_OTHER_ADDRESS
from tests.bed.fenced_proc import Fenced, daemon_section, policy_section

pytestmark = pytest.mark.bed

IP_A, IP_B = C.SERVERS_V4_A[0], C.SERVERS_V4_A[1]
NAME = "api.example.com"


def tcp(bed: Bed, ip: str, port: int = 80, uid: int = C.UID) -> str:
    """Outcome of a TCP probe as the confined uid (short timeout)."""
    return bed.probe("tcp", ip, port, uid=uid, timeout=1.0).outcome


def config(names: list[str] | None = None, /, **daemon: object) -> str:
    """One uid policy allowing ``names`` (default: api.example.com) on tcp 80."""
    outbound = [f"{n}:80/tcp" for n in (names or [NAME])]
    return daemon_section(**{**FAST, **daemon}) + policy_section(
        "web", uids=[C.UID], outbound=outbound
    )


def running(bed: Bed, ttl: int = 1, **daemon: object) -> Fenced:
    """fenced with api.example.com -> IP_A (ttl), reachable, and DENIED_V4 refused."""
    bed.dns.set(NAME, "A", [IP_A], ttl=ttl)
    fenced = Fenced(bed, config(**daemon)).start()
    eventually(lambda: tcp(bed, IP_A) == "connected", 3.0, "allowed name reachable")
    assert tcp(bed, DENIED_V4) == "refused"
    return fenced


def enforcing(bed: Bed, fenced: Fenced, what: str, denied: str = DENIED_V4) -> None:
    """The daemon is alive and a denied probe is refused (recorded under ``what``)."""
    assert alive(fenced), fenced.log()
    expect_blocked(f"{what}: denied address while it happens", "uid", tcp(bed, denied))


# ------------------------------------------------------------------ the resolver


def test_resolver_gone_longer_than_stale(bed: Bed) -> None:
    """A dead resolver: known addresses last deadline + stale, then close; back, they reopen."""
    fenced = running(bed, stale=3)
    bed.dns.stop()
    stopped = time.monotonic()
    enforcing(bed, fenced, "resolver gone")
    waited = eventually(lambda: tcp(bed, IP_A) == "refused", 10.0, "allowed expires after stale")
    assert time.monotonic() - stopped >= 3.0
    record(
        "resolver gone longer than stale: allowed name after stale",
        "uid",
        "refused",
        f"refused after {waited:.1f} s",
    )
    fenced.wait_log("event=dns_failed", timeout=10.0)
    bed.dns.start()
    took = eventually(lambda: tcp(bed, IP_A) == "connected", 70.0, "allowed again")
    record(
        "resolver back after an outage: allowed name",
        "uid",
        "connected",
        f"connected {took:.1f} s after the resolver returned",
    )
    enforcing(bed, fenced, "resolver back")
    assert fenced.count("event=dns_resolved") >= 1


def test_slow_resolver(bed: Bed) -> None:
    """Answers slower than the query timeout count as failures (stale keeps); faster recover."""
    fenced = running(bed, stale=30)
    bed.dns.delay(NAME, 5.0)  # > 2 s timeout: every attempt times out
    fenced.wait_log("event=dns_failed", timeout=15.0)
    enforcing(bed, fenced, "resolver answering after 5 s")
    assert tcp(bed, IP_A) == "connected"  # stale keeps it
    assert "timeout" in fenced.log()
    bed.dns.set(NAME, "A", [IP_B], ttl=1)
    bed.dns.delay(NAME, 1.0)  # slow but within the timeout
    took = eventually(lambda: tcp(bed, IP_B) == "connected", 70.0, "new answer arrives")
    record(
        "resolver answering after 5 s, then after 1 s",
        "uid",
        "old address kept (stale), then the new one",
        f"kept; new address reachable {took:.1f} s after answers came in time",
    )
    enforcing(bed, fenced, "slow resolver")


def test_garbage_answers(bed: Bed) -> None:
    """Malformed and hostile answers are failures: nothing they carry is ever allowed."""
    names = {mode: f"{mode.replace('_', '-')}.example.com" for mode in GARBAGE_MODES}
    ips = dict(zip(GARBAGE_MODES, C.SERVERS_V4_A[2:], strict=False))
    for mode, name in names.items():
        bed.dns.set(name, "A", [ips[mode]], ttl=1)
    fenced = Fenced(bed, config(list(names.values()), stale=4)).start()
    for ip in ips.values():
        eventually(lambda ip=ip: tcp(bed, ip) == "connected", 3.0, f"{ip} reachable")  # type: ignore[misc]
    for mode, name in names.items():
        bed.dns.garbage(name, mode)
    started = time.monotonic()
    while time.monotonic() - started < 8.0:  # past deadline + grace + stale
        expect_blocked(
            "garbage answers: the address a hostile answer offers",
            "uid",
            tcp(bed, GARBAGE_OTHER_ADDRESS),
        )
        assert alive(fenced), fenced.log()
        time.sleep(0.5)
    for mode in GARBAGE_MODES:
        expect_blocked(
            f"garbage answer ({mode}): the name's address after stale", "uid", tcp(bed, ips[mode])
        )
    log = fenced.log()
    assert "CNAME loop" in log and "FormError" in log, log
    for name in names.values():
        bed.dns.garbage(name, None)
    for mode, ip in ips.items():
        took = eventually(lambda ip=ip: tcp(bed, ip) == "connected", 70.0, f"{mode} back")  # type: ignore[misc]
        record(
            f"garbage answer ({mode}) replaced by a good one",
            "uid",
            "connected",
            f"connected within {took:.1f} s",
        )
    enforcing(bed, fenced, "garbage answers")


def test_thousands_of_records_are_capped(bed: Bed) -> None:
    """An answer with 2,241 records keeps max_ips_per_name of them; the rest stay refused."""
    v4 = list(C.SERVERS_V4_B) + [f"203.0.113.{i}" for i in range(20, 251)]
    v6 = [str(ipaddress.IPv6Address("2001:db8:2::") + i) for i in range(2000)]
    bed.dns.set("huge.example.com", "A", v4, ttl=30)
    bed.dns.set("huge.example.com", "AAAA", v6, ttl=30)
    bed.dns.set(NAME, "A", [IP_B], ttl=30)
    fenced = Fenced(bed, config(["huge.example.com", NAME], max_ips_per_name=64)).start()
    eventually(lambda: tcp(bed, IP_B) == "connected", 5.0, "other name reachable")
    fenced.wait_log("event=dns_too_many_ips", timeout=10.0)
    held = set(set_elements(bed, suffix="_4") + set_elements(bed, suffix="_6")) - {IP_B}
    record(
        "answer with 2,241 A/AAAA records (max_ips_per_name = 64)",
        "uid",
        "at most 64 addresses kept",
        f"{len(held)} kept",
    )
    assert 0 < len(held) <= 64 and held <= set(v4) | set(v6), held
    # the server shuffles big answers: which 64 stay is random, but only those open
    dropped = [ip for ip in C.SERVERS_V4_B if ip not in held]
    assert dropped, held
    for ip in C.SERVERS_V4_B:
        if ip in held:
            assert tcp(bed, ip) == "connected", ip
        else:
            expect_blocked("address of a huge answer past the cap", "uid", tcp(bed, ip))
    enforcing(bed, fenced, "huge answer", denied=C.SERVERS_V4_A[5])


def test_private_answers_never_enter_the_sets(bed: Bed) -> None:
    """DNS rebinding: a name resolving to loopback, RFC 1918, metadata... opens none of them."""
    private_v4 = [
        "127.0.0.1",
        "10.0.0.1",
        "192.168.1.1",
        "172.16.0.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
    ]
    private_v6 = [
        "::1",
        "fe80::1",
        "fc00::1",
        "fd00:ec2::254",
        "::ffff:127.0.0.1",
        "64:ff9b::7f00:1",
        "::",
        "ff02::1",
    ]
    bed.dns.set("rebind.example.com", "A", [*private_v4, IP_A], ttl=30)
    bed.dns.set("rebind.example.com", "AAAA", private_v6, ttl=30)
    local = bed.listen("tcp", 5000, bind=["127.0.0.1"])
    assert local.first is not None
    fenced = Fenced(bed, config(["rebind.example.com"])).start()
    eventually(lambda: tcp(bed, IP_A) == "connected", 3.0, "public address reachable")
    held = set(set_elements(bed, suffix="_4") + set_elements(bed, suffix="_6"))
    leaked = [a for a in private_v4 + private_v6 if a in held]
    record(
        "name answering loopback, RFC 1918, metadata, ULA, mapped and NAT64 addresses",
        "uid",
        "none in the sets",
        f"{len(leaked)} in the sets",
    )
    assert not leaked and held == {IP_A}, held
    expect_blocked(
        "DNS rebinding to 127.0.0.1 (loopback = false)", "uid", tcp(bed, "127.0.0.1", 5000)
    )
    assert fenced.count("private") >= 1, fenced.log()
    enforcing(bed, fenced, "private answers")


def test_flapping_resolver(bed: Bed) -> None:
    """A resolver going up and down every half second never opens anything; access recovers."""
    fenced = running(bed, stale=3)
    started = time.monotonic()
    flips = 0
    while time.monotonic() - started < 8.0:
        if bed.dns.running:
            bed.dns.stop()
        else:
            bed.dns.start()
        flips += 1
        expect_blocked("resolver flapping", "uid", tcp(bed, DENIED_V4))
        assert alive(fenced), fenced.log()
        time.sleep(0.3)
    bed.dns.start()
    bed.dns.set(NAME, "A", [IP_A], ttl=1)
    took = eventually(lambda: tcp(bed, IP_A) == "connected", 70.0, "allowed after flapping")
    record(
        f"resolver flapping ({flips} stops and starts in 8 s), then steady",
        "uid",
        "connected",
        f"connected {took:.1f} s after it settled",
    )


def test_ttl_zero_and_huge(bed: Bed) -> None:
    """TTL 0 is raised to min_ttl (no query storm); TTL 2^31-1 is cut to max_ttl."""
    bed.dns.set("zero.example.com", "A", [IP_A], ttl=0)
    bed.dns.set("huge.example.com", "A", [IP_B], ttl=2**31 - 1)
    fenced = Fenced(
        bed, config(["zero.example.com", "huge.example.com"], max_ttl=60, grace=5)
    ).start()
    eventually(lambda: tcp(bed, IP_A) == "connected", 3.0, "ttl 0 name reachable")
    eventually(lambda: tcp(bed, IP_B) == "connected", 3.0, "huge ttl name reachable")
    bed.dns.clear_queries()
    time.sleep(4.0)
    asked = [q for q in bed.dns.queries() if q.name == "zero.example.com" and q.rtype == "A"]
    record("TTL 0 (min_ttl = 1): A queries in 4 s", "uid", "about 4, no storm", str(len(asked)))
    assert 2 <= len(asked) <= 8, asked
    listing = json.loads(bed.nft(["-j", "list", "table", "inet", "fenced"]).stdout)
    timeouts = [
        el["elem"]["timeout"]
        for item in listing["nftables"]
        if "set" in item
        for el in item["set"].get("elem", [])
        if isinstance(el, dict) and el.get("elem", {}).get("val") == IP_B
    ]
    record(
        "TTL 2^31-1 (max_ttl = 60, grace = 5): element timeout",
        "uid",
        "<= 65 s",
        f"{max(timeouts)} s",
    )
    assert timeouts and max(timeouts) <= 65, timeouts
    enforcing(bed, fenced, "extreme TTLs")


# ------------------------------------------------------------------ signals and files


def test_sighup_storm(bed: Bed) -> None:
    """100 SIGHUPs within a second: the daemon survives, keeps enforcing, reloads fine."""
    fenced = running(bed, ttl=30)
    for _ in range(100):
        fenced.send_signal(signal.SIGHUP)
        time.sleep(0.01)
    enforcing(bed, fenced, "100 SIGHUPs in a second")
    assert tcp(bed, IP_A) == "connected"
    time.sleep(1.0)
    reloads = fenced.count("event=reloaded")
    record(
        "100 SIGHUPs in one second",
        "uid",
        "alive, enforcing, reloads coalesced",
        f"alive, enforcing, {reloads} reloads",
    )
    assert 1 <= reloads <= 100
    fenced.reload()
    assert alive(fenced)


BROKEN: dict[str, Callable[[Path], object]] = {
    "invalid TOML": lambda p: p.write_text("[daemon\nlisten = \n"),
    "not UTF-8": lambda p: p.write_bytes(b'[daemon]\ntable = "\xff\xfe"\n'),
    "unknown key": lambda p: p.write_text(config() + "bogus = 1\n"),
    "wrong type": lambda p: p.write_text(config().replace("min_ttl = 1", 'min_ttl = "1"')),
    "bad entry": lambda p: p.write_text(config().replace(f"{NAME}:80/tcp", "bad entry::")),
    "main file deleted": lambda p: p.unlink(),
    "main file is a directory": lambda p: _replace(p, p.mkdir),
    "main file a dangling symlink": lambda p: _replace(p, lambda: p.symlink_to(p.parent / "x")),
    "fenced.d is a file": lambda p: (p.parent / "fenced.d").write_text("x"),
    "a drop-in is a directory": lambda p: (p.parent / "fenced.d" / "x.toml").mkdir(parents=True),
    "a drop-in redefines the policy": lambda p: _dropin(p, policy_section("web", uids=[1])),
    "a drop-in has a [daemon] table": lambda p: _dropin(p, "[daemon]\ntable = 'x'\n"),
}


def _replace(main: Path, make: Callable[[], None]) -> None:
    main.unlink()
    make()


def _dropin(main: Path, text: str) -> None:
    d = main.parent / "fenced.d"
    d.mkdir(exist_ok=True)
    (d / "50-x.toml").write_text(text)


def _restore(fenced: Fenced) -> None:
    p = fenced.path
    if p.is_symlink() or p.is_file():
        p.unlink()
    elif p.is_dir():
        p.rmdir()
    d = p.parent / "fenced.d"
    if d.is_dir():
        shutil.rmtree(d)
    elif d.exists():
        d.unlink()
    p.write_text(config())


def test_sighup_with_each_kind_of_broken_file(bed: Bed) -> None:
    """A reload with a broken, missing or unreadable file logs why and changes nothing."""
    fenced = running(bed, ttl=30)
    rules = _rules(bed)
    for what, breaker in BROKEN.items():
        breaker(fenced.path)
        before = fenced.count("event=config_invalid") + fenced.count("event=reload_failed")
        fenced.send_signal(signal.SIGHUP)
        try:
            eventually(
                lambda before=before: (
                    fenced.count("event=config_invalid")  # type: ignore[misc]
                    + fenced.count("event=reload_failed")
                    > before
                ),
                5.0,
                f"reload with {what} refused",
            )
        finally:
            assert alive(fenced), f"{what}: fenced died\n{fenced.log()}"
        expect_blocked(f"SIGHUP with {what}", "uid", tcp(bed, DENIED_V4))
        assert tcp(bed, IP_A) == "connected", what
        assert _rules(bed) == rules, what
        _restore(fenced)
        fenced.reload()


def test_nested_arrays_in_config_do_not_crash_a_reload(bed: Bed) -> None:
    """A file with 600 nested arrays is a config error on SIGHUP, not a daemon crash."""
    fenced = running(bed, ttl=30)
    fenced.path.write_text(config() + "x = " + "[" * 600 + "]" * 600 + "\n")
    fenced.send_signal(signal.SIGHUP)
    time.sleep(2.0)
    died = not alive(fenced)
    record(
        "SIGHUP with 600 nested TOML arrays",
        "uid",
        "config error, daemon alive",
        "daemon crashed (RecursionError)" if died else "config error, alive",
    )
    assert not died, fenced.log()[-2000:]
    enforcing(bed, fenced, "nested arrays")


def test_fifo_dropin_does_not_hang_a_reload(bed: Bed) -> None:
    """A FIFO named *.toml in fenced.d must not block a reload (and the daemon) forever."""
    fenced = running(bed, ttl=30)
    d = fenced.path.parent / "fenced.d"
    d.mkdir(exist_ok=True)
    os.mkfifo(d / "evil.toml")
    fenced.send_signal(signal.SIGHUP)
    try:
        fenced.wait_log("event=config_invalid", timeout=5.0)
        got = "config error"
    except BedError:
        got = "reload blocked on the FIFO"
    record("SIGHUP with a FIFO named evil.toml in fenced.d", "uid", "config error", got)
    try:
        assert got == "config error", fenced.log()[-1500:]
    finally:
        # unblock a reader, should there be one (ENXIO when none: nothing to unblock)
        with (
            contextlib.suppress(OSError),
            open(os.open(d / "evil.toml", os.O_WRONLY | os.O_NONBLOCK), "w") as f,
        ):
            f.write("")
    enforcing(bed, fenced, "FIFO drop-in")


def _rules(bed: Bed) -> list[str]:
    listing = bed.nft(["list", "table", "inet", "fenced"]).stdout
    return [
        line
        for line in listing.splitlines()
        if "expires" not in line and "packets" not in line and "elements" not in line
    ]


def test_config_unreadable_at_start(bed: Bed) -> None:
    """fenced run on an unreadable config exits 1 with one clear line and installs nothing."""
    d = bed.tmpdir / "cfg"
    d.mkdir()
    (d / "fenced.toml").mkdir()
    cp = bed.run([sys.executable, "-m", "fenced", "run", "-c", str(d / "fenced.toml")], timeout=30)
    record(
        "fenced run with the config path a directory",
        "-",
        "exit 1, clear error",
        f"exit {cp.returncode}: {cp.stderr.strip().splitlines()[0]}",
    )
    assert cp.returncode == 1 and "cannot read" in cp.stderr, cp.stderr
    assert "inet fenced" not in bed.nft(["list", "tables"]).stdout


# ------------------------------------------------------------------ the table


def _set_name(bed: Bed) -> str:
    for item in json.loads(bed.nft(["-j", "list", "table", "inet", "fenced"]).stdout)["nftables"]:
        s = item.get("set")
        if s and s["name"].startswith("d_") and s["name"].endswith("_4"):
            return str(s["name"])
    raise AssertionError("no domain set")


def test_table_tampering_and_netlink_errors(bed: Bed) -> None:
    """Table deleted or flushed, sets emptied or removed under fenced: repaired, enforcing."""
    fenced = running(bed, ttl=2, on_exit="keep")
    s = _set_name(bed)
    tampers = {
        "table deleted": "delete table inet fenced",
        "table flushed": "flush table inet fenced",
        "domain set emptied": f"flush set inet fenced {s}",
        "uid map emptied": "flush map inet fenced m_uid_out",
        "domain set removed (writes then fail)": (
            f"flush chain inet fenced p_web_out\ndelete set inet fenced {s}"
        ),
    }
    for what, cmd in tampers.items():
        repaired = fenced.count("event=table_repaired")
        bed.nft(cmd)
        first = tcp(bed, DENIED_V4)  # as soon as a probe can run after the tamper
        fenced.wait_log("event=table_repaired", timeout=5.0, at_least=repaired + 1)
        record(
            f"{what} by hand: first denied probe right after",
            "uid",
            "blocked (repair races the probe)",
            first,
        )
        expect_blocked(f"{what} by hand: denied address after repair", "uid", tcp(bed, DENIED_V4))
        took = eventually(lambda: tcp(bed, IP_A) == "connected", 5.0, f"allowed after {what}")
        record(
            f"{what} by hand: allowed name",
            "uid",
            "connected",
            f"connected {took:.1f} s after repair",
        )
        assert alive(fenced), fenced.log()
    # the refresher still writes: a moved answer opens the new address
    bed.dns.set(NAME, "A", [IP_B], ttl=2)
    eventually(lambda: tcp(bed, IP_B) == "connected", 10.0, "refresh writes after repairs")
    assert "set_write_failed" in fenced.log() or fenced.count("table_tampered") >= len(tampers)


def test_sigkill_during_refresh_and_reload_then_restart(bed: Bed) -> None:
    """SIGKILL at random points of refreshes and reloads: nothing opens; restart recovers."""
    names = [f"n{i}.example.com" for i in range(20)]
    for n in names:
        bed.dns.rotate(n, "A", list(C.SERVERS_V4_A[:8]), per_query=2, ttl=1)
    bed.dns.set(NAME, "A", [C.SERVERS_V4_A[9]], ttl=1)
    cfg = config([*names, NAME], on_exit="keep", grace=2)
    rng = random.Random(7)
    outcomes: list[str] = []
    for i in range(6):
        fenced = Fenced(bed, cfg, name=f"kill{i}").start()
        eventually(lambda: tcp(bed, C.SERVERS_V4_A[9]) == "connected", 5.0, "allowed")
        time.sleep(rng.uniform(0.0, 1.5))  # somewhere in the 1 s refresh cycle
        if i % 2:
            fenced.send_signal(signal.SIGHUP)
            time.sleep(rng.uniform(0.0, 0.05))  # somewhere in the reload
        fenced.stop(signal.SIGKILL)
        outcomes.append(tcp(bed, DENIED_V4))
        assert outcomes[-1] == "refused", fenced.log()[-1500:]
    again = Fenced(bed, cfg, name="after").start()
    took = eventually(lambda: tcp(bed, C.SERVERS_V4_A[9]) == "connected", 5.0, "restart")
    record(
        "SIGKILL at random points of refreshes (3) and reloads (3), denied probe after each",
        "uid",
        "blocked",
        ",".join(sorted(set(outcomes))),
    )
    record(
        "restart after those SIGKILLs: allowed name",
        "uid",
        "connected",
        f"connected {took:.1f} s after start",
    )
    enforcing(bed, again, "after SIGKILLs")


# ------------------------------------------------------------------ HTTP


def test_http_port_taken(bed: Bed) -> None:
    """A taken HTTP port stops start-up cleanly; a kept table stays in force meanwhile."""
    fenced = running(bed, ttl=30, listen="127.0.0.1:9100", on_exit="keep")
    fenced.stop(signal.SIGKILL)
    blocker = bed.listen("tcp", 9100, bind=["127.0.0.1"])
    assert blocker.first is not None
    second = Fenced(bed, config(listen="127.0.0.1:9100", on_exit="keep"), name="b")
    second.start(wait=False)
    assert second.proc is not None
    code = second.proc.wait(20.0)
    err = second.log().strip().splitlines()
    record(
        "HTTP port already taken at start",
        "uid",
        "exit with a clear error",
        f"exit {code}: {err[-1] if err else ''}",
    )
    assert code != 0 and "9100" in second.log(), second.log()
    expect_blocked("HTTP port taken: kept table still enforces", "uid", tcp(bed, DENIED_V4))
    assert tcp(bed, IP_A) == "connected"


def test_many_slow_http_clients(bed: Bed) -> None:
    """200 clients trickling half a request each do not stop /healthz, refreshes or enforcing."""
    fenced = running(bed, ttl=1, listen="127.0.0.1:9100")
    code = (
        "import socket, sys, time\n"
        "socks = []\n"
        "for i in range(200):\n"
        "    s = socket.create_connection(('127.0.0.1', 9100), timeout=5)\n"
        "    s.sendall(b'GET /status HTTP/1.1\\r\\nHost: x\\r\\n')\n"
        "    socks.append(s)\n"
        "print('open', flush=True)\n"
        "for _ in range(60):\n"
        "    for s in socks:\n"
        "        try: s.send(b'X')\n"
        "        except OSError: pass\n"
        "    time.sleep(0.5)\n"
    )
    slow = bed.spawn([sys.executable, "-c", code], label="slowloris", stdin=False)
    assert slow.readline(20.0) is not None
    started = time.monotonic()
    status, _ = fenced.http("/healthz")
    took = time.monotonic() - started
    bed.dns.set(NAME, "A", [IP_B], ttl=1)
    eventually(lambda: tcp(bed, IP_B) == "connected", 10.0, "refresh under slow clients")
    record(
        "200 slow HTTP clients holding half-sent requests",
        "uid",
        "/healthz answers, refreshes go on, enforcing",
        f"/healthz {status} in {took:.2f} s; refresh and enforcement fine",
    )
    assert status == 200
    enforcing(bed, fenced, "slow HTTP clients")
