"""The vocabulary of set and map changes: elements, verdicts, operations and keys. Pure.

These values say *what* to change in an nf_tables set or verdict map; they are validated
as they are built (:class:`~fenced.errors.TransactionError`), so a bad change never
reaches the kernel. The planner and the daemon build them, :mod:`fenced.kernel.nfcodec` encodes
them for the kernel, and the fake firewall applies them in memory. Nothing here does I/O.

Limits are the kernel's (``linux/netfilter/nf_tables.h``): ``NFT_DATA_VALUE_MAXLEN`` is the
largest key or value, ``NFT_NAME_MAXLEN`` the longest name including its NUL.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Final, Literal, get_args

from fenced.errors import TransactionError

__all__ = [
    "FAMILIES",
    "MAX_TIMEOUT_MS",
    "NFT_DATA_VALUE_MAXLEN",
    "NFT_NAME_MAXLEN",
    "VERDICT_KINDS",
    "Action",
    "DumpedElement",
    "Element",
    "Family",
    "SetOp",
    "Verdict",
    "VerdictKind",
    "cgroup_key",
    "check_name",
    "describe_key",
    "ipv4_key",
    "ipv6_key",
    "key_to_cgroup_id",
    "key_to_ip",
    "uid_key",
]

NFT_DATA_VALUE_MAXLEN: Final = 64
NFT_NAME_MAXLEN: Final = 256
#: NFTA_SET_ELEM_TIMEOUT/EXPIRATION are be64 milliseconds; the kernel itself accepts up to
#: ~2^44 ms and answers ERANGE beyond, so only the encoding limit is checked here.
MAX_TIMEOUT_MS: Final = (1 << 64) - 1

VerdictKind = Literal["accept", "drop", "jump", "goto", "return", "continue"]
Action = Literal["add", "delete", "flush", "refresh", "discard"]
#: nf_tables table families fenced's element writes may name.
Family = Literal["inet", "ip", "ip6"]
VERDICT_KINDS: Final[tuple[VerdictKind, ...]] = get_args(VerdictKind)
FAMILIES: Final[tuple[Family, ...]] = get_args(Family)


@dataclass(frozen=True)
class Verdict:
    """The data of a verdict-map element.

    ``chain`` names a chain of the same table and is required for ``jump`` and ``goto``
    and forbidden otherwise (:class:`~fenced.errors.TransactionError`).
    """

    kind: VerdictKind
    chain: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in VERDICT_KINDS:
            raise TransactionError(f"unknown verdict {self.kind!r}")
        if self.kind in ("jump", "goto"):
            if not self.chain:
                raise TransactionError(f"verdict {self.kind} needs a chain")
            check_name("chain", self.chain)
        elif self.chain is not None:
            raise TransactionError(f"verdict {self.kind} takes no chain")

    def __str__(self) -> str:
        return f"{self.kind} {self.chain}" if self.chain else self.kind


@dataclass(frozen=True)
class Element:
    """One set or map element to write.

    ``key`` is the raw key exactly as the set stores it (see :func:`ipv4_key`,
    :func:`ipv6_key`, :func:`cgroup_key`, :func:`uid_key`; a concatenation is the fields
    each padded to 4 bytes), 1 to 64 bytes. ``timeout_ms`` is the element's timeout
    (NFTA_SET_ELEM_TIMEOUT; the set needs ``flags timeout`` or a default timeout; in a set
    with a default timeout 0 means that default). ``expiration_ms`` is the time left
    until it expires (NFTA_SET_ELEM_EXPIRATION), used to set an explicit expiry; without
    it a new element expires ``timeout_ms`` from now. ``verdict`` is required for
    verdict maps and must be absent for sets. Only the key is used when deleting.
    Invalid values raise :class:`~fenced.errors.TransactionError`.
    """

    key: bytes
    timeout_ms: int | None = None
    expiration_ms: int | None = None
    verdict: Verdict | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.key, bytes) or not 0 < len(self.key) <= NFT_DATA_VALUE_MAXLEN:
            raise TransactionError(f"element key must be 1-64 bytes, got {self.key!r}")
        for name, value in (("timeout_ms", self.timeout_ms), ("expiration_ms", self.expiration_ms)):
            if value is not None and not 0 <= value <= MAX_TIMEOUT_MS:
                raise TransactionError(f"{name} out of range: {value}")


@dataclass(frozen=True)
class SetOp:
    """One change to one set or map, part of one :meth:`~fenced.kernel.netlink.NftNetlink.apply`.

    Actions (all run in the order given, inside one all-or-nothing transaction):

    ``add``
        NEWSETELEM with NLM_F_CREATE (not EXCL): adding an element that exists is not an
        error, but does NOT reliably reset its expiry (6.18 resets it only when the timeout
        differs or ``expiration_ms`` is given; kernels before 6.12 keep the old expiry in
        more cases), and a map element that exists with a different verdict fails with
        EEXIST.
    ``delete``
        DELSETELEM: every element must exist, or the whole batch fails with ENOENT (an
        element whose timeout has passed counts as missing).
    ``discard``
        Delete if present: NEWSETELEM(key [, verdict]) then DELSETELEM. Never fails for
        a missing element; for maps the verdict given must equal the stored one.
    ``refresh``
        Upsert with a fresh expiry: NEWSETELEM(key [, verdict]) + DELSETELEM + NEWSETELEM
        (full element). The first step makes sure the element exists (a no-op if it
        does), so the delete cannot fail; the delete retires the old element, so the last
        step inserts a new one whose expiry counts from now. This does not depend on how
        a kernel treats re-adding an existing element, only on transactions: all steps
        go to the next generation, which the commit makes current at once, so packets
        see the old element or the new one, never neither. For maps the verdict must
        equal the stored one if the element exists (else EEXIST): to change a verdict,
        put ``delete`` then ``add`` in one batch. (Kernels >= 6.3 also have
        NFT_MSG_DESTROYSETELEM, delete-if-present; not used, to work on older ones.)
    ``flush``
        DELSETELEM without an element list: removes every element; ``elements`` must be
        empty.

    Invalid combinations raise :class:`~fenced.errors.TransactionError`.
    """

    action: Action
    family: Family
    table: str
    set: str
    elements: tuple[Element, ...] = ()

    def __post_init__(self) -> None:
        if self.action not in ("add", "delete", "flush", "refresh", "discard"):
            raise TransactionError(f"unknown set action {self.action!r}")
        if self.family not in FAMILIES:
            raise TransactionError(f"unknown family {self.family!r}")
        check_name("table", self.table)
        check_name("set", self.set)
        if not isinstance(self.elements, tuple):
            raise TransactionError("SetOp.elements must be a tuple")
        if self.action == "flush" and self.elements:
            raise TransactionError("flush takes no elements")

    def describe(self) -> str:
        """Short text for messages, e.g. ``add 3 elements to inet fenced web_v4``."""
        where = f"{self.family} {self.table} {self.set}"
        if self.action == "flush":
            return f"flush {where}"
        n = len(self.elements)
        noun = "element" if n == 1 else "elements"
        prep = {"add": "to", "refresh": "in"}.get(self.action, "from")
        return f"{self.action} {n} {noun} {prep} {where}"


@dataclass(frozen=True)
class DumpedElement:
    """One element as the kernel reports it in a dump.

    ``timeout_ms`` is the element's own timeout when it has one that differs from the
    set's default (the kernel omits it otherwise), ``expires_ms`` the time left before it
    expires (None for elements that never expire), ``verdict`` the data of a verdict map
    and ``data`` the data of a value map. ``flags`` are NFT_SET_ELEM_* flags; a catch-all
    element (``NFT_SET_ELEM_CATCHALL``) has an empty key.
    """

    key: bytes
    timeout_ms: int | None
    expires_ms: int | None
    verdict: Verdict | None = None
    data: bytes | None = None
    flags: int = 0


def check_name(what: str, name: str) -> None:
    """Raise TransactionError unless ``name`` (of a table, set, chain) is a valid nf_tables name."""
    if not isinstance(name, str) or not name or len(name.encode()) >= NFT_NAME_MAXLEN:
        raise TransactionError(f"{what} name must be 1-255 bytes, got {name!r}")
    if "\0" in name:
        raise TransactionError(f"{what} name contains NUL: {name!r}")


# ==========================================================================================
# Keys
# ==========================================================================================


def ipv4_key(addr: str | ipaddress.IPv4Address) -> bytes:
    """The 4-byte key (network order) of an IPv4 address; ValueError for anything else."""
    if isinstance(addr, ipaddress.IPv4Address):
        return addr.packed  # the hot path: no round trip through text
    return ipaddress.IPv4Address(addr).packed


def ipv6_key(addr: str | ipaddress.IPv6Address) -> bytes:
    """The 16-byte key (network order) of an IPv6 address; ValueError for anything else."""
    if isinstance(addr, ipaddress.IPv6Address):
        return addr.packed
    return ipaddress.IPv6Address(addr).packed


def cgroup_key(cgroup_id: int) -> bytes:
    """The 8-byte ``cgroupsv2`` key: the cgroup id (inode of its directory), host order."""
    if not 0 <= cgroup_id < 1 << 64:
        raise ValueError(f"cgroup id out of range: {cgroup_id}")
    return struct.pack("=Q", cgroup_id)


def key_to_cgroup_id(key: bytes) -> int:
    """The cgroup id held in an 8-byte ``cgroupsv2`` key (the inverse of :func:`cgroup_key`)."""
    if len(key) != 8:
        raise ValueError(f"a cgroupsv2 key has 8 bytes, not {len(key)}")
    cid: int = struct.unpack("=Q", key)[0]
    return cid


def uid_key(uid: int) -> bytes:
    """The 4-byte ``uid`` (or ``gid``) key: the id in host byte order."""
    if not 0 <= uid < 1 << 32:
        raise ValueError(f"uid out of range: {uid}")
    return struct.pack("=I", uid)


def key_to_ip(key: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The address of a 4-byte (IPv4) or 16-byte (IPv6) key; ValueError for other lengths."""
    if len(key) == 4:
        return ipaddress.IPv4Address(key)
    if len(key) == 16:
        return ipaddress.IPv6Address(key)
    raise ValueError(f"not an IP address key: {key.hex()}")


def describe_key(key: bytes) -> str:
    """Readable key for error messages (the reading depends on the set's type)."""
    if len(key) == 4:
        return f"{key.hex()} (ip {ipaddress.IPv4Address(key)} / u32 {struct.unpack('=I', key)[0]})"
    if len(key) == 8:
        return f"{key.hex()} (cgroup id {struct.unpack('=Q', key)[0]})"
    if len(key) == 16:
        return f"{key.hex()} (ip6 {ipaddress.IPv6Address(key)})"
    return key.hex()
