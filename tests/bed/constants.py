"""Addresses, ports and identities of the test bed (importable without side effects).

Every address is in a documentation range (RFC 5737, RFC 3849) and lives only inside the
namespaces that a ``Bed`` creates.
"""

from __future__ import annotations

from typing import Final

#: The client's end of the veth pair (where fenced and the confined processes run).
CLIENT_V4: Final = "192.0.2.2"
CLIENT_V6: Final = "2001:db8:ff::2"
#: The server's end of the veth pair (the client's default gateway).
GATEWAY_V4: Final = "192.0.2.254"
GATEWAY_V6: Final = "2001:db8:ff::fe"
CLIENT_PREFIX_V4: Final = 24
CLIENT_PREFIX_V6: Final = 64

#: Server addresses ("the internet"), on ``lo`` of the server namespace.
SERVERS_V4_A: Final = tuple(f"198.51.100.{i}" for i in range(10, 20))
SERVERS_V4_B: Final = tuple(f"203.0.113.{i}" for i in range(10, 20))
SERVERS_V4: Final = SERVERS_V4_A + SERVERS_V4_B
SERVERS_V6: Final = tuple(f"2001:db8:1::{i}" for i in range(10, 20))

#: The resolver (authoritative for every name, answers from the zone a test controls).
RESOLVER_V4: Final = "192.0.2.53"
RESOLVER_V6: Final = "2001:db8:53::53"
#: A second DNS server that answers every A query with ``ROGUE_ANSWER``.
ROGUE_V4: Final = "198.51.100.53"
ROGUE_V6: Final = "2001:db8:1::53"
ROGUE_ANSWER: Final = "203.0.113.99"
DNS_PORT: Final = 53

#: Ports where the echo server listens (TCP and UDP, every address of the server namespace).
ECHO_PORTS: Final = (22, 80, 123, 443, 8000, 8050, 8100, 9000)
#: A port where nothing listens in the server namespace (TCP and UDP are refused).
CLOSED_PORT: Final = 7
#: The line that makes the echo servers answer with the local address the client reached.
WHO: Final = b"WHO\n"

#: The default unprivileged identity for confined processes.
UID: Final = 64123
GID: Final = 64123
#: The uid used when a caller gives only a gid (so gid-matching tests do not run as root).
GID_ONLY_UID: Final = 64999
#: A second unprivileged identity, for tests that need two distinct users.
OTHER_UID: Final = 64124

#: Default probe timeout in seconds.
PROBE_TIMEOUT: Final = 2.0
