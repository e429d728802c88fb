"""The schema of a policy file: its keys, types and defaults, validated into model values.

:func:`parse_documents` takes already parsed TOML documents and injected look-ups (users,
groups, default resolvers) and either returns a :class:`fenced.core.model.Config` or
raises one :class:`~fenced.errors.ConfigError` listing *every* problem it found, each with
its file, key path and reason. The text of each entry is parsed by
:mod:`fenced.config.entries`. Pure: no I/O and no clock; :mod:`fenced.config.files` reads
the files and supplies the system's look-ups.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime, time
from typing import Final, TypeVar

from fenced.config.entries import (
    normalize_cgroup,
    parse_inbound,
    parse_interface,
    parse_listen,
    parse_outbound,
    parse_resolver,
    parse_source,
)
from fenced.core.model import (
    Config,
    DaemonConfig,
    DenyResponse,
    DnsMode,
    IPAddress,
    LogLevel,
    Mode,
    OnExit,
    Policy,
)
from fenced.errors import ConfigError, ConfigProblem

__all__ = [
    "DAEMON_KEYS",
    "LOG_LEVELS",
    "POLICY_KEYS",
    "TOP_KEYS",
    "Lookup",
    "parse_documents",
    "validate",
]

#: A name look-up: the numeric id of a user or group name, ``None`` when there is none.
Lookup = Callable[[str], int | None]

_POLICY_NAME_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,23}")
_TABLE_NAME_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")
_BARE_KEY_RE: Final = re.compile(r"[A-Za-z0-9_-]+")

_MAX_ID: Final = 2**32 - 2  # (uid_t)-1 means "no change" to the kernel, never a real id
_MAX_SECONDS: Final = 2**31 - 1

_MODES: Final[dict[str, Mode]] = {"enforce": "enforce", "audit": "audit"}
_ON_EXIT: Final[dict[str, OnExit]] = {"keep": "keep", "remove": "remove"}
_DNS_MODES: Final[dict[str, DnsMode]] = {"gateway": "gateway", "direct": "direct"}
_DENY_RESPONSES: Final[dict[str, DenyResponse]] = {"nxdomain": "nxdomain", "refused": "refused"}
#: The values of ``daemon.log_level`` (and ``fenced run --log-level``), quietest last.
LOG_LEVELS: Final[dict[str, LogLevel]] = {
    "debug": "debug",
    "info": "info",
    "warning": "warning",
    "error": "error",
}

_T = TypeVar("_T")

#: The keys each table of a policy file may have (anything else is an error).
TOP_KEYS: Final = ("daemon", "policy")
DAEMON_KEYS: Final = (
    "listen",
    "table",
    "resolvers",
    "min_ttl",
    "max_ttl",
    "grace",
    "stale",
    "max_ips_per_name",
    "on_exit",
    "log_level",
)
POLICY_KEYS: Final = (
    "uids",
    "gids",
    "cgroups",
    "interfaces",
    "sources",
    "mode",
    "outbound",
    "inbound",
    "loopback",
    "allow_private",
    "dns",
    "deny_response",
)


# --------------------------------------------------------------------------- documents


def parse_documents(
    docs: Sequence[tuple[str, Mapping[str, object]]],
    *,
    lookup_user: Lookup,
    lookup_group: Lookup,
    default_resolvers: Callable[[], Sequence[str]],
) -> Config:
    """Validate parsed TOML documents and build the :class:`Config` they describe.

    ``docs`` are ``(file path, parsed TOML table)`` pairs, the main file first, then the
    drop-ins in the order they are read. Pure: no I/O and no clock; user and group names
    are resolved with ``lookup_user``/``lookup_group`` and, only when the main file does not
    set ``daemon.resolvers``, ``default_resolvers()`` supplies them.

    Returns a ``Config`` whose policies are sorted by name and whose ``files`` are the
    paths of ``docs``. Raises :class:`ConfigError` listing every problem found (each with
    its file, key path and reason) if anything is wrong. ``docs`` must not be empty
    (``ValueError``).
    """
    if not docs:
        raise ValueError("parse_documents needs at least the main document")
    config, problems = validate(
        list(docs),
        main_ok=True,
        lookup_user=lookup_user,
        lookup_group=lookup_group,
        default_resolvers=default_resolvers,
    )
    if problems or config is None:
        raise ConfigError(problems)
    return config


# --------------------------------------------------------------------------- the validator


def validate(
    docs: list[tuple[str, Mapping[str, object]]],
    *,
    main_ok: bool,
    lookup_user: Lookup,
    lookup_group: Lookup,
    default_resolvers: Callable[[], Sequence[str]],
) -> tuple[Config | None, list[ConfigProblem]]:
    """Validate ``docs`` (main first); return ``(config, [])`` or ``(None, problems)``.

    The collecting form of :func:`parse_documents`, for a loader that has problems of
    its own (unreadable files) to report with these. ``main_ok=False`` skips the main
    file's daemon table (the file did not parse), so that no made-up problems are
    reported for it. The config's ``files`` are the paths of ``docs``; ``docs`` must not
    be empty.
    """
    v = _Validator(lookup_user, lookup_group)
    main_path = docs[0][0]
    daemon = DaemonConfig()
    if main_ok:
        daemon = v.daemon(main_path, docs[0][1].get("daemon", {}), default_resolvers)
    for index, (file, doc) in enumerate(docs):
        v.document(file, doc, main_path if index else None)
    if v.problems:
        return None, v.problems
    policies = tuple(sorted(v.policies.values(), key=lambda p: p.name))
    return Config(daemon=daemon, policies=policies, files=tuple(f for f, _ in docs)), []


class _Validator:
    """Collects problems while it turns TOML values into model values."""

    def __init__(self, lookup_user: Lookup, lookup_group: Lookup) -> None:
        self.lookup_user = lookup_user
        self.lookup_group = lookup_group
        self.problems: list[ConfigProblem] = []
        self.policies: dict[str, Policy] = {}
        self.policy_file: dict[str, str] = {}
        # subject kind -> value -> (policy name, file); a subject belongs to one policy.
        self.owners: dict[str, dict[object, tuple[str, str]]] = {
            "uid": {},
            "gid": {},
            "cgroup": {},
        }

    def problem(self, file: str, key: str, reason: str) -> None:
        self.problems.append(ConfigProblem(file, key, reason))

    # ---- generic helpers

    def unknown_keys(
        self, file: str, prefix: str, table: Mapping[str, object], known: Sequence[str]
    ) -> None:
        for key in table:
            if key in known:
                continue
            hint = difflib.get_close_matches(key, known, n=1)
            reason = "unknown key"
            if hint:
                reason += f" (did you mean {hint[0]!r}?)"
            else:
                reason += f"; known keys: {', '.join(known)}"
            self.problem(file, _join(prefix, key), reason)

    def table(self, file: str, key: str, value: object) -> Mapping[str, object] | None:
        if isinstance(value, Mapping):
            return value
        self.problem(file, key, f"expected a table, got {_describe(value)}")
        return None

    def array(self, file: str, key: str, value: object, what: str) -> list[object] | None:
        if isinstance(value, list | tuple):
            return list(value)
        self.problem(file, key, f"expected an array of {what}, got {_describe(value)}")
        return None

    def integer(
        self,
        file: str,
        key: str,
        table: Mapping[str, object],
        name: str,
        *,
        default: int,
        low: int,
        high: int,
    ) -> int | None:
        if name not in table:
            return default
        value = table[name]
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(file, key, f"expected an integer, got {_describe(value)}")
            return None
        if not low <= value <= high:
            self.problem(file, key, f"must be between {low} and {high}, got {value}")
            return None
        return value

    def boolean(
        self, file: str, key: str, table: Mapping[str, object], name: str, default: bool
    ) -> bool:
        value = table.get(name, default)
        if isinstance(value, bool):
            return value
        self.problem(file, key, f"expected true or false, got {_describe(value)}")
        return default

    def string(
        self, file: str, key: str, table: Mapping[str, object], name: str, default: str
    ) -> str | None:
        value = table.get(name, default)
        if isinstance(value, str):
            return value
        self.problem(file, key, f"expected a string, got {_describe(value)}")
        return None

    def choice(
        self,
        file: str,
        key: str,
        table: Mapping[str, object],
        name: str,
        *,
        default: _T,
        choices: Mapping[str, _T],
    ) -> _T:
        value = self.string(file, key, table, name, "")
        if value is None or name not in table:
            return default
        if value in choices:
            return choices[value]
        allowed = " or ".join(repr(c) for c in choices)
        self.problem(file, key, f"must be {allowed}, got {value!r}")
        return default

    # ---- [daemon]

    def daemon(
        self, file: str, value: object, default_resolvers: Callable[[], Sequence[str]]
    ) -> DaemonConfig:
        d = DaemonConfig()
        table = self.table(file, "daemon", value)
        if table is None:
            return d
        self.unknown_keys(file, "daemon", table, DAEMON_KEYS)

        listen = self.string(file, "daemon.listen", table, "listen", d.listen)
        if listen:
            try:
                parse_listen(listen)
            except ValueError as e:
                self.problem(file, "daemon.listen", str(e))

        table_name = self.string(file, "daemon.table", table, "table", d.table)
        if table_name is not None and not _TABLE_NAME_RE.fullmatch(table_name):
            self.problem(
                file,
                "daemon.table",
                f"bad nft table name {table_name!r}: use 1-32 characters A-Z, a-z, 0-9 and _,"
                " starting with a letter",
            )

        resolvers = self.resolvers(file, table, default_resolvers)

        def seconds(name: str, default: int, low: int) -> int | None:
            return self.integer(
                file, f"daemon.{name}", table, name, default=default, low=low, high=_MAX_SECONDS
            )

        min_ttl = seconds("min_ttl", d.min_ttl, 1)
        max_ttl = seconds("max_ttl", d.max_ttl, 1)
        if min_ttl is not None and max_ttl is not None and max_ttl < min_ttl:
            self.problem(
                file, "daemon.max_ttl", f"must be at least min_ttl ({min_ttl}), got {max_ttl}"
            )
        grace = seconds("grace", d.grace, 0)
        stale = seconds("stale", d.stale, 0)
        max_ips = self.integer(
            file,
            "daemon.max_ips_per_name",
            table,
            "max_ips_per_name",
            default=d.max_ips_per_name,
            low=1,
            high=10000,
        )
        on_exit = self.choice(
            file, "daemon.on_exit", table, "on_exit", default=d.on_exit, choices=_ON_EXIT
        )
        log_level = self.choice(
            file, "daemon.log_level", table, "log_level", default=d.log_level, choices=LOG_LEVELS
        )
        return DaemonConfig(
            listen=listen if listen is not None else d.listen,
            table=table_name if table_name is not None else d.table,
            resolvers=resolvers,
            min_ttl=min_ttl or d.min_ttl,
            max_ttl=max_ttl or d.max_ttl,
            grace=grace if grace is not None else d.grace,
            stale=stale if stale is not None else d.stale,
            max_ips_per_name=max_ips or d.max_ips_per_name,
            on_exit=on_exit,
            log_level=log_level,
        )

    def resolvers(
        self,
        file: str,
        table: Mapping[str, object],
        default_resolvers: Callable[[], Sequence[str]],
    ) -> tuple[IPAddress, ...]:
        key = "daemon.resolvers"
        found: list[IPAddress] = []
        if "resolvers" not in table:
            for text in default_resolvers():
                try:
                    addr = parse_resolver(text)
                except ValueError:
                    continue
                if addr not in found:
                    found.append(addr)
            if not found:
                self.problem(file, key, "not set and /etc/resolv.conf has no nameserver")
            return tuple(found)
        items = self.array(file, key, table["resolvers"], "IP addresses")
        if items is None:
            return ()
        if not items:
            self.problem(
                file,
                key,
                "must list at least one IP address (leave the key out to use the "
                "nameservers in /etc/resolv.conf)",
            )
        for i, item in enumerate(items):
            if not isinstance(item, str):
                self.problem(file, f"{key}[{i}]", f"expected a string, got {_describe(item)}")
                continue
            try:
                addr = parse_resolver(item)
            except ValueError as e:
                self.problem(file, f"{key}[{i}]", str(e))
                continue
            if addr not in found:
                found.append(addr)
        return tuple(found)

    # ---- documents and policies

    def document(self, file: str, doc: Mapping[str, object], main_path: str | None) -> None:
        """Check one document; ``main_path`` is None for the main file itself."""
        self.unknown_keys(file, "", doc, TOP_KEYS)
        if main_path is not None and "daemon" in doc:
            self.problem(file, "daemon", f"[daemon] is allowed only in the main file ({main_path})")
        if "policy" not in doc:
            return
        policies = self.table(file, "policy", doc["policy"])
        if policies is None:
            return
        for name, body in policies.items():
            self.policy(file, name, body)

    def policy(self, file: str, name: str, body: object) -> None:
        key = _join("policy", name)
        usable = True
        if not _POLICY_NAME_RE.fullmatch(name):
            usable = False
            self.problem(
                file,
                key,
                f"bad policy name {name!r}: use 1-24 characters a-z, 0-9 and _, starting "
                "with a letter (the name becomes part of nft chain and set names)",
            )
        elif name in self.policy_file:
            usable = False
            self.problem(
                file,
                key,
                f"policy {name!r} is defined twice: in {self.policy_file[name]} and in {file}",
            )
        table = self.table(file, key, body)
        if table is None:
            return
        if usable:
            self.policy_file[name] = file
        self.unknown_keys(file, key, table, POLICY_KEYS)

        uids = self.ids(file, key, table, "uids", what="user", lookup=self.lookup_user)
        gids = self.ids(file, key, table, "gids", what="group", lookup=self.lookup_group)
        cgroups = self.cgroups(file, key, table)
        interfaces = self.strings(file, key, table, "interfaces", parse_interface)
        sources = self.strings(file, key, table, "sources", parse_source)
        subject_keys = ("uids", "gids", "cgroups", "interfaces", "sources")
        given = sum(len(v) for f in subject_keys if isinstance(v := table.get(f), list))
        if not given:
            self.problem(
                file,
                key,
                "policy confines nothing: give at least one of uids, gids, cgroups, "
                "interfaces or sources",
            )

        mode = self.choice(file, f"{key}.mode", table, "mode", default="enforce", choices=_MODES)
        outbound = self.entries(file, key, table, "outbound", parse_outbound)
        inbound = self.entries(file, key, table, "inbound", parse_inbound)
        loopback = self.boolean(file, f"{key}.loopback", table, "loopback", False)
        allow_private = self.boolean(file, f"{key}.allow_private", table, "allow_private", False)
        dns = self.choice(file, f"{key}.dns", table, "dns", default="gateway", choices=_DNS_MODES)
        deny_response = self.choice(
            file,
            f"{key}.deny_response",
            table,
            "deny_response",
            default="nxdomain",
            choices=_DENY_RESPONSES,
        )
        if dns == "direct":
            self.direct_wildcards(file, key, table)
        if not usable:
            return

        subjects: tuple[tuple[str, Sequence[tuple[object, str]]], ...] = (
            ("uid", uids),
            ("gid", gids),
            ("cgroup", cgroups),
            ("interface", interfaces),
            ("source", sources),
        )
        for kind, items in subjects:
            owners = self.owners.setdefault(kind, {})
            for value, item_key in items:
                owner = owners.get(value)
                if owner is None:
                    owners[value] = (name, file)
                elif owner[0] != name:
                    shown = str(value) if kind in ("uid", "gid", "source") else repr(value)
                    self.problem(
                        file,
                        item_key,
                        f"{kind} {shown} is in policies {owner[0]!r} ({owner[1]}) and "
                        f"{name!r}; each subject may belong to one policy only",
                    )
        for net, item_key in sources:
            for other, (owner_name, owner_file) in self.owners["source"].items():
                if (
                    owner_name != name
                    and isinstance(other, ipaddress.IPv4Network | ipaddress.IPv6Network)
                    and other.version == net.version
                    and net.overlaps(other)
                    and other != net
                ):
                    self.problem(
                        file,
                        item_key,
                        f"source {net} overlaps {other} of policy {owner_name!r} "
                        f"({owner_file}); a forwarded packet must belong to one policy",
                    )

        self.policies[name] = Policy(
            name=name,
            uids=tuple(sorted({v for v, _ in uids})),
            gids=tuple(sorted({v for v, _ in gids})),
            cgroups=tuple(sorted({v for v, _ in cgroups})),
            interfaces=tuple(sorted({v for v, _ in interfaces})),
            sources=tuple(
                sorted(
                    {v for v, _ in sources},
                    key=lambda n: (n.version, int(n.network_address), n.prefixlen),
                )
            ),
            mode=mode,
            outbound=tuple(outbound),
            inbound=tuple(inbound),
            loopback=loopback,
            allow_private=allow_private,
            dns=dns,
            deny_response=deny_response,
        )

    def direct_wildcards(self, file: str, prefix: str, table: Mapping[str, object]) -> None:
        """Report every wildcard outbound entry of a ``dns = "direct"`` policy."""
        items = table.get("outbound")
        if not isinstance(items, list | tuple):
            return
        for i, item in enumerate(items):
            if not isinstance(item, str):
                continue
            try:
                target = parse_outbound(item)
            except ValueError:
                continue  # reported by entries()
            if target.wildcard:
                self.problem(
                    file,
                    f"{prefix}.outbound[{i}]",
                    'wildcards need dns = "gateway" (this policy has dns = "direct"): '
                    "their addresses are learned only from the policy's own DNS answers",
                )

    def ids(
        self,
        file: str,
        prefix: str,
        table: Mapping[str, object],
        field: str,
        *,
        what: str,
        lookup: Lookup,
    ) -> list[tuple[int, str]]:
        """Numeric ids with the key path of the entry each came from."""
        id_name = field[:-1]
        key = f"{prefix}.{field}"
        if field not in table:
            return []
        items = self.array(file, key, table[field], f"{what} names and {id_name} numbers")
        if items is None:
            return []
        result: list[tuple[int, str]] = []
        for i, item in enumerate(items):
            item_key = f"{key}[{i}]"
            number: int | None
            if isinstance(item, bool) or not isinstance(item, int | str):
                self.problem(
                    file,
                    item_key,
                    f"expected a {what} name (string) or {id_name} (integer), "
                    f"got {_describe(item)}",
                )
                continue
            if isinstance(item, int):
                number, origin = item, ""
            else:
                if not item:
                    self.problem(file, item_key, f"empty {what} name")
                    continue
                if item.isascii() and item.isdigit():
                    self.problem(
                        file,
                        item_key,
                        f"write {id_name} numbers as integers, not strings: {item} "
                        f'instead of "{item}"',
                    )
                    continue
                if any(c.isspace() or not c.isprintable() for c in item):
                    self.problem(file, item_key, f"bad {what} name {item!r}: whitespace or control")
                    continue
                number = lookup(item)
                if number is None:
                    self.problem(file, item_key, f"no such {what} {item!r}")
                    continue
                origin = f" ({what} {item!r})"
            if number == 0:
                self.problem(
                    file,
                    item_key,
                    f"{id_name} 0{origin} would confine the kernel's own root-owned sockets",
                )
            elif not 0 < number <= _MAX_ID:
                self.problem(
                    file, item_key, f"{id_name} must be between 1 and {_MAX_ID}, got {number}"
                )
            else:
                result.append((number, item_key))
        return result

    def strings(
        self,
        file: str,
        prefix: str,
        table: Mapping[str, object],
        field: str,
        parse: Callable[[str], _T],
        *,
        what: str = "strings",
    ) -> list[tuple[_T, str]]:
        """Each string of list ``field`` parsed, with its key path; problems reported."""
        key = f"{prefix}.{field}"
        if field not in table:
            return []
        items = self.array(file, key, table[field], what)
        if items is None:
            return []
        result: list[tuple[_T, str]] = []
        for i, item in enumerate(items):
            item_key = f"{key}[{i}]"
            if not isinstance(item, str):
                self.problem(file, item_key, f"expected a string, got {_describe(item)}")
                continue
            try:
                result.append((parse(item), item_key))
            except ValueError as e:
                self.problem(file, item_key, str(e))
        return result

    def cgroups(self, file: str, prefix: str, table: Mapping[str, object]) -> list[tuple[str, str]]:
        return self.strings(file, prefix, table, "cgroups", normalize_cgroup, what="cgroup paths")

    def entries(
        self,
        file: str,
        prefix: str,
        table: Mapping[str, object],
        field: str,
        parse: Callable[[str], _T],
    ) -> list[_T]:
        key = f"{prefix}.{field}"
        if field not in table:
            return []
        items = self.array(file, key, table[field], "strings")
        if items is None:
            return []
        result: list[_T] = []
        for i, item in enumerate(items):
            item_key = f"{key}[{i}]"
            if not isinstance(item, str):
                reason = f"expected a string, got {_describe(item)}"
                if isinstance(item, int) and not isinstance(item, bool):
                    reason += f'; write it as "{item}"'
                self.problem(file, item_key, reason)
                continue
            try:
                result.append(parse(item))
            except ValueError as e:
                self.problem(file, item_key, str(e))
        return result


def _join(prefix: str, key: str) -> str:
    """Append ``key`` to a key path, quoting it as TOML would when it is not a bare key."""
    part = key if _BARE_KEY_RE.fullmatch(key) else json.dumps(key)
    return f"{prefix}.{part}" if prefix else part


def _describe(value: object) -> str:
    """Name a TOML value's type for messages, with a short rendering of scalars."""
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})" if abs(value) < 10**30 else "an integer"
    if isinstance(value, float):
        return f"a float ({value})"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"a string ({json.dumps(shown)})"
    if isinstance(value, datetime):
        return "a date-time"
    if isinstance(value, date):
        return "a date"
    if isinstance(value, time):
        return "a time"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        return "an array"
    return f"a {type(value).__name__}"
