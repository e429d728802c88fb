"""Forwarded traffic (containers, VMs) judged by the same policies, in the bed."""

from __future__ import annotations

import pytest

from tests.bed import constants as C
from tests.bed.bed import Bed
from tests.bed.containers import (
    Container,
    add_container,
    container_listen,
    container_probe,
    publish,
)
from tests.bed.fenced_proc import Fenced, daemon_section, eventually, policy_section

pytestmark = pytest.mark.bed

ALLOWED_V4 = C.SERVERS_V4_A[0]  # 198.51.100.10: tcp 80
UDP_V4 = C.SERVERS_V4_A[1]  # 198.51.100.11: udp 123
NAMED_V4 = C.SERVERS_V4_A[2]  # 198.51.100.12: api.example.com
ALLOWED_V6 = C.SERVERS_V6[0]  # 2001:db8:1::10: tcp 443
DENIED_V4 = C.SERVERS_V4_B[0]
DENIED_V6 = C.SERVERS_V6[1]
BLOCKED = {"refused", "timeout", "unreachable", "denied", "reset"}


def _policy(name: str, c: Container, by: str, **keys: object) -> str:
    subject: dict[str, object] = (
        {"interfaces": [c.bridge]} if by == "interface" else {"sources": [c.subnet_v4, c.subnet_v6]}
    )
    values: dict[str, object] = {
        "outbound": [
            f"{ALLOWED_V4}:80/tcp",
            f"{UDP_V4}:123/udp",
            f"[{ALLOWED_V6}]:443/tcp",
            "api.example.com:80/tcp",
        ],
        **subject,
    }
    values.update(keys)
    return policy_section(name, **values)


def _probe(bed: Bed, c: Container, kind: str, *args: object) -> str:
    return container_probe(bed, c, kind, *args).outcome


@pytest.mark.parametrize("by", ["interface", "source"])
@pytest.mark.parametrize("dns", ["direct", "gateway"])
def test_container_reaches_allowed_names_and_addresses_only(bed: Bed, by: str, dns: str) -> None:
    """A container reaches what its policy lists (v4, v6, tcp, udp, names) and nothing else."""
    bed.dns.set("api.example.com", "A", [NAMED_V4], ttl=30)
    c = add_container(bed, "br-app", 1)
    Fenced(bed, daemon_section() + _policy("app", c, by, dns=dns)).start()
    assert _probe(bed, c, "tcp", ALLOWED_V4, 80) == "connected"
    assert _probe(bed, c, "tcp", ALLOWED_V6, 443) == "connected"
    assert _probe(bed, c, "udp", UDP_V4, 123) == "reply"
    eventually(lambda: _probe(bed, c, "tcp", NAMED_V4, 80) == "connected", 2.0, "named")
    assert _probe(bed, c, "tcp", ALLOWED_V4, 443) == "refused"
    assert _probe(bed, c, "tcp", DENIED_V4, 80) == "refused"
    assert _probe(bed, c, "tcp", DENIED_V6, 443) == "refused"
    assert _probe(bed, c, "udp", DENIED_V4, 123) in BLOCKED
    assert _probe(bed, c, "icmp", DENIED_V4) in BLOCKED
    # DNS: the resolver answers allowed names; with the gateway any server address does
    r = container_probe(bed, c, "dns", "api.example.com", "--server", C.RESOLVER_V4)
    assert r.outcome == "answer" and r["addresses"] == [NAMED_V4], r.data
    rogue = container_probe(bed, c, "dns", "api.example.com", "--server", C.ROGUE_V4)
    if dns == "gateway":
        assert rogue.outcome == "answer" and rogue["addresses"] == [NAMED_V4]
        denied = container_probe(bed, c, "dns", "evil.example.org", "--server", C.ROGUE_V4)
        assert denied.outcome == "answer" and denied["rcode"] == "NXDOMAIN"
    else:
        assert rogue.outcome != "answer"
    assert bed.rogue.queries() == []


def test_gateway_answers_for_a_container_open_what_they_say(bed: Bed) -> None:
    """A container's wildcard lookup through the gateway opens the answered address."""
    target = C.SERVERS_V4_B[2]
    bed.dns.set("x.cdn.example.net", "A", [target], ttl=30)
    c = add_container(bed, "br-app", 1)
    cfg = daemon_section() + _policy(
        "app", c, "interface", outbound=["*.cdn.example.net:80/tcp"], dns="gateway"
    )
    Fenced(bed, cfg).start()
    assert _probe(bed, c, "tcp", target, 80) == "refused"
    r = container_probe(bed, c, "dns", "x.cdn.example.net", "--server", C.ROGUE_V4)
    assert r.outcome == "answer" and r["addresses"] == [target]
    assert _probe(bed, c, "tcp", target, 80) == "connected"


def test_published_port_only_when_listed_inbound(bed: Bed) -> None:
    """A port published by DNAT reaches the container only when the policy lists it."""
    c = add_container(bed, "br-app", 1)
    container_listen(bed, c, "tcp", 8080)
    container_listen(bed, c, "tcp", 8081)
    publish(bed, c, 8080, 18080)
    publish(bed, c, 8081, 18081)
    Fenced(bed, daemon_section() + _policy("app", c, "interface", inbound=["8080/tcp"])).start()
    assert bed.connect_from_server(C.CLIENT_V4, 18080).outcome == "connected"
    assert bed.connect_from_server(C.CLIENT_V6, 18080).outcome == "connected"
    assert bed.connect_from_server(C.CLIENT_V4, 18081).outcome == "refused"
    assert bed.connect_from_server(C.CLIENT_V6, 18081).outcome == "refused"


def test_two_containers_two_policies(bed: Bed) -> None:
    """A second container on another bridge gets its own policy's rules."""
    a = add_container(bed, "br-app", 1)
    b = add_container(bed, "br-two", 2)
    cfg = (
        daemon_section()
        + _policy("app", a, "interface", outbound=[f"{ALLOWED_V4}:80/tcp"])
        + _policy("two", b, "source", outbound=[f"{DENIED_V4}:80/tcp"])
    )
    fenced = Fenced(bed, cfg).start()
    assert _probe(bed, a, "tcp", ALLOWED_V4, 80) == "connected"
    assert _probe(bed, a, "tcp", DENIED_V4, 80) == "refused"
    assert _probe(bed, b, "tcp", DENIED_V4, 80) == "connected"
    assert _probe(bed, b, "tcp", ALLOWED_V4, 80) == "refused"
    assert fenced.nft_counter("denied_app_out") >= 1
    assert fenced.nft_counter("denied_two_out") >= 1


@pytest.mark.parametrize("foreign", ["nft", "iptables"])
def test_foreign_accept_all_does_not_open_what_fenced_denies(bed: Bed, foreign: str) -> None:
    """Another table or iptables-nft accepting all forwarded traffic changes nothing."""
    c = add_container(bed, "br-app", 1)
    if foreign == "nft":
        for prio in (-200, 0, 200):
            bed.nft(
                f"table inet foreign{prio + 200} {{\n"
                f"\tchain letall {{\n\t\ttype filter hook forward priority {prio}; policy accept;\n"
                "\t\taccept\n\t}\n}"
            )
    else:
        bed.ns_exec(["iptables-nft", "-I", "FORWARD", "-j", "ACCEPT"])
        bed.ns_exec(["ip6tables-nft", "-I", "FORWARD", "-j", "ACCEPT"])
    Fenced(bed, daemon_section() + _policy("app", c, "interface")).start()
    assert _probe(bed, c, "tcp", DENIED_V4, 80) == "refused"
    assert _probe(bed, c, "tcp", DENIED_V6, 443) == "refused"
    assert _probe(bed, c, "tcp", ALLOWED_V4, 80) == "connected"
