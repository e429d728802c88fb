"""Unit tests of the live CNAME chains (fenced.core.chains): pure state given the time."""

from __future__ import annotations

from fenced.config.entries import parse_outbound
from fenced.core.chains import LiveChains, ancestors, name_labels

WWW = parse_outbound("www.example.com:443/tcp")
API = parse_outbound("api.example.com:80/tcp")


def labels(name: str) -> tuple[bytes, ...]:
    """The labels of ``name`` (it must be a valid name)."""
    got = name_labels(name)
    assert got is not None
    return got


def test_names_live_per_target_until_the_latest_time() -> None:
    """A name is live for each target until the latest time it was given for it."""
    chains = LiveChains()
    edge = labels("Edge.Example.Net.")
    chains.add([edge], {WWW: 100.0}, now=0.0)
    chains.add([edge], {WWW: 50.0, API: 80.0}, now=10.0)
    assert chains.match(edge, 60.0) == {WWW: 100.0, API: 80.0}
    assert chains.match(edge, 90.0) == {WWW: 100.0}
    assert chains.match(edge, 100.0) == {}
    assert chains.match(labels("other.example.net"), 0.0) == {}


def test_ancestors_of_live_names_only_while_they_live() -> None:
    """The proper ancestors of a live name, root included, count while it is live."""
    chains = LiveChains()
    chains.add([labels("a.b.example.net")], {WWW: 30.0}, now=0.0)
    assert list(ancestors(labels("a.b.example.net"))) == [
        labels("b.example.net"),
        labels("example.net"),
        labels("net"),
        (),
    ]
    for name in ("b.example.net", "example.net", "net", "."):
        assert chains.is_ancestor(labels(name), 29.0), name
        assert not chains.is_ancestor(labels(name), 30.0), name
    assert not chains.is_ancestor(labels("a.b.example.net"), 1.0)
    assert not chains.is_ancestor(labels("x.example.net"), 1.0)


def test_limit_drops_expired_then_soonest() -> None:
    """Past the limit, expired names leave first, then the ones that end soonest."""
    chains = LiveChains(limit=2)
    chains.add([labels("a.example")], {WWW: 10.0}, now=0.0)
    chains.add([labels("b.example")], {WWW: 50.0}, now=0.0)
    chains.add([labels("c.example")], {WWW: 40.0}, now=20.0)  # a expired
    assert len(chains) == 2
    chains.add([labels("d.example")], {WWW: 60.0}, now=20.0)  # c ends soonest
    assert chains.match(labels("b.example"), 21.0) and chains.match(labels("d.example"), 21.0)
    assert not chains.match(labels("c.example"), 21.0)


def test_retain_and_expire() -> None:
    """retain forgets removed targets; expire drops what ended; past times add nothing."""
    chains = LiveChains()
    chains.add([labels("x.example")], {WWW: 10.0, API: 20.0}, now=0.0)
    chains.add([labels("y.example")], {WWW: 5.0}, now=6.0)
    assert len(chains) == 1
    chains.retain([API])
    assert chains.match(labels("x.example"), 1.0) == {API: 20.0}
    chains.expire(20.0)
    assert len(chains) == 0
    assert not chains.is_ancestor(labels("example"), 20.0)
