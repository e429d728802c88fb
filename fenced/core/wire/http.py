"""Parse the head of a plaintext HTTP/1.x request: the host name it asks for.

:func:`parse_http` reads the request line and header fields up to the empty line that ends
them (RFC 9112) and returns the name in ``Host`` (port stripped, IPv6 brackets removed),
or the authority of an absolute-form or CONNECT target, which servers use instead of
``Host``. Anything two servers could read differently is declined as malformed: a second
``Host``, obsolete line folding, whitespace before a colon, a bare CR, a target authority
that disagrees with ``Host``. Never raises.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final

from fenced.core.wire.names import dns_name
from fenced.core.wire.result import Foreign, Malformed, Named, NeedMore, Unnamed, WireResult

__all__ = ["MAX_HEAD", "parse_http"]

#: The longest request head read (request line and header fields, bytes); longer is malformed.
MAX_HEAD: Final = 16384

_MAX_BLANK: Final = 8  # CR and LF bytes skipped before the request line
_METHOD_RE: Final = re.compile(rb"[A-Z]{1,16}")
_REQUEST_LINE_RE: Final = re.compile(rb"([A-Z]{1,16}) ([\x21-\x7e]+) HTTP/1\.([01])")
_FIELD_RE: Final = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*(.*?)[ \t]*")
_VALUE_BAD_RE: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_ABSOLUTE_RE: Final = re.compile(rb"[A-Za-z][A-Za-z0-9+.-]*://([^/?#]*)")
_PORT_RE: Final = re.compile(rb"[0-9]{0,5}")


def parse_http(head: bytes) -> WireResult:
    """Judge the start of a client's stream as an HTTP/1.0 or HTTP/1.1 request head.

    :class:`Foreign` when it does not begin with an upper-case method and a space (after
    at most a few CR/LF bytes, which servers skip);
    :class:`NeedMore` until the empty line ending the head is in (lines end with CRLF or
    LF); :class:`Named` with the host name; :class:`Unnamed` without one (HTTP/1.0 with no
    ``Host``, an empty ``Host``, or an IP literal, given as ``address``); :class:`Malformed`
    for a head longer than :data:`MAX_HEAD` or one that breaks the rules in the module text.
    """
    blank = len(head) - len(head.lstrip(b"\r\n"))
    if blank > _MAX_BLANK:
        return Foreign("more empty lines than a request may start with")
    if blank:  # RFC 9112 2.2: servers skip empty lines before the request line
        result = parse_http(head[blank:])
        if isinstance(result, NeedMore) and result.at_least is not None:
            return NeedMore(result.at_least + blank)
        return result
    if not head:
        return NeedMore(1)
    space = head.find(b" ", 0, 17)
    method = head[:space] if space >= 0 else head[:17]
    if not method or _METHOD_RE.fullmatch(method) is None:
        return Foreign("does not begin with an HTTP method")
    if space < 0:
        return NeedMore(len(head) + 1)
    end = _head_end(head)
    if end < 0:
        if len(head) >= MAX_HEAD:
            return Malformed(f"request head longer than {MAX_HEAD} bytes")
        return NeedMore(len(head) + 1)
    if end > MAX_HEAD:
        return Malformed(f"request head longer than {MAX_HEAD} bytes")
    text = head[:end]
    if b"\r" in text.replace(b"\r\n", b""):
        return Malformed("bare CR in the request head")
    lines = text.replace(b"\r\n", b"\n").split(b"\n")
    request = _REQUEST_LINE_RE.fullmatch(lines[0])
    if request is None:
        return Malformed("bad request line")
    hosts: list[bytes] = []
    for line in lines[1:]:
        if not line:
            break
        if line[0] in b" \t":
            return Malformed("obsolete line folding")
        field = _FIELD_RE.fullmatch(line)
        if field is None:
            return Malformed("bad header field line")
        if _VALUE_BAD_RE.search(field.group(2)):
            return Malformed("control character in a field value")
        if field.group(1).lower() == b"host":
            hosts.append(field.group(2))
    if len(hosts) > 1:
        return Malformed("more than one Host field")
    method, target, minor = request.groups()
    authority = _target_authority(method, target)
    if authority is not None and hosts and hosts[0].lower() != authority.lower():
        return Malformed("the target's authority and Host differ")
    if authority is None and not hosts:
        if minor == b"1":
            return Malformed("HTTP/1.1 request without Host")
        return Unnamed()
    return _host(authority if authority is not None else hosts[0])


def _head_end(head: bytes) -> int:
    """The length of the head through its empty line, or -1 when it is not complete."""
    crlf = head.find(b"\r\n\r\n")
    lf = head.find(b"\n\n")
    ends = [i + n for i, n in ((crlf, 4), (lf, 2)) if i >= 0]
    mixed = head.find(b"\n\r\n")
    if mixed >= 0:
        ends.append(mixed + 3)
    return min(ends) if ends else -1


def _target_authority(method: bytes, target: bytes) -> bytes | None:
    """The authority a server uses instead of ``Host`` (absolute-form, CONNECT), if any."""
    if method == b"CONNECT":
        return target
    absolute = _ABSOLUTE_RE.match(target)
    if absolute is not None:
        return absolute.group(1)
    return None


def _host(value: bytes) -> WireResult:
    """Judge a ``Host`` value (or target authority): ``host [":" port]``."""
    if not value:
        return Unnamed()
    if b"@" in value:
        return Malformed("user information in the authority")
    if value.startswith(b"["):
        close = value.find(b"]")
        literal, rest = value[1:close], value[close + 1 :]
        if close < 0 or (rest and not rest.startswith(b":")):
            return Malformed("bad IPv6 literal in Host")
        port = rest[1:] if rest else None
        try:
            address = str(ipaddress.IPv6Address(literal.decode("ascii")))
        except (ValueError, UnicodeDecodeError):
            return Malformed("bad IPv6 literal in Host")
        return _with_port(port, Unnamed(address=address))
    host, colon, port_text = value.partition(b":")
    port = port_text if colon else None
    try:
        address = str(ipaddress.IPv4Address(host.decode("ascii")))
    except (ValueError, UnicodeDecodeError):
        name = dns_name(host)
        if name is None:
            return Malformed("Host is not a DNS name or IP literal")
        return _with_port(port, Named(name))
    return _with_port(port, Unnamed(address=address))


def _with_port(port: bytes | None, result: WireResult) -> WireResult:
    if port is None or (_PORT_RE.fullmatch(port) and (not port or int(port) <= 65535)):
        return result
    return Malformed("bad port in Host")
