"""cgroup v2 lookups and a watcher that notices cgroups being created and removed.

A cgroup's id (what ``socket cgroupv2`` compares) is the inode number of its directory in
the cgroup2 file system. systemd removes and recreates a service's cgroup on every
restart, so the id changes: fenced watches the directories with inotify and rewrites the
verdict maps as soon as a configured path appears, disappears or is replaced.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from fenced.errors import SystemCheckError

_IN_CREATE = 0x00000100
_IN_DELETE = 0x00000200
_IN_DELETE_SELF = 0x00000400
_IN_MOVE_SELF = 0x00000800
_IN_MOVED_FROM = 0x00000040
_IN_MOVED_TO = 0x00000080
_IN_ONLYDIR = 0x01000000
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
_MASK = (
    _IN_CREATE
    | _IN_DELETE
    | _IN_DELETE_SELF
    | _IN_MOVE_SELF
    | _IN_MOVED_FROM
    | _IN_MOVED_TO
    | _IN_ONLYDIR
)


def cgroup2_mount(mounts_text: str) -> str | None:
    """The mount point of the cgroup2 file system in a /proc/mounts text, or None."""
    for line in mounts_text.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "cgroup2":
            return fields[1].replace("\\040", " ")
    return None


def find_cgroup2_mount() -> str:
    """Where cgroup2 is mounted on this host; SystemCheckError when it is not."""
    try:
        text = Path("/proc/mounts").read_text()
    except OSError as exc:
        raise SystemCheckError(f"cannot read /proc/mounts: {exc.strerror}") from exc
    mount = cgroup2_mount(text)
    if mount is None:
        raise SystemCheckError("no cgroup2 file system is mounted (needed for cgroup policies)")
    return mount


def cgroup_id(root: str, path: str) -> int | None:
    """The id of cgroup ``path`` (relative to the cgroup2 mount ``root``), None if absent."""
    try:
        st = os.stat(os.path.join(root, path))
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None
    return st.st_ino


def cgroup_ids(root: str, paths: Iterable[str]) -> dict[str, int | None]:
    """Current ids of each of ``paths``; None for each that does not exist."""
    return {p: cgroup_id(root, p) for p in paths}


class _Inotify:
    """A minimal inotify binding (the standard library has none)."""

    def __init__(self) -> None:
        libc_name = ctypes.util.find_library("c") or "libc.so.6"
        self._libc = ctypes.CDLL(libc_name, use_errno=True)
        fd = self._libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise SystemCheckError(f"inotify_init1 failed: {os.strerror(err)}")
        self.fd: int = fd

    def add(self, path: str) -> int | None:
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), _MASK)
        if wd < 0:
            err = ctypes.get_errno()
            if err in (errno.ENOENT, errno.ENOTDIR):
                return None
            raise OSError(err, os.strerror(err), path)
        return int(wd)

    def remove(self, wd: int) -> None:
        self._libc.inotify_rm_watch(self.fd, wd)

    def drain(self) -> bool:
        """Read every pending event; True if any arrived."""
        got = False
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return got
            if not data:
                return got
            got = True

    def close(self) -> None:
        os.close(self.fd)


def watch_dirs(root: str, paths: Iterable[str]) -> set[str]:
    """Directories to watch so that creating or removing any of ``paths`` is seen.

    For each path that is every ancestor from the root down to the deepest one that
    exists, plus the path itself (its removal is seen on its parent, and on itself).
    """
    dirs = {root}
    for p in paths:
        parts = [x for x in p.split("/") if x]
        current = root
        for part in parts:
            current = os.path.join(current, part)
            if not os.path.isdir(current):
                break
            dirs.add(current)
    return dirs


class CgroupWatcher:
    """Calls ``on_change(ids)`` whenever the ids of the watched cgroup paths change.

    ``on_change`` receives the full mapping path -> id (None: absent). The watcher
    re-checks after every inotify event on the directories that lead to the paths, so
    a recreated cgroup is reported within milliseconds.
    """

    def __init__(
        self,
        root: str,
        paths: Iterable[str],
        on_change: Callable[[Mapping[str, int | None]], None],
    ) -> None:
        self.root = root
        self.paths = tuple(paths)
        self._on_change = on_change
        self._ino: _Inotify | None = None
        self._watches: dict[str, int] = {}
        self.ids: dict[str, int | None] = cgroup_ids(root, self.paths)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Begin watching (registers a reader on ``loop``)."""
        if not self.paths:
            return
        self._ino = _Inotify()
        self._rewatch()
        loop.add_reader(self._ino.fd, self._on_readable)
        self._recheck()

    def set_paths(self, paths: Iterable[str]) -> None:
        """Watch another set of paths (after a reload); reports the new ids."""
        self.paths = tuple(paths)
        if self._ino is None:
            self.ids = cgroup_ids(self.root, self.paths)
            return
        self._rewatch()
        self._recheck(force=True)

    def _rewatch(self) -> None:
        assert self._ino is not None
        wanted = watch_dirs(self.root, self.paths)
        for d in list(self._watches):
            if d not in wanted:
                self._ino.remove(self._watches.pop(d))
        for d in wanted - set(self._watches):
            wd = self._ino.add(d)
            if wd is not None:
                self._watches[d] = wd

    def _on_readable(self) -> None:
        assert self._ino is not None
        if self._ino.drain():
            # Removed directories drop their watches; re-add what exists now.
            self._watches.clear()
            self._rewatch()
            self._recheck()

    def _recheck(self, *, force: bool = False) -> None:
        ids = cgroup_ids(self.root, self.paths)
        if force or ids != self.ids:
            self.ids = ids
            self._on_change(dict(ids))

    def stop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Stop watching."""
        if self._ino is not None:
            loop.remove_reader(self._ino.fd)
            self._ino.close()
            self._ino = None
            self._watches.clear()
