"""Connection tracking over netlink (pyroute2): forgetting DNS flows of a gone gateway port.

A gateway policy's DNS flows live in that policy's conntrack zone (see
``fenced.core.ruleset.dns_zones``), and the entry of each flow remembers the loopback port its
first packet was redirected to. A client that keeps its UDP socket (a caching stub, a
runtime's long-lived resolver socket) renews that entry with every query, so once the
gateway listens on another port (fenced restarted, or a reload started a new gateway for
the policy) the entry would keep sending the client's queries to the old, closed port for
as long as the client keeps asking. ``KernelConntrack.forget_stale_redirects`` deletes
exactly those entries, right after the ruleset that redirects to the new port is in
place; the client's next query makes a new entry, redirected to the new port.

Only entries of flows to port 53 (UDP and TCP) in a zone of a current gateway, whose
replies do not come from that gateway's port, are deleted; the kernel filters the dump to
flows to port 53, and every other entry of the table is left alone. pyroute2's
``AsyncConntrack`` is used as is: it works inside the running event loop, and the dump is
a full netlink dump (unlike its nf_tables set dumps, see docs/ruleset.md).
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from pyroute2.conntrack import AsyncConntrack
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

from fenced.errors import FirewallError

#: The DNS port whose flows a gateway's redirect rewrites.
DNS_PORT = 53
_FAMILIES = (socket.AF_INET, socket.AF_INET6)
_PROTOS = (socket.IPPROTO_UDP, socket.IPPROTO_TCP)


@dataclass(frozen=True)
class DnsFlow:
    """One conntrack entry of a flow to port 53.

    ``family`` is ``socket.AF_INET`` or ``AF_INET6``, ``proto`` ``IPPROTO_UDP`` or
    ``IPPROTO_TCP``; ``src``, ``dst`` and ``sport`` are the original direction's (the
    client's address and port, the server it asked); ``zone`` is the entry's conntrack
    zone (0 when none was set); ``reply_port`` the source port of its replies: the gateway
    port the flow was redirected to, 53 when it was not redirected. ``id`` is the kernel's
    id of the entry, so a delete never hits a newer entry with the same addresses.
    """

    family: int
    proto: int
    src: str
    dst: str
    sport: int
    zone: int
    reply_port: int
    id: int | None = None


def stale_redirects(flows: Iterable[DnsFlow], ports: Mapping[int, int]) -> list[DnsFlow]:
    """The flows of a zone in ``ports`` whose replies come from another port than its gateway's.

    ``ports`` maps a zone to its gateway's port now; a flow with replies from another port
    went to a gateway that is gone (or was never redirected). Flows of zones not in
    ``ports`` are never chosen, whatever their ports.
    """
    return [f for f in flows if f.zone in ports and f.reply_port != ports[f.zone]]


class Conntrack(Protocol):
    """What the daemon needs from the kernel's connection tracking (may raise FirewallError)."""

    async def forget_stale_redirects(self, ports: Mapping[int, int]) -> int:
        """Delete the ``stale_redirects`` of the table for ``ports``; return how many went."""


class KernelConntrack:
    """The connection tracking table of the network namespace fenced runs in, over netlink."""

    async def dns_flows(self) -> list[DnsFlow]:
        """Every entry of a UDP or TCP flow to port 53 (IPv4 and IPv6)."""
        flows: list[DnsFlow] = []
        for family in _FAMILIES:
            ct = AsyncConntrack(nfgen_family=family)
            try:
                await ct.setup_endpoint()
                for proto in _PROTOS:
                    wanted = NFCTAttrTuple(family=family, proto=proto, dport=DNS_PORT)
                    async for e in await ct.dump_entries(tuple_orig=wanted):
                        flows.append(
                            DnsFlow(
                                family,
                                proto,
                                str(e.tuple_orig.saddr),
                                str(e.tuple_orig.daddr),
                                int(e.tuple_orig.sport),
                                int(e.zone or 0),
                                int(e.tuple_reply.sport),
                                e.id,
                            )
                        )
            except (NetlinkError, OSError) as exc:
                raise _error("dump DNS flows", exc) from exc
            finally:
                ct.close()
        return flows

    async def delete(self, flows: Iterable[DnsFlow]) -> int:
        """Delete ``flows``' entries; return how many were deleted (a gone entry is skipped)."""
        done = 0
        for family in _FAMILIES:
            mine = [f for f in flows if f.family == family]
            if not mine:
                continue
            ct = AsyncConntrack(nfgen_family=family)
            try:
                await ct.setup_endpoint()
                for f in mine:
                    orig = NFCTAttrTuple(
                        family=family,
                        saddr=f.src,
                        daddr=f.dst,
                        proto=f.proto,
                        sport=f.sport,
                        dport=DNS_PORT,
                    )
                    try:
                        await ct.entry("del", tuple_orig=orig, zone=f.zone, id=f.id)
                    except NetlinkError as exc:
                        if exc.code != errno.ENOENT:  # ENOENT: expired or replaced meanwhile
                            raise
                    else:
                        done += 1
            except (NetlinkError, OSError) as exc:
                raise _error("delete stale DNS flows", exc) from exc
            finally:
                ct.close()
        return done

    async def forget_stale_redirects(self, ports: Mapping[int, int]) -> int:
        """See ``Conntrack.forget_stale_redirects``."""
        if not ports:
            return 0
        return await self.delete(stale_redirects(await self.dns_flows(), ports))


def _error(operation: str, exc: NetlinkError | OSError) -> FirewallError:
    code = exc.code if isinstance(exc, NetlinkError) else exc.errno
    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    if isinstance(exc, NetlinkError) and code:
        detail = f"{detail} ({errno.errorcode.get(abs(code), code)})"
    return FirewallError(f"conntrack: {operation}", detail, abs(code) if code else None)


@dataclass
class FakeConntrack:
    """An in-memory conntrack table for unit tests: ``flows`` is what the kernel holds.

    ``calls`` records each ``ports`` argument; ``fail`` makes the next call raise.
    """

    flows: list[DnsFlow] = field(default_factory=list)
    calls: list[dict[int, int]] = field(default_factory=list)
    fail: FirewallError | None = None

    async def forget_stale_redirects(self, ports: Mapping[int, int]) -> int:
        """See ``Conntrack.forget_stale_redirects``."""
        self.calls.append(dict(ports))
        if self.fail is not None:
            exc, self.fail = self.fail, None
            raise exc
        stale = stale_redirects(self.flows, ports)
        self.flows = [f for f in self.flows if f not in stale]
        return len(stale)


__all__ = [
    "DNS_PORT",
    "Conntrack",
    "DnsFlow",
    "FakeConntrack",
    "KernelConntrack",
    "stale_redirects",
]
