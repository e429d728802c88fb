"""The refresh baseline: re-resolve every name at its TTL, one ``nft add element`` per IP.

    python -m bench.nftdns_baseline --names 1000 --ttl 5 --server 192.0.2.53 --duration 20

This is what people do today (the azlux/nft-dns pattern, measured in
/work/shared/field-notes.md): a single loop that, whenever a name's TTL has run out,
asks the resolver for its A and AAAA records (dnspython's stub resolver) and runs one
``nft add element inet fbase s4|s6 { IP timeout TTLs }`` subprocess per address, then
schedules the name again TTL seconds later. It runs in the current network namespace
(the benchmark starts it inside one) and prints one JSON line with the same fields as
``bench.engine``'s fenced worker: refreshes per second after ``--warmup`` seconds, lag
(how late a lookup started after its TTL ended) p50/p99, write lag (until the last nft
of that name exited), CPU share (nft children included) and peak RSS.
"""

from __future__ import annotations

import argparse
import heapq
import json
import subprocess
import time
from collections.abc import Sequence

import dns.exception
import dns.resolver

from bench.engine import cpu_seconds, result
from bench.zonegen import parse_ttl, zone

TABLE = "fbase"
SETUP = f"""table inet {TABLE} {{
  set s4 {{ type ipv4_addr; flags timeout; }}
  set s6 {{ type ipv6_addr; flags timeout; }}
}}
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the loop for warmup + duration seconds; print the measurements."""
    p = argparse.ArgumentParser(prog="python -m bench.nftdns_baseline", description=__doc__)
    p.add_argument("--names", type=int, required=True)
    p.add_argument("--ttl", default="5")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--server", required=True)
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--warmup", type=float, default=5.0)
    args = p.parse_args(argv)
    subprocess.run(["nft", "-f", "-"], input=SETUP, text=True, check=True)
    res = dns.resolver.Resolver(configure=False)
    res.nameservers = [args.server]
    res.lifetime = 4.0
    res.timeout = 2.0
    records = zone(args.names, parse_ttl(args.ttl), args.seed)
    start = time.monotonic()
    heap = [(start, i) for i in range(len(records))]
    w_start = start + args.warmup
    w_end = w_start + args.duration
    lags: list[float] = []
    write_lags: list[float] = []
    refreshes = failures = 0
    cpu0: float | None = None
    while True:
        now = time.monotonic()
        if cpu0 is None and now >= w_start:
            cpu0 = cpu_seconds(children=True)
        if now >= w_end:
            break
        due, i = heap[0]
        if due > now:
            time.sleep(min(due, w_end) - now)
            continue
        heapq.heappop(heap)
        rec = records[i]
        began = time.monotonic()
        ttl = rec.ttl
        writes: list[tuple[str, str]] = []
        for qtype, set_name in (("A", "s4"), ("AAAA", "s6")):
            try:
                answer = res.resolve(rec.name, qtype)
            except (dns.exception.DNSException, OSError):
                failures += 1
                continue
            if answer.rrset is not None:
                ttl = answer.rrset.ttl
                writes += [(set_name, rd.address) for rd in answer.rrset]
        for set_name, ip in writes:
            subprocess.run(
                ["nft", "add", "element", "inet", TABLE, set_name, f"{{ {ip} timeout {ttl}s }}"],
                check=False,
            )
        done = time.monotonic()
        if began >= w_start and done <= w_end:
            lags.append(began - due)
            write_lags.append(done - due)
            refreshes += 1
        heapq.heappush(heap, (done + ttl, i))
    cpu1 = cpu_seconds(children=True)
    out = result(
        "baseline",
        refreshes=refreshes,
        seconds=args.duration,
        cpu=cpu1 - (cpu0 if cpu0 is not None else cpu1),
        lags=lags,
        write_lags=write_lags,
        failures=failures,
        never_refreshed=sum(1 for due, _ in heap if due < w_end),
    )
    subprocess.run(["nft", "delete", "table", "inet", TABLE], check=False)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
