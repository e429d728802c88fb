"""The rendered ruleset on the real kernel: every entry form loads; reloads keep elements."""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fenced.core.elements import key_to_ip
from fenced.core.model import Config
from fenced.core.ruleset import install, layout
from fenced.daemon import Daemon
from fenced.dns.answers import Answer
from fenced.dns.resolver import FakeResolver
from fenced.kernel.cgroups import find_cgroup2_mount
from fenced.kernel.firewall import KernelFirewall
from fenced.log import Logger
from tests.fakes import load_numeric
from tests.netns import scratch_netns

pytestmark = pytest.mark.bed

_counter = itertools.count()


def _require_root() -> None:
    if os.geteuid() != 0 or shutil.which("nft") is None:
        if os.environ.get("CI"):
            pytest.fail("kernel tests need root and nft, and CI must run them")
        pytest.skip("needs root and nft")


@pytest.fixture
def netns() -> Iterator[str]:
    """A scratch network namespace, deleted afterwards; yields /run/netns/NAME."""
    _require_root()
    with scratch_netns("fdk") as path:
        yield path


@pytest.fixture
def cgroups() -> Iterator[Path]:
    """A scratch cgroup2 directory (relative parent for test cgroups), removed afterwards."""
    _require_root()
    root = Path(find_cgroup2_mount()) / f"fenced-ktest-{os.getpid()}-{next(_counter)}"
    root.mkdir()
    try:
        yield root
    finally:
        for d in sorted(root.rglob("*"), key=lambda p: -len(p.parts)):
            if d.is_dir():
                d.rmdir()
        root.rmdir()


def _listing(netns: str) -> str:
    """``nft list table inet fenced`` inside ``netns``."""
    return subprocess.run(
        ["nsenter", f"--net={netns}", "nft", "list", "table", "inet", "fenced"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def _load(text: str, tmp: Path) -> Config:
    path = tmp / "fenced.toml"
    path.write_text(text)
    return load_numeric(path)


EVERYTHING = """
[daemon]
listen = ""
resolvers = ["192.0.2.53", "2001:db8:53::53"]
[policy.web]
uids = [4242, 4243]
gids = [4300]
cgroups = ["{cg}/a", "{cg}/b/c"]
outbound = [
  "api.example.com:443",
  "ntp.example.com:123/udp",
  "198.51.100.0/24:22/tcp",
  "[2001:db8::1]:443",
  "[2001:db8:5::/48]:80,443/tcp",
  "2001:db8:6::1",
  "203.0.113.7",
  "203.0.113.8/icmp",
  "mirror.example.com:80,443,8000-8100",
  "other.example.com:443",
]
inbound = ["8080", "8443/tcp", "9000-9010/udp"]
loopback = true
[policy.audited]
uids = [4500]
mode = "audit"
outbound = ["example.org"]
"""


async def test_every_entry_form_loads_in_the_kernel(
    netns: str, cgroups: Path, tmp_path: Path
) -> None:
    """The script for a config using every entry form is accepted by nft on this kernel."""
    rel = cgroups.name
    cfg = _load(EVERYTHING.replace("{cg}", rel), tmp_path)
    fw = KernelFirewall(netns)
    try:
        lay = layout(cfg)
        assert lay.gateways == ("audited", "web")
        ports = {name: 20000 + i for i, name in enumerate(lay.gateways)}
        await fw.install(install(cfg, lay, gateway_ports=ports))
        existing = await fw.existing("fenced")
        assert existing is not None
        assert existing.chains == set(lay.chains)
        assert existing.sets == set(lay.set_names)
        assert existing.counters == set(lay.counters)
    finally:
        fw.close()


async def test_reload_keeps_elements_and_moves_cgroups(
    netns: str, cgroups: Path, tmp_path: Path
) -> None:
    """A reload that drops a policy and moves its cgroup keeps kept sets' elements, atomically."""
    (cgroups / "svc").mkdir()
    rel = f"{cgroups.name}/svc"
    first = f"""
[daemon]
listen = ""
resolvers = ["192.0.2.53"]
[policy.web]
dns = "direct"
uids = [4242]
outbound = ["api.example.com:443/tcp"]
[policy.old]
dns = "direct"
cgroups = ["{rel}"]
outbound = ["old.example.com:80/tcp"]
"""
    second = f"""
[daemon]
listen = ""
resolvers = ["192.0.2.53"]
[policy.web]
dns = "direct"
uids = [4242]
cgroups = ["{rel}"]
outbound = ["api.example.com:443/tcp", "new.example.com:22/tcp"]
"""
    config_file = tmp_path / "fenced.toml"
    config_file.write_text(first)

    fw = KernelFirewall(netns)
    dns = FakeResolver()
    dns.script("api.example.com", Answer.ok(["198.51.100.7", "2001:db8::7"], ttl=600))
    dns.script("old.example.com", Answer.fail("nxdomain"))
    daemon = Daemon(
        str(config_file),
        fw,
        loader=load_numeric,
        logger=Logger(sys.stderr),
        resolver_factory=lambda _cfg: dns,
    )
    try:
        await daemon.start()
        lay = daemon.layout
        assert lay is not None
        web4 = next(s.name for s in lay.sets_for("api.example.com") if s.family == 4)
        web6 = next(s.name for s in lay.sets_for("api.example.com") if s.family == 6)
        for _ in range(100):
            if await fw.dump("fenced", web4) and await fw.dump("fenced", web6):
                break
            await asyncio.sleep(0.02)
        cg_id = (cgroups / "svc").stat().st_ino
        before = {e.verdict.chain for e in await fw.dump("fenced", "m_cg_out_2") if e.verdict}
        assert before == {"p_old_out"}

        config_file.write_text(second)
        assert await daemon.reload()

        assert [str(key_to_ip(e.key)) for e in await fw.dump("fenced", web4)] == ["198.51.100.7"]
        assert [str(key_to_ip(e.key)) for e in await fw.dump("fenced", web6)] == ["2001:db8::7"]
        cg = await fw.dump("fenced", "m_cg_out_2")
        assert [
            (int.from_bytes(e.key, sys.byteorder), e.verdict.chain if e.verdict else None)
            for e in cg
        ] == [(cg_id, "p_web_out")]
        existing = await fw.existing("fenced")
        assert existing is not None
        assert not any(c.startswith("p_old_") for c in existing.chains)
        assert "denied_old_out" not in existing.counters
        assert daemon.state.generation == 2
    finally:
        await daemon.stop()
        fw.close()


async def test_invalid_reload_changes_nothing(netns: str, tmp_path: Path) -> None:
    """A reload with a broken file keeps the installed ruleset and reports the error."""
    config_file = tmp_path / "fenced.toml"
    good = (
        '[daemon]\nlisten = ""\nresolvers = ["192.0.2.53"]\n'
        '[policy.web]\nuids = [4242]\noutbound = ["198.51.100.1:80/tcp"]\n'
    )
    config_file.write_text(good)

    fw = KernelFirewall(netns)
    daemon = Daemon(str(config_file), fw, loader=load_numeric, logger=Logger(sys.stderr))
    try:
        await daemon.start()
        listing = _listing(netns)
        config_file.write_text(good.replace("uids = [4242]", "uids = [4242]\nbogus = 1"))
        assert not await daemon.reload()
        assert daemon.state.last_reload == "error"
        assert "policy.web.bogus" in (daemon.state.last_reload_error or "")
        after = _listing(netns)
        assert after == listing
        assert daemon.state.generation == 1
    finally:
        await daemon.stop()
        fw.close()
