"""The fake firewall keeps the kernel's contract: the same transactions give the same results.

Every step runs on a ``FakeFirewall`` and on a ``KernelFirewall`` acting on a network
namespace made for the test, and the two outcomes must agree: returned values (dumps by
key and verdict, timeouts within ``TOLERANCE_MS``, since the kernel counts time down and
the fake does not), failures by exception type and errno. Steps that must fail are also
checked to fail, so two firewalls that both accept everything cannot pass.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fenced.config.files import load
from fenced.core.elements import DumpedElement, Element, SetOp, Verdict, cgroup_key, ipv4_key
from fenced.core.model import Config
from fenced.core.ruleset import (
    AddTable,
    Delete,
    Existing,
    Layout,
    Ruleset,
    cleanup,
    install,
    layout,
)
from fenced.errors import FencedError
from fenced.kernel.firewall import FakeFirewall, Firewall, KernelFirewall
from tests.netns import scratch_netns

pytestmark = pytest.mark.bed

#: How far a timeout or expiry the kernel reports may be from the fake's (which does not
#: count down): the whole test takes well under this.
TOLERANCE_MS = 10_000
TABLE = "fenced"

FIRST = """
[daemon]
listen = ""
resolvers = ["192.0.2.53"]
[policy.web]
dns = "direct"
uids = [4242]
gids = [4300]
cgroups = ["contract/app"]
outbound = ["api.example.com:443/tcp", "203.0.113.7"]
inbound = ["8080"]
[policy.old]
dns = "direct"
uids = [4500]
outbound = ["old.example.com:80/tcp"]
"""

#: FIRST without the policy ``old`` and with another name for ``web``: a reload.
SECOND = """
[daemon]
listen = ""
resolvers = ["192.0.2.53"]
[policy.web]
dns = "direct"
uids = [4242, 4243]
cgroups = ["contract/app"]
outbound = ["api.example.com:443/tcp", "new.example.com:22/tcp"]
"""


@pytest.fixture
def netns() -> Iterator[str]:
    """A scratch network namespace, deleted afterwards; yields /run/netns/NAME."""
    if os.geteuid() != 0 or shutil.which("nft") is None:
        if os.environ.get("CI"):
            pytest.fail("kernel tests need root and nft, and CI must run them")
        pytest.skip("needs root and nft")
    with scratch_netns("fdk") as path:
        yield path


def _config(text: str, tmp: Path) -> tuple[Config, Layout]:
    path = tmp / "fenced.toml"
    path.write_text(text)
    cfg = load(path, lookup_user=lambda _n: None, lookup_group=lambda _n: None)
    return cfg, layout(cfg)


@dataclass(frozen=True)
class Outcome:
    """What one call gave: a value, or the type name and errno of what it raised."""

    value: object = None
    raised: tuple[str, int | None] | None = None


def _norm(value: object) -> object:
    """Dumps as a key-sorted tuple (the kernel's order is its hash order); the rest as is."""
    if isinstance(value, list) and all(isinstance(v, DumpedElement) for v in value):
        return tuple(sorted(value, key=lambda d: d.key))
    return value


def _close(a: int | None, b: int | None) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) <= TOLERANCE_MS


def _agree(fake: Outcome, kernel: Outcome) -> bool:
    if fake.raised is not None or kernel.raised is not None:
        return fake.raised == kernel.raised
    a, b = fake.value, kernel.value
    if isinstance(a, tuple) and isinstance(b, tuple) and a and isinstance(a[0], DumpedElement):
        return len(a) == len(b) and all(
            isinstance(y, DumpedElement)
            and (x.key, x.verdict, x.data, x.flags) == (y.key, y.verdict, y.data, y.flags)
            and _close(x.timeout_ms, y.timeout_ms)
            and _close(x.expires_ms, y.expires_ms)
            for x, y in zip(a, b, strict=True)
        )
    return a == b


def _entries(dump: object) -> list[tuple[bytes, Verdict | None, int | None]]:
    """Key, verdict and timeout of each element of a normalized dump (no expiry: it runs)."""
    assert isinstance(dump, tuple)
    return [(d.key, d.verdict, d.timeout_ms) for d in dump if isinstance(d, DumpedElement)]


async def _outcome(call: Awaitable[object]) -> Outcome:
    try:
        return Outcome(value=_norm(await call))
    except FencedError as exc:
        return Outcome(raised=(type(exc).__name__, getattr(exc, "errno", None)))


class Pair:
    """The fake and the kernel firewall, driven in step."""

    def __init__(self, fake: FakeFirewall, kernel: KernelFirewall) -> None:
        self.fake = fake
        self.kernel = kernel

    async def both(self, what: str, call: Callable[[Firewall], Awaitable[object]]) -> Outcome:
        """Run ``call`` on both; fail the test unless they agree; the kernel's outcome."""
        fake = await _outcome(call(self.fake))
        kernel = await _outcome(call(self.kernel))
        assert _agree(fake, kernel), f"{what}: fake {fake} but kernel {kernel}"
        return kernel

    async def ok(self, what: str, call: Callable[[Firewall], Awaitable[object]]) -> object:
        """Like ``both``, and both must succeed; the kernel's value."""
        out = await self.both(what, call)
        assert out.raised is None, f"{what}: both raised {out.raised}"
        return out.value

    async def fails(self, what: str, call: Callable[[Firewall], Awaitable[object]]) -> None:
        """Like ``both``, and both must raise."""
        out = await self.both(what, call)
        assert out.raised is not None, f"{what}: both succeeded"

    async def dump(self, set_name: str) -> object:
        """Both dumps of ``set_name``, which must agree."""
        return await self.ok(f"dump {set_name}", lambda fw: fw.dump(TABLE, set_name))


@pytest.fixture
def pair(netns: str) -> Iterator[Pair]:
    """A FakeFirewall and a KernelFirewall in a fresh namespace."""
    kernel = KernelFirewall(netns)
    try:
        yield Pair(FakeFirewall(), kernel)
    finally:
        kernel.close()


def _op(action: str, set_name: str, *elements: Element) -> SetOp:
    return SetOp(action, "inet", TABLE, set_name, elements)  # type: ignore[arg-type]


def _apply(*ops: SetOp) -> Callable[[Firewall], Awaitable[None]]:
    return lambda fw: fw.apply(ops)


def _ip(addr: str, timeout_ms: int | None = None) -> Element:
    return Element(ipv4_key(addr), timeout_ms=timeout_ms)


def _cg(cgroup_id: int, chain: str) -> Element:
    return Element(cgroup_key(cgroup_id), verdict=Verdict("jump", chain))


async def _installed(pair: Pair, tmp_path: Path) -> Layout:
    cfg, lay = _config(FIRST, tmp_path)
    assert await pair.ok("existing before install", lambda fw: fw.existing(TABLE)) is None
    value = install(cfg, lay, gateway_ports={})
    await pair.ok("install", lambda fw: fw.install(value))
    return lay


async def test_install_existing_counters_and_delete_table(pair: Pair, tmp_path: Path) -> None:
    """Install, reload, a failing install, counters and delete_table agree."""
    lay = await _installed(pair, tmp_path)
    existing = await pair.ok("existing", lambda fw: fw.existing(TABLE))
    assert existing == Existing(
        frozenset(lay.chains), frozenset(lay.set_names), frozenset(lay.counters)
    )
    for name in lay.set_names:
        await pair.dump(name)
    assert await pair.ok("counters", lambda fw: fw.counters(TABLE)) == dict.fromkeys(
        lay.counters, 0
    )

    four = next(s.name for s in lay.sets_for("api.example.com") if s.family == 4)
    await pair.ok("add to a kept set", _apply(_op("add", four, _ip("198.51.100.7", 600_000))))
    broken = Ruleset((AddTable(TABLE), Delete("chain", TABLE, "no_such_chain")))
    await pair.fails("install deleting a missing chain", lambda fw: fw.install(broken))
    assert await pair.ok("existing after failed install", lambda fw: fw.existing(TABLE)) == existing

    cfg2, lay2 = _config(SECOND, tmp_path)
    assert isinstance(existing, Existing)
    reload = install(cfg2, lay2, existing, gateway_ports={})
    await pair.ok("reload", lambda fw: fw.install(reload))
    assert await pair.ok("existing after reload", lambda fw: fw.existing(TABLE)) == Existing(
        frozenset(lay2.chains), frozenset(lay2.set_names), frozenset(lay2.counters)
    )
    kept = await pair.dump(four)
    assert isinstance(kept, tuple) and [d.key for d in kept] == [ipv4_key("198.51.100.7")]
    for name in lay2.set_names:
        await pair.dump(name)
    await pair.ok("counters after reload", lambda fw: fw.counters(TABLE))
    gone = cleanup(TABLE, (), "renamed_away")
    await pair.ok("cleanup of a renamed table already gone", lambda fw: fw.install(gone))
    assert await pair.ok("no table left behind", lambda fw: fw.existing("renamed_away")) is None
    stale = cleanup(TABLE, ("no_such_chain",))
    await pair.fails("cleanup deleting a missing chain", lambda fw: fw.install(stale))

    await pair.ok("delete table", lambda fw: fw.delete_table(TABLE))
    assert await pair.ok("existing after delete", lambda fw: fw.existing(TABLE)) is None
    await pair.ok("delete a missing table", lambda fw: fw.delete_table(TABLE))
    await pair.fails("dump in a missing table", lambda fw: fw.dump(TABLE, four))
    await pair.fails("apply to a missing table", _apply(_op("add", four, _ip("198.51.100.8"))))
    await pair.ok("an op without elements on a missing table", _apply(_op("add", four)))
    await pair.both("counters of a missing table", lambda fw: fw.counters(TABLE))


async def test_set_elements(pair: Pair, tmp_path: Path) -> None:
    """add / delete / refresh / discard / flush on a timeout set, failing batches included."""
    lay = await _installed(pair, tmp_path)
    four = next(s.name for s in lay.sets_for("api.example.com") if s.family == 4)
    other = next(s.name for s in lay.sets_for("old.example.com") if s.family == 4)
    a, b, c = "198.51.100.7", "198.51.100.8", "198.51.100.9"

    await pair.ok("add", _apply(_op("add", four, _ip(a, 600_000), _ip(b, 300_000))))
    await pair.dump(four)
    await pair.ok("add again", _apply(_op("add", four, _ip(a, 600_000))))
    await pair.ok("add with another timeout", _apply(_op("add", four, _ip(b, 900_000))))
    await pair.dump(four)
    await pair.ok("add without timeout", _apply(_op("add", four, _ip(c))))
    await pair.dump(four)

    before = await pair.dump(four)
    await pair.fails(
        "delete naming a missing element",
        _apply(_op("delete", four, _ip(a), _ip("198.51.100.99"))),
    )
    await pair.fails(
        "a batch whose second op deletes a missing element",
        _apply(_op("add", other, _ip(b, 60_000)), _op("delete", four, _ip("198.51.100.99"))),
    )
    assert _entries(await pair.dump(four)) == _entries(before)
    assert await pair.dump(other) == ()

    await pair.ok("delete", _apply(_op("delete", four, _ip(c))))
    await pair.ok("refresh", _apply(_op("refresh", four, _ip(a, 120_000), _ip(c, 60_000))))
    await pair.dump(four)
    await pair.ok("discard", _apply(_op("discard", four, _ip(b), _ip("198.51.100.99"))))
    await pair.dump(four)
    await pair.ok("ops without elements", _apply(_op("add", four), _op("delete", four)))
    await pair.ok("flush", _apply(_op("flush", four)))
    assert await pair.dump(four) == ()
    await pair.fails("flush a missing set", _apply(_op("flush", "no_such_set")))
    await pair.fails("add to a missing set", _apply(_op("add", "no_such_set", _ip(a))))
    await pair.ok("an op without elements on a missing set", _apply(_op("add", "no_such_set")))
    verdict = Element(ipv4_key(a), verdict=Verdict("accept"))
    await pair.fails("add an element with a verdict to a set", _apply(_op("add", four, verdict)))


async def test_verdict_map_elements(pair: Pair, tmp_path: Path) -> None:
    """Verdict maps: a verdict cannot be changed by re-adding; delete + add in one batch can."""
    lay = await _installed(pair, tmp_path)
    cg = lay.cgroups[0]
    out_map, web_out, web_in = cg.out_map, "p_web_out", "p_web_in"
    for name in (m.name for m in lay.maps if m.name != out_map):
        await pair.dump(name)

    await pair.ok("add", _apply(_op("add", out_map, _cg(7001, web_out), _cg(7002, web_out))))
    await pair.dump(out_map)
    await pair.ok("add again, same verdict", _apply(_op("add", out_map, _cg(7001, web_out))))
    before = await pair.dump(out_map)
    await pair.fails("add with another verdict", _apply(_op("add", out_map, _cg(7001, web_in))))
    await pair.fails(
        "refresh with another verdict", _apply(_op("refresh", out_map, _cg(7001, web_in)))
    )
    await pair.fails(
        "discard with another verdict", _apply(_op("discard", out_map, _cg(7002, web_in)))
    )
    assert _entries(await pair.dump(out_map)) == _entries(before)

    await pair.ok(
        "delete then add with another verdict",
        _apply(
            _op("delete", out_map, Element(cgroup_key(7001))),
            _op("add", out_map, _cg(7001, web_in)),
        ),
    )
    await pair.dump(out_map)
    await pair.ok("refresh, same verdict", _apply(_op("refresh", out_map, _cg(7001, web_in))))
    await pair.ok(
        "discard, same verdict",
        _apply(_op("discard", out_map, _cg(7002, web_out), _cg(7003, web_out))),
    )
    await pair.dump(out_map)
    await pair.fails(
        "delete naming a missing element", _apply(_op("delete", out_map, Element(cgroup_key(7002))))
    )
    await pair.fails(
        "add an element without a verdict to a map",
        _apply(_op("add", out_map, Element(cgroup_key(7004)))),
    )
    await pair.ok("flush", _apply(_op("flush", out_map)))
    assert await pair.dump(out_map) == ()
