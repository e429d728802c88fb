"""Small TCP load tools for the datapath benchmark (plain sockets, no dependencies).

    python -m bench.tcptool server --port 5001             # conn-rate on 5001, bulk on 5002
    python -m bench.tcptool connrate --to ADDR --port 5001 --seconds 5 --uid 64123
    python -m bench.tcptool bulk --to ADDR --port 5002 --seconds 5 --uid 64123

``server`` accepts on PORT (sends one byte, closes) and on PORT+1 (reads and discards,
then answers the byte count when the client half-closes); it prints ``ready``. The
clients drop to ``--uid`` after their imports (so their sockets belong to that uid, which
is what a uid policy matches), run for ``--seconds`` and print one JSON line:
``connrate`` the completed connections per second (connect, read the byte, close with a
reset so no TIME_WAIT piles up), ``bulk`` the bytes per second the server received over
one connection.
"""

from __future__ import annotations

import argparse
import contextlib
import encodings.idna  # noqa: F401  (loaded while still root: the stdlib is unreadable after)
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Sequence

_LINGER0 = struct.pack("ii", 1, 0)


def _listener(port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(4096)
    return s


def _serve_connrate(ls: socket.socket) -> None:
    while True:
        c, _ = ls.accept()
        with contextlib.suppress(OSError):
            c.send(b"x")
        c.close()


def _bulk_client(c: socket.socket) -> None:
    buf = bytearray(1 << 20)
    total = 0
    try:
        while True:
            n = c.recv_into(buf)
            if n == 0:
                break
            total += n
        c.sendall(str(total).encode())
    except OSError:
        pass
    finally:
        c.close()


def _serve_bulk(ls: socket.socket) -> None:
    while True:
        c, _ = ls.accept()
        threading.Thread(target=_bulk_client, args=(c,), daemon=True).start()


def server(port: int) -> None:
    """Serve both kinds until killed."""
    a, b = _listener(port), _listener(port + 1)
    threading.Thread(target=_serve_bulk, args=(b,), daemon=True).start()
    print("ready", flush=True)
    _serve_connrate(a)


def drop_to(uid: int) -> None:
    """Become ``uid`` (and gid ``uid``), no supplementary groups."""
    if uid:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)


def connrate(to: str, port: int, seconds: float) -> dict[str, float]:
    """Connections per second: connect, read one byte, reset."""
    done = failed = 0
    end = time.monotonic() + seconds
    start = time.monotonic()
    while time.monotonic() < end:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER0)
        s.settimeout(2.0)
        try:
            s.connect((to, port))
            s.recv(1)
            done += 1
        except OSError:
            failed += 1
        finally:
            s.close()
    return {"per_s": done / (time.monotonic() - start), "failed": failed}


def bulk(to: str, port: int, seconds: float) -> dict[str, float]:
    """Bytes per second over one connection, as counted by the server."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(5.0)
    s.connect((to, port))
    chunk = b"\0" * (256 * 1024)
    start = time.monotonic()
    end = start + seconds
    while time.monotonic() < end:
        s.sendall(chunk)
    s.shutdown(socket.SHUT_WR)
    got = b""
    while True:
        part = s.recv(64)
        if not part:
            break
        got += part
    elapsed = time.monotonic() - start
    s.close()
    return {"per_s": int(got) / elapsed, "failed": 0}


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run one tool."""
    p = argparse.ArgumentParser(prog="python -m bench.tcptool", description=__doc__)
    p.add_argument("mode", choices=("server", "connrate", "bulk"))
    p.add_argument("--to", default="")
    p.add_argument("--port", type=int, default=5001)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--uid", type=int, default=0)
    args = p.parse_args(argv)
    if args.mode == "server":
        server(args.port)
        return 0
    drop_to(args.uid)
    fn = connrate if args.mode == "connrate" else bulk
    print(json.dumps(fn(args.to, args.port, args.seconds)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
