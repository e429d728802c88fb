"""Read and validate fenced's policy files into a :class:`fenced.core.model.Config`.

The configuration is the main file (``/etc/fenced/fenced.toml`` unless ``-c PATH``) plus
every ``*.toml`` in the folder ``fenced.d/`` beside it, read in name order. The work is
split in two:

* :func:`parse_documents` is pure: it takes already parsed TOML documents and injected
  look-ups (users, groups, default resolvers) and either returns a ``Config`` or raises
  one :class:`~fenced.errors.ConfigError` listing *every* problem it found.
* :func:`load` does the I/O: it reads the files, parses the TOML, and calls the same code
  with look-ups backed by ``pwd``, ``grp`` and ``/etc/resolv.conf``.

The entry syntax helpers (:func:`parse_outbound`, :func:`parse_inbound`,
:func:`parse_listen`, :func:`resolv_conf_nameservers`) are pure too and raise
``ValueError`` with a reason meant for an operator. ``docs/config.md`` is the reference
for the file format.
"""

from __future__ import annotations

import difflib
import grp
import ipaddress
import json
import os
import pwd
import re
import stat
import tomllib
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime, time
from typing import Final, TypeVar

from fenced.core.model import (
    DEFAULT_PROTOS,
    Config,
    DaemonConfig,
    DenyResponse,
    DnsMode,
    IPAddress,
    IPNetwork,
    Listen,
    LogLevel,
    Mode,
    OnExit,
    Policy,
    PortRange,
    PortSpec,
    Proto,
    Target,
)
from fenced.errors import ConfigError, ConfigProblem

__all__ = [
    "DEFAULT_PATH",
    "DROPIN_DIR",
    "LOG_LEVELS",
    "RESOLV_CONF",
    "Lookup",
    "group_gid",
    "load",
    "parse_documents",
    "parse_inbound",
    "parse_listen",
    "parse_outbound",
    "passwd_uid",
    "resolv_conf_nameservers",
    "system_nameservers",
]

#: Where the main file lives unless ``-c PATH`` says otherwise.
DEFAULT_PATH: Final = "/etc/fenced/fenced.toml"
#: Name of the drop-in folder, looked for beside the main file.
DROPIN_DIR: Final = "fenced.d"
#: Where :func:`system_nameservers` reads the host's resolvers from.
RESOLV_CONF: Final = "/etc/resolv.conf"

#: A name look-up: the numeric id of a user or group name, ``None`` when there is none.
Lookup = Callable[[str], int | None]

_POLICY_NAME_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,23}")
_TABLE_NAME_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")
_LABEL_RE: Final = re.compile(r"[a-z0-9_-]{1,63}")
_PORT_ITEM_RE: Final = re.compile(r"([0-9]+)(?:-([0-9]+))?")
_PREFIX_RE: Final = re.compile(r"[0-9]{1,3}")
_BARE_KEY_RE: Final = re.compile(r"[A-Za-z0-9_-]+")

_MAX_ID: Final = 2**32 - 2  # (uid_t)-1 means "no change" to the kernel, never a real id
_MAX_SECONDS: Final = 2**31 - 1
_CGROUP_MOUNT: Final = "/sys/fs/cgroup"

_OUTBOUND_PROTOS: Final[dict[str, Proto]] = {"tcp": "tcp", "udp": "udp", "icmp": "icmp"}
_INBOUND_PROTOS: Final[dict[str, Proto]] = {"tcp": "tcp", "udp": "udp"}
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


# --------------------------------------------------------------------------- subjects

_IFNAME_RE: Final = re.compile(r"[A-Za-z0-9_.:@+-]{1,15}")


def _parse_interface(text: str) -> str:
    """A network interface name as the kernel allows it (1-15 characters, no / or space)."""
    if not _IFNAME_RE.fullmatch(text) or text in (".", ".."):
        raise ValueError(
            f"bad interface name {text!r}: 1-15 characters, letters, digits and _.:@+- only"
        )
    return text


def _parse_source(text: str) -> IPNetwork:
    """A source network (``203.0.113.0/24``, ``2001:db8::/64``, or one address)."""
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        if "has host bits set" in str(e):
            loose = ipaddress.ip_network(text, strict=False)
            raise ValueError(f"{text} has host bits set; did you mean {loose}?") from None
        raise ValueError(f"bad source network {text!r}: {e}") from None
    return net


# --------------------------------------------------------------------------- entries


def parse_outbound(text: str) -> Target:
    """Parse one ``outbound`` entry, ``HOST[:PORTS][/PROTO]``, into a :class:`Target`.

    HOST is a domain name, an IPv4 address or network (``198.51.100.0/24``), or an IPv6
    address or network in brackets (``[2001:db8::1]``, ``[2001:db8::/32]``); a bare IPv6
    address or network is accepted only without PORTS. A single address becomes a /32
    or /128 network; a network with host bits set is refused. Domains are lower-cased and
    lose one trailing dot. A domain may be a wildcard, ``*.example.com``: ``*`` only as
    the whole first label, followed by at least two labels (``*.com`` is refused: it
    would open a whole top-level domain); whether the policy may use one (it needs
    ``dns = "gateway"``) is checked by :func:`parse_documents`.

    PORTS is a comma list of ``N`` or ``N-M`` (1-65535), returned sorted and merged; no
    PORTS means every port (``ports == ()``). PROTO is ``tcp``, ``udp`` or ``icmp``; no
    PROTO means :data:`~fenced.core.model.DEFAULT_PROTOS` (``("tcp", "udp")``). ``icmp`` takes
    no ports and covers ICMP and ICMPv6.

    ``Target.text`` is ``text`` unchanged. Raises ``ValueError`` with the reason when the
    entry is malformed.
    """
    _check_chars(text)
    rest, proto = _split_proto(text, _OUTBOUND_PROTOS, "tcp, udp or icmp")
    domain: str | None = None
    network: IPNetwork | None = None
    ports_text: str | None = None
    if rest.startswith("["):
        close = rest.find("]")
        if close < 0:
            raise ValueError("'[' without a matching ']'")
        inner, after = rest[1:close], rest[close + 1 :]
        if ":" not in inner:
            raise ValueError(
                f"brackets are only for IPv6 addresses; write {inner}{after} without them"
            )
        network = _parse_ipv6(inner)
        if after.startswith(":"):
            ports_text = after[1:]
        elif after:
            raise ValueError(f"unexpected {after!r} after ']'; expected ':PORTS' or '/PROTO'")
    elif rest.count(":") >= 2:
        if "%" in rest:
            raise ValueError("scoped IPv6 addresses (with %interface) are not supported")
        try:
            network = _parse_ipv6(rest)
        except ValueError as e:
            raise ValueError(
                f"{e}; to give ports with an IPv6 address put it in brackets, "
                "e.g. [2001:db8::1]:443"
            ) from None
    else:
        host, sep, port_part = rest.partition(":")
        if sep:
            ports_text = port_part
        if not host:
            raise ValueError("missing host (a domain name or an IP address)")
        if "/" in host:
            network = _parse_ipv4_network(host)
        else:
            try:
                network = ipaddress.IPv4Network(ipaddress.IPv4Address(host))
            except ValueError:
                domain = _parse_domain(host, wildcard=True)
    ports = _parse_ports(ports_text) if ports_text is not None else ()
    protos: tuple[Proto, ...] = (proto,) if proto is not None else tuple(sorted(DEFAULT_PROTOS))
    if "icmp" in protos and ports:
        raise ValueError("icmp has no ports; drop the ':PORTS' part or use /tcp or /udp")
    return Target(
        text=text, spec=PortSpec(protos=protos, ports=ports), domain=domain, network=network
    )


def parse_inbound(text: str) -> Listen:
    """Parse one ``inbound`` entry, ``PORTS[/PROTO]``, into a :class:`Listen`.

    PORTS is required (comma list of ``N`` or ``N-M``, 1-65535, returned sorted and
    merged); PROTO is ``tcp`` or ``udp``, and no PROTO means both. ``Listen.text`` is
    ``text`` unchanged. Raises ``ValueError`` with the reason when the entry is malformed.
    """
    _check_chars(text)
    rest, proto = _split_proto(text, _INBOUND_PROTOS, "tcp or udp")
    if not rest:
        raise ValueError("missing ports, e.g. 8080 or 8443/tcp")
    ports = _parse_ports(rest)
    protos: tuple[Proto, ...] = (proto,) if proto is not None else tuple(sorted(DEFAULT_PROTOS))
    return Listen(text=text, spec=PortSpec(protos=protos, ports=ports))


def parse_listen(text: str) -> tuple[str, int]:
    """Split a ``daemon.listen`` value ``HOST:PORT`` into ``(host, port)``.

    HOST is an IPv4 address, an IPv6 address in brackets (returned without them, e.g.
    ``[::1]:9100`` gives ``("::1", 9100)``) or a host name such as ``localhost``; PORT is
    1-65535. The empty string (HTTP server off) is *not* accepted here: callers test for
    it first. Raises ``ValueError`` with the reason when the value is malformed.
    """
    _check_chars(text)
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError("'[' without a matching ']'")
        host = text[1:close]
        if "%" in host:
            raise ValueError("scoped IPv6 addresses (with %interface) are not supported")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
        after = text[close + 1 :]
        if not after.startswith(":"):
            raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:9100 or [::1]:9100")
        port_text = after[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:9100 or [::1]:9100")
        if ":" in host:
            raise ValueError("put an IPv6 address in brackets, e.g. [::1]:9100")
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            _parse_domain(host)
    return host, _parse_port(port_text)


def resolv_conf_nameservers(text: str) -> list[str]:
    """The ``nameserver`` addresses in resolv.conf ``text``, in file order, each once.

    Comment lines (``#`` or ``;``) and lines that are not ``nameserver ADDRESS`` are
    ignored, as are addresses that do not parse. Scoped IPv6 addresses such as
    ``fe80::1%eth0`` are skipped: fenced talks to its resolvers without an interface.
    Every address is returned in its canonical form (``ipaddress`` ``str()``).
    """
    found: list[str] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 2 or fields[0] != "nameserver":
            continue
        addr = fields[1]
        if "%" in addr:
            continue
        try:
            canonical = str(ipaddress.ip_address(addr))
        except ValueError:
            continue
        if canonical not in found:
            found.append(canonical)
    return found


# --------------------------------------------------------------------------- system look-ups


def passwd_uid(name: str) -> int | None:
    """The uid of user ``name`` from the system's user database, ``None`` if unknown."""
    try:
        return pwd.getpwnam(name).pw_uid
    except (KeyError, ValueError):
        return None


def group_gid(name: str) -> int | None:
    """The gid of group ``name`` from the system's group database, ``None`` if unknown."""
    try:
        return grp.getgrnam(name).gr_gid
    except (KeyError, ValueError):
        return None


def system_nameservers() -> list[str]:
    """The nameservers in ``/etc/resolv.conf`` (see :func:`resolv_conf_nameservers`).

    An unreadable or missing file yields an empty list.
    """
    try:
        with open(RESOLV_CONF, encoding="utf-8", errors="replace") as f:
            return resolv_conf_nameservers(f.read())
    except OSError:
        return []


# --------------------------------------------------------------------------- loading


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
    config, problems = _build(
        list(docs),
        main_ok=True,
        lookup_user=lookup_user,
        lookup_group=lookup_group,
        default_resolvers=default_resolvers,
    )
    if problems or config is None:
        raise ConfigError(problems)
    return config


def load(
    path: str | os.PathLike[str] = DEFAULT_PATH,
    *,
    lookup_user: Lookup = passwd_uid,
    lookup_group: Lookup = group_gid,
    default_resolvers: Callable[[], Sequence[str]] = system_nameservers,
) -> Config:
    """Read the main file at ``path`` and its drop-ins, and validate them.

    Drop-ins are the ``*.toml`` files in ``fenced.d/`` beside the main file, sorted by
    name; a missing folder is fine. A main file that cannot be read raises
    ``ConfigError`` at once (file and OS reason). Otherwise every problem is collected:
    a file that is not valid TOML is reported with tomllib's message (line and column)
    and the other files are still checked. The look-ups default to the system's
    (``pwd``, ``grp``, ``/etc/resolv.conf``); tests inject their own. Raises
    ``ConfigError`` listing every problem, in file order.
    """
    main = os.fspath(path)
    problems: list[ConfigProblem] = []
    try:
        main_doc = _read_toml(main)
    except OSError as e:
        raise ConfigError([ConfigProblem(main, "", f"cannot read: {_os_reason(e)}")]) from None
    except ValueError as e:
        problems.append(ConfigProblem(main, "", str(e)))
        main_doc = None

    dropin_dir = os.path.join(os.path.dirname(main), DROPIN_DIR)
    names: list[str] = []
    try:
        names = sorted(n for n in os.listdir(dropin_dir) if n.endswith(".toml"))
    except FileNotFoundError:
        pass
    except OSError as e:
        problems.append(ConfigProblem(dropin_dir, "", f"cannot list: {_os_reason(e)}"))

    files = [main]
    docs: list[tuple[str, Mapping[str, object]]] = [(main, main_doc or {})]
    for name in names:
        file = os.path.join(dropin_dir, name)
        files.append(file)
        try:
            docs.append((file, _read_toml(file)))
        except OSError as e:
            problems.append(ConfigProblem(file, "", f"cannot read: {_os_reason(e)}"))
        except ValueError as e:
            problems.append(ConfigProblem(file, "", str(e)))

    config, more = _build(
        docs,
        main_ok=main_doc is not None,
        lookup_user=lookup_user,
        lookup_group=lookup_group,
        default_resolvers=default_resolvers,
    )
    problems.extend(more)
    if problems or config is None:
        order = {f: i for i, f in enumerate([*files, dropin_dir])}
        problems.sort(key=lambda p: order.get(p.file, len(order)))
        raise ConfigError(problems)
    return Config(daemon=config.daemon, policies=config.policies, files=tuple(files))


#: Configuration files larger than this are refused (a policy file is a few KiB).
MAX_FILE_BYTES = 4 << 20


def _read_toml(file: str) -> dict[str, object]:
    """Read and parse one TOML file; OSError if unreadable, ValueError if not TOML.

    Only regular files are read: a FIFO or a device would block the reader (the daemon)
    until something writes to it. Files over ``MAX_FILE_BYTES`` and nesting deeper than
    Python's parser can follow are errors, not crashes.
    """
    fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        if st.st_size > MAX_FILE_BYTES:
            raise ValueError(f"larger than {MAX_FILE_BYTES // (1 << 20)} MiB")
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(f"larger than {MAX_FILE_BYTES // (1 << 20)} MiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"not valid UTF-8 (at byte {e.start})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"not valid TOML: {e}") from None
    except RecursionError:
        raise ValueError("not valid TOML: nested too deeply") from None


def _os_reason(e: OSError) -> str:
    return e.strerror or str(e)


# --------------------------------------------------------------------------- the validator


def _build(
    docs: list[tuple[str, Mapping[str, object]]],
    *,
    main_ok: bool,
    lookup_user: Lookup,
    lookup_group: Lookup,
    default_resolvers: Callable[[], Sequence[str]],
) -> tuple[Config | None, list[ConfigProblem]]:
    """Validate ``docs`` (main first); return the config or the problems found.

    ``main_ok=False`` skips the main file's daemon table (the file did not parse), so
    that no made-up problems are reported for it.
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
                    addr = _parse_resolver(text)
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
                addr = _parse_resolver(item)
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
        interfaces = self.strings(file, key, table, "interfaces", _parse_interface)
        sources = self.strings(file, key, table, "sources", _parse_source)
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
        return self.strings(file, prefix, table, "cgroups", _normalize_cgroup, what="cgroup paths")

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


# --------------------------------------------------------------------------- small parsers


def _check_chars(text: str) -> None:
    if not text:
        raise ValueError("empty entry")
    if any(c.isspace() or not c.isprintable() for c in text):
        raise ValueError("must not contain whitespace or control characters")


def _split_proto(text: str, allowed: Mapping[str, Proto], names: str) -> tuple[str, Proto | None]:
    """Split a trailing ``/PROTO`` off ``text``.

    A tail that starts with a letter is a protocol word (``/24`` is a prefix length, and
    a ``]`` in the tail means the slash is inside brackets).
    """
    rest, sep, tail = text.rpartition("/")
    if not sep or not tail or not ("a" <= tail[0].lower() <= "z") or "]" in tail:
        return text, None
    if tail not in allowed:
        if tail == "icmp":
            raise ValueError(f"protocol must be {names} (icmp has no ports)")
        raise ValueError(f"unknown protocol {tail!r}: use {names}, or leave it out for both")
    return rest, allowed[tail]


def _parse_port(text: str) -> int:
    if not text or not text.isascii() or not text.isdigit():
        raise ValueError(f"bad port {text!r}: expected a number 1-65535")
    if len(text) > 5 or not 1 <= int(text) <= 65535:
        raise ValueError(f"port {text} is out of range 1-65535")
    return int(text)


def _parse_ports(text: str) -> tuple[PortRange, ...]:
    if not text:
        raise ValueError("empty port list; give ports like 443 or 80,8000-8100")
    ranges: list[PortRange] = []
    for item in text.split(","):
        m = _PORT_ITEM_RE.fullmatch(item)
        if m is None:
            raise ValueError(f"bad port {item!r}: expected N or N-M, e.g. 443 or 8000-8100")
        first = _parse_port(m[1])
        last = _parse_port(m[2]) if m[2] is not None else first
        if first > last:
            raise ValueError(f"port range {item} is backwards; did you mean {last}-{first}?")
        ranges.append(PortRange(first, last))
    ranges.sort()
    merged = [ranges[0]]
    for r in ranges[1:]:
        top = merged[-1]
        if r.first <= top.last + 1:
            merged[-1] = PortRange(top.first, max(top.last, r.last))
        else:
            merged.append(r)
    return tuple(merged)


def _parse_ipv4_network(text: str) -> ipaddress.IPv4Network:
    addr, _, prefix = text.partition("/")
    try:
        ipaddress.IPv4Address(addr)
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4 network like 198.51.100.0/24") from None
    if not _PREFIX_RE.fullmatch(prefix) or int(prefix) > 32:
        raise ValueError(f"bad prefix length in {text!r}: expected 0-32")
    try:
        return ipaddress.IPv4Network(text)
    except ValueError:
        fixed = ipaddress.IPv4Network(text, strict=False)
        raise ValueError(f"{text} has host bits set; did you mean {fixed}?") from None


def _parse_ipv6(text: str) -> ipaddress.IPv6Network:
    if "%" in text:
        raise ValueError("scoped IPv6 addresses (with %interface) are not supported")
    addr, slash, prefix = text.partition("/")
    try:
        ipaddress.IPv6Address(addr)
    except ValueError:
        raise ValueError(f"{addr!r} is not a valid IPv6 address") from None
    if not slash:
        return ipaddress.IPv6Network(addr)
    if not _PREFIX_RE.fullmatch(prefix) or int(prefix) > 128:
        raise ValueError(f"bad prefix length in {text!r}: expected 0-128")
    try:
        return ipaddress.IPv6Network(text)
    except ValueError:
        fixed = ipaddress.IPv6Network(text, strict=False)
        raise ValueError(f"{text} has host bits set; did you mean {fixed}?") from None


def _parse_domain(host: str, *, wildcard: bool = False) -> str:
    if host.startswith("*.") and wildcard:
        rest = host[2:]
        if "*" in rest:
            raise ValueError(f"bad wildcard {host!r}: '*' may only be the whole first label")
        name = _parse_domain(rest)
        if "." not in name:
            raise ValueError(
                f"wildcard {host!r} is too broad: give at least two labels after '*.', "
                "e.g. *.example.com"
            )
        if len(name) + 2 > 253:
            raise ValueError(
                f"host name is {len(name) + 2} characters long; at most 253 are allowed"
            )
        return "*." + name
    if "*" in host:
        if host.startswith("*.") or host == "*":
            raise ValueError(f"{host!r}: wildcards are allowed only in outbound entries")
        raise ValueError(f"bad wildcard {host!r}: '*' may only be the whole first label")
    if not host.isascii():
        raise ValueError(
            f"{host!r} is not ASCII; write internationalized names in their xn-- (punycode) form"
        )
    name = host.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise ValueError("missing host name")
    if len(name) > 253:
        raise ValueError(f"host name is {len(name)} characters long; at most 253 are allowed")
    labels = name.split(".")
    for label in labels:
        if not label:
            raise ValueError(f"{host!r} has an empty label (two dots in a row?)")
        if len(label) > 63:
            raise ValueError(f"label {label[:20]}... is longer than 63 characters")
        if not _LABEL_RE.fullmatch(label):
            raise ValueError(
                f"bad host name {host!r}: labels may only hold letters, digits, '-' and '_'"
            )
        if label.startswith("-") or label.endswith("-"):
            raise ValueError(f"bad host name {host!r}: a label may not start or end with '-'")
    if labels[-1].isdigit():
        raise ValueError(f"{host!r} is not a valid IPv4 address")
    return name


def _parse_resolver(text: str) -> IPAddress:
    if "%" in text:
        raise ValueError("scoped IPv6 addresses (with %interface) are not supported")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None


def _normalize_cgroup(text: str) -> str:
    if text == _CGROUP_MOUNT or text.startswith(_CGROUP_MOUNT + "/"):
        example = text[len(_CGROUP_MOUNT) :].strip("/") or "system.slice/web.service"
        raise ValueError(
            f"give the path relative to the cgroup2 mount ({_CGROUP_MOUNT}), e.g. {example!r}"
        )
    if any(c.isspace() or not c.isprintable() for c in text):
        raise ValueError("cgroup path must not contain whitespace or control characters")
    path = text.strip("/")
    if not path:
        raise ValueError("empty cgroup path (the root cgroup cannot be confined)")
    parts = path.split("/")
    if "" in parts:
        raise ValueError(f"{text!r} contains '//'")
    if "." in parts or ".." in parts:
        raise ValueError(f"{text!r}: '.' and '..' are not allowed in cgroup paths")
    return path


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
