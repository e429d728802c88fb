"""The wire's DNS name check: the configuration's host name rules, applied to raw bytes."""

from __future__ import annotations

import pytest

from fenced.core.wire.names import MAX_NAME, dns_name


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        (b"Example.COM", "example.com"),
        (b"a", "a"),
        (b"_srv.x-y.example", "_srv.x-y.example"),
        (b"xn--bcher-kva.example", "xn--bcher-kva.example"),
        (b"1.2.3.example", "1.2.3.example"),
        (b"a" * 63 + b".example", "a" * 63 + ".example"),
    ],
)
def test_valid_names_are_lowercased(raw: bytes, name: str) -> None:
    """Valid names come back lowercased and otherwise unchanged."""
    assert dns_name(raw) == name


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"example.com.",
        b".example.com",
        b"a..example",
        b"-a.example",
        b"a-.example",
        b"a" * 64 + b".example",
        b"192.0.2.1",
        b"a.123",
        b"b\xc3\xbccher.example",
        b"a b.example",
        b"a*.example",
        b"a\x00.example",
        (b"a" * 62 + b".") * 4 + b"ab",
    ],
)
def test_invalid_names_are_refused(raw: bytes) -> None:
    """Empty, dotted, badly labelled, numeric, non-ASCII and over-long names give None."""
    assert dns_name(raw) is None


def test_length_bound() -> None:
    """A name of exactly MAX_NAME characters passes; one more does not."""
    name = b".".join([b"a" * 63] * 3 + [b"a" * 61])
    assert len(name) == MAX_NAME
    assert dns_name(name) == name.decode()
    assert dns_name(name + b"a") is None
