"""Benchmark 4: the DNS gateway against querying the upstream directly, in one run.

    python -m bench.gateway [--names 1000] [--queries 3000] [--reps 5] [--smoke]

Two namespaces joined by a veth pair: the server one runs ``bench.dnsfast`` (the
authoritative answers, precomputed) on 192.0.2.53; the client one runs the real
``fenced run`` with one gateway policy (``*.bench.example``) for uid 64500. The same load
generator (``bench.dnsload``) then asks ``192.0.2.53`` as uid 64500 (redirected to
fenced's gateway, which forwards, writes the answer's address into the kernel set, and
only then answers) and as uid 64501 (no policy: straight to the server). Rounds
alternate gateway and direct so that noise on this shared machine hits both alike.

Reported: latency p50/p99 of each and the difference (the time fenced adds), and queries
per second with 64 queries in flight. Every query asks a name of a wildcard, so every
answer is learned: the kernel write is in every measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.common import Netns, Summary, machine, mmm, py_module, stop, table, veth_pair, wait_line

GATED_UID = 64500
FREE_UID = 64501
SERVER = "192.0.2.53"


def _config(path: Path) -> None:
    path.write_text(
        "[daemon]\n"
        'listen = ""\n'
        f'resolvers = ["{SERVER}"]\n'
        'on_exit = "remove"\n'
        "max_ttl = 3600\n"
        "[policy.bench]\n"
        f"uids = [{GATED_UID}]\n"
        'outbound = ["*.bench.example:80/tcp"]\n'
        'dns = "gateway"\n'
    )


def _load(client: Netns, mode: str, uid: int, names: int, queries: int) -> dict[str, float]:
    argv = py_module(
        "bench.dnsload",
        "--server",
        SERVER,
        "--names",
        str(names),
        "--queries",
        str(queries),
        "--mode",
        mode,
        "--uid",
        str(uid),
    )
    out = client.exec(argv)
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def run(names: int, queries: int, reps: int) -> str:
    """Set up, measure ``reps`` alternating rounds, tear down; return the report."""
    with Netns("s") as server, Netns("c") as client, tempfile.TemporaryDirectory() as tmp:
        veth_pair(client, server, ["192.0.2.1/24"], [f"{SERVER}/24"])
        dns = server.spawn(
            py_module(
                "bench.dnsfast", "--listen", SERVER, "--names", str(names), "--ttl", "300-300"
            )
        )
        fenced: subprocess.Popen[str] | None = None
        try:
            wait_line(dns, "ready")
            cfg = Path(tmp) / "fenced.toml"
            _config(cfg)
            fenced = client.spawn(
                [sys.executable, "-m", "fenced", "run", "-c", str(cfg)], stdout=subprocess.DEVNULL
            )
            deadline = time.monotonic() + 20
            while "inet fenced" not in client.exec(["nft", "list", "tables"]):
                if time.monotonic() > deadline or fenced.poll() is not None:
                    raise RuntimeError("fenced did not start")
                time.sleep(0.1)
            time.sleep(1.0)  # the gateway listener and the first refreshes settle
            # warm both paths once (imports, ARP, conntrack)
            _load(client, "latency", GATED_UID, names, 50)
            _load(client, "latency", FREE_UID, names, 50)
            lat: dict[str, list[dict[str, float]]] = {"gateway": [], "direct": []}
            thr: dict[str, list[dict[str, float]]] = {"gateway": [], "direct": []}
            for _ in range(reps):
                for label, uid in (("gateway", GATED_UID), ("direct", FREE_UID)):
                    lat[label].append(_load(client, "latency", uid, names, queries))
                    thr[label].append(_load(client, "qps", uid, names, queries))
        finally:
            if fenced is not None:
                stop(fenced)
            stop(dns)
    return _report(lat, thr, names, queries, reps)


def _report(
    lat: dict[str, list[dict[str, float]]],
    thr: dict[str, list[dict[str, float]]],
    names: int,
    queries: int,
    reps: int,
) -> str:
    rows = []
    for label in ("gateway", "direct"):
        p50 = Summary.of([r["p50_ms"] for r in lat[label]])
        p99 = Summary.of([r["p99_ms"] for r in lat[label]])
        q = Summary.of([r["qps"] for r in thr[label]])
        lost = sum(int(r["lost"]) for r in lat[label] + thr[label])
        rows.append([label, mmm(p50), mmm(p99), mmm(q), str(lost)])
    added50 = [
        g["p50_ms"] - d["p50_ms"] for g, d in zip(lat["gateway"], lat["direct"], strict=True)
    ]
    added99 = [
        g["p99_ms"] - d["p99_ms"] for g, d in zip(lat["gateway"], lat["direct"], strict=True)
    ]
    ratio = [g["qps"] / d["qps"] for g, d in zip(thr["gateway"], thr["direct"], strict=True)]
    rows.append(
        [
            "added by fenced",
            mmm(Summary.of(added50)),
            mmm(Summary.of(added99)),
            "ratio " + mmm(Summary.of(ratio)),
            "",
        ]
    )
    head = (
        f"DNS gateway vs direct: {names} names, {queries} queries per round, {reps} rounds "
        f"(min / median / max)\n{machine()}\n"
    )
    return head + table(
        ["path", "latency p50 ms", "latency p99 ms", "qps (64 in flight)", "lost"], rows
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and run."""
    p = argparse.ArgumentParser(prog="python -m bench.gateway", description=__doc__)
    p.add_argument("--names", type=int, default=1000)
    p.add_argument("--queries", type=int, default=3000)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--smoke", action="store_true", help="a tiny run (a few seconds)")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    if args.smoke:
        args.names, args.queries, args.reps = 50, 100, 1
    print(run(args.names, args.queries, args.reps))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
