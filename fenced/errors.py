"""Typed exceptions. Each carries the context an operator needs to act on it.

Only ``fenced/__main__.py`` turns these into exit codes; everything else raises.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class FencedError(Exception):
    """Base class of every error fenced raises on purpose."""


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong in a configuration file.

    ``file`` is the path as given, ``key`` the key path inside it (for example
    ``policy.web.outbound[2]``; empty when the whole file is at fault) and
    ``reason`` says what is wrong in words an operator can act on.
    """

    file: str
    key: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.key}" if self.key else self.file
        return f"{where}: {self.reason}"


class ConfigError(FencedError):
    """The configuration is invalid; ``problems`` lists every problem found (at least one)."""

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        if not problems:
            raise ValueError("ConfigError needs at least one problem")
        self.problems: tuple[ConfigProblem, ...] = tuple(problems)
        super().__init__("; ".join(str(p) for p in self.problems))


class FirewallError(FencedError):
    """The kernel (or ``nft``) refused a change; nothing of that transaction was applied.

    ``operation`` names what was attempted (for example ``apply ruleset`` or
    ``add elements to web_3f2a91c0_4``), ``detail`` is the kernel's or nft's message,
    and ``errno`` the kernel error number when known.
    """

    def __init__(self, operation: str, detail: str, errno: int | None = None) -> None:
        self.operation = operation
        self.detail = detail
        self.errno = errno
        super().__init__(f"{operation}: {detail}")


class TransactionError(FencedError):
    """A transaction was built wrongly (caught while building, before any I/O)."""


class SystemCheckError(FencedError):
    """The host cannot run fenced (no CAP_NET_ADMIN, no nf_tables, no cgroup2, ...)."""


class HttpError(FencedError):
    """fenced's HTTP endpoint failed.

    Either the server cannot listen (address taken, unknown host, no such local address)
    or a client (``fenced status``) got no usable answer. The message says which, and why.
    """
