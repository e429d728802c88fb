"""Entering a network namespace: a socket made inside another namespace, the caller left alone.

A socket belongs to the namespace it was created in for the rest of its life, so acting
on another namespace (the tests' and benchmarks' scratch namespaces, ``/run/netns/NAME``)
only needs the creating thread to be inside it for the ``socket()`` call. Python 3.11 has
no ``os.setns``; libc's ``setns(2)`` is called through ctypes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import socket
from typing import Final

# --- linux/sched.h ------------------------------------------------------------------------
CLONE_NEWNET: Final = 0x40000000


def _setns(fd: int) -> None:
    """setns(fd, CLONE_NEWNET) for the calling thread (Python 3.11 has no os.setns)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def socket_in(netns_path: str | None, family: int, kind: int, proto: int) -> socket.socket:
    """``socket.socket(family, kind, proto)`` created in the namespace at ``netns_path``.

    ``None`` means the namespace the process is in (a plain ``socket()``). Otherwise only
    the calling thread switches namespaces, and only for the socket() call; raises
    OSError if the namespace cannot be entered, or left again (the thread would otherwise
    stay in the wrong namespace).
    """
    if netns_path is None:
        return socket.socket(family, kind, proto)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
            try:
                return socket.socket(family, kind, proto)
            finally:
                # Failing to return would leave this thread in the wrong namespace: let the
                # OSError propagate (it replaces any exception from socket()).
                _setns(own)
        finally:
            os.close(target)
    finally:
        os.close(own)
