"""Shared pieces of the attack and fault suite: subjects, the attacker, result records.

Set ``FENCED_ADV_RECORD=/path/results.jsonl`` to append one JSON line per attempt (what
was tried, by which kind of subject, what it should get and what it got); the table in
docs/security.md is made from such a file by ``python -m tests.adversarial.report``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypedDict

from tests.bed import constants as C
from tests.bed.bed import Bed, Cgroup, ProbeResult
from tests.bed.fenced_proc import Fenced, daemon_section, eventually, policy_section

KINDS = ("uid", "gid", "cgroup")
#: Outcomes that mean "did not get through".
BLOCKED = frozenset({"refused", "timeout", "unreachable", "denied", "reset", "closed", "invalid"})

ALLOWED_V4 = C.SERVERS_V4_A[0]  # 198.51.100.10: tcp 80 only (static entry)
UDP_V4 = C.SERVERS_V4_A[1]  # 198.51.100.11: udp 123 only
DENIED_V4 = C.SERVERS_V4_B[0]  # 203.0.113.10: nothing
ALLOWED_V6 = C.SERVERS_V6[0]  # 2001:db8:1::10: tcp 443 only
DENIED_V6 = C.SERVERS_V6[1]  # 2001:db8:1::11: nothing
OUTBOUND = [f"{ALLOWED_V4}:80/tcp", f"{UDP_V4}:123/udp", f"[{ALLOWED_V6}]:443/tcp"]
FAST = {"min_ttl": 1, "grace": 1, "stale": 3}
ATTACKER = "tests.adversarial.attacker"


class Who(TypedDict, total=False):
    """Keyword arguments of ``Bed.probe``/``Bed.listen`` naming an identity."""

    uid: int
    gid: int
    cgroup: Cgroup | None


@dataclass(frozen=True)
class Subject:
    """A confined identity: who the attacker runs as and which cgroup it starts in."""

    kind: str
    uid: int
    gid: int
    cgroup: Cgroup | None

    def policy_keys(self) -> dict[str, object]:
        """The policy keys that match this subject."""
        if self.kind == "uid":
            return {"uids": [self.uid]}
        if self.kind == "gid":
            return {"gids": [self.gid]}
        assert self.cgroup is not None
        return {"cgroups": [self.cgroup.path]}

    @property
    def probe_who(self) -> Who:
        """Keyword arguments for ``Bed.probe`` that run as this subject."""
        if self.kind == "uid":
            return {"uid": self.uid}
        if self.kind == "gid":
            return {"gid": self.gid}
        return {"uid": self.uid, "cgroup": self.cgroup}


def subject(bed: Bed, kind: str) -> Subject:
    """The subject a policy of ``kind`` confines (cgroup kind: an unconfined uid in it)."""
    if kind == "uid":
        return Subject(kind, C.UID, C.UID, None)
    if kind == "gid":
        return Subject(kind, C.GID_ONLY_UID, C.GID, None)
    return Subject(kind, C.OTHER_UID, C.OTHER_UID, bed.cgroup("app.service"))


def start_fenced(
    bed: Bed, subj: Subject, *, daemon: dict[str, object] | None = None, **policy: object
) -> Fenced:
    """Start fenced with one policy ``web`` confining ``subj`` (OUTBOUND unless given)."""
    keys = subj.policy_keys()
    keys.setdefault("outbound", OUTBOUND)
    keys.update(policy)
    cfg = daemon_section(**(daemon or {})) + policy_section("web", **keys)
    return Fenced(bed, cfg).start()


def attack(
    bed: Bed,
    subj: Subject | None,
    *args: object,
    timeout: float = 1.5,
    cgroup: Cgroup | None = None,
) -> ProbeResult:
    """Run ``tests.adversarial.attacker ARGS`` as ``subj`` (None: as root, unconfined)."""
    argv = [sys.executable, "-m", ATTACKER, "--timeout", str(timeout)]
    cg = cgroup
    if subj is not None:
        argv += ["--as-uid", str(subj.uid), "--as-gid", str(subj.gid)]
        cg = cg or subj.cgroup
    argv += [str(a) for a in args]
    cp = bed.run(argv, cgroup=cg, timeout=timeout * 6 + 30)
    return ProbeResult.from_completed(cp)


def record(attempt: str, kind: str, expected: str, got: str) -> None:
    """Append one observed result to ``$FENCED_ADV_RECORD`` (if set)."""
    path = os.environ.get("FENCED_ADV_RECORD")
    if not path:
        return
    line = {"attempt": attempt, "kind": kind, "expected": expected, "got": got, "t": time.time()}
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")


def expect_blocked(attempt: str, kind: str, result: ProbeResult | str) -> None:
    """Record and assert that ``result`` did not get through."""
    got = result if isinstance(result, str) else result.outcome
    record(attempt, kind, "blocked", got)
    data = "" if isinstance(result, str) else result.data
    assert is_blocked(got), f"{attempt} ({kind}) got through: {got} {data}"


def is_blocked(outcome: str) -> bool:
    """Whether an outcome means the attempt failed (a refused socket setup counts)."""
    return all(o in BLOCKED or o.startswith("setup-") for o in outcome.split(","))


def expect(attempt: str, kind: str, want: str | Iterable[str], result: ProbeResult | str) -> None:
    """Record and assert that ``result``'s outcome is ``want`` (or one of them)."""
    got = result if isinstance(result, str) else result.outcome
    wants = {want} if isinstance(want, str) else set(want)
    record(attempt, kind, "/".join(sorted(wants)), got)
    data = "" if isinstance(result, str) else result.data
    assert got in wants, f"{attempt} ({kind}): want {sorted(wants)}, got {got} {data}"


def alive(fenced: Fenced) -> bool:
    """Whether the daemon process is still running."""
    return fenced.proc is not None and fenced.proc.alive


def set_elements(bed: Bed, table: str = "fenced", suffix: str = "_4") -> list[str]:
    """Every element (address text) of the domain sets ending in ``suffix``."""
    listing = bed.nft(["-j", "list", "table", "inet", table]).stdout
    out: list[str] = []
    for item in json.loads(listing).get("nftables", []):
        s = item.get("set")
        if not s or not s["name"].startswith("d_") or not s["name"].endswith(suffix):
            continue
        for el in s.get("elem", []):
            val = el["elem"]["val"] if isinstance(el, dict) and "elem" in el else el
            out.append(str(val))
    return out


def policy_for(subj: Subject, **keys: object) -> str:
    """A ``[policy.web]`` section confining ``subj`` with ``keys``."""
    k = subj.policy_keys()
    k.update(keys)
    return policy_section("web", **k)


__all__ = [
    "ALLOWED_V4",
    "ALLOWED_V6",
    "BLOCKED",
    "DENIED_V4",
    "DENIED_V6",
    "FAST",
    "KINDS",
    "OUTBOUND",
    "UDP_V4",
    "Subject",
    "Who",
    "alive",
    "attack",
    "daemon_section",
    "eventually",
    "expect",
    "expect_blocked",
    "is_blocked",
    "policy_for",
    "record",
    "set_elements",
    "start_fenced",
    "subject",
]
