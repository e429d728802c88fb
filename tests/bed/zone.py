"""The DNS zone a test controls at run time, and the query log of a bed DNS server.

``Zone`` (``bed.dns``) keeps the zone in memory and writes it as JSON to a file that the
DNS server (``tests.bed.dnsserver``) re-reads whenever the file changes; every write is
atomic (a rename), so a change is visible to the very next query. The JSON format::

    {"records": {NAME: {RTYPE: {"ttl": INT, "values": [STR, ...]}}},
     "rotate": {NAME: {RTYPE: {"ttl": INT, "pool": [STR, ...], "per_query": INT}}},
     "servfail": [NAME, ...], "drop": [NAME, ...], "delay": {NAME: SECONDS},
     "blackhole": BOOL, "negative_ttl": INT, "garbage": {NAME: MODE}}

Names are stored in lower case without the trailing dot. The server appends one JSON line
per query received to a log file, read by ``queries()``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple, Protocol

#: Record types a test can set.
RTYPES = ("A", "AAAA", "TXT", "CNAME")
DEFAULT_TTL = 300
DEFAULT_NEGATIVE_TTL = 30


def normalize(name: str) -> str:
    """Return ``name`` in the zone's canonical form: lower case, no trailing dot.

    Raises ValueError for the root or for an empty label.
    """
    n = name.strip().lower().rstrip(".")
    if not n or any(not label for label in n.split(".")):
        raise ValueError(f"invalid DNS name: {name!r}")
    return n


def empty_zone() -> dict[str, Any]:
    """Return the JSON document of a zone without any data (every name is NXDOMAIN)."""
    return {
        "records": {},
        "rotate": {},
        "servfail": [],
        "drop": [],
        "delay": {},
        "blackhole": False,
        "negative_ttl": DEFAULT_NEGATIVE_TTL,
        "garbage": {},
    }


def write_atomically(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON to ``path`` through a rename (readers never see a partial file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, sort_keys=True))
    tmp.chmod(0o644)
    os.replace(tmp, path)


class Query(NamedTuple):
    """One query as logged by a bed DNS server."""

    name: str
    """The query name, normalized (lower case, no trailing dot)."""
    rtype: str
    """The query type as text, e.g. ``"A"``."""
    transport: str
    """``"udp"`` or ``"tcp"``."""
    client: str
    """The client's address as text."""


def read_query_log(path: Path) -> list[Query]:
    """Return the queries logged in ``path`` so far (empty if the file does not exist)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    out: list[Query] = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line being written right now
            continue
        out.append(Query(rec["name"], rec["type"], rec["transport"], rec["client"]))
    return out


class ServerControl(Protocol):
    """What a ``Zone`` needs from the process that serves it."""

    def start(self) -> None:
        """Start the server and wait until it answers."""

    def stop(self) -> None:
        """Stop the server (its addresses stay, so UDP queries are refused)."""

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""

    @property
    def pid(self) -> int | None:
        """The server's PID, or None while stopped."""


class QueryLog:
    """Read access to a DNS server's query log, plus control of the server process."""

    def __init__(self, log_path: Path, server: ServerControl | None = None) -> None:
        """Wrap the log file ``log_path``; ``server`` (if given) backs ``start``/``stop``."""
        self.log_path = log_path
        self._server = server

    def queries(self) -> list[Query]:
        """Return every query received since the start or the last ``clear_queries()``.

        Each entry is a ``Query`` (a tuple ``(name, rtype, transport, client)``); names are
        normalized. Dropped, delayed and failed queries are logged too (at receipt).
        """
        return read_query_log(self.log_path)

    def clear_queries(self) -> None:
        """Forget the queries logged so far."""
        with contextlib.suppress(FileNotFoundError):
            self.log_path.write_text("")

    def wait_for_query(
        self,
        name: str,
        rtype: str | None = None,
        timeout: float = 5.0,
        predicate: Callable[[Query], bool] | None = None,
    ) -> Query:
        """Wait until a query for ``name`` (and ``rtype`` if given) is logged; return it.

        Raises TimeoutError after ``timeout`` seconds.
        """
        want = normalize(name)
        deadline = time.monotonic() + timeout
        while True:
            for q in self.queries():
                if (
                    q.name == want
                    and (rtype is None or q.rtype == rtype.upper())
                    and (predicate is None or predicate(q))
                ):
                    return q
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no query for {want} {rtype or ''} within {timeout} s")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop the DNS server process (simulates the resolver going away: queries are refused).

        The zone is kept; ``start()`` brings the server back with it.
        """
        if self._server is None:
            raise RuntimeError("this query log has no server to stop")
        self._server.stop()

    def start(self) -> None:
        """Start the DNS server process again (no-op if it runs) and wait until it is ready."""
        if self._server is None:
            raise RuntimeError("this query log has no server to start")
        if not self._server.running:
            self._server.start()

    @property
    def running(self) -> bool:
        """Whether the DNS server process is alive."""
        return self._server is not None and self._server.running

    @property
    def pid(self) -> int | None:
        """The DNS server's PID, or None while stopped."""
        return self._server.pid if self._server is not None else None


class Zone(QueryLog):
    """The zone served by the bed resolver (``bed.dns``); every change applies at once.

    Unknown names are NXDOMAIN; a name that has data of other types answers NOERROR without
    answers (NODATA). Negative answers carry an SOA whose minimum is ``negative_ttl``.
    CNAMEs are followed within the zone (the answer holds the chain and the final records).
    ``servfail``/``drop``/``delay`` apply when the name is the query name or any name on its
    CNAME chain.
    """

    def __init__(self, zone_path: Path, log_path: Path, server: ServerControl | None = None):
        """Manage the zone file ``zone_path`` (created empty) and the log ``log_path``."""
        super().__init__(log_path, server)
        self.zone_path = zone_path
        self._data = empty_zone()
        self._write()

    # -- records ----------------------------------------------------------------------
    def set(
        self, name: str, rtype: str, values: str | Iterable[str], ttl: int = DEFAULT_TTL
    ) -> None:
        """Set the records of type ``rtype`` (A, AAAA, TXT or CNAME) at ``name``.

        ``values`` is one value or a list (addresses for A/AAAA, strings for TXT, one target
        name for CNAME). Replaces earlier records or a rotation of that type. A CNAME cannot
        coexist with other types at the same name (ValueError): ``remove`` them first.
        """
        n, t = normalize(name), self._rtype(rtype)
        vals = self._values(t, values)
        recs: dict[str, Any] = self._data["records"].get(n, {})
        others = set(recs) | set(self._data["rotate"].get(n, {}))
        others.discard(t)
        if others and (t == "CNAME" or "CNAME" in others):
            raise ValueError(f"{n}: CNAME cannot coexist with {sorted(others)}")
        recs[t] = {"ttl": int(ttl), "values": vals}
        self._data["records"][n] = recs
        self._drop_rotation(n, t)
        self._write()

    def rotate(
        self,
        name: str,
        rtype: str,
        pool: Iterable[str],
        per_query: int,
        ttl: int = DEFAULT_TTL,
    ) -> None:
        """Answer ``name``/``rtype`` round-robin from ``pool``, ``per_query`` values at a time.

        Query k (counted per name and type by the server) gets the values at positions
        ``k*per_query .. k*per_query+per_query-1`` of the pool, modulo its size, so
        consecutive queries see different subsets when the pool is larger than
        ``per_query``. Replaces plain records of that type.
        """
        n, t = normalize(name), self._rtype(rtype)
        if t == "CNAME":
            raise ValueError("rotate does not apply to CNAME")
        vals = self._values(t, pool)
        if not 1 <= per_query <= len(vals):
            raise ValueError(f"per_query must be within 1..{len(vals)}")
        if "CNAME" in self._data["records"].get(n, {}):
            raise ValueError(f"{n}: has a CNAME")
        self._data["rotate"].setdefault(n, {})[t] = {
            "ttl": int(ttl),
            "pool": vals,
            "per_query": per_query,
        }
        recs = self._data["records"].get(n)
        if recs is not None:
            recs.pop(t, None)
            if not recs:
                del self._data["records"][n]
        self._write()

    def remove(self, name: str, rtype: str | None = None) -> None:
        """Remove the records (and rotation) of ``rtype`` at ``name``, or all data if None.

        With ``rtype=None`` the name's servfail/drop/delay settings go too, and it becomes
        NXDOMAIN. Removing what does not exist is not an error.
        """
        n = normalize(name)
        if rtype is None:
            self._data["records"].pop(n, None)
            self._data["rotate"].pop(n, None)
            self._set_flag("servfail", n, False)
            self._set_flag("drop", n, False)
            self._data["delay"].pop(n, None)
        else:
            t = self._rtype(rtype)
            recs = self._data["records"].get(n)
            if recs is not None:
                recs.pop(t, None)
                if not recs:
                    del self._data["records"][n]
            self._drop_rotation(n, t)
        self._write()

    def nxdomain(self, name: str) -> None:
        """Make ``name`` nonexistent (NXDOMAIN): the same as ``remove(name)``."""
        self.remove(name)

    # -- behaviours -------------------------------------------------------------------
    def servfail(self, name: str, on: bool = True) -> None:
        """Answer SERVFAIL for ``name`` (``on=False`` restores normal answers)."""
        self._set_flag("servfail", normalize(name), on)
        self._write()

    def drop(self, name: str, on: bool = True) -> None:
        """Never answer queries for ``name`` (``on=False`` restores answers)."""
        self._set_flag("drop", normalize(name), on)
        self._write()

    def delay(self, name: str, seconds: float) -> None:
        """Answer queries for ``name`` only after ``seconds`` (0 removes the delay)."""
        n = normalize(name)
        if seconds > 0:
            self._data["delay"][n] = float(seconds)
        else:
            self._data["delay"].pop(n, None)
        self._write()

    def garbage(self, name: str, mode: str | None) -> None:
        """Answer queries for ``name`` with a malformed or hostile message (None: normal).

        Modes (see ``tests.bed.dnsserver.GARBAGE_MODES``): ``random`` (the query id, then
        random bytes), ``truncated`` (the real answer cut in half), ``bad_rdata`` (an A
        record whose data is 5 bytes long), ``cname_loop`` (name -> loop.NAME -> name),
        ``other_name`` (A records of another owner, 203.0.113.10, and none for the name),
        ``wrong_id`` (the real answer with another message id).
        """
        n = normalize(name)
        garbage: dict[str, str] = self._data.setdefault("garbage", {})
        if mode is None:
            garbage.pop(n, None)
        else:
            garbage[n] = mode
        self._write()

    def blackhole(self, on: bool = True) -> None:
        """Stop answering every query while the server stays up (queries time out)."""
        self._data["blackhole"] = bool(on)
        self._write()

    def negative_ttl(self, seconds: int) -> None:
        """Set the SOA minimum (negative caching TTL) sent with NXDOMAIN/NODATA answers."""
        self._data["negative_ttl"] = int(seconds)
        self._write()

    def clear(self) -> None:
        """Remove every name and behaviour: the zone is empty again."""
        self._data = empty_zone()
        self._write()

    def snapshot(self) -> dict[str, Any]:
        """Return a copy of the zone document as written for the server."""
        copy: dict[str, Any] = json.loads(json.dumps(self._data))
        return copy

    # -- helpers ----------------------------------------------------------------------
    @staticmethod
    def _rtype(rtype: str) -> str:
        t = rtype.upper()
        if t not in RTYPES:
            raise ValueError(f"unsupported record type {rtype!r} (one of {RTYPES})")
        return t

    @staticmethod
    def _values(rtype: str, values: str | Iterable[str]) -> list[str]:
        vals = [values] if isinstance(values, str) else list(values)
        if not vals:
            raise ValueError("no values: use remove() to delete records")
        if rtype == "A":
            vals = [str(ipaddress.IPv4Address(v)) for v in vals]
        elif rtype == "AAAA":
            vals = [str(ipaddress.IPv6Address(v)) for v in vals]
        elif rtype == "CNAME":
            if len(vals) != 1:
                raise ValueError("a CNAME has exactly one target")
            vals = [normalize(vals[0])]
        return vals

    def _drop_rotation(self, n: str, t: str) -> None:
        rot = self._data["rotate"].get(n)
        if rot is not None:
            rot.pop(t, None)
            if not rot:
                del self._data["rotate"][n]

    def _set_flag(self, key: str, n: str, on: bool) -> None:
        names: list[str] = self._data[key]
        if on and n not in names:
            names.append(n)
        elif not on and n in names:
            names.remove(n)

    def _write(self) -> None:
        write_atomically(self.zone_path, self._data)
