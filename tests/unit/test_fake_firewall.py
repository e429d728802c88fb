"""Unit tests of FakeFirewall applying rulesets as values: in order, all or nothing."""

from __future__ import annotations

import pytest

from fenced.core.elements import Element, SetOp, Verdict, cgroup_key
from fenced.core.model import Config, DaemonConfig, Policy
from fenced.core.ruleset import Delete, Existing, Ruleset, cleanup, install, layout, render
from fenced.errors import FirewallError
from fenced.kernel.firewall import FakeFirewall


def _cfg(*policies: Policy, table: str = "fenced") -> Config:
    return Config(daemon=DaemonConfig(table=table), policies=policies)


WEB = Policy("web", uids=(4242,), cgroups=("a/b",), dns="direct")
OLD = Policy("old", cgroups=("a/c",), dns="direct")


async def test_install_declares_the_layout_and_keeps_the_rendered_script() -> None:
    """After install the table has exactly the layout's objects; its script is the rendering."""
    cfg = _cfg(WEB)
    lay = layout(cfg)
    fw = FakeFirewall()
    value = install(cfg, lay)
    await fw.install(value)
    assert await fw.existing("fenced") == Existing(
        frozenset(lay.chains), frozenset(lay.set_names), frozenset(lay.counters)
    )
    assert fw.tables["fenced"].script == render(value)


async def test_reinstall_keeps_elements_and_deletes_stale_objects() -> None:
    """A new config deletes what it lacks; elements of kept maps stay (flush table)."""
    fw = FakeFirewall()
    both = _cfg(WEB, OLD)
    await fw.install(install(both, layout(both)))
    jump = Element(cgroup_key(7), verdict=Verdict("jump", "p_web_out"))
    await fw.apply([SetOp("add", "inet", "fenced", "m_cg_out_2", (jump,))])
    web = _cfg(WEB)
    lay = layout(web)
    await fw.install(install(web, lay, await fw.existing("fenced")))
    t = fw.tables["fenced"]
    assert t.chains == set(lay.chains)
    assert t.sets["m_cg_out_2"] == {jump.key: jump}


async def test_a_failing_command_applies_nothing() -> None:
    """Deleting a missing object fails the whole ruleset and leaves the tables as they were."""
    fw = FakeFirewall()
    cfg = _cfg(WEB)
    await fw.install(install(cfg, layout(cfg)))
    before = fw.tables["fenced"].copy()
    bad = Ruleset((Delete("chain", "fenced", "p_web_in"), Delete("chain", "fenced", "nope")))
    with pytest.raises(FirewallError):
        await fw.install(bad)
    assert fw.tables["fenced"] == before


async def test_cleanup_drops_a_renamed_table_whether_or_not_it_exists() -> None:
    """cleanup's old table goes if present, and its absence is no error."""
    fw = FakeFirewall()
    old, new = _cfg(WEB, table="old"), _cfg(WEB, table="new")
    await fw.install(install(old, layout(old)))
    await fw.install(install(new, layout(new)))
    await fw.install(cleanup("new", (), "old"))
    assert set(fw.tables) == {"new"}
    await fw.install(cleanup("new", (), "old"))
    assert set(fw.tables) == {"new"}
