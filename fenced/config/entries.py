"""The grammar of the text values in a policy file: pure parsers into model values.

Each parser takes one string as written by an operator (an ``outbound`` or ``inbound``
entry, ``daemon.listen``, a resolver address, a source network, an interface name or a
cgroup path) and returns the value it means, or raises ``ValueError`` with a reason meant
for that operator. Nothing here touches the system: :mod:`fenced.config.schema` calls
these parsers on TOML values and attaches file and key to the reasons.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Final

from fenced.core.model import (
    DEFAULT_PROTOS,
    IPAddress,
    IPNetwork,
    Listen,
    PortRange,
    PortSpec,
    Proto,
    Target,
)

__all__ = [
    "normalize_cgroup",
    "parse_inbound",
    "parse_interface",
    "parse_listen",
    "parse_outbound",
    "parse_resolver",
    "parse_source",
]

_LABEL_RE: Final = re.compile(r"[a-z0-9_-]{1,63}")
_PORT_ITEM_RE: Final = re.compile(r"([0-9]+)(?:-([0-9]+))?")
_PREFIX_RE: Final = re.compile(r"[0-9]{1,3}")

_CGROUP_MOUNT: Final = "/sys/fs/cgroup"

_OUTBOUND_PROTOS: Final[dict[str, Proto]] = {"tcp": "tcp", "udp": "udp", "icmp": "icmp"}
_INBOUND_PROTOS: Final[dict[str, Proto]] = {"tcp": "tcp", "udp": "udp"}


# --------------------------------------------------------------------------- subjects and resolvers

_IFNAME_RE: Final = re.compile(r"[A-Za-z0-9_.:@+-]{1,15}")


def parse_interface(text: str) -> str:
    """A network interface name as the kernel allows it (1-15 characters, no / or space).

    Returns ``text`` unchanged.
    """
    if not _IFNAME_RE.fullmatch(text) or text in (".", ".."):
        raise ValueError(
            f"bad interface name {text!r}: 1-15 characters, letters, digits and _.:@+- only"
        )
    return text


def parse_source(text: str) -> IPNetwork:
    """A source network (``203.0.113.0/24``, ``2001:db8::/64``, or one address).

    One address becomes a /32 or /128; a network with host bits set is refused, naming
    the network it would be without them.
    """
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        if "has host bits set" in str(e):
            loose = ipaddress.ip_network(text, strict=False)
            raise ValueError(f"{text} has host bits set; did you mean {loose}?") from None
        raise ValueError(f"bad source network {text!r}: {e}") from None
    return net


def parse_resolver(text: str) -> IPAddress:
    """A resolver address (``daemon.resolvers``): one IPv4 or IPv6 address, no ``%scope``."""
    if "%" in text:
        raise ValueError("scoped IPv6 addresses (with %interface) are not supported")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None


def normalize_cgroup(text: str) -> str:
    """A cgroup path relative to the cgroup2 mount, without leading or trailing ``/``.

    ``web.service`` and ``/system.slice/web.service/`` are accepted; the mount's own path
    (``/sys/fs/cgroup/...``), the root cgroup, ``//``, ``.``/``..`` and whitespace are
    refused.
    """
    if text == _CGROUP_MOUNT or text.startswith(_CGROUP_MOUNT + "/"):
        example = text[len(_CGROUP_MOUNT) :].strip("/") or "system.slice/web.service"
        raise ValueError(
            f"give the path relative to the cgroup2 mount ({_CGROUP_MOUNT}), e.g. {example!r}"
        )
    if any(c.isspace() or not c.isprintable() for c in text):
        raise ValueError("cgroup path must not contain whitespace or control characters")
    path = text.strip("/")
    if not path:
        raise ValueError("empty cgroup path (the root cgroup cannot be confined)")
    parts = path.split("/")
    if "" in parts:
        raise ValueError(f"{text!r} contains '//'")
    if "." in parts or ".." in parts:
        raise ValueError(f"{text!r}: '.' and '..' are not allowed in cgroup paths")
    return path


# --------------------------------------------------------------------------- entries


def parse_outbound(text: str) -> Target:
    """Parse one ``outbound`` entry, ``HOST[:PORTS][/PROTO]``, into a :class:`Target`.

    HOST is a domain name, an IPv4 address or network (``198.51.100.0/24``), or an IPv6
    address or network in brackets (``[2001:db8::1]``, ``[2001:db8::/32]``); a bare IPv6
    address or network is accepted only without PORTS. A single address becomes a /32
    or /128 network; a network with host bits set is refused. Domains are lower-cased and
    lose one trailing dot. A domain may be a wildcard, ``*.example.com``: ``*`` only as
    the whole first label, followed by at least two labels (``*.com`` is refused: it
    would open a whole top-level domain); whether the policy may use one (it needs
    ``dns = "gateway"``) is checked by :func:`fenced.config.schema.parse_documents`.

    PORTS is a comma list of ``N`` or ``N-M`` (1-65535), returned sorted and merged; no
    PORTS means every port (``ports == ()``). PROTO is ``tcp``, ``udp`` or ``icmp``; no
    PROTO means :data:`~fenced.core.model.DEFAULT_PROTOS` (``("tcp", "udp")``). ``icmp`` takes
    no ports and covers ICMP and ICMPv6.

    ``Target.text`` is ``text`` unchanged. Raises ``ValueError`` with the reason when the
    entry is malformed.
    """
    _check_chars(text)
    rest, proto = _split_proto(text, _OUTBOUND_PROTOS, "tcp, udp or icmp")
    domain: str | None = None
    network: IPNetwork | None = None
    ports_text: str | None = None
    if rest.startswith("["):
        close = rest.find("]")
        if close < 0:
            raise ValueError("'[' without a matching ']'")
        inner, after = rest[1:close], rest[close + 1 :]
        if ":" not in inner:
            raise ValueError(
                f"brackets are only for IPv6 addresses; write {inner}{after} without them"
            )
        network = _parse_ipv6(inner)
        if after.startswith(":"):
            ports_text = after[1:]
        elif after:
            raise ValueError(f"unexpected {after!r} after ']'; expected ':PORTS' or '/PROTO'")
    elif rest.count(":") >= 2:
        if "%" in rest:
            raise ValueError("scoped IPv6 addresses (with %interface) are not supported")
        try:
            network = _parse_ipv6(rest)
        except ValueError as e:
            raise ValueError(
                f"{e}; to give ports with an IPv6 address put it in brackets, "
                "e.g. [2001:db8::1]:443"
            ) from None
    else:
        host, sep, port_part = rest.partition(":")
        if sep:
            ports_text = port_part
        if not host:
            raise ValueError("missing host (a domain name or an IP address)")
        if "/" in host:
            network = _parse_ipv4_network(host)
        else:
            try:
                network = ipaddress.IPv4Network(ipaddress.IPv4Address(host))
            except ValueError:
                domain = _parse_domain(host, wildcard=True)
    ports = _parse_ports(ports_text) if ports_text is not None else ()
    protos: tuple[Proto, ...] = (proto,) if proto is not None else tuple(sorted(DEFAULT_PROTOS))
    if "icmp" in protos and ports:
        raise ValueError("icmp has no ports; drop the ':PORTS' part or use /tcp or /udp")
    return Target(
        text=text, spec=PortSpec(protos=protos, ports=ports), domain=domain, network=network
    )


def parse_inbound(text: str) -> Listen:
    """Parse one ``inbound`` entry, ``PORTS[/PROTO]``, into a :class:`Listen`.

    PORTS is required (comma list of ``N`` or ``N-M``, 1-65535, returned sorted and
    merged); PROTO is ``tcp`` or ``udp``, and no PROTO means both. ``Listen.text`` is
    ``text`` unchanged. Raises ``ValueError`` with the reason when the entry is malformed.
    """
    _check_chars(text)
    rest, proto = _split_proto(text, _INBOUND_PROTOS, "tcp or udp")
    if not rest:
        raise ValueError("missing ports, e.g. 8080 or 8443/tcp")
    ports = _parse_ports(rest)
    protos: tuple[Proto, ...] = (proto,) if proto is not None else tuple(sorted(DEFAULT_PROTOS))
    return Listen(text=text, spec=PortSpec(protos=protos, ports=ports))


def parse_listen(text: str) -> tuple[str, int]:
    """Split a ``daemon.listen`` value ``HOST:PORT`` into ``(host, port)``.

    HOST is an IPv4 address, an IPv6 address in brackets (returned without them, e.g.
    ``[::1]:9100`` gives ``("::1", 9100)``) or a host name such as ``localhost``; PORT is
    1-65535. The empty string (HTTP server off) is *not* accepted here: callers test for
    it first. Raises ``ValueError`` with the reason when the value is malformed.
    """
    _check_chars(text)
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError("'[' without a matching ']'")
        host = text[1:close]
        if "%" in host:
            raise ValueError("scoped IPv6 addresses (with %interface) are not supported")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
        after = text[close + 1 :]
        if not after.startswith(":"):
            raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:9100 or [::1]:9100")
        port_text = after[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:9100 or [::1]:9100")
        if ":" in host:
            raise ValueError("put an IPv6 address in brackets, e.g. [::1]:9100")
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            _parse_domain(host)
    return host, _parse_port(port_text)


# --------------------------------------------------------------------------- small parsers


def _check_chars(text: str) -> None:
    if not text:
        raise ValueError("empty entry")
    if any(c.isspace() or not c.isprintable() for c in text):
        raise ValueError("must not contain whitespace or control characters")


def _split_proto(text: str, allowed: Mapping[str, Proto], names: str) -> tuple[str, Proto | None]:
    """Split a trailing ``/PROTO`` off ``text``.

    A tail that starts with a letter is a protocol word (``/24`` is a prefix length, and
    a ``]`` in the tail means the slash is inside brackets).
    """
    rest, sep, tail = text.rpartition("/")
    if not sep or not tail or not ("a" <= tail[0].lower() <= "z") or "]" in tail:
        return text, None
    if tail not in allowed:
        if tail == "icmp":
            raise ValueError(f"protocol must be {names} (icmp has no ports)")
        raise ValueError(f"unknown protocol {tail!r}: use {names}, or leave it out for both")
    return rest, allowed[tail]


def _parse_port(text: str) -> int:
    if not text or not text.isascii() or not text.isdigit():
        raise ValueError(f"bad port {text!r}: expected a number 1-65535")
    if len(text) > 5 or not 1 <= int(text) <= 65535:
        raise ValueError(f"port {text} is out of range 1-65535")
    return int(text)


def _parse_ports(text: str) -> tuple[PortRange, ...]:
    if not text:
        raise ValueError("empty port list; give ports like 443 or 80,8000-8100")
    ranges: list[PortRange] = []
    for item in text.split(","):
        m = _PORT_ITEM_RE.fullmatch(item)
        if m is None:
            raise ValueError(f"bad port {item!r}: expected N or N-M, e.g. 443 or 8000-8100")
        first = _parse_port(m[1])
        last = _parse_port(m[2]) if m[2] is not None else first
        if first > last:
            raise ValueError(f"port range {item} is backwards; did you mean {last}-{first}?")
        ranges.append(PortRange(first, last))
    ranges.sort()
    merged = [ranges[0]]
    for r in ranges[1:]:
        top = merged[-1]
        if r.first <= top.last + 1:
            merged[-1] = PortRange(top.first, max(top.last, r.last))
        else:
            merged.append(r)
    return tuple(merged)


def _parse_ipv4_network(text: str) -> ipaddress.IPv4Network:
    addr, _, prefix = text.partition("/")
    try:
        ipaddress.IPv4Address(addr)
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4 network like 198.51.100.0/24") from None
    if not _PREFIX_RE.fullmatch(prefix) or int(prefix) > 32:
        raise ValueError(f"bad prefix length in {text!r}: expected 0-32")
    try:
        return ipaddress.IPv4Network(text)
    except ValueError:
        fixed = ipaddress.IPv4Network(text, strict=False)
        raise ValueError(f"{text} has host bits set; did you mean {fixed}?") from None


def _parse_ipv6(text: str) -> ipaddress.IPv6Network:
    if "%" in text:
        raise ValueError("scoped IPv6 addresses (with %interface) are not supported")
    addr, slash, prefix = text.partition("/")
    try:
        ipaddress.IPv6Address(addr)
    except ValueError:
        raise ValueError(f"{addr!r} is not a valid IPv6 address") from None
    if not slash:
        return ipaddress.IPv6Network(addr)
    if not _PREFIX_RE.fullmatch(prefix) or int(prefix) > 128:
        raise ValueError(f"bad prefix length in {text!r}: expected 0-128")
    try:
        return ipaddress.IPv6Network(text)
    except ValueError:
        fixed = ipaddress.IPv6Network(text, strict=False)
        raise ValueError(f"{text} has host bits set; did you mean {fixed}?") from None


def _parse_domain(host: str, *, wildcard: bool = False) -> str:
    if host.startswith("*.") and wildcard:
        rest = host[2:]
        if "*" in rest:
            raise ValueError(f"bad wildcard {host!r}: '*' may only be the whole first label")
        name = _parse_domain(rest)
        if "." not in name:
            raise ValueError(
                f"wildcard {host!r} is too broad: give at least two labels after '*.', "
                "e.g. *.example.com"
            )
        if len(name) + 2 > 253:
            raise ValueError(
                f"host name is {len(name) + 2} characters long; at most 253 are allowed"
            )
        return "*." + name
    if "*" in host:
        if host.startswith("*.") or host == "*":
            raise ValueError(f"{host!r}: wildcards are allowed only in outbound entries")
        raise ValueError(f"bad wildcard {host!r}: '*' may only be the whole first label")
    if not host.isascii():
        raise ValueError(
            f"{host!r} is not ASCII; write internationalized names in their xn-- (punycode) form"
        )
    name = host.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise ValueError("missing host name")
    if len(name) > 253:
        raise ValueError(f"host name is {len(name)} characters long; at most 253 are allowed")
    labels = name.split(".")
    for label in labels:
        if not label:
            raise ValueError(f"{host!r} has an empty label (two dots in a row?)")
        if len(label) > 63:
            raise ValueError(f"label {label[:20]}... is longer than 63 characters")
        if not _LABEL_RE.fullmatch(label):
            raise ValueError(
                f"bad host name {host!r}: labels may only hold letters, digits, '-' and '_'"
            )
        if label.startswith("-") or label.endswith("-"):
            raise ValueError(f"bad host name {host!r}: a label may not start or end with '-'")
    if labels[-1].isdigit():
        raise ValueError(f"{host!r} is not a valid IPv4 address")
    return name
