"""Refresh engine: fenced's DNS refresher against re-resolve-and-``nft add element``.

    python -m bench.engine --sizes 1000,10000 --ttl 5 --reps 3
    python -m bench.engine --sizes 100000 --ttl 1-5 --reps 1
    python -m bench.engine --smoke

Topology: a server namespace runs ``bench.dnsfast`` (authoritative for the
``bench.zonegen`` zone: N names, one A and one AAAA each, TTL drawn from ``--ttl``) on
192.0.2.53; a client namespace, joined by veth, runs each contender as its own process,
in alternating order, one after the other, against the same server:

``fenced``
    The real code path, instrumented: the generated TOML policy (one ``outbound`` entry
    per name) read by ``fenced.config.files.load``, its ruleset installed with ``nft -f``
    (``KernelFirewall.install``), then ``fenced.dns.refresher.Refresher`` with
    ``DnsResolver`` (UDP, dnspython) and ``KernelFirewall`` (netlink writes), exactly as
    ``fenced run`` wires them (``min_ttl = 1``). Thin wrappers only record times: the
    *lag* is what the refresher itself reports (a ``LookupStarted`` event: how late a lookup
    started after its due time, which is the TTL's end plus fenced's deliberate jitter
    of up to 10 % of the TTL); *write lag* is from the due time to the kernel's
    acknowledgement of the write that carried the new answer (adds the DNS round trip,
    the 50 ms coalescing window and the write).
``baseline`` (``bench.nftdns_baseline``)
    What people run today (the azlux/nft-dns pattern): one loop that re-resolves each
    name when its TTL ends (dnspython's stub resolver, A then AAAA) and runs one
    ``nft add element`` process per address.

Each run warms up first (fenced: until every name was answered once, or
``--warmup-max``; the baseline: ``--baseline-warmup`` seconds, it never finishes the first
pass at 10k names), then measures ``--duration`` seconds: refreshes per second (answers
that led to a write) against the zone's demand (sum of 1/(TTL + mean jitter)), lag
p50/p99, CPU (user + system of the process, threads and children included, as a share of
one core) and RSS (peak, VmHWM).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import ipaddress
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import (
    Netns,
    Summary,
    fmt,
    machine,
    mmm,
    percentile,
    py_module,
    stop,
    table,
    veth_pair,
    wait_line,
)
from bench.zonegen import Record, parse_ttl, zone
from fenced.config.files import load
from fenced.core.elements import SetOp
from fenced.core.events import Event, LookupStarted
from fenced.core.ruleset import install, layout
from fenced.dns.answers import Answer
from fenced.dns.refresher import MonotonicClock, Refresher, refresh_inputs
from fenced.dns.resolver import DnsResolver
from fenced.kernel.firewall import KernelFirewall
from fenced.log import Logger

SERVER = "192.0.2.53"
CLIENT = "192.0.2.2"
UID = 64123


# ------------------------------------------------------------------------------ shared


def effective_demand(records: Sequence[Record]) -> float:
    """Refreshes per second fenced should do: each name every TTL + mean jitter."""
    return sum(1.0 / (r.ttl + min(1.0, 0.1 * r.ttl) / 2) for r in records)


def rss_peak_mb() -> float:
    """Peak resident set size of this process (VmHWM), in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(children: bool = False) -> float:
    """User + system CPU seconds of this process (and its reaped children)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    total = ru.ru_utime + ru.ru_stime
    if children:
        rc = resource.getrusage(resource.RUSAGE_CHILDREN)
        total += rc.ru_utime + rc.ru_stime
    return total


def result(
    who: str,
    *,
    refreshes: int,
    seconds: float,
    cpu: float,
    lags: Sequence[float],
    write_lags: Sequence[float],
    **extra: Any,
) -> dict[str, Any]:
    """The JSON line a worker prints."""
    return {
        "who": who,
        "refreshes_per_s": refreshes / seconds,
        "lag_p50": percentile(lags, 50),
        "lag_p99": percentile(lags, 99),
        "write_lag_p50": percentile(write_lags, 50),
        "write_lag_p99": percentile(write_lags, 99),
        "cpu_share": cpu / seconds,
        "rss_mb": rss_peak_mb(),
        **extra,
    }


# ------------------------------------------------------------------------------ fenced


def policy_toml(records: Sequence[Record], server: str) -> str:
    """A fenced config: one policy, one ``outbound`` entry per name."""
    entries = ",\n".join(f'  "{r.name}:443/tcp"' for r in records)
    return (
        "[daemon]\n"
        'listen = ""\n'
        'table = "fbench"\n'
        f'resolvers = ["{server}"]\n'
        "min_ttl = 1\n"
        'on_exit = "remove"\n\n'
        "[policy.bench]\n"
        f"uids = [{UID}]\n"
        'dns = "direct"\n'
        f"outbound = [\n{entries}\n]\n"
    )


async def fenced_worker(args: argparse.Namespace) -> None:
    """Run the instrumented refresher; print the measurements as JSON and exit."""
    records = zone(args.names, parse_ttl(args.ttl), args.seed)
    key2name: dict[bytes, str] = {}
    for r in records:
        key2name[ipaddress.IPv4Address(r.v4).packed] = r.name
        key2name[ipaddress.IPv6Address(r.v6).packed] = r.name

    class RecordingClock(MonotonicClock):
        last = 0.0

        def now(self) -> float:
            self.last = time.monotonic()
            return self.last

    clock = RecordingClock()
    window = {"on": False}
    lags: list[float] = []
    write_lags: list[float] = []
    dues: collections.deque[float] = collections.deque()
    pending_due: dict[str, float] = {}

    def observe(event: Event) -> None:
        if isinstance(event, LookupStarted):
            dues.append(clock.last - event.lag)  # the due time of the lookup being launched
            if window["on"]:
                lags.append(event.lag)

    answered: collections.Counter[str] = collections.Counter()

    class RecordingResolver:
        def __init__(self, inner: DnsResolver) -> None:
            self.inner = inner
            self.budget = inner.budget

        async def resolve(self, name: str) -> Answer:
            # Lookups start in launch order (tasks run FIFO): pair with the due time.
            due = dues.popleft() if dues else None
            a = await self.inner.resolve(name)
            answered[a.status] += 1
            if due is not None and a.status == "ok" and window["on"]:
                pending_due[name] = due
            return a

        async def close(self) -> None:
            await self.inner.close()

    class RecordingFirewall(KernelFirewall):
        writes = 0

        async def apply(self, ops: Sequence[SetOp]) -> None:
            await super().apply(ops)
            done = time.monotonic()
            self.writes += 1
            if not pending_due:
                return
            for op in ops:
                for el in op.elements:
                    name = key2name.get(el.key)
                    if name is not None:
                        due = pending_due.pop(name, None)
                        if due is not None:
                            write_lags.append(done - due)

    tmp = Path(tempfile.mkdtemp(prefix="fbn-engine-"))
    cfg_path = tmp / "fenced.toml"
    cfg_path.write_text(policy_toml(records, args.server))
    t_begin = time.monotonic()
    cfg = load(cfg_path)
    lay = layout(cfg)
    fw = RecordingFirewall()
    await fw.install(install(cfg, lay, await fw.existing(cfg.daemon.table)))
    t_installed = time.monotonic()
    refresher = Refresher(
        fw,
        RecordingResolver(DnsResolver([args.server])),
        clock=clock,
        observe=observe,
        logger=Logger(level="info"),
    )
    await refresher.start(cfg.daemon, refresh_inputs(cfg, lay))
    t0 = time.monotonic()
    while sum(answered.values()) < len(records) and time.monotonic() - t0 < args.warmup_max:
        await asyncio.sleep(0.05)
    first_pass = time.monotonic() - t0
    print(f"bench: first pass {first_pass:.1f} s", file=sys.stderr, flush=True)
    await asyncio.sleep(args.settle)
    window["on"] = True
    ok0, fail0 = answered["ok"], sum(answered.values()) - answered["ok"]
    cpu0, w0 = cpu_seconds(), time.monotonic()
    await asyncio.sleep(args.duration)
    cpu1, w1 = cpu_seconds(), time.monotonic()
    window["on"] = False
    print("bench: window done", file=sys.stderr, flush=True)
    ok = answered["ok"] - ok0
    fails = sum(answered.values()) - answered["ok"] - fail0
    out = result(
        "fenced",
        refreshes=ok,
        seconds=w1 - w0,
        cpu=cpu1 - cpu0,
        lags=lags,
        write_lags=write_lags,
        failures=fails,
        startup_s=t_installed - t_begin,
        first_pass_s=first_pass,
        writes=fw.writes,
    )
    # Print before stopping: on Python 3.11 ``Refresher.stop()`` was seen to hang under
    # overload (the loop's cancellation lost inside ``asyncio.wait_for``, CPython
    # gh-86296); the worker then reports it and exits anyway.
    try:
        await asyncio.wait_for(asyncio.shield(refresher.stop()), 10.0)
    except TimeoutError:
        out["stop_hung"] = True
        print("bench: Refresher.stop() did not return within 10 s", file=sys.stderr, flush=True)
    await fw.delete_table(cfg.daemon.table)
    fw.close()
    cfg_path.unlink()
    tmp.rmdir()
    # asyncio.run() would wait for a hung refresher task at shutdown: report and leave.
    print(json.dumps(out), flush=True)
    os._exit(0)


# ------------------------------------------------------------------------------ orchestration


def worker_argv(who: str, args: argparse.Namespace, names: int) -> list[str]:
    """How to start one contender."""
    common = [
        "--names", str(names), "--ttl", args.ttl, "--seed", str(args.seed),
        "--server", SERVER, "--duration", str(args.duration),
    ]  # fmt: skip
    if who == "fenced":
        return py_module(
            "bench.engine", "--worker", *common,
            "--warmup-max", str(args.warmup_max), "--settle", str(args.settle),
        )  # fmt: skip
    return py_module("bench.nftdns_baseline", *common, "--warmup", str(args.baseline_warmup))


def run_worker(ns: Netns, argv: list[str], log: Path) -> dict[str, Any]:
    """Run a contender in ``ns``; return its JSON line (RuntimeError with its log if none)."""
    with open(log, "w") as err:
        cp = subprocess.run(
            ns.argv(argv), stdout=subprocess.PIPE, stderr=err, text=True, check=False
        )
    for line in reversed(cp.stdout.splitlines()):
        if line.startswith("{"):
            data: dict[str, Any] = json.loads(line)
            return data
    tail = log.read_text()[-2000:]
    raise RuntimeError(f"{argv[2]} printed no result (exit {cp.returncode}):\n{tail}")


def measure(args: argparse.Namespace, sizes: Sequence[int]) -> list[dict[str, Any]]:
    """Every size, every repetition, both contenders; the raw results."""
    rows: list[dict[str, Any]] = []
    logdir = Path(tempfile.mkdtemp(prefix="fbn-engine-logs-"))
    for n in sizes:
        records = zone(n, parse_ttl(args.ttl), args.seed)
        demand = effective_demand(records)
        with Netns("s") as srv, Netns("c") as cli:
            veth_pair(cli, srv, [f"{CLIENT}/24"], [f"{SERVER}/24"])
            dns = srv.spawn(
                py_module(
                    "bench.dnsfast",
                    "--listen",
                    SERVER,
                    "--names",
                    str(n),
                    "--ttl",
                    args.ttl,
                    "--seed",
                    str(args.seed),
                )
            )
            try:
                wait_line(dns, "ready", 120)
                for rep in range(args.reps):
                    order = ("fenced", "baseline") if rep % 2 == 0 else ("baseline", "fenced")
                    for who in order:
                        if who in args.skip:
                            continue
                        log = logdir / f"{who}-{n}-{rep}.log"
                        wargv = worker_argv(who, args, n)
                        if args.profile and who == "fenced":
                            out = Path(args.profile) / f"fenced-{n}-{rep}.txt"
                            wargv = ["py-spy", "record", "--format", "raw", "-r", "200",
                                     "-o", str(out), "--", *wargv]  # fmt: skip
                        r = run_worker(cli, wargv, log)
                        r.update(names=n, rep=rep, demand=demand)
                        rows.append(r)
                        print(
                            f"  {n:>6} names rep {rep} {who:<8} "
                            f"{fmt(r['refreshes_per_s'])}/s of {fmt(demand)}/s, "
                            f"lag p50 {fmt(r['lag_p50'] * 1000)} ms p99 "
                            f"{fmt(r['lag_p99'] * 1000)} ms, write lag p99 "
                            f"{fmt(r['write_lag_p99'] * 1000)} ms, cpu {r['cpu_share']:.2f}, "
                            f"rss {r['rss_mb']:.0f} MB"
                            + (
                                f", first pass {r['first_pass_s']:.1f} s"
                                if "first_pass_s" in r
                                else ""
                            ),
                            flush=True,
                        )
            finally:
                stop(dns)
    print(f"(worker logs in {logdir})")
    return rows


def report(rows: list[dict[str, Any]]) -> str:
    """The result table: per size and contender, min / median / max over repetitions."""
    out = []
    by: dict[tuple[int, str], list[dict[str, Any]]] = collections.defaultdict(list)
    for r in rows:
        by[(r["names"], r["who"])].append(r)
    for (n, who), rs in sorted(by.items(), key=lambda kv: (kv[0][0], kv[0][1] != "fenced")):

        def s(key: str, scale: float = 1.0, rs: list[dict[str, Any]] = rs) -> str:
            return mmm(Summary.of([r[key] * scale for r in rs]))

        base = by.get((n, "baseline"))
        ratio = "-"
        if who == "fenced" and base:
            f = Summary.of([r["refreshes_per_s"] for r in rs]).med
            b = Summary.of([r["refreshes_per_s"] for r in base]).med
            ratio = f"{f / b:.1f}" if b else "inf"
        out.append(
            [
                str(n),
                who,
                fmt(rs[0]["demand"]),
                s("refreshes_per_s"),
                ratio,
                s("lag_p50", 1000),
                s("lag_p99", 1000),
                s("write_lag_p99", 1000),
                s("cpu_share"),
                s("rss_mb"),
            ]
        )
    hdr = [
        "names", "who", "demand/s", "refreshes/s", "x baseline", "lag p50 ms",
        "lag p99 ms", "write lag p99 ms", "CPU (cores)", "RSS MB",
    ]  # fmt: skip
    return table(hdr, out)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments; run as orchestrator (default) or as the fenced worker."""
    p = argparse.ArgumentParser(prog="python -m bench.engine", description=__doc__)
    p.add_argument("--sizes", default="1000,10000")
    p.add_argument("--ttl", default="5", help="TTL or range in seconds, e.g. 5 or 1-5")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds per run")
    p.add_argument("--warmup-max", type=float, default=180.0)
    p.add_argument("--settle", type=float, default=2.0, help="seconds after the first pass")
    p.add_argument("--baseline-warmup", type=float, default=5.0)
    p.add_argument("--skip", action="append", default=[], help="fenced or baseline")
    p.add_argument(
        "--profile", metavar="DIR", help="run fenced under py-spy, collapsed stacks into DIR"
    )
    p.add_argument("--smoke", action="store_true", help="200 names, TTL 1-2 s, 3 s, 1 repetition")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--names", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--server", default=SERVER, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        asyncio.run(fenced_worker(args))
        return 0
    if os.geteuid() != 0:
        print("needs root (network namespaces, nftables)", file=sys.stderr)
        return 2
    if args.smoke:
        sizes = [200]
        args.ttl = "1-2"
        args.duration, args.reps, args.settle, args.baseline_warmup = 3.0, 1, 0.5, 1.0
    else:
        sizes = [int(x) for x in args.sizes.split(",")]
    print(
        f"# refresh engine, TTL {args.ttl} s, {args.reps} reps of {args.duration} s; {machine()}",
        flush=True,
    )
    rows = measure(args, sizes)
    print()
    print(
        "min / median / max over repetitions; demand = sum of 1/(TTL + mean jitter); "
        "x baseline = fenced median refreshes/s / baseline median"
    )
    print()
    print(report(rows))
    print()
    print("raw: " + json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
