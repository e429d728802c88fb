"""What a confined process tries in order to get out: one attempt per run, JSON outcome.

Run inside the bed's client namespace as root (``Attacker.run`` does it); the program
imports everything, then drops to ``--as-uid``/``--as-gid`` (no supplementary groups)
before it creates any socket, like ``tests.bed.probe``::

    python -m tests.adversarial.attacker [--as-uid U] [--as-gid G] [--timeout S] KIND ARGS

Kinds (each prints one JSON line with ``outcome`` and exits 0):

- ``connect tcp|udp HOST PORT [--bind ADDR] [--sport N] [--device DEV] [--v6]``: connect
  (TCP: one echo round trip; UDP: one echoed datagram) after binding a source address or
  port or a device; ``--v6`` uses an AF_INET6 socket even for an IPv4 HOST (it is then
  written as the v4-mapped ``::ffff:HOST``).
- ``send HOST PORT [--broadcast] [--device DEV]``: send one UDP datagram (broadcast and
  multicast included); "sent" or the error.
- ``descendant child|grandchild|daemon tcp|udp HOST PORT``: fork (twice for a grandchild;
  fork, setsid, fork for a daemon whose parent exits) and connect from the descendant.
- ``setgid GID tcp|udp HOST PORT``: try setgid/setegid/setgroups to GID, then connect.
- ``scm out|in tcp HOST PORT --confined-uid U --confined-gid G [--cgroup-procs FILE]
  --free-uid F``: a confined and an unconfined process pass a socket over SCM_RIGHTS.
  ``out``: the confined one creates it, the unconfined one connects with it (and a second
  socket goes out and back to the confined one, which connects). ``in``: the unconfined
  one creates it, the confined one connects with it. Started as root (no ``--as-uid``).
- ``cgroup-escape DIR tcp HOST PORT``: a process in cgroup DIR (owned by its uid) makes
  ``DIR/escape``, moves itself there and connects; then tries to move to DIR's parent and
  to the root cgroup, and connects again.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import secrets
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.bed.probe import classify, drop_privileges

Result = dict[str, Any]


def _emit(obj: Result) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def outcome_of(e: OSError) -> str:
    """The probe's outcome word for ``e``; EINVAL (the kernel refuses the route) is "invalid"."""
    return "invalid" if e.errno == errno.EINVAL else classify(e)


def _err(e: OSError) -> str:
    return errno.errorcode.get(e.errno or 0, str(e.errno))


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _sockaddr(host: str, port: int) -> tuple[Any, ...]:
    if host.startswith("ff02:") or host.startswith("fe80:"):
        return (host, port, 0, socket.if_nametoindex("veth0"))
    return (host, port)


def make_socket(
    proto: str,
    host: str,
    *,
    bind: str | None = None,
    sport: int = 0,
    device: str | None = None,
    v6: bool = False,
) -> socket.socket:
    """A TCP or UDP socket for ``host`` with the source options applied (may raise)."""
    fam = socket.AF_INET6 if v6 else _family(host)
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(fam, kind)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if device is not None:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
        if bind is not None or sport:
            s.bind((bind or ("::" if fam == socket.AF_INET6 else "0.0.0.0"), sport))
    except BaseException:
        s.close()
        raise
    return s


def use_socket(s: socket.socket, proto: str, host: str, port: int, timeout: float) -> Result:
    """Connect ``s`` to ``host``:``port`` and exchange one echo; return the outcome."""
    res: Result = {"proto": proto, "host": host, "port": port}
    if s.family == socket.AF_INET6 and ":" not in host:
        host = f"::ffff:{host}"
        res["via"] = host
    token = f"attack {secrets.token_hex(8)}\n".encode()
    s.settimeout(timeout)
    t0 = time.monotonic()
    try:
        s.connect(_sockaddr(host, port))
        with contextlib.suppress(OSError):
            res["local"] = str(s.getsockname()[0])
        s.send(token) if proto == "udp" else s.sendall(token)
        got = b""
        deadline = time.monotonic() + timeout
        while token not in got:
            s.settimeout(max(deadline - time.monotonic(), 0.001))
            chunk = s.recv(65536)
            if not chunk and proto == "tcp":
                raise ConnectionResetError(errno.ECONNRESET, "closed")
            got += chunk
    except OSError as e:
        res["outcome"] = outcome_of(e)
        res["errno"] = _err(e)
    else:
        res["outcome"] = "connected" if proto == "tcp" else "reply"
    res["elapsed_ms"] = round((time.monotonic() - t0) * 1000)
    return res


def attempt(
    proto: str,
    host: str,
    port: int,
    timeout: float,
    *,
    bind: str | None = None,
    sport: int = 0,
    device: str | None = None,
    v6: bool = False,
) -> Result:
    """Make a socket with the given source options and use it; a setup error is the outcome."""
    try:
        s = make_socket(proto, host, bind=bind, sport=sport, device=device, v6=v6)
    except OSError as e:
        return {"outcome": "setup-" + outcome_of(e), "errno": _err(e), "stage": "setup"}
    with s:
        return use_socket(s, proto, host, port, timeout)


def whoami() -> Result:
    """This process's identity and cgroup."""
    cg = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                cg = line[3:]
    return {"pid": os.getpid(), "uid": os.getuid(), "gid": os.getgid(), "cgroup": cg}


# ------------------------------------------------------------------ kinds


def send_one(host: str, port: int, *, broadcast: bool, device: str | None) -> Result:
    """Send one UDP datagram; report "sent" or the error (EPERM = denied by the firewall)."""
    res: Result = {"host": host, "port": port}
    try:
        with socket.socket(_family(host), socket.SOCK_DGRAM) as s:
            if broadcast:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            if device is not None:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
            s.sendto(b"attack\n", _sockaddr(host, port))
    except OSError as e:
        res["outcome"] = outcome_of(e)
        res["errno"] = _err(e)
    else:
        res["outcome"] = "sent"
    return res


def descendant(how: str, proto: str, host: str, port: int, timeout: float) -> Result:
    """Connect from a child, grandchild or double-forked daemon; the top process reports."""
    r, w = os.pipe()
    top = os.getpid()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        try:
            if how == "grandchild" and os.fork() != 0:
                os._exit(0)
            if how == "daemon":
                os.setsid()
                if os.fork() != 0:
                    os._exit(0)  # the session leader exits: the daemon is orphaned
                time.sleep(0.2)  # let the intermediate exit: we are reparented
            res = attempt(proto, host, port, timeout) | whoami()
            res["ppid"] = os.getppid()
            res["sid"] = os.getsid(0)
            os.write(w, json.dumps(res).encode())
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    out: Result = json.loads(data) if data else {"outcome": "error: no report"}
    out["top"] = top
    out["top_sid"] = os.getsid(0)
    out["how"] = how
    return out


def try_setgid(gid: int, proto: str, host: str, port: int, timeout: float) -> Result:
    """Try every way an unprivileged process has to change its gid, then connect."""
    res: Result = {"to": gid}
    calls: tuple[tuple[str, Callable[[], None]], ...] = (
        ("setgid", lambda: os.setgid(gid)),
        ("setegid", lambda: os.setegid(gid)),
        ("setresgid", lambda: os.setresgid(gid, gid, gid)),
        ("setgroups", lambda: os.setgroups([gid])),
    )
    for name, call in calls:
        try:
            call()
        except OSError as e:
            res[name] = _err(e)
        else:
            res[name] = "ok"
    res |= attempt(proto, host, port, timeout) | whoami()
    res["groups"] = os.getgroups()
    return res


def _join(procs: str | None) -> None:
    if procs:
        Path(procs).write_text(str(os.getpid()))


def scm(
    mode: str,
    proto: str,
    host: str,
    port: int,
    timeout: float,
    *,
    confined: tuple[int, int],
    procs: str | None,
    free_uid: int,
) -> Result:
    """Pass sockets between a confined child and an unconfined parent (see module doc)."""
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    pid = os.fork()
    if pid == 0:
        parent_end.close()
        code = 0
        try:
            _join(procs)
            drop_privileges(*confined)
            report: Result = {"child": whoami()}
            if mode == "out":
                a = socket.socket(_family(host), kind)
                b = socket.socket(_family(host), kind)
                socket.send_fds(child_end, [b"2"], [a.fileno(), b.fileno()])
                a.close()
                b.close()
                _, fds, _, _ = socket.recv_fds(child_end, 16, 1)
                back = socket.socket(fileno=fds[0])
                with back:
                    report["back_in_confined"] = use_socket(back, proto, host, port, timeout)
            else:
                _, fds, _, _ = socket.recv_fds(child_end, 16, 1)
                passed = socket.socket(fileno=fds[0])
                with passed:
                    report["passed_in_confined"] = use_socket(passed, proto, host, port, timeout)
            child_end.sendall(json.dumps(report).encode() + b"\n")
        except BaseException as e:  # report anything, never return into the parent's code
            with contextlib.suppress(OSError):
                child_end.sendall(json.dumps({"child_error": repr(e)}).encode() + b"\n")
            code = 1
        finally:
            os._exit(code)
    child_end.close()
    drop_privileges(free_uid, free_uid)
    res: Result = {"mode": mode, "parent": whoami()}
    if mode == "out":
        _, fds, _, _ = socket.recv_fds(parent_end, 16, 2)
        a, b = (socket.socket(fileno=fd) for fd in fds)
        with a:
            res["confined_socket_in_unconfined"] = use_socket(a, proto, host, port, timeout)
        socket.send_fds(parent_end, [b"1"], [b.fileno()])
        b.close()
    else:
        c = socket.socket(_family(host), kind)
        socket.send_fds(parent_end, [b"1"], [c.fileno()])
        c.close()
    data = b""
    parent_end.settimeout(timeout * 3 + 5)
    with contextlib.suppress(OSError):
        while not data.endswith(b"\n"):
            chunk = parent_end.recv(65536)
            if not chunk:
                break
            data += chunk
    os.waitpid(pid, 0)
    res |= json.loads(data) if data.strip() else {"child_error": "no report"}
    parts = [v["outcome"] for k, v in res.items() if isinstance(v, dict) and "outcome" in v]
    res["outcome"] = ",".join(parts) if parts else "error"
    return res


def cgroup_escape(cg_dir: str, proto: str, host: str, port: int, timeout: float) -> Result:
    """Move into a self-made child cgroup (allowed) and up the tree (refused), connecting."""
    res: Result = {"start": whoami()}
    here = Path(cg_dir)
    child = here / "escape"
    steps: Result = {}
    try:
        child.mkdir(exist_ok=True)
        (child / "cgroup.procs").write_text(str(os.getpid()))
        steps["to_child"] = "ok"
    except OSError as e:
        steps["to_child"] = _err(e)
    res["in_child"] = attempt(proto, host, port, timeout) | whoami()
    for name, target in (("to_parent", here.parent), ("to_root", Path(_cgroup2_root()))):
        try:
            (target / "cgroup.procs").write_text(str(os.getpid()))
            steps[name] = "ok"
        except OSError as e:
            steps[name] = _err(e)
    res["steps"] = steps
    res["after"] = attempt(proto, host, port, timeout) | whoami()
    res["outcome"] = f"{res['in_child']['outcome']},{res['after']['outcome']}"
    return res


def _cgroup2_root() -> str:
    for line in Path("/proc/self/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "cgroup2":
            return parts[1]
    raise OSError(errno.ENOENT, "no cgroup2 mount")


# ------------------------------------------------------------------ command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tests.adversarial.attacker", description=__doc__)
    p.add_argument("--timeout", type=float, default=2.0)
    p.add_argument("--as-uid", type=int)
    p.add_argument("--as-gid", type=int)
    sub = p.add_subparsers(dest="kind", required=True)

    def target(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("proto", choices=("tcp", "udp"))
        sp.add_argument("host")
        sp.add_argument("port", type=int)

    c = sub.add_parser("connect")
    target(c)
    c.add_argument("--bind")
    c.add_argument("--sport", type=int, default=0)
    c.add_argument("--device")
    c.add_argument("--v6", action="store_true")
    s = sub.add_parser("send")
    s.add_argument("host")
    s.add_argument("port", type=int)
    s.add_argument("--broadcast", action="store_true")
    s.add_argument("--device")
    d = sub.add_parser("descendant")
    d.add_argument("how", choices=("child", "grandchild", "daemon"))
    target(d)
    g = sub.add_parser("setgid")
    g.add_argument("gid", type=int)
    target(g)
    m = sub.add_parser("scm")
    m.add_argument("mode", choices=("out", "in"))
    target(m)
    m.add_argument("--confined-uid", type=int, required=True)
    m.add_argument("--confined-gid", type=int, required=True)
    m.add_argument("--cgroup-procs")
    m.add_argument("--free-uid", type=int, required=True)
    e = sub.add_parser("cgroup-escape")
    e.add_argument("dir")
    target(e)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one attempt and print its JSON outcome."""
    a = _parser().parse_args(argv)
    if a.kind != "scm":
        drop_privileges(a.as_uid, a.as_gid)
    t = a.timeout
    if a.kind == "connect":
        res = attempt(
            a.proto, a.host, a.port, t, bind=a.bind, sport=a.sport, device=a.device, v6=a.v6
        )
    elif a.kind == "send":
        res = send_one(a.host, a.port, broadcast=a.broadcast, device=a.device)
    elif a.kind == "descendant":
        res = descendant(a.how, a.proto, a.host, a.port, t)
    elif a.kind == "setgid":
        res = try_setgid(a.gid, a.proto, a.host, a.port, t)
    elif a.kind == "scm":
        res = scm(
            a.mode,
            a.proto,
            a.host,
            a.port,
            t,
            confined=(a.confined_uid, a.confined_gid),
            procs=a.cgroup_procs,
            free_uid=a.free_uid,
        )
    else:
        res = cgroup_escape(a.dir, a.proto, a.host, a.port, t)
    _emit(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
