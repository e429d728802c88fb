"""The files ``pip install .`` ships in ``fenced/data`` are copies of the canonical ones.

The unit (systemd/fenced.service) and the example policy (config/fenced.toml) are edited
where they are; fenced/data/ holds byte-identical copies so that an installed package
carries them (setuptools package data). This test fails when the two drift apart; fix it
with ``cp systemd/fenced.service config/fenced.toml fenced/data/``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "fenced" / "data"


@pytest.mark.parametrize(
    ("canonical", "shipped"),
    [
        (REPO / "systemd" / "fenced.service", DATA / "fenced.service"),
        (REPO / "config" / "fenced.toml", DATA / "fenced.toml"),
    ],
    ids=["fenced.service", "fenced.toml"],
)
def test_shipped_copy_is_identical(canonical: Path, shipped: Path) -> None:
    """fenced/data/NAME has exactly the bytes of its canonical file."""
    assert shipped.read_bytes() == canonical.read_bytes(), (
        f"{shipped} differs from {canonical}: cp {canonical} {shipped}"
    )


def test_data_ships_only_known_files() -> None:
    """fenced/data holds the two copies and nothing else (every file there is installed)."""
    assert sorted(p.name for p in DATA.iterdir()) == ["fenced.service", "fenced.toml"]


def test_package_data_includes_data_dir() -> None:
    """pyproject.toml makes setuptools install fenced/data/* with the package."""
    with (REPO / "pyproject.toml").open("rb") as f:
        project = tomllib.load(f)
    setuptools = project["tool"]["setuptools"]
    assert "fenced.data" in setuptools["packages"]
    assert "data/*" in setuptools["package-data"]["fenced"]
