"""What the README promises a newcomer, checked with the real programs it names."""

from __future__ import annotations

import re
import time
import tomllib
from pathlib import Path

import pytest

from tests.bed import constants as C
from tests.bed.bed import Bed
from tests.bed.fenced_proc import Fenced, daemon_section, policy_section

pytestmark = pytest.mark.bed

REPO = Path(__file__).resolve().parents[2]


def _ms(text: str) -> str:
    """curl's message with its elapsed time (``after 0 ms``) made neutral."""
    return re.sub(r"after \d+ ms", "after N ms", text.strip())


def test_readme_quotes_what_curl_prints_for_a_denied_address(bed: Bed) -> None:
    """The README's curl line for a denied address is refused at once, with the quoted words."""
    readme = (REPO / "README.md").read_text()
    match = re.search(r"^\$U (curl .*?) +# denied address(.*)\n(.*)$", readme, re.MULTILINE)
    assert match is not None, "README has no denied-address curl example"
    argv = match[1].split()
    # the message is quoted on the next line ("#   curl: ...") or in the comment itself
    said = re.fullmatch(r"#\s+(curl: .*)", match[3]) or re.search(r'"(.*)"', match[2])
    assert said is not None, "README does not quote curl's message"
    quoted = said[1]
    with (REPO / "config" / "fenced.toml").open("rb") as f:
        example = tomllib.load(f)["policy"]["demo"]
    Fenced(
        bed,
        daemon_section() + policy_section("demo", uids=[C.UID], outbound=example["outbound"]),
    ).start()
    started = time.monotonic()
    cp = bed.run(argv, uid=C.UID, timeout=10)
    took = time.monotonic() - started
    assert cp.returncode == 7, cp
    assert _ms(cp.stderr) == _ms(quoted)
    assert took < 1.0, f"curl took {took:.2f} s: not refused at once"
