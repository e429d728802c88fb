r"""A TCP and UDP echo server for the test bed (asyncio, one process for every port).

Run inside the server namespace::

    python -m tests.bed.echoserver [--port P ...]

It binds every port (default ``tests.bed.constants.ECHO_PORTS``) on ``0.0.0.0`` and on
``::`` (IPV6_V6ONLY), for TCP and UDP, and prints ``ready`` once all sockets are bound.
TCP is echoed line by line, UDP datagram by datagram; the line/datagram ``WHO\n`` is
answered with the local address the client reached (``"198.51.100.10\n"``) instead. UDP
replies leave from the address the datagram was sent to (IP_PKTINFO), so a connected
client socket accepts them whichever address of the namespace it used.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import ipaddress
import signal
import socket
import struct
import sys
from collections.abc import Callable
from typing import Any

from tests.bed.constants import ECHO_PORTS, WHO

IP_PKTINFO = 8  # <linux/in.h>; not exported by Python's socket module
LINE_LIMIT = 1 << 20

#: Called with an event dict: {"event": "accepted"|"datagram", "proto", "peer", "local", ...}.
EventHook = Callable[[dict[str, Any]], None]


def _host(addr: str) -> str:
    """Return ``addr`` without a v4-mapped prefix (``::ffff:1.2.3.4`` -> ``1.2.3.4``)."""
    ip = ipaddress.ip_address(addr.split("%", maxsplit=1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def bind_pair(
    kind: int, port: int, hosts: tuple[str, ...] = ("0.0.0.0", "::")
) -> list[socket.socket]:
    """Return non-blocking sockets of ``kind`` bound to ``port`` on each of ``hosts``.

    IPv6 sockets are IPV6_V6ONLY so that the v4 and v6 wildcards can coexist. UDP sockets
    have the PKTINFO options on (see ``UdpEcho``). A ``port`` of 0 binds the first socket to
    an ephemeral port and the others to the same one.
    """
    socks: list[socket.socket] = []
    try:
        for host in hosts:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            s = socket.socket(family, kind)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if kind == socket.SOCK_DGRAM:
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
                else:
                    s.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            s.bind((host, port))
            if port == 0:
                port = s.getsockname()[1]
            s.setblocking(False)
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


class UdpEcho:
    """Echoes datagrams on one UDP socket, replying from the address they were sent to."""

    def __init__(self, sock: socket.socket, on_event: EventHook | None = None) -> None:
        """Serve ``sock`` (bound, non-blocking, PKTINFO on) once ``start`` is called."""
        self.sock = sock
        self.on_event = on_event
        self.v6 = sock.family == socket.AF_INET6

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start answering from ``loop``."""
        loop.add_reader(self.sock.fileno(), self._readable)

    def stop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Stop answering and close the socket."""
        loop.remove_reader(self.sock.fileno())
        self.sock.close()

    def _readable(self) -> None:
        while True:
            try:
                data, anc, _flags, peer = self.sock.recvmsg(65535, socket.CMSG_SPACE(64))
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # e.g. an ICMP error queued for an earlier reply
                if e.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                    continue
                return
            local = None
            for level, kind, payload in anc:
                if self.v6 and level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO:
                    local = socket.inet_ntop(socket.AF_INET6, payload[:16])
                elif not self.v6 and level == socket.IPPROTO_IP and kind == IP_PKTINFO:
                    local = socket.inet_ntop(socket.AF_INET, payload[8:12])
            if local is None:
                local = str(self.sock.getsockname()[0])
            local = _host(local)
            reply = (local + "\n").encode() if data == WHO else data
            if self.on_event is not None:
                self.on_event(
                    {
                        "event": "datagram",
                        "proto": "udp",
                        "peer": _host(str(peer[0])),
                        "peer_port": peer[1],
                        "local": local,
                        "port": self.sock.getsockname()[1],
                    }
                )
            if self.v6:
                anc_out = [
                    (
                        socket.IPPROTO_IPV6,
                        socket.IPV6_PKTINFO,
                        socket.inet_pton(socket.AF_INET6, local) + struct.pack("@i", 0),
                    )
                ]
            else:
                packed = socket.inet_pton(socket.AF_INET, local)
                anc_out = [(socket.IPPROTO_IP, IP_PKTINFO, struct.pack("@i", 0) + packed + packed)]
            with contextlib.suppress(OSError):
                self.sock.sendmsg([reply], anc_out, 0, peer)


async def _tcp_echo(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, on_event: EventHook | None
) -> None:
    local = _host(str(writer.get_extra_info("sockname")[0]))
    peer = writer.get_extra_info("peername")
    if on_event is not None:
        on_event(
            {
                "event": "accepted",
                "proto": "tcp",
                "peer": _host(str(peer[0])),
                "peer_port": peer[1],
                "local": local,
                "port": writer.get_extra_info("sockname")[1],
            }
        )
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            writer.write((local + "\n").encode() if line == WHO else line)
            await writer.drain()
    except (ConnectionError, ValueError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


class EchoServers:
    """TCP and UDP echo servers on a set of ports (use from a running event loop)."""

    def __init__(self, on_event: EventHook | None = None) -> None:
        """Create an empty set of servers; ``on_event`` is told of each connection/datagram."""
        self.on_event = on_event
        self.tcp: list[asyncio.Server] = []
        self.udp: list[UdpEcho] = []

    async def add(
        self,
        port: int,
        protos: tuple[str, ...] = ("tcp", "udp"),
        hosts: tuple[str, ...] = ("0.0.0.0", "::"),
    ) -> None:
        """Start echoing on ``port`` for each protocol in ``protos`` and each of ``hosts``."""
        loop = asyncio.get_running_loop()
        hook = self.on_event
        if "tcp" in protos:
            for s in bind_pair(socket.SOCK_STREAM, port, hosts):
                self.tcp.append(
                    await asyncio.start_server(
                        lambda r, w: _tcp_echo(r, w, hook), sock=s, limit=LINE_LIMIT
                    )
                )
        if "udp" in protos:
            for s in bind_pair(socket.SOCK_DGRAM, port, hosts):
                u = UdpEcho(s, hook)
                u.start(loop)
                self.udp.append(u)

    def close(self) -> None:
        """Stop every server."""
        loop = asyncio.get_running_loop()
        for t in self.tcp:
            t.close()
        for u in self.udp:
            u.stop(loop)


async def wait_for_signal() -> None:
    """Return when SIGTERM or SIGINT arrives."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _main(ports: list[int]) -> None:
    servers = EchoServers()
    for port in ports:
        await servers.add(port)
    print("ready", flush=True)
    await wait_for_signal()
    servers.close()


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and serve until SIGTERM."""
    p = argparse.ArgumentParser(prog="python -m tests.bed.echoserver", description=__doc__)
    p.add_argument("--port", type=int, action="append", help="port (repeatable)")
    args = p.parse_args(argv)
    asyncio.run(_main(args.port or list(ECHO_PORTS)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
