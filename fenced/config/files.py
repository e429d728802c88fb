"""Reading fenced's policy files from disk: the main file, its drop-ins, the host look-ups.

The configuration is the main file (``/etc/fenced/fenced.toml`` unless ``-c PATH``) plus
every ``*.toml`` in the folder ``fenced.d/`` beside it, read in name order. :func:`load`
reads and parses them (only regular files, bounded in size) and validates them with
:func:`fenced.config.schema.validate`, using look-ups backed by ``pwd``, ``grp`` and
``/etc/resolv.conf`` unless given others. ``docs/config.md`` is the reference for the file
format.
"""

from __future__ import annotations

import grp
import ipaddress
import os
import pwd
import stat
import tomllib
from collections.abc import Callable, Mapping, Sequence
from typing import Final

from fenced.config.schema import Lookup, validate
from fenced.core.model import Config
from fenced.errors import ConfigError, ConfigProblem

__all__ = [
    "DEFAULT_PATH",
    "DROPIN_DIR",
    "MAX_FILE_BYTES",
    "RESOLV_CONF",
    "group_gid",
    "load",
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


# --------------------------------------------------------------------------- system look-ups


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

    config, more = validate(
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
