"""Unit tests of fenced.dns.answers: the one CNAME chase and chains read from responses."""

from __future__ import annotations

import itertools

import dns.message
import dns.name
import dns.rdatatype
import dns.rrset

from fenced.dns.answers import MAX_CHAIN, CnameChain, answer_chain, chase, follow_cnames


def test_follow_ends_at_a_name_without_link() -> None:
    """A chain ends at the first name with no CNAME; it is whole."""
    links = {"a": "b", "b": "c"}
    chain = follow_cnames("a", links.get)
    assert chain == CnameChain(("a", "b", "c"))
    assert not chain.broken and chain.problem("x") == ""


def test_follow_stops_where_told() -> None:
    """``stop`` ends the walk at the first name it accepts, links after it unread."""
    links = {"a": "b", "b": "c", "c": "a"}
    chain = follow_cnames("a", links.get, lambda n: n == "b")
    assert chain == CnameChain(("a", "b"))


def test_follow_reports_a_loop_at_the_repeated_target() -> None:
    """A target already on the chain ends it as a loop, the target not appended."""
    chain = follow_cnames("a", {"a": "b", "b": "a"}.get)
    assert chain == CnameChain(("a", "b"), loop="a")
    assert chain.broken and chain.problem("a.") == "CNAME loop at a."


def test_follow_allows_max_chain_links_not_one_more() -> None:
    """MAX_CHAIN links are followed; a further link makes the chain too long."""
    names = [f"n{i}" for i in range(MAX_CHAIN + 2)]
    links = dict(itertools.pairwise(names))
    del links[names[MAX_CHAIN]]
    whole = follow_cnames(names[0], links.get)
    assert whole.names == tuple(names[: MAX_CHAIN + 1]) and not whole.broken
    links[names[MAX_CHAIN]] = names[MAX_CHAIN + 1]
    long = follow_cnames(names[0], links.get)
    assert long.names == tuple(names[: MAX_CHAIN + 1]) and long.too_long
    assert long.problem("") == "CNAME chain too long"


def _response(*records: tuple[str, int, str, str]) -> dns.message.Message:
    """A reply to an A query for www.test with ``records`` (owner, TTL, type, value) as answer."""
    msg = dns.message.make_response(dns.message.make_query("www.test", "A"))
    for owner, ttl, rtype, value in records:
        msg.answer.append(dns.rrset.from_text(owner, ttl, "IN", rtype, value))
    return dns.message.from_wire(msg.to_wire())  # parsed, as a server's reply is


def test_answer_chain_compares_names_case_insensitively() -> None:
    """A loop back to the question name in other letter case is still a loop."""
    msg = _response(("www.test.", 60, "CNAME", "x.test."), ("x.test.", 60, "CNAME", "WWW.test."))
    chain = answer_chain(msg, dns.name.from_text("www.test"))
    assert chain.loop == dns.name.from_text("WWW.test")


def test_chase_takes_the_smallest_ttl_on_the_chain() -> None:
    """An address found at the chain's end carries the smallest TTL of links and records."""
    msg = _response(("www.test.", 30, "CNAME", "x.test."), ("x.test.", 90, "A", "192.0.2.1"))
    part = chase(msg, dns.name.from_text("www.test"), dns.rdatatype.A)
    assert (part.status, part.ttl, part.cnames) == ("ok", 30, ("x.test",))
