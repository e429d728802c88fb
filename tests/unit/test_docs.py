"""The README and the install guide: their lists are complete and their commands work."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
INSTALL = REPO / "docs" / "install.md"


def _shell_blocks(text: str) -> list[str]:
    """The ```sh code blocks of a Markdown text, in order."""
    return re.findall(r"^ *```sh\n(.*?)^ *```", text, re.MULTILINE | re.DOTALL)


def test_readme_links_every_doc_once() -> None:
    """README's Documentation list links each docs/*.md exactly once, and nothing else."""
    section = README.read_text().split("\n## Documentation\n", 1)[1].split("\n## ", 1)[0]
    links = re.findall(r"\]\((docs/[^)#]+)\)", section)
    assert sorted(links) == sorted(f"docs/{p.name}" for p in (REPO / "docs").glob("*.md"))


def test_readme_first_screen_has_two_setup_commands() -> None:
    """README's first shell block holds exactly two commands (run fenced, run the tests)."""
    first = _shell_blocks(README.read_text())[0]
    commands = [line for line in first.splitlines() if line.strip() and not line.startswith("#")]
    assert len(commands) == 2, commands
    assert commands[1] == "bash .ci/run"


def test_venvs_are_made_with_debians_python() -> None:
    """Every `-m venv` in README.md and docs/*.md runs /usr/bin/python3, not whatever is on PATH."""
    for path in [README, *sorted((REPO / "docs").glob("*.md"))]:
        for interpreter in re.findall(r"(\S+) -m venv\b", path.read_text()):
            assert interpreter == "/usr/bin/python3", f"{path.name}: {interpreter} -m venv"


def test_install_data_command_prints_the_installed_package_path(tmp_path: Path) -> None:
    """install.md's DATA command names the installed package's data folder, run from the clone."""
    site = tmp_path / "site-packages"
    (site / "fenced" / "data").mkdir(parents=True)
    (site / "fenced" / "__init__.py").write_text("")
    text = INSTALL.read_text()
    (command,) = re.findall(r"^DATA=\$\((.*)\)$", text, re.MULTILINE)
    commands = [command, *re.findall(r"^ *(/opt/fenced/bin/python .*data'\)\")$", text, re.M)]
    assert len(commands) == 2  # the install step and the "what pip install gives you" one
    for cmd in commands:
        assert cmd.startswith("/opt/fenced/bin/python ")
        cp = subprocess.run(
            cmd.replace("/opt/fenced/bin/python", sys.executable, 1),
            shell=True,
            cwd=REPO,  # "from a clone of this repository", which holds a fenced/ of its own
            env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            check=True,
        )
        assert cp.stdout.strip() == str(site / "fenced" / "data")
