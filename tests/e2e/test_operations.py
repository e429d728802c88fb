"""Operating the daemon: HTTP endpoints, metrics, the status CLI and sd_notify, in the bed."""

from __future__ import annotations

import json
import signal
import socket
import sys
import time

import pytest

from tests.bed import constants as C
from tests.bed.bed import Bed
from tests.bed.fenced_proc import Fenced, daemon_section, eventually, policy_section
from tests.e2e.test_dns_refresh import tcp

pytestmark = pytest.mark.bed

IP_A = C.SERVERS_V4_A[0]
DENIED = C.SERVERS_V4_B[0]


def _config(**daemon: object) -> str:
    values: dict[str, object] = {"listen": "127.0.0.1:9100", "min_ttl": 1, "grace": 1}
    values.update(daemon)
    return daemon_section(**values) + policy_section(
        "web", uids=[C.UID], outbound=["api.example.com:80/tcp"]
    )


def _started(bed: Bed) -> Fenced:
    bed.dns.set("api.example.com", "A", [IP_A], ttl=30)
    fenced = Fenced(bed, _config()).start()
    eventually(lambda: tcp(bed, IP_A) == "connected", 2.0, "allowed name reachable")
    return fenced


def test_endpoints_answer_as_documented(bed: Bed) -> None:
    """/healthz, /status and /metrics answer; other paths 404, other methods 405."""
    fenced = _started(bed)
    assert fenced.http("/healthz") == (200, "ok")
    code, body = fenced.http("/status")
    assert code == 200
    doc = json.loads(body)
    assert doc["config_path"] == str(fenced.path)
    assert doc["last_reload"]["result"] == "ok"
    web = doc["policies"]["web"]
    assert web["mode"] == "enforce"
    assert web["subjects"]["uids"] == [C.UID]
    domain = web["domains"]["api.example.com"]
    assert [ip["ip"] for ip in domain["ips"]] == [IP_A]
    assert 0 < domain["ips"][0]["seconds_left"] <= 31 + 1
    assert fenced.http("/nope")[0] == 404
    assert fenced.http("/status", method="POST")[0] == 405
    assert fenced.http("/metrics", method="HEAD") == (200, "")


def test_metrics_move_with_resolutions_denials_and_reloads(bed: Bed) -> None:
    """DNS queries, denials and reloads (good and bad) show in /metrics."""
    fenced = _started(bed)
    assert fenced.metric('fenced_dns_queries_total{result="ok"}') >= 1
    assert fenced.metric('fenced_domains{policy="web"}') == 1
    assert fenced.metric('fenced_allowed_ips{family="ipv4",policy="web"}') == 1
    assert fenced.metric("fenced_config_last_reload_successful") == 1
    before = fenced.metric('fenced_denied_packets_total{direction="out",policy="web"}')
    assert tcp(bed, DENIED) == "refused"
    time.sleep(5.5)  # counters read at scrape time are cached for 5 s
    after = fenced.metric('fenced_denied_packets_total{direction="out",policy="web"}')
    assert after >= before + 1
    fenced.reload()
    assert fenced.metric('fenced_config_reloads_total{result="ok"}') == 1
    fenced.reload(
        _config().replace("uids = [64123]", "uids = [64123]\nbogus = 1"),
        expect="event=config_invalid",
    )
    assert fenced.metric('fenced_config_reloads_total{result="error"}') == 1
    assert fenced.metric("fenced_config_last_reload_successful") == 0
    code, body = fenced.http("/status")
    assert code == 200
    assert json.loads(body)["last_reload"]["result"] == "error"
    assert tcp(bed, IP_A) == "connected"
    assert tcp(bed, DENIED) == "refused"


def test_status_cli_prints_a_summary(bed: Bed) -> None:
    """`fenced status` shows the policies and domains of the running daemon; --json the raw doc."""
    _started(bed)
    out = bed.ns_exec([sys.executable, "-m", "fenced", "status"]).stdout
    assert "web" in out and "api.example.com" in out and IP_A in out
    raw = bed.ns_exec([sys.executable, "-m", "fenced", "status", "--json"]).stdout
    assert "api.example.com" in json.loads(raw)["policies"]["web"]["domains"]
    down = bed.ns_exec(
        [sys.executable, "-m", "fenced", "status", "--url", "http://127.0.0.1:9"], check=False
    )
    assert down.returncode == 1 and len(down.stderr.strip().splitlines()) == 1


def test_http_port_taken_fails_start_and_touches_nothing(bed: Bed) -> None:
    """With the HTTP port taken fenced exits 1 in one line and installs no table."""
    holder = bed.listen("tcp", 9100, bind=["127.0.0.1"])
    assert holder.first is not None
    cp = bed.run(
        [sys.executable, "-m", "fenced", "run", "-c", str(Fenced(bed, _config()).path)],
        timeout=30,
    )
    assert cp.returncode == 1
    assert cp.stderr.strip().splitlines()[-1].startswith("fenced: cannot start:")
    assert "9100" in cp.stderr
    assert "inet fenced" not in bed.nft(["list", "tables"]).stdout


def test_sd_notify_messages(bed: Bed) -> None:
    """READY after install and first resolutions, RELOADING/READY on SIGHUP, WATCHDOG, STOPPING."""
    bed.dns.set("api.example.com", "A", [IP_A], ttl=30)
    path = bed.tmpdir / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10.0)
    messages: list[str] = []

    def until(word: str) -> str:
        while True:
            msg = sock.recv(4096).decode()
            messages.append(msg)
            if word in msg.splitlines():
                return msg

    try:
        fenced = Fenced(bed, _config()).start(
            wait=False, env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"}
        )
        ready = until("READY=1")
        # READY comes only once the ruleset is installed and the name was resolved
        assert tcp(bed, IP_A) == "connected"
        assert fenced.count("event=started") == 1
        assert ready.startswith("READY=1")
        until("WATCHDOG=1")
        fenced.send_signal(signal.SIGHUP)
        reloading = until("RELOADING=1")
        assert any(line.startswith("MONOTONIC_USEC=") for line in reloading.splitlines())
        until("READY=1")
        assert fenced.stop() == 0
        until("STOPPING=1")
    finally:
        sock.close()
