"""First bytes sent by real clients, made in memory: OpenSSL via ssl, http.client, aioquic."""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicProtocolVersion


def tls_client_hello(server_name: str | None, alpn: list[str] | None = None) -> bytes:
    """The records an OpenSSL client (Python's ssl) sends first, for ``server_name``."""
    context = ssl.create_default_context()
    context.check_hostname = server_name is not None
    if alpn:
        context.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with contextlib.suppress(ssl.SSLWantReadError):  # it waits for the server's answer
        tls.do_handshake()
    return outgoing.read()


def http_request_head(host: str, port: int, url: str = "/", method: str = "GET") -> bytes:
    """The bytes http.client sends for a request to ``host``:``port``, read from a socketpair."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        connection = http.client.HTTPConnection(host, port)
        connection.sock = ours
        connection.request(method, url, headers={"User-Agent": "fenced-test"})
        ours.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := theirs.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def quic_initials(server_name: str, alpn_count: int = 1, version: int = 1) -> list[bytes]:
    """The datagrams an aioquic client sends first (``version`` 1 or 2, RFC 9369).

    Many ALPN protocols make the ClientHello longer than one datagram: with 300 it spans
    four Initial packets in four datagrams.
    """
    versions = {1: QuicProtocolVersion.VERSION_1, 2: QuicProtocolVersion.VERSION_2}
    configuration = QuicConfiguration(
        is_client=True,
        server_name=server_name,
        alpn_protocols=[f"proto-{i:04d}" for i in range(alpn_count)],
        supported_versions=[versions[version]],
    )
    connection = QuicConnection(configuration=configuration)
    connection.connect(("192.0.2.1", 443), now=0.0)
    return [datagram for datagram, _ in connection.datagrams_to_send(now=0.0)]
