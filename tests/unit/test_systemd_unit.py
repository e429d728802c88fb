"""Checks of systemd/fenced.service with systemd's own tools and by reading it.

``systemd-analyze security --offline=true`` rates the unit's sandbox (lower is better;
the bar is 2.0) and ``systemd-analyze verify`` lints it. Both come with the ``systemd``
package; without it these tests skip, except under CI (``CI`` set), where they fail.
Because a lower score is easy to reach by dropping what fenced needs, one test pins the
capabilities, address families and service settings fenced cannot work without.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "fenced.service"
MAX_EXPOSURE = 2.0
INSTALLED_BINARY = "/usr/local/bin/fenced"


def _analyze() -> str:
    """The systemd-analyze program; skip without it, or fail under CI."""
    found = shutil.which("systemd-analyze")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing under CI: apt-get install systemd")
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    return found


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "LC_ALL": "C.UTF-8"}
    return subprocess.run(args, capture_output=True, text=True, timeout=120, env=env, check=False)


def _directives(text: str) -> dict[tuple[str, str], list[str]]:
    """``(section, key) -> values`` in file order; a unit file may repeat a key."""
    found: dict[tuple[str, str], list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        found.setdefault((section, key.strip()), []).append(value.strip())
    return found


def _stand_in_binary() -> str:
    """An existing executable to put in place of /usr/local/bin/fenced for verify.

    The ``fenced`` script of the environment running the tests when there is one (as
    under CI, where .ci/run installs the package into .venv), else the interpreter.
    """
    beside = Path(sys.executable).parent / "fenced"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("fenced") or sys.executable


def test_security_exposure_at_most_2() -> None:
    """systemd-analyze security --offline rates the unit at most 2.0 (and 'OK')."""
    analyze = _analyze()
    result = _run(analyze, "security", "--offline=true", "--no-pager", str(UNIT))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    match = re.search(r"Overall exposure level for fenced\.service: (\d+\.\d+) (\w+)", output)
    assert match is not None, output
    assert float(match.group(1)) <= MAX_EXPOSURE, output
    assert match.group(2) == "OK", output


def test_verify_is_clean(tmp_path: Path) -> None:
    """systemd-analyze verify prints nothing about the unit (ExecStart pointed at a real file).

    verify insists that ExecStart's program exists; /usr/local/bin/fenced is where the
    installed unit expects it, not where a test run has it, so a copy of the unit in
    tmp_path names an existing executable instead. Nothing else is changed.
    """
    analyze = _analyze()
    text = UNIT.read_text()
    assert INSTALLED_BINARY in text
    copy = tmp_path / "fenced.service"
    copy.write_text(text.replace(INSTALLED_BINARY, _stand_in_binary()))
    result = _run(analyze, "verify", "--man=no", str(copy))
    output = result.stdout + result.stderr
    about_unit = [
        line for line in output.splitlines() if "fenced.service" in line or str(copy) in line
    ]
    assert about_unit == [], output
    assert result.returncode == 0, output


def test_unit_keeps_what_fenced_needs() -> None:
    """The unit keeps the settings fenced needs: notify, reload by SIGHUP, caps, families."""
    d = _directives(UNIT.read_text())
    service = {key: values for (section, key), values in d.items() if section == "Service"}
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert service["ExecStart"] == [f"{INSTALLED_BINARY} run -c /etc/fenced/fenced.toml"]
    assert service["ExecReload"][-1] == "/bin/kill -HUP $MAINPID"
    assert service["Restart"] == ["on-failure"]
    assert service["WatchdogSec"] == ["30s"]
    assert service["TimeoutStopSec"] == ["10s"]
    caps = {"CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE"}
    assert set(service["CapabilityBoundingSet"][0].split()) == caps
    assert set(service["AmbientCapabilities"][0].split()) == caps
    families = set(service["RestrictAddressFamilies"][0].split())
    assert families == {"AF_UNIX", "AF_NETLINK", "AF_INET", "AF_INET6"}
    # It acts on the host's network namespace and needs its capabilities there.
    assert "PrivateNetwork" not in service
    assert "PrivateUsers" not in service
    assert "IPAddressDeny" not in service  # the resolvers depend on the configuration
    assert d[("Install", "WantedBy")] == ["multi-user.target"]
