"""The HTTP/1.x request parser: http.client's requests, any split, crafted and random heads."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fenced.core.wire.http import MAX_HEAD, parse_http
from fenced.core.wire.reassembly import Reassembly
from fenced.core.wire.result import Foreign, Malformed, Named, NeedMore, Unnamed
from tests.unit.wire.clients import http_request_head
from tests.unit.wire.fuzz import edits, mutate, name_in

REQUEST = http_request_head("Api.Example.com", 8080, "/v1/items?q=1")


def test_real_request_gives_host_without_port_lowercased() -> None:
    """http.client's request to Api.Example.com:8080 names api.example.com."""
    assert parse_http(REQUEST) == Named("api.example.com")


def test_real_request_to_ipv6_literal_is_unnamed_with_address() -> None:
    """A request to [2001:db8::1]:8080 carries no name; the literal is reported normalized."""
    head = http_request_head("2001:DB8:0::1", 8080)
    assert parse_http(head) == Unnamed(address="2001:db8::1")


def test_real_request_to_ipv4_literal_is_unnamed_with_address() -> None:
    """A request to 192.0.2.7 carries no name; the literal is reported."""
    assert parse_http(http_request_head("192.0.2.7", 80)) == Unnamed(address="192.0.2.7")


def test_every_two_segment_split_needs_more_then_names() -> None:
    """Cut anywhere, the first part needs more; both, gathered in either order, name the host."""
    for cut in range(len(REQUEST)):
        assert isinstance(parse_http(REQUEST[:cut]), NeedMore), cut
        gathered = Reassembly(deadline=1.0).add(cut, REQUEST[cut:]).add(0, REQUEST[:cut])
        assert parse_http(gathered.contiguous()) == Named("api.example.com")


def test_body_after_the_head_is_not_read() -> None:
    """Bytes after the empty line (a body, a pipelined request) do not change the result."""
    post = http_request_head("a.example", 80, method="POST")
    tail = b"GET / HTTP/1.1\r\nHost: other.example\r\n\r\n"
    assert parse_http(post + tail) == Named("a.example")


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"GET / HTTP/1.0\r\n\r\n", Unnamed()),
        (b"GET / HTTP/1.1\r\nHost:\r\n\r\n", Unnamed()),
        (b"GET / HTTP/1.1\nHost: lf.example\n\n", Named("lf.example")),
        (b"GET / HTTP/1.1\r\nhOsT: \t x.example \t\r\n\r\n", Named("x.example")),
        (b"GET / HTTP/1.1\r\nHost: x.example:\r\n\r\n", Named("x.example")),
        (b"GET http://x.example:81/p HTTP/1.1\r\nHost: x.example:81\r\n\r\n", Named("x.example")),
        (b"GET http://x.example/ HTTP/1.0\r\n\r\n", Named("x.example")),
        (b"GET HTTP://X.example/ HTTP/1.1\r\nHost: x.EXAMPLE\r\n\r\n", Named("x.example")),
        (
            b"\r\n\r\nGET / HTTP/1.1\r\nHost: after-blank.example\r\n\r\n",
            Named("after-blank.example"),
        ),
        (b"CONNECT x.example:443 HTTP/1.1\r\nHost: x.example:443\r\n\r\n", Named("x.example")),
    ],
)
def test_accepted_heads(head: bytes, expected: object) -> None:
    """Valid request heads give the expected name, or none."""
    assert parse_http(head) == expected


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
        b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a.example\r\nhost: a.example\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: y\r\n Host: b.example\r\nHost: a.example\r\n\r\n",  # folding
        b"GET / HTTP/1.1\r\nHost : a.example\r\n\r\n",  # space before colon
        b"GET / HTTP/1.1\r\nHost: a.example\rHost: b.example\r\n\r\n",  # bare CR
        b"GET / HTTP/1.1\r\nHost: a.exa\x00mple\r\n\r\n",
        b"GET http://b.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n",  # target disagrees
        b"CONNECT b.example:443 HTTP/1.1\r\nHost: a.example\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: user@a.example\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a.example:99999\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a.example:8x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: [a.example]\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a_b!.example\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a.example.\r\n\r\n",
        b"GET  / HTTP/1.1\r\nHost: a.example\r\n\r\n",  # two spaces
        b"GET / HTTP/2.0\r\nHost: a.example\r\n\r\n",
        b"GET / HTTP/1.1 \r\nHost: a.example\r\n\r\n",
    ],
)
def test_ambiguous_or_broken_heads_are_malformed(head: bytes) -> None:
    """Heads two servers could read differently, or that break RFC 9112, are declined."""
    assert isinstance(parse_http(head), Malformed)


def test_other_protocols_are_foreign() -> None:
    """A TLS record, an SSH banner or a lower-case word is not an HTTP request."""
    for data in (b"\x16\x03\x01\x02\x00", b"SSH-2.0-x\r\n", b"get / HTTP/1.1\r\n", b"A" * 17):
        assert isinstance(parse_http(data), Foreign), data


def test_leading_empty_lines_need_more_until_bound() -> None:
    """Empty lines before the request line need more; more of them than a server skips do not."""
    assert parse_http(b"\r\n") == NeedMore(3)
    assert isinstance(parse_http(b"\r\n" * 5), Foreign)


def test_head_without_end_within_the_bound_is_malformed() -> None:
    """A head still open after MAX_HEAD bytes is declined; shorter ones need more."""
    start = b"GET / HTTP/1.1\r\nX: " + b"a" * (MAX_HEAD - 30)
    assert isinstance(parse_http(start), NeedMore)
    assert isinstance(parse_http(start + b"a" * 100), Malformed)
    assert isinstance(parse_http(start + b"a" * 100 + b"\r\n\r\n"), Malformed)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=1024))
def test_random_bytes_never_raise_nor_invent_a_name(data: bytes) -> None:
    """Any bytes, bare or after a request line, give a result; a name comes from the bytes."""
    for head in (data, b"GET / HTTP/1.1\r\n" + data, b"GET / HTTP/1.1\r\nHost: " + data):
        assert name_in(parse_http(head), head)


@settings(max_examples=400, deadline=None)
@given(edits(REQUEST, 6))
def test_mutated_requests_never_raise_nor_invent_a_name(changes: list[tuple[int, int]]) -> None:
    """A real request with bytes overwritten gives a result, and any name is in the bytes."""
    data = mutate(REQUEST, changes)
    assert name_in(parse_http(data), data)
