"""Fuzzing what the daemon parses: config files, DNS answers, netlink notifications.

Pure functions, so many cases run in seconds: no exception may escape except the
documented ones (``ConfigError`` for a config, ``ValueError`` for one entry, dnspython's
own ``DNSException`` for bytes that are not a DNS message).
"""

from __future__ import annotations

import contextlib
import ipaddress
import random
import struct
import tomllib
from collections.abc import Mapping
from typing import cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fenced.config.entries import parse_inbound, parse_listen, parse_outbound
from fenced.config.schema import DAEMON_KEYS, POLICY_KEYS, TOP_KEYS, parse_documents
from fenced.dns.answers import FAILURES, Part, Status, chase, combine, judge
from fenced.dns.wire import fast_parse
from fenced.errors import ConfigError
from fenced.kernel.monitor import CommitParser
from fenced.kernel.nfcodec import NFNL_SUBSYS_NFTABLES, NFPROTO_INET, NFT_MSG_NEWGEN

pytestmark = pytest.mark.bed


def fast(examples: int) -> settings:
    """Settings for a pure function: many examples, no deadline, reproducible in CI."""
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# ------------------------------------------------------------------ config

ENTRY_CHARS = "abcxyz019.:/-[],*%_ \t\n\x00éAZ"
entry_text = st.one_of(
    st.text(alphabet=ENTRY_CHARS, max_size=40),
    st.text(max_size=20),
    st.builds(
        lambda host, ports, proto: host + ports + proto,
        st.sampled_from(
            [
                "api.example.com",
                "198.51.100.0/24",
                "[2001:db8::1]",
                "2001:db8::/32",
                "10.1",
                "*.example.com",
                "1.2.3.256",
                "[::ffff:1.2.3.4]",
                "a" * 70 + ".com",
                "",
                "xn--bcher-kva.example",
            ]
        ),
        st.sampled_from(["", ":443", ":80,443", ":1-65535", ":0", ":65536", ":5-1", ":", ":a"]),
        st.sampled_from(["", "/tcp", "/udp", "/icmp", "/TCP", "/", "/24", "/sctp"]),
    ),
)


@fast(3000)
@given(entry_text)
def test_fuzz_entries_raise_only_value_error(text: str) -> None:
    """Outbound, inbound and listen entries either parse or raise ValueError with a reason."""
    for parse in (parse_outbound, parse_inbound, parse_listen):
        try:
            parse(text)
        except ValueError as e:
            assert str(e), (parse.__name__, text)


# The keys the parser knows, plus one it must reject in each table.
KEYS = {
    "": [*TOP_KEYS, "bogus"],
    "daemon": [*DAEMON_KEYS, "gateway", "x"],
    "policy": [*POLICY_KEYS, "y"],
}

scalars = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, 5, 64, 4294967294, 4294967295, 2**31 - 1, 2**31]),
    st.booleans(),
    st.floats(allow_nan=True),
    entry_text,
    st.sampled_from(
        [
            "enforce",
            "audit",
            "keep",
            "remove",
            "root",
            "nobody",
            "127.0.0.1:9100",
            "[::1]:0",
            "a.slice/b.service",
            "/",
            "..",
            "fenced",
        ]
    ),
    st.dates(),
    st.datetimes(),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def documents(draw: st.DrawFn) -> dict[str, object]:
    """A TOML-like document: mostly real keys, wrong types and values, some unknown keys."""
    doc: dict[str, object] = {}
    if draw(st.booleans()):
        doc["daemon"] = draw(
            st.one_of(st.dictionaries(st.sampled_from(KEYS["daemon"]), values, max_size=5), values)
        )
    policies = draw(
        st.dictionaries(
            st.one_of(
                st.sampled_from(["web", "db", "a" * 30, "Web", "1x", ""]), st.text(max_size=4)
            ),
            st.one_of(st.dictionaries(st.sampled_from(KEYS["policy"]), values, max_size=6), values),
            max_size=3,
        )
    )
    empty_policy_table: bool = draw(st.booleans())
    if policies or empty_policy_table:
        doc["policy"] = policies
    if draw(st.integers(0, 9)) == 0:
        doc[draw(st.text(max_size=6))] = draw(values)
    return doc


def _lookup(name: str) -> int | None:
    return {"root": 0, "nobody": 65534, "www-data": 33}.get(name)


def _check(docs: list[tuple[str, Mapping[str, object]]]) -> None:
    try:
        parse_documents(
            docs,
            lookup_user=_lookup,
            lookup_group=_lookup,
            default_resolvers=lambda: ["192.0.2.53"],
        )
    except ConfigError as e:
        assert e.problems and all(str(p) for p in e.problems)


@fast(400)
@given(documents(), st.lists(documents(), max_size=2))
def test_fuzz_config_documents_raise_only_config_error(
    main: dict[str, object], dropins: list[dict[str, object]]
) -> None:
    """Any document set is a Config or a ConfigError listing problems; nothing else escapes."""
    docs: list[tuple[str, Mapping[str, object]]] = [("/etc/fenced/fenced.toml", main)]
    docs += [(f"/etc/fenced/fenced.d/{i}.toml", d) for i, d in enumerate(dropins)]
    _check(docs)


def _random_value(rng: random.Random, depth: int = 0) -> object:
    roll = rng.random()
    if depth < 2 and roll < 0.15:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if depth < 2 and roll < 0.25:
        keys = KEYS["daemon"] + KEYS["policy"] + ["", "z"]
        return {rng.choice(keys): _random_value(rng, depth + 1) for _ in range(rng.randrange(3))}
    pool: list[object] = [
        0,
        1,
        -1,
        5,
        64,
        2**31 - 1,
        2**31,
        2**64,
        4294967295,
        True,
        False,
        1.5,
        float("nan"),
        "",
        "enforce",
        "audit",
        "keep",
        "remove",
        "root",
        "nobody",
        "www-data",
        "127.0.0.1:9100",
        "[::1]:9100",
        "localhost:0",
        "a.slice/b.service",
        "/",
        "../x",
        "api.example.com:443",
        "198.51.100.0/24:22/tcp",
        "[2001:db8::1]:443",
        "8080",
        "9000-9010/udp",
        "*.example.com",
        "1.2.3.256",
        "x" * 300,
        "fe80::1%eth0",
    ]
    if roll < 0.35:
        return "".join(rng.choice(ENTRY_CHARS) for _ in range(rng.randrange(12)))
    return rng.choice(pool)


def random_document(rng: random.Random) -> dict[str, object]:
    """A document like ``documents()`` but from a plain PRNG (fast: 10,000 in seconds)."""
    doc: dict[str, object] = {}
    if rng.random() < 0.7:
        doc["daemon"] = {
            rng.choice(KEYS["daemon"]): _random_value(rng) for _ in range(rng.randrange(6))
        }
    names = ["web", "db", "a" * 30, "Web", "1x", "", "p"]
    doc["policy"] = {
        rng.choice(names): {
            rng.choice(KEYS["policy"]): _random_value(rng) for _ in range(rng.randrange(7))
        }
        for _ in range(rng.randrange(4))
    }
    if rng.random() < 0.1:
        doc[rng.choice(["bogus", "", "Daemon"])] = _random_value(rng)
    return doc


def test_fuzz_config_10000_random_documents() -> None:
    """10,000 seeded random document sets (main + drop-ins): Config or ConfigError only."""
    rng = random.Random(20261129)
    for _ in range(10_000):
        docs: list[tuple[str, Mapping[str, object]]] = [
            ("/etc/fenced/fenced.toml", random_document(rng))
        ]
        for i in range(rng.randrange(3)):
            docs.append((f"/etc/fenced/fenced.d/{i}.toml", random_document(rng)))
        _check(docs)


def test_fuzz_10000_random_entries() -> None:
    """10,000 seeded random entry strings: parsed or ValueError, for every entry parser."""
    rng = random.Random(7)
    pieces = [
        "api.example.com",
        "198.51.100.",
        "[2001:db8::",
        "]",
        ":",
        "/",
        ",",
        "-",
        "443",
        "tcp",
        "udp",
        "icmp",
        "*",
        "%",
        "65536",
        "0",
        ".",
        "xn--",
        "a" * 64,
    ]
    for _ in range(10_000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randrange(7)))
        test_fuzz_entries_raise_only_value_error.hypothesis.inner_test(text)  # type: ignore[attr-defined]


TOML_PIECES = [
    "[daemon]\n",
    "[policy.web]\n",
    "[policy.db]\n",
    "uids = [4242]\n",
    'outbound = ["api.example.com:443"]\n',
    "min_ttl = 0\n",
    "max_ttl = 1\n",
    'cgroups = ["a.slice/b.service"]\n',
    "gids = ['x']\n",
    "= \n",
    "[[policy]]\n",
    'listen = ""\n',
    "stale = -1\n",
    'resolvers = ["192.0.2.53"]\n',
    "x = {a=1}\n",
    '"q" = 1\n',
    "inbound = [8080]\n",
    "loopback = 1\n",
]


@fast(1500)
@given(st.lists(st.one_of(st.sampled_from(TOML_PIECES), st.text(max_size=8)), max_size=12))
def test_fuzz_toml_text_raises_only_decode_or_config_error(pieces: list[str]) -> None:
    """TOML text made of config fragments: a TOMLDecodeError, a ConfigError or a Config."""
    try:
        doc = tomllib.loads("".join(pieces))
    except tomllib.TOMLDecodeError:
        return
    _check([("/etc/fenced/fenced.toml", doc)])


# ------------------------------------------------------------------ DNS answers

NAMES = ["q.example.", "a.example.", "b.example.", "c.example.", "other.example."]
QNAME = dns.name.from_text(NAMES[0])


TTLS = [0, 1, 300, 2**31 - 1, 2**31, 2**32 - 1]


@st.composite
def answers(draw: st.DrawFn) -> dns.message.Message:
    """A response to A? q.example. whose answer section is a random set of records.

    NOERROR or NXDOMAIN, with or without an SOA (random TTL and MINIMUM) in the authority
    section, as negative answers carry.
    """
    query = dns.message.make_query(QNAME, "A")
    r = dns.message.make_response(query)
    r.set_rcode(draw(st.sampled_from([dns.rcode.NOERROR, dns.rcode.NXDOMAIN])))
    for _ in range(draw(st.integers(0, 2))):
        ttl, minimum = draw(st.sampled_from(TTLS)), draw(st.sampled_from(TTLS))
        soa = f"ns.example. admin.example. 1 7200 900 1209600 {minimum}"
        r.authority.append(dns.rrset.from_text("example.", ttl, "IN", "SOA", soa))
    for _ in range(draw(st.integers(0, 8))):
        owner = draw(st.sampled_from(NAMES))
        rtype = draw(st.sampled_from(["A", "AAAA", "CNAME", "TXT"]))
        ttl = draw(st.sampled_from(TTLS))
        if rtype == "A":
            value = str(ipaddress.IPv4Address(draw(st.integers(0, 2**32 - 1))))
        elif rtype == "AAAA":
            value = str(ipaddress.IPv6Address(draw(st.integers(0, 2**128 - 1))))
        elif rtype == "CNAME":
            value = draw(st.sampled_from(NAMES))
        else:
            value = '"x"'
        r.answer.append(dns.rrset.from_text(owner, ttl, "IN", rtype, value))
    return r


def _chase_both(msg: dns.message.Message) -> None:
    parts = []
    for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        part = chase(msg, QNAME, rdtype)
        assert part.status in ("ok", "nodata", "error"), part
        if part.status == "ok":
            assert part.ips and part.ttl is not None and 0 <= part.ttl <= 2**32 - 1
            owners = {rs.name for rs in msg.answer if rs.rdtype == rdtype}
            assert owners, part  # addresses only from records of the asked type
        parts.append(part)
    answer = combine("q.example", parts)
    assert answer.status in ("ok", "nodata", "error"), answer
    assert (answer.status == "ok") == bool(answer.ips) or answer.failed


def _fast_agrees(wire: bytes) -> None:
    """If the hand parser takes ``wire``, it reads what dnspython + ``_judge`` read."""
    qwire = QNAME.to_wire()
    assert qwire is not None
    question = qwire + struct.pack("!HH", dns.rdatatype.A, 1)
    part = fast_parse(wire, question, dns.rdatatype.A)
    if part is not None:
        assert part == judge(dns.message.from_wire(wire), QNAME, dns.rdatatype.A)
        if part.status in ("nxdomain", "nodata"):
            assert part.negative_ttl is None or 0 <= part.negative_ttl <= 2**32 - 1


@fast(1000)
@given(answers())
def test_fuzz_fast_parse_agrees_with_dnspython(msg: dns.message.Message) -> None:
    """Random answers (negative ones with SOAs too): the fast path reads what dnspython reads."""
    _fast_agrees(msg.to_wire())


@fast(1000)
@given(answers(), st.lists(st.tuples(st.integers(0, 4096), st.integers(0, 255)), max_size=6))
def test_fuzz_fast_parse_agrees_on_wire_bytes(
    msg: dns.message.Message, flips: list[tuple[int, int]]
) -> None:
    """Corrupted answers: the fast path declines them or reads what dnspython reads."""
    wire = bytearray(msg.to_wire())
    for pos, byte in flips:
        if wire:
            wire[pos % len(wire)] = byte
    _fast_agrees(bytes(wire))


@fast(1000)
@given(answers())
def test_fuzz_dns_answers_are_chased_without_exceptions(msg: dns.message.Message) -> None:
    """Any answer section (CNAME loops, chains, strays, huge TTLs) gives a status, not a crash."""
    _chase_both(dns.message.from_wire(msg.to_wire()))


@fast(1000)
@given(answers(), st.lists(st.tuples(st.integers(0, 4096), st.integers(0, 255)), max_size=6))
def test_fuzz_dns_wire_bytes(msg: dns.message.Message, flips: list[tuple[int, int]]) -> None:
    """Corrupted wire answers: dnspython rejects them or fenced's handling copes."""
    wire = bytearray(msg.to_wire())
    for pos, byte in flips:
        if wire:
            wire[pos % len(wire)] = byte
    try:
        parsed = dns.message.from_wire(bytes(wire))
    except (dns.exception.DNSException, ValueError, UnicodeError):
        return
    # ValueError and AttributeError are what fenced.dns.answers.judge turns into "error".
    with contextlib.suppress(ValueError, AttributeError):
        _chase_both(parsed)


@fast(500)
@given(
    st.lists(
        st.sampled_from(["ok", "nxdomain", "nodata", "servfail", "timeout", "error"]),
        min_size=1,
        max_size=2,
    )
)
def test_fuzz_combine_statuses(statuses: list[str]) -> None:
    """Every pair of per-type outcomes combines into one sensible answer."""
    ip = ipaddress.ip_address("192.0.2.1")
    parts = [Part("ok", (ip,), 5) if s == "ok" else Part(cast(Status, s)) for s in statuses]
    answer = combine("q.example", parts)
    if "nxdomain" in statuses:
        assert answer.status == "nxdomain"
    elif any(s in FAILURES for s in statuses):
        assert answer.failed
    elif "ok" in statuses:
        assert answer.status == "ok" and answer.ips


# ------------------------------------------------------------------ netlink


NLMSG = struct.Struct("=IHHII")


@st.composite
def notifications(draw: st.DrawFn) -> bytes:
    """A datagram of nf_tables-like messages: plausible headers, random attributes."""
    out = b""
    for _ in range(draw(st.integers(0, 5))):
        msg = draw(st.sampled_from([NFT_MSG_NEWGEN, 0, 3, 6, 9, 12, 14, 200, 255]))
        attrs = b""
        for _ in range(draw(st.integers(0, 4))):
            payload = draw(st.one_of(st.just(b"fenced\0"), st.binary(max_size=12)))
            alen = draw(st.sampled_from([4 + len(payload), 0, 3, 2000]))
            attrs += struct.pack("=HH", alen & 0xFFFF, draw(st.integers(0, 0xFFFF))) + payload
            attrs += b"\0" * (-len(attrs) % 4)
        body = bytes([draw(st.sampled_from([NFPROTO_INET, 2, 0])), 0, 0, 0]) + attrs
        length = draw(st.sampled_from([16 + len(body), 0, 15, 16, 1 << 20]))
        mtype = (
            (NFNL_SUBSYS_NFTABLES << 8) | msg
            if draw(st.booleans())
            else draw(st.integers(0, 0xFFFF))
        )
        out += NLMSG.pack(length & 0xFFFFFFFF, mtype, 0, 0, 0) + body
    return out


@fast(800)
@given(st.one_of(notifications(), st.binary(max_size=256)), st.integers(1, 3))
def test_fuzz_commit_parser(data: bytes, feeds: int) -> None:
    """Random and malformed notification datagrams never raise out of CommitParser.feed."""
    _feed(data, feeds)


def test_fuzz_commit_parser_10000_random_datagrams() -> None:
    """10,000 seeded datagrams: valid-looking headers with random bodies, and plain noise."""
    rng = random.Random(11)
    for _ in range(10_000):
        body = rng.randbytes(rng.randrange(64))
        length = rng.choice([16 + len(body), rng.randrange(64), 16])
        mtype = (NFNL_SUBSYS_NFTABLES << 8) | rng.choice([NFT_MSG_NEWGEN, 6, 9, 12, 255])
        data = NLMSG.pack(length, mtype, 0, 0, 0) + body
        _feed(data if rng.random() < 0.8 else rng.randbytes(rng.randrange(80)), 1)


def _feed(data: bytes, feeds: int) -> None:
    parser = CommitParser("fenced")
    for _ in range(feeds):
        for commit in parser.feed(data):
            assert commit.generation >= 0 and commit.pid >= 0
            assert all(v > 0 for v in commit.changes.values())
