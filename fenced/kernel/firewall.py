"""The firewall as fenced sees it: install a static ruleset, change set elements, read back.

``Firewall`` is the protocol the daemon uses. ``KernelFirewall`` implements it with the
``nft`` program for the static ruleset (a :class:`~fenced.core.ruleset.Ruleset` rendered
to one ``nft -f`` run, one kernel transaction) and ``fenced.kernel.netlink`` for set and
map elements (fast, batched, all-or-nothing). ``FakeFirewall`` keeps in-memory tables,
applies rulesets as values and element batches all-or-nothing with the kernel's rules
(deleting a missing object or element fails the whole transaction), for unit tests.
"""

from __future__ import annotations

import asyncio
import collections
import errno as errno_mod
import json
import shutil
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from fenced.core.elements import DumpedElement, Element, SetOp, Verdict, uid_key
from fenced.core.ruleset import AddTable, Delete, Existing, Flush, Ruleset, Table, render
from fenced.errors import FirewallError
from fenced.kernel.netlink import NftNetlink


class Firewall(Protocol):
    """What the daemon needs from the kernel's nf_tables (all methods may raise FirewallError)."""

    async def existing(self, table: str) -> Existing | None:
        """Names of the objects in ``inet table``, or None when the table does not exist."""

    async def install(self, ruleset: Ruleset) -> None:
        """Apply ``ruleset`` as one transaction: all of it applies, or none of it."""

    async def apply(self, ops: Sequence[SetOp]) -> None:
        """Apply element changes as one transaction: all of them, or none."""

    async def dump(self, table: str, set_name: str) -> list[DumpedElement]:
        """Every element of a set or map, with timeouts and verdicts."""

    async def counters(self, table: str) -> dict[str, int]:
        """Packets counted by each named counter of ``inet table``."""

    async def delete_table(self, table: str) -> None:
        """Remove ``inet table`` if it exists."""


#: PIDs of the last ``nft`` processes fenced ran, so that its own commits can be told apart
#: from foreign ones in change notifications.
OWN_NFT_PIDS: collections.deque[int] = collections.deque(maxlen=64)


async def _run_nft(
    args: Sequence[str], stdin: str | None, operation: str, netns_path: str | None = None
) -> str:
    nft = shutil.which("nft")
    if nft is None:
        raise FirewallError(operation, "the nft program is not installed (apt install nftables)")
    prefix = ["nsenter", f"--net={netns_path}", "--"] if netns_path else []
    proc = await asyncio.create_subprocess_exec(
        *prefix,
        nft,
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    OWN_NFT_PIDS.append(proc.pid)
    out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    if proc.returncode != 0:
        detail = err.decode(errors="replace").strip() or f"nft exited with {proc.returncode}"
        raise FirewallError(operation, detail)
    return out.decode()


def parse_terse_listing(text: str) -> Existing:
    """Object names from ``nft -j -t list table`` output."""
    chains: set[str] = set()
    sets: set[str] = set()
    counters: set[str] = set()
    for item in json.loads(text).get("nftables", []):
        if "chain" in item:
            chains.add(item["chain"]["name"])
        elif "set" in item:
            sets.add(item["set"]["name"])
        elif "map" in item:
            sets.add(item["map"]["name"])
        elif "counter" in item:
            counters.add(item["counter"]["name"])
    return Existing(frozenset(chains), frozenset(sets), frozenset(counters))


class KernelFirewall:
    """The real thing, in the network namespace fenced runs in.

    ``netns_path`` (e.g. ``/run/netns/NAME``) makes it act on another namespace instead;
    the daemon never sets it (it runs inside the namespace it guards), tests do.
    """

    def __init__(self, netns_path: str | None = None) -> None:
        self._netns = netns_path
        self._nl: NftNetlink | None = None
        self._lock = threading.Lock()

    def _netlink(self) -> NftNetlink:
        if self._nl is None:
            self._nl = NftNetlink(self._netns)
        return self._nl

    async def _nft(self, args: Sequence[str], stdin: str | None, operation: str) -> str:
        return await _run_nft(args, stdin, operation, self._netns)

    async def existing(self, table: str) -> Existing | None:
        """See ``Firewall.existing``."""
        try:
            out = await self._nft(["-j", "-t", "list", "table", "inet", table], None, "list table")
        except FirewallError as exc:
            if "No such file or directory" in exc.detail:
                return None
            raise
        return parse_terse_listing(out)

    async def install(self, ruleset: Ruleset) -> None:
        """See ``Firewall.install``: the rendered script, in one ``nft -f`` run."""
        await self._nft(["-f", "-"], render(ruleset), "install ruleset")

    def _apply_sync(self, ops: Sequence[SetOp]) -> None:
        with self._lock:
            self._netlink().apply(ops)

    def _dump_sync(self, table: str, set_name: str) -> list[DumpedElement]:
        with self._lock:
            return self._netlink().dump("inet", table, set_name)

    async def apply(self, ops: Sequence[SetOp]) -> None:
        """See ``Firewall.apply``. Large batches are encoded off the event loop."""
        if not ops:
            return
        if sum(len(op.elements) for op in ops) < 512:
            self._apply_sync(ops)
        else:
            await asyncio.to_thread(self._apply_sync, ops)

    async def dump(self, table: str, set_name: str) -> list[DumpedElement]:
        """See ``Firewall.dump``."""
        return await asyncio.to_thread(self._dump_sync, table, set_name)

    async def counters(self, table: str) -> dict[str, int]:
        """See ``Firewall.counters``."""
        out = await self._nft(
            ["-j", "list", "counters", "table", "inet", table], None, "list counters"
        )
        result: dict[str, int] = {}
        for item in json.loads(out).get("nftables", []):
            if "counter" in item:
                result[item["counter"]["name"]] = int(item["counter"].get("packets", 0))
        return result

    async def delete_table(self, table: str) -> None:
        """See ``Firewall.delete_table``."""
        try:
            await self._nft(["delete", "table", "inet", table], None, "delete table")
        except FirewallError as exc:
            if "No such file or directory" not in exc.detail:
                raise

    def close(self) -> None:
        """Close the netlink socket."""
        if self._nl is not None:
            self._nl.close()
            self._nl = None


@dataclass
class FakeTable:
    """The in-memory state of one table in ``FakeFirewall``."""

    chains: set[str] = field(default_factory=set)
    sets: dict[str, dict[bytes, Element]] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    #: The script of the last ruleset that declared the table (as ``nft -f`` would get it).
    script: str = ""
    #: Which of ``sets`` are verdict maps (their elements need a verdict; a set's must not).
    maps: set[str] = field(default_factory=set)

    def copy(self) -> FakeTable:
        """A copy whose chains, sets (and their elements), counters and maps change alone."""
        sets = {k: dict(v) for k, v in self.sets.items()}
        return FakeTable(set(self.chains), sets, dict(self.counters), self.script, set(self.maps))


class FakeFirewall:
    """An in-memory firewall with the kernel's all-or-nothing rules, for unit tests.

    ``install`` applies a :class:`~fenced.core.ruleset.Ruleset`'s commands in order to a
    staged copy and keeps it only if every command succeeded (deleting or flushing what
    does not exist fails; elements of sets survive ``flush table``; the elements of uid and
    gid maps are stored as declared). ``apply`` validates the whole batch against the current state
    before changing anything, with the kernel's errors: ENOENT for a missing set or a
    deleted missing element, EINVAL for a verdict given to a set or missing for a map,
    EEXIST for a map element written with another verdict than the one it has; ops without
    elements (other than ``flush``) are skipped, as ``NftNetlink.apply`` skips them. Set
    ``fail_next`` to make the next call raise, as a kernel error would.
    """

    def __init__(self) -> None:
        self.tables: dict[str, FakeTable] = {}
        self.fail_next: FirewallError | None = None
        self.calls: list[str] = []

    def _maybe_fail(self, what: str) -> None:
        self.calls.append(what)
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc

    async def existing(self, table: str) -> Existing | None:
        """See ``Firewall.existing``."""
        t = self.tables.get(table)
        if t is None:
            return None
        return Existing(frozenset(t.chains), frozenset(t.sets), frozenset(t.counters))

    async def install(self, ruleset: Ruleset) -> None:
        """See ``Firewall.install``."""
        self._maybe_fail("install")
        staged = {name: t.copy() for name, t in self.tables.items()}
        for cmd in ruleset.commands:
            if isinstance(cmd, AddTable):
                staged.setdefault(cmd.table, FakeTable())
            elif isinstance(cmd, Table):
                _fake_declare(staged.setdefault(cmd.name, FakeTable()), cmd)
                staged[cmd.name].script = render(ruleset)
            else:
                _fake_command(staged, cmd)
        self.tables = staged

    async def apply(self, ops: Sequence[SetOp]) -> None:
        """See ``Firewall.apply``: validated whole, then applied whole."""
        self._maybe_fail("apply")
        staged = {name: {k: dict(v) for k, v in t.sets.items()} for name, t in self.tables.items()}
        for op in ops:
            if op.action != "flush" and not op.elements:
                continue  # nothing is sent to the kernel for it
            what = f"{op.action} elements of {op.set}"
            sets = staged.get(op.table)
            if sets is None or op.set not in sets:
                raise FirewallError(what, "No such file or directory", errno_mod.ENOENT)
            elems = sets[op.set]
            if op.action == "flush":
                elems.clear()
            is_map = op.set in self.tables[op.table].maps
            for e in op.elements:
                if op.action != "delete" and (e.verdict is not None) != is_map:
                    raise FirewallError(what, "Invalid argument", errno_mod.EINVAL)
                if op.action == "delete":
                    if e.key not in elems:
                        raise FirewallError(what, "No such file or directory", errno_mod.ENOENT)
                    del elems[e.key]
                    continue
                _check_verdict(elems, e, what)
                if op.action == "discard":
                    elems.pop(e.key, None)
                else:  # add, refresh
                    elems[e.key] = e
        for name, sets in staged.items():
            self.tables[name].sets = sets

    async def dump(self, table: str, set_name: str) -> list[DumpedElement]:
        """See ``Firewall.dump`` (timeouts are reported as given, expiry as the timeout)."""
        t = self.tables.get(table)
        if t is None or set_name not in t.sets:
            raise FirewallError(f"list elements of {set_name}", "No such file or directory", 2)
        return [
            DumpedElement(
                key=e.key, timeout_ms=e.timeout_ms, expires_ms=e.timeout_ms, verdict=e.verdict
            )
            for e in t.sets[set_name].values()
        ]

    async def counters(self, table: str) -> dict[str, int]:
        """See ``Firewall.counters`` (a missing table raises, as ``nft`` fails then)."""
        t = self.tables.get(table)
        if t is None:
            raise FirewallError("list counters", "No such file or directory")
        return dict(t.counters)

    async def delete_table(self, table: str) -> None:
        """See ``Firewall.delete_table``."""
        self._maybe_fail("delete_table")
        self.tables.pop(table, None)


def _check_verdict(elems: dict[bytes, Element], el: Element, what: str) -> None:
    """Raise EEXIST, as the kernel does, if ``el`` exists in a map with another verdict."""
    have = elems.get(el.key)
    if have is not None and have.verdict != el.verdict:
        raise FirewallError(what, "File exists", errno_mod.EEXIST)


def _fake_declare(t: FakeTable, tbl: Table) -> None:
    """Declare ``tbl``'s objects in the fake's staged table, with uid and gid map elements."""
    t.chains.update(c.name for c in tbl.chains)
    for c in tbl.counters:
        t.counters.setdefault(c, 0)
    for ds in tbl.sets:
        t.sets.setdefault(ds.name, {})
    for m in tbl.maps:
        elems = t.sets.setdefault(m.name, {})
        t.maps.add(m.name)
        if m.key not in ("uid", "gid"):
            continue
        for key, chain in m.elements:
            el = Element(uid_key(int(key)), verdict=Verdict("jump", chain))
            _check_verdict(elems, el, f"add elements to {m.name}")
            elems[el.key] = el


def _fake_command(tables: dict[str, FakeTable], cmd: Flush | Delete) -> None:
    """Apply a flush or a delete to the fake's staged tables; FirewallError if it is missing."""
    t = tables.get(cmd.table)
    missing = FirewallError("install ruleset", f"fake: no {cmd.kind} {cmd.name or cmd.table}")
    if t is None:
        raise missing
    if cmd.kind == "table":
        if isinstance(cmd, Delete):
            del tables[cmd.table]
        # flush table: rules go, which the fake does not hold; elements stay
    elif cmd.kind == "map":
        if cmd.name not in t.maps:
            raise missing
        t.sets[cmd.name].clear()
    elif cmd.kind == "set":
        if cmd.name not in t.sets:
            raise missing
        del t.sets[cmd.name]
        t.maps.discard(cmd.name)
    elif cmd.kind == "chain":
        if cmd.name not in t.chains:
            raise missing
        t.chains.discard(cmd.name)
    else:
        if cmd.name not in t.counters:
            raise missing
        del t.counters[cmd.name]
