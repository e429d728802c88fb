"""nf_tables change notifications: who committed what to fenced's table.

:class:`NftMonitor` is a socket subscribed to the kernel's nf_tables notification group;
:class:`CommitParser` (pure) turns its datagrams into :class:`Commit` values, one per
committed transaction. The daemon tells its own commits from foreign ones by the
committing socket's netlink port: :data:`OWN_PORTIDS` holds the ports of the
:class:`~fenced.kernel.netlink.NftNetlink` sockets this process opened.
"""

from __future__ import annotations

import contextlib
import errno as errno_mod
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from fenced.kernel.netns import socket_in
from fenced.kernel.nfcodec import (
    NETLINK_ADD_MEMBERSHIP,
    NETLINK_NETFILTER,
    NEWGEN,
    NFNL_SUBSYS_NFTABLES,
    NFNLGRP_NFTABLES,
    NFPROTO_INET,
    NFT_MSG_NAMES,
    NFTA_GEN_ID,
    NFTA_GEN_PROC_NAME,
    NFTA_GEN_PROC_PID,
    NLMSGHDR,
    SOL_NETLINK,
    attr_payloads,
    be32,
    walk_messages,
)

__all__ = ["OWN_PORTIDS", "Commit", "CommitParser", "NftMonitor"]

#: Netlink port ids of the NftNetlink sockets this process opened: commits from them are
#: fenced's own (change notifications name the committing socket's port).
OWN_PORTIDS: set[int] = set()


@dataclass(frozen=True)
class Commit:
    """One committed nf_tables transaction as notifications describe it.

    ``generation`` is the ruleset generation it produced, ``pid`` and ``process`` who
    committed it (``pid`` as the initial PID namespace numbers it), ``portid`` the
    netlink port of the committing socket (for sockets bound to port 0 the kernel takes
    the process id as the committer's own PID namespace numbers it), ``changes`` counts
    the messages by type name (``DELRULE``, ``DELSETELEM``, ...) that concerned the
    watched table.
    """

    generation: int
    pid: int
    process: str
    changes: Mapping[str, int]
    portid: int = 0


class CommitParser:
    """Turns the notification stream into ``Commit`` values for one table. Pure.

    Every nf_tables object message carries its table's name as attribute 1 (tables,
    chains, rules, sets, elements, objects and flowtables alike); a transaction ends with
    ``NEWGEN``, which names the committing process. Messages about other tables (or
    other families) are ignored; a commit that touched none of the watched table's
    objects yields a ``Commit`` with empty ``changes``.
    """

    def __init__(self, table: str, family: int = NFPROTO_INET) -> None:
        self.table = table.encode()
        self.family = family
        self._pending: dict[str, int] = {}

    def feed(self, data: bytes) -> list[Commit]:
        """Parse one datagram of notifications; return the commits it completed."""
        commits: list[Commit] = []
        for _seq, mtype, _flags, portid, start, end in walk_messages(data, len(data)):
            if mtype >> 8 != NFNL_SUBSYS_NFTABLES or end - start < NLMSGHDR.size + 4:
                continue
            family = data[start + NLMSGHDR.size]
            attrs = attr_payloads(data, start + NLMSGHDR.size + 4, end)
            if mtype == NEWGEN:
                commits.append(
                    Commit(
                        generation=be32(attrs.get(NFTA_GEN_ID)),
                        pid=be32(attrs.get(NFTA_GEN_PROC_PID)),
                        process=attrs.get(NFTA_GEN_PROC_NAME, b"")
                        .rstrip(b"\0")
                        .decode(errors="replace"),
                        changes=dict(self._pending),
                        portid=portid,
                    )
                )
                self._pending.clear()
            elif family == self.family and attrs.get(1, b"").rstrip(b"\0") == self.table:
                msg = mtype & 0xFF
                name = NFT_MSG_NAMES[msg] if msg < len(NFT_MSG_NAMES) else str(msg)
                self._pending[name] = self._pending.get(name, 0) + 1
        return commits


class NftMonitor:
    """A non-blocking socket subscribed to nf_tables change notifications.

    Register ``fileno()`` with an event loop and call ``read()`` when it is readable: it
    returns the commits completed so far (see ``CommitParser``). ``overrun`` becomes true
    when the kernel dropped notifications (ENOBUFS); the caller should then assume
    anything may have changed. The socket lives in the namespace at ``netns_path``
    (``None``: the process's own).
    """

    def __init__(self, table: str, netns_path: str | None = None) -> None:
        sock = socket_in(netns_path, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            sock.bind((0, 0))
            sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._parser = CommitParser(table)
        self.overrun = False

    def fileno(self) -> int:
        """The socket's file descriptor."""
        return self._sock.fileno()

    def read(self) -> list[Commit]:
        """Every commit whose notifications have arrived (never blocks)."""
        commits: list[Commit] = []
        while True:
            try:
                data = self._sock.recv(1 << 20)
            except BlockingIOError:
                return commits
            except OSError as exc:
                if exc.errno == errno_mod.ENOBUFS:
                    self.overrun = True
                    continue
                raise
            commits += self._parser.feed(data)

    def close(self) -> None:
        """Close the socket."""
        self._sock.close()
