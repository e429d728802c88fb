"""Connection probes for the test bed: try one thing and print the outcome as JSON.

Run inside a namespace (normally through ``Bed.probe``/``Bed.run``)::

    python -m tests.bed.probe [--timeout S] [--as-uid U] [--as-gid G] KIND ARGS...

Kinds and their ``outcome`` values (every failure also carries ``errno`` when one is known):

- ``tcp HOST PORT``: "connected" (after an echo round trip), "refused", "timeout",
  "unreachable", "denied" (EPERM/EACCES), "reset", "closed" (end of stream), "error: ...".
  ``stage`` says whether the connect or the echo failed; ``server`` is the address the
  echo server reports for WHO.
- ``udp HOST PORT``: "reply", "refused", "timeout", "unreachable", "denied", "error: ...".
- ``icmp HOST``: an unprivileged ICMP echo (SOCK_DGRAM): "reply", "timeout", "unreachable",
  "denied", "error: ...".
- ``dns NAME [--server IP] [--type T] [--tcp] [--no-fallback] [--edns SIZE] [--port P]``:
  "answer" (with ``rcode``, ``addresses``, ``answers``, ``tc``, ``transport``), or the
  transport failure ("timeout", "refused", "denied", "unreachable", "error: ...").
  A truncated UDP answer is retried over TCP unless ``--no-fallback``.
- ``dnsloop NAME --sport P [--server IP] [--count N] [--interval S]``: one UDP socket bound
  to source port P and connected to the server (a stub that keeps its socket) asks for
  NAME's A record every S seconds (``--timeout`` per query), N times, printing one JSON
  line per query: ``seq``, ``sent`` (wall clock), and ``outcome`` "answer" (with
  ``rcode``, ``addresses``) or the failure ("timeout", "refused", ...).
- ``listen tcp|udp PORT [--bind ADDR ...]``: prints ``{"outcome": "listening"}`` once bound,
  then serves echo (and WHO) until SIGTERM, printing one JSON event line per connection or
  datagram (``{"event": "accepted"|"datagram", ...}``).
- ``hold HOST PORT``: connects over TCP and prints the connect outcome like ``tcp``; then for
  each line read from stdin sends it and prints ``{"outcome": "reply", "reply": ...}`` (or
  "timeout", "reset", "closed", "denied", "error: ..."); exits at end of input.

Every kind prints exactly one JSON line for its main outcome and exits 0; the outcome is in
the JSON, not in the exit status. ``--as-uid``/``--as-gid`` make the probe drop root for
that identity (no supplementary groups) after importing everything it needs and before it
creates any socket; the bed uses them because the interpreter may live where other users
cannot read it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import ctypes.util
import encodings.idna  # noqa: F401  (imported before dropping privileges)
import errno
import json
import os
import secrets
import signal
import socket
import struct
import sys
import time
from typing import Any

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.rdtypes.ANY.OPT
import dns.rdtypes.ANY.SOA
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rrset

from tests.bed.constants import PROBE_TIMEOUT, RESOLVER_V4, WHO
from tests.bed.echoserver import EchoServers, wait_for_signal

IP_RECVERR = 11
IPV6_RECVERR = 25

Result = dict[str, Any]


def whoami() -> Result:
    """Return this process's uid, gid, supplementary groups and cgroup2 path."""
    cgroup = None
    with contextlib.suppress(OSError), open("/proc/self/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                cgroup = line[3:].strip()
    return {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(), "cgroup": cgroup}


def _emit(obj: Result) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _errname(e: OSError) -> str | None:
    return errno.errorcode.get(e.errno) if e.errno is not None else None


class PeerClosed(ConnectionError):
    """The peer closed the connection (end of stream) while a reply was awaited."""


def classify(e: BaseException) -> str:
    """Map an exception from a socket operation to an outcome word."""
    if isinstance(e, PeerClosed):
        return "closed"
    if isinstance(e, (socket.timeout, TimeoutError, dns.exception.Timeout)):
        return "timeout"
    if isinstance(e, OSError):
        if e.errno == errno.ECONNREFUSED:
            return "refused"
        if e.errno in (errno.EPERM, errno.EACCES):
            return "denied"
        if e.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EADDRNOTAVAIL):
            return "unreachable"
        if e.errno in (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED):
            return "reset"
        if e.errno == errno.ETIMEDOUT:
            return "timeout"
        return f"error: {e.strerror or e}"
    return f"error: {type(e).__name__}: {e}"


def _fail(res: Result, e: BaseException, stage: str | None = None) -> Result:
    res["outcome"] = classify(e)
    if isinstance(e, OSError) and e.errno is not None:
        res["errno"] = _errname(e)
    if stage is not None:
        res["stage"] = stage
    return res


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _recverr(s: socket.socket) -> None:
    if s.family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
    else:
        s.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)


def _local(s: socket.socket) -> str | None:
    with contextlib.suppress(OSError):
        return str(s.getsockname()[0])
    return None


def _readline(s: socket.socket, buf: bytearray, deadline: float) -> bytes:
    """Read one line from ``s`` (keeping the rest in ``buf``); raise on timeout or EOF."""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no reply")
        s.settimeout(left)
        chunk = s.recv(65536)
        if not chunk:
            raise PeerClosed("connection closed by peer")
        buf += chunk
    i = buf.index(b"\n") + 1
    line = bytes(buf[:i])
    del buf[:i]
    return line


def _tcp_connect(host: str, port: int, timeout: float, res: Result) -> socket.socket | None:
    s = socket.socket(_family(host), socket.SOCK_STREAM)
    s.settimeout(timeout)
    t0 = time.monotonic()
    try:
        s.connect((host, port))
    except OSError as e:
        s.close()
        _fail(res, e, "connect")
        res["elapsed_ms"] = round((time.monotonic() - t0) * 1000)
        return None
    res["local"] = _local(s)
    return s


def probe_tcp(host: str, port: int, timeout: float) -> Result:
    """Connect, exchange one echo line and ask WHO; see the module docstring."""
    res: Result = {"kind": "tcp", "host": host, "port": port}
    t0 = time.monotonic()
    s = _tcp_connect(host, port, timeout, res)
    if s is None:
        return res
    with s:
        buf = bytearray()
        token = f"probe {secrets.token_hex(8)}\n".encode()
        try:
            s.sendall(token)
            while _readline(s, buf, time.monotonic() + timeout) != token:
                pass
        except OSError as e:
            return _fail(res, e, "echo")
        res["outcome"] = "connected"
        res["elapsed_ms"] = round((time.monotonic() - t0) * 1000)
        try:
            s.sendall(WHO)
            res["server"] = _readline(s, buf, time.monotonic() + timeout).decode().strip()
        except OSError:
            res["server"] = None
    return res


def probe_udp(host: str, port: int, timeout: float) -> Result:
    """Send one datagram on a connected socket and wait for its echo, then ask WHO."""
    res: Result = {"kind": "udp", "host": host, "port": port}
    t0 = time.monotonic()
    with socket.socket(_family(host), socket.SOCK_DGRAM) as s:
        _recverr(s)
        token = f"probe {secrets.token_hex(8)}\n".encode()
        try:
            s.connect((host, port))
            res["local"] = _local(s)
            s.send(token)
            deadline = time.monotonic() + timeout
            while True:
                s.settimeout(max(deadline - time.monotonic(), 0.001))
                if s.recv(65535) == token:
                    break
        except OSError as e:
            return _fail(res, e)
        res["outcome"] = "reply"
        res["elapsed_ms"] = round((time.monotonic() - t0) * 1000)
        try:
            s.send(WHO)
            s.settimeout(timeout)
            res["server"] = s.recv(65535).decode(errors="replace").strip()
        except OSError:
            res["server"] = None
    return res


def probe_icmp(host: str, timeout: float) -> Result:
    """Send one ICMP echo request from an unprivileged ping socket and wait for the reply."""
    res: Result = {"kind": "icmp", "host": host}
    fam = _family(host)
    proto = socket.IPPROTO_ICMPV6 if fam == socket.AF_INET6 else socket.IPPROTO_ICMP
    request, reply_type = (128, 129) if fam == socket.AF_INET6 else (8, 0)
    t0 = time.monotonic()
    try:
        s = socket.socket(fam, socket.SOCK_DGRAM, proto)
    except OSError as e:
        return _fail(res, e, "socket")
    with s:
        _recverr(s)
        seq = secrets.randbelow(65536)
        payload = secrets.token_bytes(16)
        try:
            s.connect((host, 0))
            res["local"] = _local(s)
            s.send(struct.pack("!BBHHH", request, 0, 0, 0, seq) + payload)
            deadline = time.monotonic() + timeout
            while True:
                s.settimeout(max(deadline - time.monotonic(), 0.001))
                pkt = s.recv(65535)
                if len(pkt) >= 8 and pkt[0] == reply_type and pkt[8:] == payload:
                    break
        except OSError as e:
            return _fail(res, e)
    res["outcome"] = "reply"
    res["elapsed_ms"] = round((time.monotonic() - t0) * 1000)
    return res


def _dns_udp(q: dns.message.Message, server: str, port: int, timeout: float) -> dns.message.Message:
    with socket.socket(_family(server), socket.SOCK_DGRAM) as s:
        _recverr(s)
        s.connect((server, port))
        s.send(q.to_wire())
        deadline = time.monotonic() + timeout
        while True:
            s.settimeout(max(deadline - time.monotonic(), 0.001))
            wire = s.recv(65535)
            try:
                r = dns.message.from_wire(wire)
            except dns.exception.DNSException:
                continue
            if q.is_response(r):
                return r


def _recv_exactly(s: socket.socket, n: int, deadline: float) -> bytes:
    buf = b""
    while len(buf) < n:
        s.settimeout(max(deadline - time.monotonic(), 0.001))
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise PeerClosed("connection closed by peer")
        buf += chunk
    return buf


def _dns_tcp(q: dns.message.Message, server: str, port: int, timeout: float) -> dns.message.Message:
    deadline = time.monotonic() + timeout
    with socket.socket(_family(server), socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect((server, port))
        wire = q.to_wire()
        s.sendall(struct.pack("!H", len(wire)) + wire)
        size = struct.unpack("!H", _recv_exactly(s, 2, deadline))[0]
        return dns.message.from_wire(_recv_exactly(s, size, deadline))


def probe_dns(
    name: str,
    *,
    server: str,
    rtype: str,
    tcp: bool,
    fallback: bool,
    edns: int | None,
    port: int,
    timeout: float,
) -> Result:
    """Query ``server`` for ``name``/``rtype`` and report the answer; see the module docstring."""
    res: Result = {"kind": "dns", "name": name, "type": rtype.upper(), "server": server}
    q = dns.message.make_query(
        name,
        dns.rdatatype.from_text(rtype),
        use_edns=0 if edns is not None else None,
        payload=edns or 1232,
    )
    transport = "tcp" if tcp else "udp"
    t0 = time.monotonic()
    try:
        if tcp:
            r = _dns_tcp(q, server, port, timeout)
        else:
            r = _dns_udp(q, server, port, timeout)
            res["tc"] = bool(r.flags & dns.flags.TC)
            if res["tc"] and fallback:
                transport = "tcp"
                r = _dns_tcp(q, server, port, timeout)
    except (OSError, dns.exception.DNSException) as e:
        res["transport"] = transport
        return _fail(res, e)
    res.setdefault("tc", False)
    res["outcome"] = "answer"
    res["transport"] = transport
    res["rcode"] = dns.rcode.to_text(r.rcode())
    res["aa"] = bool(r.flags & dns.flags.AA)
    answers = []
    addresses = []
    for rrset in r.answer:
        for rd in rrset:
            t = dns.rdatatype.to_text(rrset.rdtype)
            value = b"".join(rd.strings).decode(errors="replace") if t == "TXT" else rd.to_text()
            if t in ("A", "AAAA"):
                addresses.append(value)
            answers.append(
                {
                    "name": rrset.name.to_text(omit_final_dot=True),
                    "type": t,
                    "ttl": rrset.ttl,
                    "value": value.rstrip(".") if t == "CNAME" else value,
                }
            )
    res["answers"] = answers
    res["addresses"] = addresses
    res["elapsed_ms"] = round((time.monotonic() - t0) * 1000)
    return res


def run_dnsloop(
    name: str, *, server: str, sport: int, count: int, interval: float, timeout: float
) -> None:
    """Ask for ``name`` from one socket on source port ``sport``; see the module docstring."""
    with socket.socket(_family(server), socket.SOCK_DGRAM) as s:
        _recverr(s)
        s.bind(("::" if s.family == socket.AF_INET6 else "0.0.0.0", sport))
        s.connect((server, 53))
        start = time.monotonic()
        for seq in range(count):
            time.sleep(max(start + seq * interval - time.monotonic(), 0.0))
            res: Result = {"kind": "dnsloop", "seq": seq, "sent": time.time()}
            q = dns.message.make_query(name, "A", use_edns=0, payload=1232)
            deadline = time.monotonic() + timeout
            try:
                s.send(q.to_wire())
                while True:
                    s.settimeout(max(deadline - time.monotonic(), 0.001))
                    try:
                        r = dns.message.from_wire(s.recv(65535))
                    except dns.exception.DNSException:
                        continue
                    if q.is_response(r):
                        break
            except OSError as e:
                _emit(_fail(res, e))
                continue
            addresses = [rd.to_text() for rrset in r.answer for rd in rrset if rrset.rdtype == 1]
            res |= {"outcome": "answer", "rcode": dns.rcode.to_text(r.rcode())}
            _emit(res | {"addresses": addresses})


def run_listen(proto: str, port: int, binds: list[str]) -> Result:
    """Serve echo on ``port`` until SIGTERM, printing "listening" then one line per event."""

    async def serve() -> None:
        servers = EchoServers(on_event=_emit)
        await servers.add(port, (proto,), tuple(binds))
        _emit({"kind": "listen", "proto": proto, "port": port, "outcome": "listening"} | whoami())
        await wait_for_signal()
        servers.close()

    try:
        asyncio.run(serve())
    except OSError as e:
        return _fail({"kind": "listen", "proto": proto, "port": port}, e, "bind")
    return {}


def run_hold(host: str, port: int, timeout: float) -> None:
    """Connect and keep the connection, echoing stdin lines through it; see the docstring."""
    res: Result = {"kind": "hold", "host": host, "port": port}
    s = _tcp_connect(host, port, timeout, res)
    if s is None:
        _emit(res | whoami())
        return
    res["outcome"] = "connected"
    _emit(res | whoami())
    buf = bytearray()
    with s:
        for raw in sys.stdin:
            line = raw.rstrip("\n").encode() + b"\n"
            out: Result = {"kind": "hold", "sent": raw.rstrip("\n")}
            try:
                s.sendall(line)
                reply = _readline(s, buf, time.monotonic() + timeout)
            except OSError as e:
                _fail(out, e)
            else:
                out["outcome"] = "reply"
                out["reply"] = reply.decode(errors="replace").rstrip("\n")
            _emit(out)


def _warm_up() -> None:
    """Exercise dnspython once so that its lazily imported modules are loaded."""
    q = dns.message.make_query("warm.up.", "A", use_edns=0)
    r = dns.message.make_response(q)
    for t, v in (("A", "192.0.2.1"), ("AAAA", "2001:db8::1"), ("CNAME", "x."), ("TXT", '"x"')):
        r.answer.append(dns.rrset.from_text("warm.up.", 1, "IN", t, v))
    r.authority.append(dns.rrset.from_text(".", 1, "IN", "SOA", "a. b. 1 2 3 4 5"))
    dns.message.from_wire(r.to_wire())
    for code in ("NOERROR", "NXDOMAIN", "SERVFAIL", "REFUSED", "FORMERR"):
        dns.rcode.to_text(dns.rcode.from_text(code))


def use_resolv_conf(path: str) -> None:
    """Give this process a private mount namespace where ``path`` is /etc/resolv.conf.

    Root must call this (before ``drop_privileges``); the host's file is untouched. Lets a
    probe use the system resolver (libc) with a resolver configuration the test chose.
    """
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    clone_newns, ms_rec, ms_private, ms_bind = 0x00020000, 0x4000, 0x40000, 0x1000
    if libc.unshare(clone_newns) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
    if libc.mount(None, b"/", None, ms_rec | ms_private, None) != 0:
        raise OSError(ctypes.get_errno(), "mount --make-rprivate /")
    if libc.mount(os.fsencode(path), b"/etc/resolv.conf", None, ms_bind, None) != 0:
        raise OSError(ctypes.get_errno(), f"mount --bind {path} /etc/resolv.conf")


def probe_gai(name: str, family: int) -> dict[str, Any]:
    """Resolve ``name`` with libc's getaddrinfo (the system resolver and /etc/resolv.conf)."""
    fam = {4: socket.AF_INET, 6: socket.AF_INET6}.get(family, socket.AF_UNSPEC)
    try:
        infos = socket.getaddrinfo(name, None, fam, socket.SOCK_STREAM)
    except socket.gaierror as e:
        return {"outcome": "gaierror", "code": e.errno, "error": str(e)}
    addresses = sorted({str(info[4][0]) for info in infos})
    return {"outcome": "resolved", "addresses": addresses}


def drop_privileges(uid: int | None, gid: int | None) -> None:
    """Become ``uid``/``gid`` with no supplementary groups (root must call this)."""
    if uid is None and gid is None:
        return
    if gid is not None:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
    if uid is not None:
        os.setresuid(uid, uid, uid)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tests.bed.probe", description=__doc__)
    p.add_argument("--timeout", type=float, default=PROBE_TIMEOUT)
    p.add_argument("--as-uid", type=int, help="drop to this uid before any socket exists")
    p.add_argument("--as-gid", type=int, help="drop to this gid (no supplementary groups)")
    p.add_argument("--resolv-conf", help="bind-mount this file over /etc/resolv.conf first")
    sub = p.add_subparsers(dest="kind", required=True)
    for kind in ("tcp", "udp", "hold"):
        sp = sub.add_parser(kind)
        sp.add_argument("host")
        sp.add_argument("port", type=int)
    sub.add_parser("icmp").add_argument("host")
    g = sub.add_parser("gai")
    g.add_argument("name")
    g.add_argument("--family", type=int, choices=(0, 4, 6), default=0)
    d = sub.add_parser("dns")
    d.add_argument("name")
    d.add_argument("--server", default=RESOLVER_V4)
    d.add_argument("--type", default="A")
    d.add_argument("--tcp", action="store_true")
    d.add_argument("--no-fallback", action="store_true")
    d.add_argument("--edns", type=int, default=None)
    d.add_argument("--port", type=int, default=53)
    lp = sub.add_parser("dnsloop")
    lp.add_argument("name")
    lp.add_argument("--server", default=RESOLVER_V4)
    lp.add_argument("--sport", type=int, required=True)
    lp.add_argument("--count", type=int, default=10)
    lp.add_argument("--interval", type=float, default=1.0)
    ls = sub.add_parser("listen")
    ls.add_argument("proto", choices=("tcp", "udp"))
    ls.add_argument("port", type=int)
    ls.add_argument("--bind", action="append", help="address (default 0.0.0.0 and ::)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one probe; print its JSON outcome; return 0 (2 for a usage error)."""
    args = _parser().parse_args(argv)
    _warm_up()
    if args.resolv_conf:
        use_resolv_conf(args.resolv_conf)
    drop_privileges(args.as_uid, args.as_gid)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    me = whoami()
    if args.kind == "tcp":
        _emit(probe_tcp(args.host, args.port, args.timeout) | me)
    elif args.kind == "udp":
        _emit(probe_udp(args.host, args.port, args.timeout) | me)
    elif args.kind == "icmp":
        _emit(probe_icmp(args.host, args.timeout) | me)
    elif args.kind == "gai":
        _emit(probe_gai(args.name, args.family) | me)
    elif args.kind == "dns":
        _emit(
            me
            | probe_dns(
                args.name,
                server=args.server,
                rtype=args.type,
                tcp=args.tcp,
                fallback=not args.no_fallback,
                edns=args.edns,
                port=args.port,
                timeout=args.timeout,
            )
        )
    elif args.kind == "listen":
        res = run_listen(args.proto, args.port, args.bind or ["0.0.0.0", "::"])
        if res:
            _emit(res)
    elif args.kind == "hold":
        run_hold(args.host, args.port, args.timeout)
    elif args.kind == "dnsloop":
        run_dnsloop(
            args.name,
            server=args.server,
            sport=args.sport,
            count=args.count,
            interval=args.interval,
            timeout=args.timeout,
        )
    return 0


# Keep these referenced so linters see why they are imported (lazy loading in dnspython).
_PRELOADED = (
    dns.edns,
    dns.name,
    dns.rdataclass,
    dns.rdtypes.ANY.CNAME,
    dns.rdtypes.ANY.OPT,
    dns.rdtypes.ANY.SOA,
    dns.rdtypes.ANY.TXT,
    dns.rdtypes.IN.A,
    dns.rdtypes.IN.AAAA,
)

if __name__ == "__main__":
    sys.exit(main())
