"""Pytest fixtures of the test bed (loaded by ``tests/conftest.py``).

- ``bed``: a started ``tests.bed.bed.Bed`` for one test, torn down afterwards even when
  the test fails (namespaces, cgroups and processes are removed; a teardown that leaves
  something behind fails the test with BedError).

Tests using it should carry ``@pytest.mark.bed``. The fixture skips the test when the bed
cannot run here (not root, or ``ip``/``nft``/``nsenter``/``setpriv``/``sysctl`` missing),
except under CI (``CI`` set), where a bed that cannot run fails the test: enforcement
tests must never pass by being skipped.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from tests.bed.bed import Bed

REQUIRED_TOOLS = ("ip", "nft", "nsenter", "setpriv", "sysctl")


def bed_unavailable() -> str | None:
    """Return why the bed cannot run on this machine, or None if it can."""
    if os.geteuid() != 0:
        return "the test bed needs root"
    missing = [t for t in REQUIRED_TOOLS if shutil.which(t) is None]
    if missing:
        return f"the test bed needs {', '.join(missing)}"
    return None


@pytest.fixture
def bed() -> Iterator[Bed]:
    """A fresh test bed for one test (see ``tests.bed.bed.Bed``), closed afterwards."""
    reason = bed_unavailable()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}, and CI must run the bed tests")
        pytest.skip(reason)
    with Bed() as b:
        yield b
