"""Unit tests for fenced.config: entry syntax, validation, drop-ins and file loading."""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime, time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fenced.config.entries import (
    normalize_cgroup,
    parse_inbound,
    parse_interface,
    parse_listen,
    parse_outbound,
    parse_resolver,
    parse_source,
)
from fenced.config.files import load, resolv_conf_nameservers
from fenced.config.schema import parse_documents
from fenced.core.model import Config, DaemonConfig, PortRange, PortSpec, Proto
from fenced.errors import ConfigError, ConfigProblem

REPO = Path(__file__).resolve().parents[2]

USERS: dict[str, int] = {"www-data": 33, "alice": 1000, "root": 0}
GROUPS: dict[str, int] = {"web": 50, "wheel": 10, "root": 0}


def lookup_user(name: str) -> int | None:
    """Fake user database."""
    return USERS.get(name)


def lookup_group(name: str) -> int | None:
    """Fake group database."""
    return GROUPS.get(name)


Doc = tuple[str, Mapping[str, object]]


def doc(path: str, text: str) -> Doc:
    """A (path, parsed TOML) pair from TOML text."""
    return path, tomllib.loads(text)


def parse(*docs: Doc, resolvers: Sequence[str] = ("192.0.2.53",)) -> Config:
    """parse_documents with the fake look-ups."""
    return parse_documents(
        list(docs),
        lookup_user=lookup_user,
        lookup_group=lookup_group,
        default_resolvers=lambda: list(resolvers),
    )


def problems(*docs: Doc, resolvers: Sequence[str] = ("192.0.2.53",)) -> list[ConfigProblem]:
    """The problems parse_documents reports; fails the test if it accepts the docs."""
    with pytest.raises(ConfigError) as info:
        parse(*docs, resolvers=resolvers)
    return list(info.value.problems)


def one_problem(*docs: Doc, resolvers: Sequence[str] = ("192.0.2.53",)) -> ConfigProblem:
    """The single problem parse_documents reports."""
    found = problems(*docs, resolvers=resolvers)
    assert len(found) == 1, found
    return found[0]


MINIMAL = """
[policy.web]
uids = [4242]
"""

EXAMPLE = """
[daemon]
listen = "127.0.0.1:9100"
table = "fenced"
resolvers = ["192.0.2.53"]
min_ttl = 5
max_ttl = 3600
grace = 30
stale = 300
max_ips_per_name = 64
on_exit = "keep"

[policy.web]
uids = ["www-data", 4242]
gids = []
cgroups = ["system.slice/web.service"]
mode = "enforce"
outbound = [
  "api.example.com:443",
  "ntp.example.com:123/udp",
  "198.51.100.0/24:22/tcp",
  "[2001:db8::1]:443",
  "mirror.example.com:80,443,8000-8100",
]
inbound = ["8080", "8443/tcp", "9000-9010/udp"]
loopback = true
allow_private = false
"""

TCP_UDP: tuple[Proto, ...] = ("tcp", "udp")


def ports(*ranges: tuple[int, int]) -> tuple[PortRange, ...]:
    """A tuple of PortRanges from (first, last) pairs."""
    return tuple(PortRange(a, b) for a, b in ranges)


# --------------------------------------------------------------------------- whole files


def test_full_example_parses() -> None:
    """The example from the contract parses to exactly the expected values."""
    config = parse(doc("main.toml", EXAMPLE))
    assert config.files == ("main.toml",)
    assert config.daemon == DaemonConfig(
        listen="127.0.0.1:9100",
        table="fenced",
        resolvers=(ipaddress.ip_address("192.0.2.53"),),
        min_ttl=5,
        max_ttl=3600,
        grace=30,
        stale=300,
        max_ips_per_name=64,
        on_exit="keep",
    )
    web = config.policy("web")
    assert web.uids == (33, 4242)
    assert web.gids == ()
    assert web.cgroups == ("system.slice/web.service",)
    assert web.mode == "enforce"
    assert web.loopback is True
    assert web.allow_private is False
    assert [t.text for t in web.outbound] == [
        "api.example.com:443",
        "ntp.example.com:123/udp",
        "198.51.100.0/24:22/tcp",
        "[2001:db8::1]:443",
        "mirror.example.com:80,443,8000-8100",
    ]
    assert [t.spec.describe() for t in web.outbound] == [
        "tcp,udp:443",
        "udp:123",
        "tcp:22",
        "tcp,udp:443",
        "tcp,udp:80,443,8000-8100",
    ]
    assert web.domains == ("api.example.com", "mirror.example.com", "ntp.example.com")
    assert web.outbound[2].network == ipaddress.ip_network("198.51.100.0/24")
    assert web.outbound[3].network == ipaddress.ip_network("2001:db8::1/128")
    assert [i.spec.describe() for i in web.inbound] == [
        "tcp,udp:8080",
        "tcp:8443",
        "udp:9000-9010",
    ]


def test_defaults_apply_when_keys_are_absent() -> None:
    """Absent daemon and policy keys take the documented defaults."""
    config = parse(doc("main.toml", MINIMAL), resolvers=["192.0.2.1", "2001:db8::53"])
    assert config.daemon == DaemonConfig(
        resolvers=(ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("2001:db8::53"))
    )
    web = config.policy("web")
    assert (web.mode, web.loopback, web.allow_private) == ("enforce", False, False)
    assert (web.dns, web.deny_response) == ("gateway", "nxdomain")
    assert (web.gids, web.cgroups, web.outbound, web.inbound) == ((), (), (), ())


def test_example_config_file_is_safe() -> None:
    """config/fenced.toml loads and confines only the dedicated uid 64123."""
    config = load(
        REPO / "config" / "fenced.toml",
        lookup_user=lookup_user,
        lookup_group=lookup_group,
        default_resolvers=lambda: ["192.0.2.53"],
    )
    assert [p.name for p in config.policies] == ["demo"]
    demo = config.policy("demo")
    assert (demo.uids, demo.gids, demo.cgroups) == ((64123,), (), ())
    assert demo.loopback is False
    assert config.daemon.listen == "127.0.0.1:9100"
    assert config.daemon.resolvers == (ipaddress.ip_address("192.0.2.53"),)


def test_policies_are_sorted_by_name() -> None:
    """Config.policies is in name order whatever order the files give."""
    config = parse(
        doc("main.toml", "[policy.zeta]\nuids = [1]\n[policy.alpha]\nuids = [2]\n"),
        doc("d/a.toml", "[policy.mid]\nuids = [3]\n"),
    )
    assert [p.name for p in config.policies] == ["alpha", "mid", "zeta"]
    assert config.files == ("main.toml", "d/a.toml")


def test_ids_are_deduplicated_and_sorted() -> None:
    """A uid given by name and by number appears once; ids and cgroups come out sorted."""
    config = parse(
        doc(
            "main.toml",
            '[policy.web]\nuids = [4242, "www-data", 33]\ngids = ["web", 7]\n'
            'cgroups = ["b.slice", "/a.slice/", "a.slice"]\n',
        )
    )
    web = config.policy("web")
    assert web.uids == (33, 4242)
    assert web.gids == (7, 50)
    assert web.cgroups == ("a.slice", "b.slice")


# --------------------------------------------------------------------------- entry syntax


@pytest.mark.parametrize(
    ("text", "domain", "network", "protos", "port_ranges"),
    [
        ("api.example.com:443", "api.example.com", None, TCP_UDP, ((443, 443),)),
        ("ntp.example.com:123/udp", "ntp.example.com", None, ("udp",), ((123, 123),)),
        ("example.com", "example.com", None, TCP_UDP, ()),
        ("Example.COM.", "example.com", None, TCP_UDP, ()),
        ("_srv.example.com/tcp", "_srv.example.com", None, ("tcp",), ()),
        ("localhost", "localhost", None, TCP_UDP, ()),
        ("example.com/icmp", "example.com", None, ("icmp",), ()),
        ("198.51.100.0/24:22/tcp", None, "198.51.100.0/24", ("tcp",), ((22, 22),)),
        ("198.51.100.0/24", None, "198.51.100.0/24", TCP_UDP, ()),
        ("192.0.2.7", None, "192.0.2.7/32", TCP_UDP, ()),
        ("192.0.2.7:53/udp", None, "192.0.2.7/32", ("udp",), ((53, 53),)),
        ("0.0.0.0/0/icmp", None, "0.0.0.0/0", ("icmp",), ()),
        ("[2001:db8::1]:443", None, "2001:db8::1/128", TCP_UDP, ((443, 443),)),
        ("[2001:db8::/32]:80/tcp", None, "2001:db8::/32", ("tcp",), ((80, 80),)),
        ("[2001:db8::1]", None, "2001:db8::1/128", TCP_UDP, ()),
        ("[2001:db8::1]/udp", None, "2001:db8::1/128", ("udp",), ()),
        ("2001:db8::1", None, "2001:db8::1/128", TCP_UDP, ()),
        ("2001:db8::/32", None, "2001:db8::/32", TCP_UDP, ()),
        ("2001:db8::/32/tcp", None, "2001:db8::/32", ("tcp",), ()),
        ("::1/icmp", None, "::1/128", ("icmp",), ()),
        (
            "mirror.example.com:80,443,8000-8100",
            "mirror.example.com",
            None,
            TCP_UDP,
            ((80, 80), (443, 443), (8000, 8100)),
        ),
        ("a.example:443,80,81,79", "a.example", None, TCP_UDP, ((79, 81), (443, 443))),
        ("a.example:1-10,5-20,21,30", "a.example", None, TCP_UDP, ((1, 21), (30, 30))),
        ("a.example:1-65535/tcp", "a.example", None, ("tcp",), ((1, 65535),)),
    ],
)
def test_outbound_good(
    text: str,
    domain: str | None,
    network: str | None,
    protos: tuple[Proto, ...],
    port_ranges: tuple[tuple[int, int], ...],
) -> None:
    """A well-formed outbound entry parses to the expected target."""
    target = parse_outbound(text)
    assert target.text == text
    assert target.domain == domain
    assert target.network == (ipaddress.ip_network(network) if network else None)
    assert target.spec == PortSpec(protos=protos, ports=ports(*port_ranges))


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty entry"),
        ("example.com :443", "whitespace"),
        ("198.51.100.1/24", "198.51.100.1/24 has host bits set; did you mean 198.51.100.0/24?"),
        ("[2001:db8::1/32]", "has host bits set; did you mean 2001:db8::/32?"),
        ("198.51.100.0/33", "expected 0-32"),
        ("10.0.0.0/255.0.0.0", "expected 0-32"),
        ("[2001:db8::/129]", "expected 0-128"),
        ("*.com", "is too broad: give at least two labels after '*.'"),
        ("*.", "missing host name"),
        ("*.*.example.com", "'*' may only be the whole first label"),
        ("a.*.example.com", "'*' may only be the whole first label"),
        ("*", "wildcards are allowed only in outbound entries"),
        ("*example.com", "'*' may only be the whole first label"),
        ("*.exa$mple.com", "letters, digits"),
        ("*.example.123", "not a valid IPv4 address"),
        ("example.com:443/icmp", "icmp has no ports"),
        ("example.com/sctp", "unknown protocol 'sctp'"),
        ("example.com/TCP", "unknown protocol 'TCP'"),
        ("example.com:", "empty port list"),
        ("example.com:0", "out of range"),
        ("example.com:65536", "out of range"),
        ("example.com:99999999999999999999", "out of range"),
        ("example.com:80-70", "backwards"),
        ("example.com:80,,443", "bad port ''"),
        ("example.com:http", "bad port 'http'"),
        ("example.com:-5", "bad port '-5'"),
        ("example.com:443:80", "not a valid IPv6 address"),
        ("2001:db8::1:443:x", "put it in brackets"),
        ("fe80::1%eth0", "scoped IPv6"),
        ("[fe80::1%eth0]:53", "scoped IPv6"),
        ("[192.0.2.1]:80", "brackets are only for IPv6"),
        ("[2001:db8::1", "without a matching ']'"),
        ("[2001:db8::1]443", "unexpected '443' after ']'"),
        ("1.2.3.256", "not a valid IPv4 address"),
        ("10.1", "not a valid IPv4 address"),
        ("example.123", "not a valid IPv4 address"),
        ("a..example", "empty label"),
        (".example", "empty label"),
        ("-a.example", "may not start or end with '-'"),
        ("a-.example", "may not start or end with '-'"),
        ("a" * 64 + ".example", "longer than 63"),
        (".".join(["a" * 60] * 5), "at most 253"),
        ("exa$mple.com", "letters, digits"),
        ("a*.example.com", "'*' may only be the whole first label"),
        ("bücher.example", "punycode"),
        (":443", "missing host"),
        ("/tcp", "missing host"),
        ("example.com/24", "not an IPv4 network"),
    ],
)
def test_outbound_bad(text: str, reason: str) -> None:
    """A malformed outbound entry raises ValueError with a reason saying why."""
    with pytest.raises(ValueError, match=re.escape(reason)):
        parse_outbound(text)


@pytest.mark.parametrize(
    ("text", "protos", "port_ranges"),
    [
        ("8080", TCP_UDP, ((8080, 8080),)),
        ("8443/tcp", ("tcp",), ((8443, 8443),)),
        ("9000-9010/udp", ("udp",), ((9000, 9010),)),
        ("443,80,81", TCP_UDP, ((80, 81), (443, 443))),
    ],
)
def test_inbound_good(
    text: str, protos: tuple[Proto, ...], port_ranges: tuple[tuple[int, int], ...]
) -> None:
    """A well-formed inbound entry parses to the expected listen spec."""
    listen = parse_inbound(text)
    assert listen.text == text
    assert listen.spec == PortSpec(protos=protos, ports=ports(*port_ranges))


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty entry"),
        ("/tcp", "missing ports"),
        ("80/icmp", "icmp has no ports"),
        ("80/sctp", "unknown protocol"),
        ("0", "out of range"),
        ("example.com:80", "bad port"),
        ("80-", "bad port"),
        ("90-80/udp", "backwards"),
    ],
)
def test_inbound_bad(text: str, reason: str) -> None:
    """A malformed inbound entry raises ValueError with a reason saying why."""
    with pytest.raises(ValueError, match=re.escape(reason)):
        parse_inbound(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9100", ("127.0.0.1", 9100)),
        ("[::1]:9100", ("::1", 9100)),
        ("0.0.0.0:1", ("0.0.0.0", 1)),
        ("localhost:65535", ("localhost", 65535)),
    ],
)
def test_listen_good(text: str, expected: tuple[str, int]) -> None:
    """parse_listen splits a valid HOST:PORT."""
    assert parse_listen(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("127.0.0.1", "expected HOST:PORT"),
        (":9100", "expected HOST:PORT"),
        ("::1:9100", "in brackets"),
        ("[::1]", "expected HOST:PORT"),
        ("[nope]:80", "not an IPv6 address"),
        ("127.0.0.1:0", "out of range"),
        ("127.0.0.1:65536", "out of range"),
        ("127.0.0.1:x", "bad port"),
        ("1.2.3.999:80", "not a valid IPv4 address"),
    ],
)
def test_listen_bad(text: str, reason: str) -> None:
    """parse_listen refuses a malformed address with a reason."""
    with pytest.raises(ValueError, match=re.escape(reason)):
        parse_listen(text)


@pytest.mark.parametrize(
    ("parse", "text", "expected"),
    [
        (parse_interface, "eth0.100", "eth0.100"),
        (parse_interface, "wg-0@x:1", "wg-0@x:1"),
        (parse_source, "203.0.113.0/24", ipaddress.ip_network("203.0.113.0/24")),
        (parse_source, "2001:db8::1", ipaddress.ip_network("2001:db8::1/128")),
        (parse_resolver, "192.0.2.53", ipaddress.ip_address("192.0.2.53")),
        (parse_resolver, "2001:db8::53", ipaddress.ip_address("2001:db8::53")),
        (normalize_cgroup, "/system.slice/web.service/", "system.slice/web.service"),
        (normalize_cgroup, "web.service", "web.service"),
    ],
)
def test_subject_and_resolver_good(
    parse: Callable[[str], object], text: str, expected: object
) -> None:
    """The subject and resolver parsers return the value a valid text means."""
    assert parse(text) == expected


@pytest.mark.parametrize(
    ("parse", "text", "reason"),
    [
        (parse_interface, "eth0/x", "bad interface name"),
        (parse_interface, "a" * 16, "bad interface name"),
        (parse_interface, "..", "bad interface name"),
        (parse_source, "10.0.0.1/8", "did you mean 10.0.0.0/8?"),
        (parse_source, "example.com", "bad source network"),
        (parse_resolver, "fe80::1%eth0", "scoped IPv6"),
        (parse_resolver, "dns.example", "is not an IP address"),
        (normalize_cgroup, "/sys/fs/cgroup/a/b", "e.g. 'a/b'"),
        (normalize_cgroup, "/", "root cgroup"),
        (normalize_cgroup, "a/../b", "'.' and '..'"),
    ],
)
def test_subject_and_resolver_bad(parse: Callable[[str], object], text: str, reason: str) -> None:
    """The subject and resolver parsers refuse a malformed text with a reason."""
    with pytest.raises(ValueError, match=re.escape(reason)):
        parse(text)


def test_bad_entry_in_file_names_file_and_index() -> None:
    """A bad outbound entry is reported at policy.NAME.outbound[i] in its file."""
    p = one_problem(
        doc(
            "main.toml",
            '[policy.web]\nuids = [1]\noutbound = ["a.example", "b.example", "198.51.100.1/24"]\n',
        )
    )
    assert (p.file, p.key) == ("main.toml", "policy.web.outbound[2]")
    assert "did you mean 198.51.100.0/24?" in p.reason
    assert str(p).startswith("main.toml: policy.web.outbound[2]: ")


# --------------------------------------------------------------------------- keys and types


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("polcy = 1\n" + MINIMAL, "polcy"),
        ("[daemon]\nlisten_on = 'x'\n" + MINIMAL, "daemon.listen_on"),
        ("[policy.web]\nuids = [1]\noutbund = []\n", "policy.web.outbund"),
        ('[policy.web]\nuids = [1]\n"odd key" = 1\n', 'policy.web."odd key"'),
    ],
)
def test_unknown_key_names_file_and_key(text: str, key: str) -> None:
    """An unknown key at any level is reported with its file and full key path."""
    p = one_problem(doc("/etc/fenced/fenced.toml", text))
    assert (p.file, p.key) == ("/etc/fenced/fenced.toml", key)
    assert "unknown key" in p.reason


def test_unknown_key_suggests_close_match() -> None:
    """A misspelt key gets a did-you-mean hint."""
    p = one_problem(doc("m.toml", "[policy.web]\nuids = [1]\noutbund = []\n"))
    assert "did you mean 'outbound'?" in p.reason


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("daemon = 1\n", "daemon", "expected a table, got an integer"),
        ("[daemon]\nlisten = 9100\n", "daemon.listen", "expected a string"),
        ("[daemon]\nmin_ttl = true\n", "daemon.min_ttl", "expected an integer, got a boolean"),
        ("[daemon]\nmin_ttl = 5.0\n", "daemon.min_ttl", "expected an integer, got a float"),
        ("[daemon]\nmin_ttl = '5'\n", "daemon.min_ttl", "expected an integer, got a string"),
        ("[daemon]\ngrace = 1979-05-27\n", "daemon.grace", "got a date"),
        ("[daemon]\nresolvers = '192.0.2.1'\n", "daemon.resolvers", "expected an array"),
        ("[daemon]\nresolvers = [1]\n", "daemon.resolvers[0]", "expected a string"),
        ("[daemon]\non_exit = true\n", "daemon.on_exit", "expected a string"),
        ("policy = []\n", "policy", "expected a table, got an array"),
        ("[policy]\nweb = 'x'\n", "policy.web", "expected a table, got a string"),
        ("[policy.web]\nuids = 'www-data'\n", "policy.web.uids", "expected an array"),
        ("[policy.web]\nuids = [true]\n", "policy.web.uids[0]", "got a boolean"),
        ("[policy.web]\nuids = [1.5]\n", "policy.web.uids[0]", "got a float"),
        ("[policy.web]\ngids = [[1]]\n", "policy.web.gids[0]", "got an array"),
        ("[policy.web]\nuids = ['4242']\n", "policy.web.uids[0]", "as integers, not strings"),
        ("[policy.web]\ncgroups = [1]\n", "policy.web.cgroups[0]", "expected a string"),
        ("[policy.web]\nuids = [1]\nmode = 1\n", "policy.web.mode", "expected a string"),
        ("[policy.web]\nuids = [1]\nloopback = 'true'\n", "policy.web.loopback", "true or false"),
        ("[policy.web]\nuids = [1]\nloopback = 1\n", "policy.web.loopback", "true or false"),
        (
            "[policy.web]\nuids = [1]\nallow_private = 0\n",
            "policy.web.allow_private",
            "true or false",
        ),
        ("[policy.web]\nuids = [1]\noutbound = 'a.example'\n", "policy.web.outbound", "array"),
        ("[policy.web]\nuids = [1]\noutbound = [443]\n", "policy.web.outbound[0]", "a string"),
        ("[policy.web]\nuids = [1]\ninbound = [8080]\n", "policy.web.inbound[0]", '"8080"'),
    ],
)
def test_wrong_types(text: str, key: str, reason: str) -> None:
    """A value of the wrong TOML type is reported at its key with what was expected."""
    found = problems(doc("m.toml", text))
    assert any(p.key == key and reason in p.reason for p in found), found


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("listen = '127.0.0.1'", "daemon.listen", "HOST:PORT"),
        ("listen = '[::1]:0'", "daemon.listen", "out of range"),
        ("table = '1abc'", "daemon.table", "bad nft table name"),
        ("table = 'a-b'", "daemon.table", "bad nft table name"),
        ("table = 'abc\\n'", "daemon.table", "bad nft table name"),
        ("table = '" + "a" * 33 + "'", "daemon.table", "bad nft table name"),
        ("resolvers = []", "daemon.resolvers", "at least one"),
        ("resolvers = ['dns.example']", "daemon.resolvers[0]", "not an IP address"),
        ("resolvers = ['fe80::1%eth0']", "daemon.resolvers[0]", "scoped"),
        ("min_ttl = 0", "daemon.min_ttl", "between 1 and"),
        ("max_ttl = 4\nmin_ttl = 5", "daemon.max_ttl", "at least min_ttl (5)"),
        ("max_ttl = 3", "daemon.max_ttl", "at least min_ttl (5)"),
        ("grace = -1", "daemon.grace", "between 0 and"),
        ("stale = -1", "daemon.stale", "between 0 and"),
        ("stale = 9223372036854775807", "daemon.stale", "between 0 and 2147483647"),
        ("max_ips_per_name = 0", "daemon.max_ips_per_name", "between 1 and 10000"),
        ("max_ips_per_name = 10001", "daemon.max_ips_per_name", "between 1 and 10000"),
        ("on_exit = 'flush'", "daemon.on_exit", "'keep' or 'remove'"),
    ],
)
def test_bad_daemon_values(text: str, key: str, reason: str) -> None:
    """Out-of-range or malformed daemon values are reported at their key."""
    p = one_problem(doc("m.toml", "[daemon]\n" + text + "\n" + MINIMAL))
    assert p.key == key
    assert reason in p.reason


def test_daemon_edge_values_accepted() -> None:
    """Boundary values and an empty listen (HTTP off) are accepted."""
    config = parse(
        doc(
            "m.toml",
            "[daemon]\nlisten = ''\ntable = 'T_1'\nresolvers = ['2001:db8::53', '192.0.2.1',"
            " '192.0.2.1']\nmin_ttl = 1\nmax_ttl = 1\ngrace = 0\nstale = 0\n"
            "max_ips_per_name = 10000\non_exit = 'remove'\n" + MINIMAL,
        )
    )
    d = config.daemon
    assert d.listen == ""
    assert d.table == "T_1"
    assert d.resolvers == (
        ipaddress.ip_address("2001:db8::53"),
        ipaddress.ip_address("192.0.2.1"),
    )
    assert (d.min_ttl, d.max_ttl, d.grace, d.stale) == (1, 1, 0, 0)
    assert (d.max_ips_per_name, d.on_exit) == (10000, "remove")


@pytest.mark.parametrize("level", ["debug", "info", "warning", "error"])
def test_log_level_values_accepted(level: str) -> None:
    """Each documented daemon.log_level value is taken as is; absent, it is info."""
    config = parse(doc("m.toml", f"[daemon]\nlog_level = '{level}'\n" + MINIMAL))
    assert config.daemon.log_level == level
    assert parse(doc("m.toml", MINIMAL)).daemon.log_level == "info"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("'verbose'", "must be 'debug' or 'info' or 'warning' or 'error', got 'verbose'"),
        ("'INFO'", "got 'INFO'"),
        ("2", "expected a string, got an integer (2)"),
    ],
)
def test_bad_log_level_names_file_key_and_reason(tmp_path: Path, value: str, reason: str) -> None:
    """A bad daemon.log_level is a config error naming the file, the key and why."""
    main = tmp_path / "fenced.toml"
    main.write_text(f"[daemon]\nresolvers = ['192.0.2.53']\nlog_level = {value}\n" + MINIMAL)
    with pytest.raises(ConfigError) as info:
        load(main, lookup_user=lookup_user, lookup_group=lookup_group)
    (p,) = info.value.problems
    assert (p.file, p.key) == (str(main), "daemon.log_level")
    assert reason in p.reason
    assert str(p).startswith(f"{main}: daemon.log_level: ")


@pytest.mark.parametrize(
    ("text", "domain"),
    [
        ("*.example.com", "*.example.com"),
        ("*.Raw.GitHubUserContent.COM.", "*.raw.githubusercontent.com"),
        ("*.example.com:443/tcp", "*.example.com"),
        ("*.a_b.example", "*.a_b.example"),
    ],
)
def test_outbound_wildcard_good(text: str, domain: str) -> None:
    """A wildcard entry parses to a Target whose domain keeps the '*.' prefix."""
    target = parse_outbound(text)
    assert target.domain == domain
    assert target.wildcard is True
    assert target.network is None


def test_wildcards_are_kept_apart_from_domains() -> None:
    """Policy.domains lists exact names only; Policy.wildcards lists the wildcards."""
    config = parse(
        doc(
            "m.toml",
            MINIMAL + "outbound = ['*.b.example:443', 'a.example', '*.b.example', '192.0.2.1']\n",
        )
    )
    web = config.policy("web")
    assert web.domains == ("a.example",)
    assert web.wildcards == ("*.b.example",)
    assert [t.wildcard for t in web.outbound] == [True, False, True, False]


def test_dns_and_deny_response_keys() -> None:
    """dns and deny_response take their documented values and refuse others."""
    web = parse(doc("m.toml", MINIMAL + "dns = 'direct'\ndeny_response = 'refused'\n")).policy(
        "web"
    )
    assert (web.dns, web.deny_response) == ("direct", "refused")
    p = one_problem(doc("m.toml", MINIMAL + "dns = 'proxy'\n"))
    assert (p.key, p.reason) == ("policy.web.dns", "must be 'gateway' or 'direct', got 'proxy'")
    p = one_problem(doc("m.toml", MINIMAL + "deny_response = 'drop'\n"))
    assert (p.key, p.reason) == (
        "policy.web.deny_response",
        "must be 'nxdomain' or 'refused', got 'drop'",
    )
    p = one_problem(doc("m.toml", MINIMAL + "dns = true\n"))
    assert p.key == "policy.web.dns"
    assert "expected a string" in p.reason


def test_wildcard_needs_gateway() -> None:
    """A wildcard entry in a dns = "direct" policy is an error naming the entry."""
    p = one_problem(
        doc("m.toml", MINIMAL + "dns = 'direct'\noutbound = ['a.example', '*.b.example:443']\n")
    )
    assert p.key == "policy.web.outbound[1]"
    assert 'wildcards need dns = "gateway"' in p.reason
    gateway = parse(doc("m.toml", MINIMAL + "outbound = ['*.b.example:443']\n"))
    assert gateway.policy("web").dns == "gateway"


def test_bad_mode() -> None:
    """A mode other than enforce or audit is refused; audit is accepted."""
    p = one_problem(doc("m.toml", "[policy.web]\nuids = [1]\nmode = 'log'\n"))
    assert (p.key, p.reason) == ("policy.web.mode", "must be 'enforce' or 'audit', got 'log'")
    assert parse(doc("m.toml", MINIMAL + "mode = 'audit'\n")).policy("web").mode == "audit"


@pytest.mark.parametrize("name", ["Web", "1web", "web-app", "a" * 25, "", "wéb", "web\n"])
def test_bad_policy_name(name: str) -> None:
    """A policy name that cannot be used in nft names is refused."""
    found = problems(("m.toml", {"policy": {name: {"uids": [1]}}}))
    assert len(found) == 1
    assert "bad policy name" in found[0].reason
    assert found[0].key.startswith("policy.")


def test_longest_policy_name_accepted() -> None:
    """A 24-character policy name with digits and underscores is fine."""
    name = "a_" + "1" * 22
    assert parse(("m.toml", {"policy": {name: {"uids": [1]}}})).policies[0].name == name


# --------------------------------------------------------------------------- subjects


def test_policy_without_subjects() -> None:
    """A policy with no uids, gids or cgroups (absent or empty) confines nothing: error."""
    for body in ("outbound = ['a.example']", "uids = []\ngids = []\ncgroups = []"):
        p = one_problem(doc("m.toml", "[policy.web]\n" + body + "\n"))
        assert p.key == "policy.web"
        assert "policy confines nothing" in p.reason


def test_same_uid_in_two_policies() -> None:
    """A uid in two policies is an error naming both policies, even given once by name."""
    p = one_problem(
        doc("m.toml", "[policy.api]\nuids = [33]\n"),
        doc("d/web.toml", '[policy.web]\nuids = [1, "www-data"]\n'),
    )
    assert (p.file, p.key) == ("d/web.toml", "policy.web.uids[1]")
    assert "'api'" in p.reason
    assert "'web'" in p.reason
    assert "m.toml" in p.reason


def test_same_gid_and_cgroup_in_two_policies() -> None:
    """A gid or a cgroup (after normalization) in two policies is an error each."""
    found = problems(
        doc(
            "m.toml",
            '[policy.a]\ngids = ["web"]\ncgroups = ["x.slice/y"]\n'
            '[policy.b]\ngids = [50]\ncgroups = ["/x.slice/y/"]\n',
        )
    )
    assert [(p.key, "'a'" in p.reason) for p in found] == [
        ("policy.b.gids[0]", True),
        ("policy.b.cgroups[0]", True),
    ]


def test_nested_cgroups_in_two_policies_are_allowed() -> None:
    """A cgroup and its child in different policies is fine (both apply)."""
    config = parse(
        doc("m.toml", '[policy.a]\ncgroups = ["x.slice"]\n[policy.b]\ncgroups = ["x.slice/y"]\n')
    )
    assert [p.cgroups for p in config.policies] == [("x.slice",), ("x.slice/y",)]


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("0", "uid 0 would confine the kernel's own root-owned sockets"),
        ('"root"', "uid 0 (user 'root') would confine the kernel's own root-owned sockets"),
        ("-1", "between 1 and 4294967294"),
        ("4294967295", "between 1 and 4294967294"),
        ('"nobody2"', "no such user 'nobody2'"),
        ('""', "empty user name"),
        ('"a b"', "whitespace"),
    ],
)
def test_bad_uids(entry: str, reason: str) -> None:
    """Bad uid entries (root, out of range, unknown names) are refused with a reason."""
    p = one_problem(doc("m.toml", f"[policy.web]\nuids = [7, {entry}]\n"))
    assert p.key == "policy.web.uids[1]"
    assert reason in p.reason


def test_bad_gids() -> None:
    """gid 0 and unknown group names are refused; the highest valid gid is fine."""
    found = problems(doc("m.toml", '[policy.web]\ngids = [0, "nogroup2", "root"]\n'))
    assert [(p.key, p.reason) for p in found] == [
        ("policy.web.gids[0]", "gid 0 would confine the kernel's own root-owned sockets"),
        ("policy.web.gids[1]", "no such group 'nogroup2'"),
        (
            "policy.web.gids[2]",
            "gid 0 (group 'root') would confine the kernel's own root-owned sockets",
        ),
    ]
    assert parse(doc("m.toml", "[policy.web]\ngids = [4294967294]\n")).policies[0].gids == (
        4294967294,
    )


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("", "empty cgroup path"),
        ("/", "empty cgroup path"),
        ("a//b", "'//'"),
        (".", "'.' and '..'"),
        ("a/../b", "'.' and '..'"),
        ("a/./b", "'.' and '..'"),
        ("a b", "whitespace"),
        ("a\tb", "whitespace"),
        ("a\x00b", "control"),
        ("/sys/fs/cgroup/system.slice/web.service", "relative to the cgroup2 mount"),
        ("/sys/fs/cgroup", "relative to the cgroup2 mount"),
    ],
)
def test_bad_cgroup_paths(path: str, reason: str) -> None:
    """Bad cgroup paths are refused at their index with a reason."""
    found = problems(("m.toml", {"policy": {"web": {"uids": [1], "cgroups": ["ok", path]}}}))
    assert len(found) == 1
    assert found[0].key == "policy.web.cgroups[1]"
    assert reason in found[0].reason


def test_cgroup_mount_hint_gives_relative_path() -> None:
    """An absolute /sys/fs/cgroup path error suggests the relative path."""
    p = one_problem(("m.toml", {"policy": {"web": {"cgroups": ["/sys/fs/cgroup/a.slice/b"]}}}))
    assert "'a.slice/b'" in p.reason


def test_cgroup_paths_are_normalized() -> None:
    """Leading and trailing slashes are stripped from cgroup paths."""
    config = parse(("m.toml", {"policy": {"web": {"cgroups": ["/system.slice/web.service/"]}}}))
    assert config.policy("web").cgroups == ("system.slice/web.service",)


# --------------------------------------------------------------------------- drop-ins


def test_policy_defined_twice_names_both_files() -> None:
    """The same policy in the main file and a drop-in is an error naming both files."""
    p = one_problem(
        doc("/etc/fenced/fenced.toml", MINIMAL),
        doc("/etc/fenced/fenced.d/10-web.toml", "[policy.web]\nuids = [5]\n"),
    )
    assert p.file == "/etc/fenced/fenced.d/10-web.toml"
    assert p.key == "policy.web"
    assert "/etc/fenced/fenced.toml" in p.reason
    assert "defined twice" in p.reason


def test_policy_defined_twice_in_one_file_is_a_toml_error(tmp_path: Path) -> None:
    """Two [policy.web] tables in one file are reported (tomllib refuses them) with the line."""
    main = tmp_path / "fenced.toml"
    main.write_text(MINIMAL + "[policy.web]\ngids = [5]\n")
    with pytest.raises(ConfigError) as info:
        load(main, lookup_user=lookup_user, lookup_group=lookup_group)
    (p,) = info.value.problems
    assert p.file == str(main)
    assert "line 4" in p.reason


def test_daemon_in_dropin_is_an_error() -> None:
    """A [daemon] table in a drop-in is an error naming the drop-in."""
    p = one_problem(
        doc("main.toml", MINIMAL),
        doc("d/x.toml", "[daemon]\ngrace = 1\n"),
    )
    assert (p.file, p.key) == ("d/x.toml", "daemon")
    assert "only in the main file" in p.reason


def write(path: Path, text: str) -> Path:
    """Write text to path (making folders) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def load_with_fakes(path: Path, resolvers: Sequence[str] = ("192.0.2.53",)) -> Config:
    """load() with the fake look-ups."""
    return load(
        path,
        lookup_user=lookup_user,
        lookup_group=lookup_group,
        default_resolvers=lambda: list(resolvers),
    )


def test_load_reads_dropins_in_name_order(tmp_path: Path) -> None:
    """load() reads fenced.d/*.toml sorted by name, ignores other files, lists all files."""
    main = write(tmp_path / "fenced.toml", "[daemon]\ngrace = 7\n")
    write(tmp_path / "fenced.d" / "20-b.toml", "[policy.b]\nuids = [2]\n")
    write(tmp_path / "fenced.d" / "10-a.toml", "[policy.a]\nuids = [1]\n")
    write(tmp_path / "fenced.d" / "README", "not toml at all [")
    write(tmp_path / "fenced.d" / "30-c.toml.disabled", "not toml at all [")
    config = load_with_fakes(main)
    assert config.files == (
        str(main),
        str(tmp_path / "fenced.d" / "10-a.toml"),
        str(tmp_path / "fenced.d" / "20-b.toml"),
    )
    assert config.daemon.grace == 7
    assert [p.name for p in config.policies] == ["a", "b"]


def test_dropin_order_decides_which_duplicate_is_blamed(tmp_path: Path) -> None:
    """Of two drop-ins defining one policy, the later by name is reported."""
    main = write(tmp_path / "fenced.toml", "")
    write(tmp_path / "fenced.d" / "b.toml", "[policy.web]\nuids = [2]\n")
    write(tmp_path / "fenced.d" / "a.toml", "[policy.web]\nuids = [1]\n")
    with pytest.raises(ConfigError) as info:
        load_with_fakes(main)
    (p,) = info.value.problems
    assert p.file == str(tmp_path / "fenced.d" / "b.toml")
    assert str(tmp_path / "fenced.d" / "a.toml") in p.reason


def test_load_without_dropin_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing fenced.d folder is fine; a relative main path works and is kept as given."""
    write(tmp_path / "main.toml", MINIMAL)
    monkeypatch.chdir(tmp_path)
    config = load_with_fakes(Path("main.toml"))
    assert config.files == ("main.toml",)
    assert config.policy("web").uids == (4242,)


def test_load_relative_path_finds_dropins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A main path without a folder part finds fenced.d in the current folder."""
    write(tmp_path / "main.toml", MINIMAL)
    write(tmp_path / "fenced.d" / "a.toml", "[policy.a]\nuids = [1]\n")
    monkeypatch.chdir(tmp_path)
    config = load_with_fakes(Path("main.toml"))
    assert config.files == ("main.toml", "fenced.d/a.toml")


def test_load_missing_main_file(tmp_path: Path) -> None:
    """A missing main file raises ConfigError naming the file and the OS reason."""
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_with_fakes(missing)
    (p,) = info.value.problems
    assert p.file == str(missing)
    assert "No such file or directory" in p.reason


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    """A file that is not TOML is reported with line and column; other files are still checked."""
    main = write(tmp_path / "fenced.toml", MINIMAL)
    bad = write(tmp_path / "fenced.d" / "a.toml", "[policy.x]\nuids = = 1\n")
    other = write(tmp_path / "fenced.d" / "b.toml", "[policy.y]\nuids = [0]\n")
    (tmp_path / "fenced.d" / "c.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError) as info:
        load_with_fakes(main)
    found = info.value.problems
    assert [p.file for p in found] == [str(bad), str(other), str(tmp_path / "fenced.d" / "c.toml")]
    assert found[0].key == ""
    assert found[0].reason.startswith("not valid TOML: ")
    assert re.search(r"line \d+, column \d+", found[0].reason)
    assert found[1].key == "policy.y.uids[0]"
    assert "UTF-8" in found[2].reason


def test_broken_main_file_still_checks_dropins(tmp_path: Path) -> None:
    """A main file that is not TOML does not hide drop-in problems or invent daemon ones."""
    main = write(tmp_path / "fenced.toml", "[daemon\n")
    write(tmp_path / "fenced.d" / "a.toml", "[daemon]\n[policy.b]\nuids = [1]\n")
    with pytest.raises(ConfigError) as info:
        load_with_fakes(main, resolvers=[])
    assert [(p.file, p.key) for p in info.value.problems] == [
        (str(main), ""),
        (str(tmp_path / "fenced.d" / "a.toml"), "daemon"),
    ]


def test_unreadable_dropin_is_reported(tmp_path: Path) -> None:
    """A drop-in that cannot be read (here: a folder) is a problem naming it."""
    main = write(tmp_path / "fenced.toml", MINIMAL)
    (tmp_path / "fenced.d" / "dir.toml").mkdir(parents=True)
    with pytest.raises(ConfigError) as info:
        load_with_fakes(main)
    (p,) = info.value.problems
    assert p.file == str(tmp_path / "fenced.d" / "dir.toml")
    assert p.reason.startswith("cannot read: ")


# --------------------------------------------------------------------------- resolvers


def test_default_resolvers_used_only_when_unset() -> None:
    """default_resolvers() fills daemon.resolvers only when the key is absent."""
    calls: list[int] = []

    def default() -> list[str]:
        calls.append(1)
        return ["fe80::1%eth0", "bogus", "192.0.2.9", "192.0.2.9"]

    config = parse_documents(
        [doc("m.toml", MINIMAL)],
        lookup_user=lookup_user,
        lookup_group=lookup_group,
        default_resolvers=default,
    )
    assert config.daemon.resolvers == (ipaddress.ip_address("192.0.2.9"),)
    assert calls == [1]
    config = parse_documents(
        [doc("m.toml", "[daemon]\nresolvers = ['192.0.2.1']\n" + MINIMAL)],
        lookup_user=lookup_user,
        lookup_group=lookup_group,
        default_resolvers=default,
    )
    assert config.daemon.resolvers == (ipaddress.ip_address("192.0.2.1"),)
    assert calls == [1]


@pytest.mark.parametrize("defaults", [[], ["fe80::53%eth0", "not-an-ip"]])
def test_no_usable_default_resolvers(defaults: list[str]) -> None:
    """Without resolvers and without usable defaults, daemon.resolvers is a problem."""
    p = one_problem(doc("m.toml", MINIMAL), resolvers=defaults)
    assert (p.file, p.key) == ("m.toml", "daemon.resolvers")
    assert p.reason == "not set and /etc/resolv.conf has no nameserver"


def test_resolv_conf_nameservers() -> None:
    """resolv.conf parsing keeps nameserver addresses in order and skips the rest."""
    text = """
# comment
; nameserver 192.0.2.99
search example.com
nameserver 192.0.2.1
nameserver   2001:db8::53   # trailing
nameserver fe80::1%eth0
nameserver not-an-address
nameserver
options edns0
nameserver 192.0.2.1
nameserver 2001:DB8:0::54
"""
    assert resolv_conf_nameservers(text) == ["192.0.2.1", "2001:db8::53", "2001:db8::54"]
    assert resolv_conf_nameservers("") == []


# --------------------------------------------------------------------------- many problems


def test_several_problems_reported_together() -> None:
    """Problems from every file and key come back in one ConfigError."""
    found = problems(
        doc(
            "main.toml",
            "bogus = 1\n[daemon]\nmin_ttl = 0\non_exit = 'x'\n"
            "[policy.web]\nuids = ['nobody2']\noutbound = ['*.com', 'ok.example']\n"
            "inbound = ['80/icmp']\n",
        ),
        doc("d/a.toml", "[daemon]\n[policy.Bad]\nuids = [1]\n[policy.web]\nuids = [1]\n"),
        resolvers=[],
    )
    assert [(p.file, p.key) for p in found] == [
        ("main.toml", "daemon.resolvers"),
        ("main.toml", "daemon.min_ttl"),
        ("main.toml", "daemon.on_exit"),
        ("main.toml", "bogus"),
        ("main.toml", "policy.web.uids[0]"),
        ("main.toml", "policy.web.outbound[0]"),
        ("main.toml", "policy.web.inbound[0]"),
        ("d/a.toml", "daemon"),
        ("d/a.toml", "policy.Bad"),
        ("d/a.toml", "policy.web"),
    ]
    message = str(ConfigError(found))
    assert "main.toml: policy.web.uids[0]: no such user 'nobody2'" in message


def test_parse_documents_needs_a_document() -> None:
    """parse_documents refuses an empty list of documents (a programming error)."""
    with pytest.raises(ValueError, match="at least"):
        parse()


# --------------------------------------------------------------------------- fuzzing

ENTRY_FRAGMENTS = [
    "example.com",
    "example.com:443",
    "*.example.com",
    "[2001:db8::1]:443",
    "2001:db8::/32/tcp",
    "198.51.100.0/24:22/tcp",
    "198.51.100.1/24",
    "8080",
    "9000-9010/udp",
    "80/icmp",
    "x/icmp",
    "[",
    "]",
    ":",
    "/",
    "::",
    "0",
    "65536",
    "1-2,3",
    "fe80::1%eth0",
    "/sys/fs/cgroup/x",
    "a//b",
    "..",
    "system.slice/web.service",
]

entries = st.one_of(
    st.sampled_from(ENTRY_FRAGMENTS),
    st.lists(st.sampled_from(ENTRY_FRAGMENTS), min_size=1, max_size=3).map("".join),
    st.text(alphabet="abcz019.:/[]-,*%_ tcpudpicm\x00é", max_size=12),
)
ODD_SCALARS: list[object] = [
    0,
    -1,
    2**63 - 1,
    -(2**63),
    2**32 - 1,
    True,
    False,
    1.5,
    float("nan"),
    float("inf"),
    date(1979, 5, 27),
    datetime(1979, 5, 27, 7, 32),
    time(7, 32),
    "",
    "www-data",
    "root",
    "nobody2",
    "4242",
]
ids = st.one_of(
    st.sampled_from([1, 33, 4242, 2**32 - 2, "www-data", "web", "alice"]),
    st.sampled_from(ODD_SCALARS),
)
scalars = st.one_of(entries, st.integers(), st.sampled_from(ODD_SCALARS))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["a", "uids", "policy", ""]), inner, max_size=2),
    ),
    max_leaves=4,
)
# Each known key gets a mostly well-typed value, sometimes anything at all, so that both
# valid configurations and every kind of problem come out.
policy_fields = {
    "uids": st.lists(ids, max_size=3),
    "gids": st.lists(ids, max_size=2),
    "cgroups": st.lists(st.one_of(st.sampled_from(ENTRY_FRAGMENTS), scalars), max_size=2),
    "mode": st.sampled_from(["enforce", "audit", "log", 1]),
    "outbound": st.lists(entries, max_size=4),
    "inbound": st.lists(st.one_of(entries, st.integers(0, 70000)), max_size=3),
    "loopback": st.sampled_from([True, False, "true", 1]),
    "allow_private": st.sampled_from([True, False, 0]),
}
daemon_fields = {
    "listen": st.sampled_from(["", "127.0.0.1:9100", "[::1]:1", "::1:80", "x", 9100]),
    "table": st.sampled_from(["fenced", "T_1", "1x", "", "a" * 33, True]),
    "resolvers": st.lists(st.sampled_from(["192.0.2.1", "::1", "fe80::1%e", "x", 5]), max_size=3),
    "min_ttl": st.integers(-2, 4000),
    "max_ttl": st.integers(-2, 4000),
    "grace": st.integers(-1, 2**40),
    "stale": st.sampled_from(ODD_SCALARS),
    "max_ips_per_name": st.integers(0, 10001),
    "on_exit": st.sampled_from(["keep", "remove", "x", None]),
}


def table_of(fields: dict[str, st.SearchStrategy[object]]) -> st.SearchStrategy[object]:
    """Tables with some of ``fields`` (each maybe replaced by any value) and maybe a stray key."""
    return st.fixed_dictionaries(
        {},
        optional={
            **{k: st.one_of(v, v, v, values) for k, v in fields.items()},
            "bogus": values,
        },
    ).map(lambda d: {k: v for k, v in d.items() if v is not None})


policy_names = st.sampled_from(["web", "api", "db", "Bad", "a" * 25, "", "x y"])
documents = st.fixed_dictionaries(
    {},
    optional={
        "daemon": st.one_of(table_of(daemon_fields), values),
        "policy": st.one_of(
            st.dictionaries(policy_names, st.one_of(table_of(policy_fields), values), max_size=2),
            values,
        ),
        "other": values,
    },
)


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    docs=st.lists(documents, min_size=1, max_size=2),
    defaults=st.lists(st.sampled_from(["192.0.2.53", "fe80::1%eth0", "x", "::1"]), max_size=2),
)
def test_fuzz_only_config_or_config_error(
    docs: list[dict[str, object]], defaults: list[str]
) -> None:
    """Random TOML-shaped documents yield a Config or a ConfigError, never another exception."""
    paths = [f"f{i}.toml" for i in range(len(docs))]
    resolvers: Callable[[], Sequence[str]] = lambda: defaults  # noqa: E731
    try:
        config = parse_documents(
            list(zip(paths, docs, strict=True)),
            lookup_user=lookup_user,
            lookup_group=lookup_group,
            default_resolvers=resolvers,
        )
    except ConfigError as e:
        assert e.problems
        assert all(p.file in paths and p.reason for p in e.problems)
        return
    assert config.files == tuple(paths)
    assert config.daemon.resolvers
    names = [p.name for p in config.policies]
    assert names == sorted(set(names))
    for policy in config.policies:
        assert re.fullmatch(r"[a-z][a-z0-9_]{0,23}", policy.name)
        assert policy.uids or policy.gids or policy.cgroups
        assert 0 not in policy.uids
        assert 0 not in policy.gids
