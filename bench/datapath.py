"""Datapath: TCP connection rate and bulk throughput for a confined uid.

    python -m bench.datapath --sizes 10,1000,100000 --rounds 5 --seconds 4
    python -m bench.datapath --smoke

For each size N (allowed IPv4 addresses) a server namespace runs ``bench.tcptool
server`` and three client namespaces, each joined to it by its own veth pair, hold one
configuration each, loaded once:

``none``
    no nftables table at all (no conntrack either).
``fenced``
    fenced's real ruleset (``fenced.core.ruleset.script`` for a policy confining uid 64123
    with one domain entry, ports 5001-5002/tcp), its domain set filled over netlink
    (``NftNetlink``) with N addresses: N-1 fillers from 240.0.0.0/4 plus the server's.
``linear``
    the iptables habit: established flows accepted first, then uid 64123 jumps to a chain
    with one rule per allowed address (``ip daddr X tcp dport 5001-5002 accept``), the
    server's address LAST (a new connection walks all N rules: the worst case), then a
    counted reject.

Before measuring, each confined configuration is checked: a connection to a port it does
not allow must be counted as denied. Then rounds run the clients in turn, A B C A B C ...,
as uid 64123, for ``--seconds`` each: ``connrate`` (connect, read one byte, reset; every
connection is new, so it crosses the policy) and ``bulk`` (one connection streaming
data: established packets only). Reported: per configuration min / median / max over the
rounds, and the ratio of medians to ``none``; ``round ratios`` is the spread of the
per-round ratios (each against the ``none`` run of the same round).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.common import (
    Netns,
    Summary,
    fmt,
    machine,
    mmm,
    py_module,
    stop,
    table,
    veth_pair,
    wait_line,
)
from fenced.config.files import load
from fenced.core.elements import Element, SetOp, ipv4_key
from fenced.core.ruleset import layout, script
from fenced.kernel.netlink import NftNetlink

UID = 64123
PORT = 5001
CONFIGS = ("none", "fenced", "linear")
MODES = ("connrate", "bulk")
_FILL = int(ipaddress.IPv4Address("240.0.0.0"))


def fillers(n: int) -> list[str]:
    """``n`` addresses that only sit in sets (240.0.0.0/4, reserved: never traffic)."""
    return [str(ipaddress.IPv4Address(_FILL + i)) for i in range(n)]


def setup_fenced(ns: Netns, server: str, n: int, tmp: Path) -> str:
    """Install fenced's ruleset in ``ns`` and fill its domain set; return the counter name."""
    path = tmp / f"fenced-{ns.name}.toml"
    path.write_text(
        "[daemon]\n"
        'listen = ""\n'
        'table = "fbench"\n'
        'resolvers = ["192.0.2.53"]\n\n'
        "[policy.bench]\n"
        f"uids = [{UID}]\n"
        'dns = "direct"\n'
        f'outbound = ["srv.bench.example:{PORT}-{PORT + 1}/tcp"]\n'
    )
    cfg = load(path)
    lay = layout(cfg)
    ns.nft(script(cfg, lay))
    (v4,) = [s.name for s in lay.domain_sets if s.family == 4]
    keys = [ipv4_key(ip) for ip in [*fillers(n - 1), server]]
    elements = tuple(Element(k, timeout_ms=3_600_000) for k in keys)
    with NftNetlink(ns.path) as nl:
        nl.apply([SetOp("add", "inet", "fbench", v4, elements)])
    return "inet fbench denied_bench_out"


def setup_linear(ns: Netns, server: str, n: int) -> str:
    """Load the one-rule-per-address chain; return the counter name."""
    rules = "\n".join(
        f"    ip daddr {ip} tcp dport {PORT}-{PORT + 1} accept" for ip in [*fillers(n - 1), server]
    )
    ns.nft(
        "table inet flin {\n"
        "  counter denied { }\n"
        f"  chain confine {{\n{rules}\n    counter name denied reject\n  }}\n"
        "  chain output {\n"
        "    type filter hook output priority 0; policy accept;\n"
        "    ct state established,related accept\n"
        f"    meta skuid {UID} jump confine\n"
        "  }\n"
        "}\n"
    )
    return "inet flin denied"


def denied(ns: Netns, counter: str) -> int:
    """Packets counted by the named counter ``counter`` (``family table name``)."""
    out = ns.exec(["nft", "list", "counter", *counter.split()]).split()
    return int(out[out.index("packets") + 1])


def client(ns: Netns, mode: str, server: str, seconds: float, port: int = PORT) -> float:
    """Run one measurement as the confined uid; return per-second figure."""
    argv = py_module(
        "bench.tcptool", mode, "--to", server, "--port", str(port + (mode == "bulk")),
        "--seconds", str(seconds), "--uid", str(UID),
    )  # fmt: skip
    per_s: float = json.loads(ns.exec(argv).strip().splitlines()[-1])["per_s"]
    return per_s


def measure(
    sizes: Sequence[int], rounds: int, seconds: float, modes: Sequence[str]
) -> dict[tuple[int, str, str], list[float]]:
    """Every size: build, check, then the rounds; raw figures by (size, mode, config)."""
    out: dict[tuple[int, str, str], list[float]] = {}
    for n in sizes:
        with (
            Netns("s") as srv,
            Netns("n") as c_none,
            Netns("f") as c_fenced,
            Netns("l") as c_linear,
            tempfile.TemporaryDirectory(prefix="fbn-") as tmpdir,
        ):
            clients = {"none": c_none, "fenced": c_fenced, "linear": c_linear}
            servers: dict[str, str] = {}
            for k, (name, ns) in enumerate(clients.items()):
                servers[name] = f"192.0.2.{16 * k + 1}"
                veth_pair(
                    ns, srv, [f"192.0.2.{16 * k + 2}/28"], [f"{servers[name]}/28"], b_if=f"vb{k}"
                )
            proc = srv.spawn(py_module("bench.tcptool", "server", "--port", str(PORT)))
            try:
                wait_line(proc, "ready")
                t = time.monotonic()
                counters = {
                    "fenced": setup_fenced(c_fenced, servers["fenced"], n, Path(tmpdir)),
                }
                t_f = time.monotonic() - t
                t = time.monotonic()
                counters["linear"] = setup_linear(c_linear, servers["linear"], n)
                t_l = time.monotonic() - t
                print(f"  N={n}: fenced loaded in {t_f:.2f} s, linear chain in {t_l:.2f} s")
                for name, counter in counters.items():
                    ns = clients[name]
                    before = denied(ns, counter)
                    client(ns, "connrate", servers[name], 0.2, port=PORT + 5)
                    if denied(ns, counter) <= before:
                        raise RuntimeError(f"{name}: a denied port was not counted as denied")
                    if client(ns, "connrate", servers[name], 0.3) <= 0:
                        raise RuntimeError(f"{name}: the allowed server is not reachable")
                for r in range(rounds):
                    for mode in modes:
                        for name in CONFIGS:
                            v = client(clients[name], mode, servers[name], seconds)
                            out.setdefault((n, mode, name), []).append(v)
                        unit = 1e6 if mode == "bulk" else 1.0
                        row = " ".join(f"{c} {fmt(out[(n, mode, c)][-1] / unit)}" for c in CONFIGS)
                        print(f"  N={n} round {r} {mode}: {row}", flush=True)
            finally:
                stop(proc)
    return out


def report(raw: dict[tuple[int, str, str], list[float]], sizes: Sequence[int]) -> str:
    """The result table."""
    rows = []
    for mode in MODES:
        for n in sizes:
            base = raw.get((n, mode, "none"))
            if not base:
                continue
            b = Summary.of(base)
            for name in CONFIGS:
                vals = raw[(n, mode, name)]
                s = Summary.of(vals)
                per_round = [v / x for v, x in zip(vals, base, strict=True)]
                pr = Summary.of(per_round)
                unit = 1e6 if mode == "bulk" else 1.0
                rows.append(
                    [
                        mode,
                        str(n),
                        name,
                        mmm(Summary.of([v / unit for v in vals])),
                        f"{s.med / b.med:.3f}",
                        f"{pr.lo:.2f}-{pr.hi:.2f}",
                    ]
                )
    hdr = ["test", "allowed IPs", "config", "min / median / max", "ratio to none",
           "round ratios"]  # fmt: skip
    return table(hdr, rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run, print the table."""
    p = argparse.ArgumentParser(prog="python -m bench.datapath", description=__doc__)
    p.add_argument("--sizes", default="10,1000,100000")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--modes", default="connrate,bulk")
    p.add_argument("--smoke", action="store_true", help="N=10, 1 round of 0.5 s")
    args = p.parse_args(argv)
    sizes = [10] if args.smoke else [int(x) for x in args.sizes.split(",")]
    rounds, seconds = (1, 0.5) if args.smoke else (args.rounds, args.seconds)
    modes = args.modes.split(",")
    print(f"# datapath, {rounds} rounds of {seconds} s; {machine()}", flush=True)
    raw = measure(sizes, rounds, seconds, modes)
    print()
    print("connrate: connections/s; bulk: MB/s (10^6 bytes); min / median / max over rounds")
    print()
    print(report(raw, sizes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
