"""Smoke tests of the bed's containers (tests/bed/containers.py), without fenced."""

from __future__ import annotations

import os

import pytest

from tests.bed.bed import Bed
from tests.bed.constants import (
    CLIENT_V4,
    CLIENT_V6,
    GATEWAY_V4,
    GATEWAY_V6,
    RESOLVER_V4,
    RESOLVER_V6,
    SERVERS_V4_A,
    SERVERS_V4_B,
    SERVERS_V6,
    UID,
)
from tests.bed.containers import (
    Container,
    add_container,
    container_listen,
    container_probe,
    publish,
)
from tests.bed.fixtures import bed_unavailable
from tests.netns import alive

pytestmark = pytest.mark.bed

V4A, V4B, V6 = SERVERS_V4_A[0], SERVERS_V4_B[3], SERVERS_V6[2]
NET4, NET6 = "203.0.113.128/26", "2001:db8:c1::/64"


def _reaches_servers(bed: Bed, c: Container) -> None:
    for host, tcp_port, udp_port in ((V4A, 80, 123), (V4B, 443, 8050), (V6, 8000, 9000)):
        tcp = container_probe(bed, c, "tcp", host, tcp_port, uid=UID)
        assert tcp.outcome == "connected" and tcp["server"] == host, tcp.data
        udp = container_probe(bed, c, "udp", host, udp_port, uid=UID)
        assert udp.outcome == "reply" and udp["server"] == host, udp.data
        icmp = container_probe(bed, c, "icmp", host, uid=UID)
        assert icmp.outcome == "reply", icmp.data


def test_container_reaches_servers_and_resolver(bed: Bed) -> None:
    """A container reaches the echo servers (v4, v6; tcp, udp, icmp) and the resolver, NATed."""
    c = add_container(bed, "br-app", 1)
    assert (c.v4, c.gateway_v4, c.subnet_v4) == ("203.0.113.130", "203.0.113.129", NET4)
    assert (c.v6, c.gateway_v6, c.subnet_v6) == ("2001:db8:c1::2", "2001:db8:c1::1", NET6)
    _reaches_servers(bed, c)
    bed.dns.set("app.example.com", "A", ["198.51.100.11"], ttl=30)
    for server in (RESOLVER_V4, RESOLVER_V6):
        r = container_probe(bed, c, "dns", "app.example.com", "--server", server, uid=UID)
        assert r.outcome == "answer" and r["addresses"] == ["198.51.100.11"], r.data
    # The server sees the client's address (masquerade), not the container's.
    srv = bed.listen("tcp", 8443, ns="server")
    for host, seen in ((V4A, CLIENT_V4), (V6, CLIENT_V6)):
        assert container_probe(bed, c, "tcp", host, 8443).outcome == "connected"
        assert srv.read_json()["peer"] == seen


def test_two_containers_on_two_bridges(bed: Bed) -> None:
    """Two containers behind two bridges both reach the servers (one NAT table, no clash)."""
    one = add_container(bed, "br-app", 1)
    two = add_container(bed, "br-two", 2)
    assert (two.v4, two.v6, two.gateway_v4) == ("203.0.113.194", "2001:db8:c2::2", "203.0.113.193")
    for c in (one, two):
        for host in (V4B, V6):
            r = container_probe(bed, c, "tcp", host, 22, uid=UID)
            assert r.outcome == "connected" and r["server"] == host, r.data
    _reaches_servers(bed, two)
    # The client still reaches the servers itself (its own traffic is not NATed).
    assert bed.probe("tcp", V4A, 80, uid=UID).outcome == "connected"


def test_published_port(bed: Bed) -> None:
    """A published port on the client's addresses reaches a listener in the container."""
    c = add_container(bed, "br-app", 1)
    listener = container_listen(bed, c, "tcp", 8080)
    publish(bed, c, 8080, 18080)
    for host, local, peer in ((CLIENT_V4, c.v4, GATEWAY_V4), (CLIENT_V6, c.v6, GATEWAY_V6)):
        r = bed.connect_from_server(host, 18080)
        assert r.outcome == "connected" and r["server"] == local, r.data
        event = listener.read_json()
        assert (event["local"], event["peer"]) == (local, peer), event.data
    # Unpublished ports stay closed.
    assert bed.connect_from_server(CLIENT_V4, 18081).outcome != "connected"


def test_containers_gone_after_close() -> None:
    """Closing the bed kills container processes and deletes container namespaces."""
    reason = bed_unavailable()
    if reason is not None:
        pytest.skip(reason)
    with Bed(start_servers=False) as bed:
        cs = [add_container(bed, "br-app", 1), add_container(bed, "br-two", 2)]
        pids = [container_listen(bed, c, "udp", 5353).pid for c in cs]
        assert all(os.path.exists(c.netns_path) for c in cs)
        in_ns = bed.live_pids()
        assert in_ns and all(alive(p) for p in in_ns)
    assert not any(os.path.exists(c.netns_path) for c in cs)
    assert not os.path.exists(f"/run/netns/{bed.client_ns}")
    assert not any(alive(p) for p in pids + in_ns)
