"""Unit tests of the command line: check and render on real files, run's options."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import fenced.__main__ as cli
from fenced.__main__ import main
from fenced.core.model import LogLevel
from fenced.daemon import Daemon
from fenced.dns.resolver import FakeResolver
from fenced.kernel.firewall import FakeFirewall
from fenced.log import Logger, log

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "fenced.toml"


def test_check_passes_on_the_shipped_example(capsys: pytest.CaptureFixture[str]) -> None:
    """`fenced check config/fenced.toml` exits 0 with a summary."""
    with pytest.raises(SystemExit) as done:
        main(["check", str(EXAMPLE)])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: 1 file, 1 policy") and "demo" in out


def test_check_reports_every_problem_with_file_and_key(tmp_path: Path) -> None:
    """A broken file exits 1 with one `error: FILE: KEY: REASON` line per problem."""
    bad = tmp_path / "fenced.toml"
    bad.write_text('[policy.web]\nuids = [4242]\noutbound = ["x.example.com:99999"]\nbogus = 1\n')
    cp = subprocess.run(
        [sys.executable, "-m", "fenced", "check", "-c", str(bad)],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    assert cp.returncode == 1
    lines = cp.stderr.strip().splitlines()
    assert any(line.startswith(f"error: {bad}: policy.web.outbound[0]: ") for line in lines)
    assert any(line.startswith(f"error: {bad}: policy.web.bogus: ") for line in lines)


def test_render_prints_a_complete_script_for_the_example(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`fenced render` prints the install script, gateway ports shown as stand-ins."""
    with pytest.raises(SystemExit) as done:
        main(["render", "-c", str(EXAMPLE)])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("# fenced ruleset for table inet fenced")
    assert "flush table inet fenced" in out
    assert "redirect to :50053" in out
    assert "#   policy demo: 50053" in out


def test_check_summary_counts_agree_with_their_nouns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`fenced check` writes "1 domain" and "2 domains", never "1 domains"."""
    main_file = tmp_path / "fenced.toml"
    main_file.write_text(
        '[daemon]\nresolvers = ["192.0.2.53"]\n'
        '[policy.one]\nuids = [4242]\noutbound = ["a.example.com:443", "192.0.2.0/24:80",'
        ' "[2001:db8::1]:443"]\n'
        '[policy.two]\nuids = [4243]\noutbound = ["a.example.com:443", "b.example.com:443"]\n'
    )
    with pytest.raises(SystemExit) as done:
        main(["check", str(main_file)])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "  one (enforce): uids 4242; 3 outbound (1 domain), 0 inbound" in out
    assert "  two (enforce): uids 4243; 2 outbound (2 domains), 0 inbound" in out


@pytest.mark.parametrize("command", ["check", "render", "run"])
def test_help_names_the_config_path_and_its_default(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--help` shows `-c PATH` and the default /etc/fenced/fenced.toml, not CONFIG_OPT."""
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "[-c PATH]" in out and "-c PATH, --config PATH" in out
    assert "(default /etc/fenced/fenced.toml)" in out
    assert "CONFIG_OPT" not in out


def test_run_log_level_flag_reaches_the_daemon(monkeypatch: pytest.MonkeyPatch) -> None:
    """`fenced run --log-level debug` sets the level at once and passes it on as the override."""
    seen: list[object] = []

    async def fake_run_daemon(path: str, firewall: object, *, log_level: str | None) -> None:
        seen.append((path, log_level, log.threshold))

    monkeypatch.setattr(cli, "run_daemon", fake_run_daemon)
    monkeypatch.setattr(cli, "KernelFirewall", lambda: SimpleNamespace(close=lambda: None))
    monkeypatch.setattr(cli, "route_library_logs", seen.append)
    monkeypatch.setattr(log, "threshold", log.threshold)
    with pytest.raises(SystemExit) as done:
        main(["run", "--log-level", "debug", "-c", "/x/fenced.toml"])
    assert done.value.code == 0
    assert seen == [log, ("/x/fenced.toml", "debug", logging.DEBUG)]
    with pytest.raises(SystemExit) as done:
        main(["run", "--log-level", "verbose"])
    assert done.value.code == 2


def _daemon_config(level: str) -> str:
    return (
        f'[daemon]\nlisten = ""\nresolvers = ["192.0.2.53"]\nlog_level = "{level}"\n'
        '[policy.web]\nuids = [4242]\ndns = "direct"\noutbound = ["198.51.100.1:80/tcp"]\n'
    )


@pytest.mark.parametrize(
    ("override", "levels"),
    [(None, ["warning", "debug", "debug"]), ("error", ["error", "error", "error"])],
)
async def test_log_level_is_applied_at_start_and_by_a_reload(
    tmp_path: Path, override: LogLevel | None, levels: list[str]
) -> None:
    """daemon.log_level applies at start and at each good reload; --log-level wins over both."""
    config_file = tmp_path / "fenced.toml"
    config_file.write_text(_daemon_config("warning"))
    logger = Logger(io.StringIO(), level="info")
    ranks = {"debug": 10, "info": 20, "warning": 30, "error": 40}
    daemon = Daemon(
        str(config_file),
        FakeFirewall(),
        logger=logger,
        resolver_factory=lambda _cfg: FakeResolver(),
        log_level=override,
    )
    seen = []
    try:
        await daemon.start()
        seen.append(logger.threshold)
        config_file.write_text(_daemon_config("debug"))
        assert await daemon.reload()
        seen.append(logger.threshold)
        config_file.write_text(_daemon_config("verbose"))  # invalid: the level stays
        assert not await daemon.reload()
        seen.append(logger.threshold)
    finally:
        await daemon.stop()
    assert seen == [ranks[level] for level in levels]
