"""Turn recorded results (``FENCED_ADV_RECORD``) into the Markdown tables of docs/security.md.

    FENCED_ADV_RECORD=/tmp/results.jsonl python -m pytest -q tests/adversarial
    python -m tests.adversarial.report /tmp/results.jsonl

One row per attempt, in the order first seen; the uid, gid and cgroup columns hold what
each kind of subject got (the last run's result when an attempt was repeated, and every
distinct outcome when a loop saw several).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

KINDS = ("uid", "gid", "cgroup")


def table(lines: list[dict[str, str]]) -> str:
    """The Markdown table for ``lines`` (records of ``tests.adversarial.common.record``)."""
    rows: dict[str, dict[str, list[str]]] = {}
    expected: dict[str, str] = {}
    for r in lines:
        got = rows.setdefault(r["attempt"], {}).setdefault(r["kind"], [])
        if r["got"] not in got:
            got.append(r["got"])
        expected[r["attempt"]] = r["expected"]
    out = ["| attempt | should get | uid | gid | cgroup |", "| --- | --- | --- | --- | --- |"]
    for attempt, by_kind in rows.items():
        cells = []
        for k in KINDS:
            cells.append(", ".join(by_kind.get(k, [])) or "—")
        others = [v for k, v in by_kind.items() if k not in KINDS]
        if others:  # not tied to a kind of subject: one value across the row
            cells = [", ".join(x for v in others for x in v), "", ""]
        esc = attempt.replace("|", "\\|")
        out.append(f"| {esc} | {expected[attempt]} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Print the table for the JSON-lines file named on the command line."""
    args = sys.argv[1:] if argv is None else argv
    lines = [json.loads(x) for x in Path(args[0]).read_text().splitlines() if x.strip()]
    sys.stdout.write(table(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
