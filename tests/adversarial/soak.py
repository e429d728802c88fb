"""Soak: fenced with thousands of short-TTL names, churning answers and periodic reloads.

Not a pytest module (run it by hand, as root, outside CI)::

    python -m tests.adversarial.soak --minutes 10 --names 10000

It builds a test bed, serves ``--names`` names with TTLs between ``--min-ttl`` and
``--max-ttl`` seconds, changes the answers of ``--churn`` of them every ``--churn-every``
seconds, sends SIGHUP every ``--reload-every`` seconds (adding or removing one name), and
samples fenced's resident memory and open file descriptors every ``--sample-every``
seconds. At the end it reads the resolver's query log and counts *missed refreshes*: a
name whose A queries are further apart than its TTL + jitter (at most 1 s) + ``--slack``.
It prints a JSON summary and exits 1 if fenced died, RSS or fds grew past the limits, or
a refresh was missed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import signal
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from tests.bed import constants as C
from tests.bed.bed import Bed
from tests.bed.fenced_proc import Fenced, daemon_section, policy_section

DOMAIN = "soak.example"


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def sample(pid: int) -> tuple[float, int]:
    """(RSS in MiB, number of open file descriptors) of ``pid``."""
    fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
    return _status_kb(pid, "VmRSS") / 1024, fds


def config(names: list[str], min_ttl: int) -> str:
    """One uid policy allowing every name on tcp 80."""
    return daemon_section(min_ttl=min_ttl, max_ttl=3600, grace=5, stale=60) + policy_section(
        "soak", uids=[C.UID], outbound=[f"{n}:80/tcp" for n in names]
    )


def write_zone(bed: Bed, answers: dict[str, tuple[str, int]]) -> None:
    """Replace the zone with one A record per name, in a single atomic write."""
    data = bed.dns.snapshot()
    data["records"] = {n: {"A": {"ttl": ttl, "values": [ip]}} for n, (ip, ttl) in answers.items()}
    # One write for thousands of names (Zone.set would rewrite the file per name).
    bed.dns._data = data
    bed.dns._write()


def missed_refreshes(
    queries: list[dict[str, Any]], ttls: dict[str, int], start: float, end: float, slack: float
) -> tuple[int, int, float]:
    """(names with a missed refresh, names checked, worst lateness in seconds)."""
    times: dict[str, list[float]] = defaultdict(list)
    for q in queries:
        if q["type"] == "A" and q["name"] in ttls:
            times[q["name"]].append(q["t"])
    missed, worst = 0, 0.0
    for name, ttl in ttls.items():
        ts = sorted(t for t in times.get(name, []) if start <= t <= end)
        allowed = ttl + min(ttl * 0.1, 1.0) + slack
        gaps = [b - a for a, b in itertools.pairwise(ts)]
        if ts:
            gaps.append(end - ts[-1])  # no query at all since the last one
        late = max((g - allowed for g in gaps), default=end - start)
        worst = max(worst, late)
        if late > 0:
            missed += 1
    return missed, len(ttls), worst


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the soak and return its summary."""
    rng = random.Random(args.seed)
    pool = list(C.SERVERS_V4)
    names = [f"n{i}.{DOMAIN}" for i in range(args.names)]
    ttls = {n: rng.randint(args.min_ttl, args.max_ttl) for n in names}
    answers = {n: (rng.choice(pool), ttls[n]) for n in names}
    summary: dict[str, Any] = {"args": vars(args)}
    with Bed() as bed:
        write_zone(bed, answers)
        extra = f"extra.{DOMAIN}"
        answers[extra] = (pool[0], args.max_ttl)
        write_zone(bed, answers)
        fenced = Fenced(bed, config(names, args.min_ttl))
        t0 = time.time()
        fenced.start()
        pid = fenced.pid
        summary["start_seconds"] = round(time.time() - t0, 2)
        samples: list[tuple[float, float, int]] = []
        probes = {"allowed_ok": 0, "allowed_fail": 0, "denied_ok": 0, "denied_leak": 0}
        start = time.time()
        end = start + args.minutes * 60
        next_churn = start + args.churn_every
        next_reload = start + args.reload_every
        next_sample = start
        reloads = 0
        with_extra = False
        while time.time() < end:
            now = time.time()
            if now >= next_sample:
                rss, fds = sample(pid)
                samples.append((round(now - start, 1), round(rss, 2), fds))
                print(f"t={now - start:6.0f}s rss={rss:7.1f}MiB fds={fds}", flush=True)
                next_sample += args.sample_every
                name = rng.choice(names)
                if bed.probe("tcp", answers[name][0], 80, uid=C.UID).outcome == "connected":
                    probes["allowed_ok"] += 1
                else:
                    probes["allowed_fail"] += 1
                denied = bed.probe("tcp", C.SERVERS_V6[5], 80, uid=C.UID).outcome
                probes["denied_leak" if denied == "connected" else "denied_ok"] += 1
            if now >= next_churn:
                for n in rng.sample(names, min(args.churn, len(names))):
                    answers[n] = (rng.choice(pool), ttls[n])
                write_zone(bed, answers)
                next_churn += args.churn_every
            if now >= next_reload:
                with_extra = not with_extra
                fenced.write(config([*names, extra] if with_extra else names, args.min_ttl))
                fenced.send_signal(signal.SIGHUP)
                reloads += 1
                next_reload += args.reload_every
            if not fenced.proc or not fenced.proc.alive:
                break
            time.sleep(0.2)
        alive = fenced.proc is not None and fenced.proc.alive
        stop = time.time()
        log = fenced.log()
        queries = [json.loads(line) for line in bed.dns.log_path.read_text().splitlines() if line]
        warm = start + args.warmup
        missed, checked, worst = missed_refreshes(queries, ttls, warm, stop, args.slack)
        if alive:
            fenced.stop()
    third = max(len(samples) // 3, 1)
    steady = [s for s in samples if s[0] >= args.warmup] or samples
    first, last = steady[:third], steady[-third:]
    rss_first = statistics.median(s[1] for s in first)
    rss_last = statistics.median(s[1] for s in last)
    summary.update(
        alive=alive,
        seconds=round(stop - start),
        reloads=reloads,
        reloaded_ok=log.count("event=reloaded"),
        samples=len(samples),
        rss_mib_first=rss_first,
        rss_mib_last=rss_last,
        rss_growth_mib=round(rss_last - rss_first, 2),
        # Lookups in flight hold a socket each, so fds move with the load: compare peaks.
        fds_max_first=max(s[2] for s in first),
        fds_max_last=max(s[2] for s in last),
        fds_min_first=min(s[2] for s in first),
        fds_min_last=min(s[2] for s in last),
        queries=len(queries),
        names_checked=checked,
        missed_refreshes=missed,
        worst_lateness_s=round(worst, 2),
        dns_failed=log.count("event=dns_failed"),
        set_write_failed=log.count("event=set_write_failed"),
        refresher_error=log.count("event=refresher_error"),
        probes=probes,
    )
    summary["ok"] = bool(
        alive
        and summary["rss_growth_mib"] <= max(args.rss_limit_mib, 0.1 * rss_first)
        and summary["fds_max_last"] <= summary["fds_max_first"] + args.fd_slack
        and missed == 0
        and probes["denied_leak"] == 0
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run the soak, print the summary."""
    p = argparse.ArgumentParser(prog="python -m tests.adversarial.soak", description=__doc__)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--names", type=int, default=10_000)
    p.add_argument("--min-ttl", type=int, default=5)
    p.add_argument("--max-ttl", type=int, default=30)
    p.add_argument("--churn", type=int, default=1000, help="names whose answer changes")
    p.add_argument("--churn-every", type=float, default=10.0)
    p.add_argument("--reload-every", type=float, default=30.0)
    p.add_argument("--sample-every", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=60.0, help="seconds ignored for trends")
    p.add_argument("--slack", type=float, default=2.0, help="allowed lateness of a refresh")
    p.add_argument("--rss-limit-mib", type=float, default=10.0)
    p.add_argument("--fd-slack", type=int, default=16, help="allowed rise of the fd peak")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    summary = run(args)
    print(json.dumps(summary, indent=2))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
