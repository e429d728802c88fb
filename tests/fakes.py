"""A Daemon of a one-policy file on the fakes: the set-up the daemon's tests share.

The fakes themselves (``FakeFirewall``, ``FakeResolver``, ``FakeConntrack``) live beside
what they stand in for; this module writes the policy file and wires them into a
``Daemon`` the same way for every test that needs one.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fenced.config.files import load
from fenced.core.model import Config, DnsMode
from fenced.daemon import Daemon
from fenced.dns.resolver import FakeResolver
from fenced.kernel.conntrack import Conntrack
from fenced.kernel.firewall import FakeFirewall
from fenced.kernel.monitor import NftMonitor
from fenced.log import Logger


def load_numeric(path: str | os.PathLike[str]) -> Config:
    """The real loader, with no user or group database (the tests give ids as numbers)."""
    return load(path, lookup_user=lambda _n: None, lookup_group=lambda _n: None)


def policy_text(
    *outbound: str,
    dns: DnsMode = "gateway",
    resolvers: str = '["127.0.0.1"]',
    uid: int = 4242,
    name: str = "web",
) -> str:
    """A main file with the HTTP server off and one policy ``name`` confining ``uid``.

    ``resolvers`` is the TOML array text of ``daemon.resolvers``; ``outbound`` are the
    policy's entries, in order.
    """
    entries = ", ".join(json.dumps(entry) for entry in outbound)
    return (
        f'[daemon]\nlisten = ""\nresolvers = {resolvers}\n'
        f'[policy.{name}]\nuids = [{uid}]\ndns = "{dns}"\noutbound = [{entries}]\n'
    )


@dataclass
class Fakes:
    """A policy file in ``folder`` and the fakes a Daemon of it runs on."""

    folder: Path
    fw: FakeFirewall = field(default_factory=FakeFirewall)
    resolver: FakeResolver = field(default_factory=FakeResolver)

    @property
    def path(self) -> Path:
        """The policy file, ``folder/fenced.toml``."""
        return self.folder / "fenced.toml"

    def write(
        self,
        *outbound: str,
        dns: DnsMode = "gateway",
        resolvers: str = '["127.0.0.1"]',
        uid: int = 4242,
    ) -> None:
        """(Re)write the policy file: :func:`policy_text` of the same arguments."""
        self.path.write_text(policy_text(*outbound, dns=dns, resolvers=resolvers, uid=uid))

    def daemon(
        self,
        *,
        conntrack: Conntrack | None = None,
        monitor_factory: Callable[[str], NftMonitor] | None = None,
    ) -> Daemon:
        """A Daemon of the policy file on ``fw`` and ``resolver`` that logs nowhere.

        It loads with :func:`load_numeric`; ``conntrack`` and ``monitor_factory`` go to
        the Daemon as they are (``None``: its defaults).
        """
        return Daemon(
            str(self.path),
            self.fw,
            loader=load_numeric,
            logger=Logger(io.StringIO()),
            resolver_factory=lambda _cfg: self.resolver,
            conntrack=conntrack,
            monitor_factory=monitor_factory,
        )
