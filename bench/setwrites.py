"""Set writes: fenced's netlink writer against ``nft -f``, same elements, same namespace.

    python -m bench.setwrites --sizes 1000,10000,100000 --reps 5
    python -m bench.setwrites --smoke

For every size, family (IPv4, IPv6) and action (add, refresh, delete) each repetition
times one transaction of N elements written by ``fenced.kernel.netlink.NftNetlink.apply`` and
the same N elements loaded by ``nft -f -`` (run with ``nsenter`` in the namespace), in
alternating order. Every element carries its own timeout in milliseconds (60 s plus
0-996 ms), as the planner writes them. The clock covers what a caller pays from a list of
address strings: building ``Element`` values, or the nft script text, and the kernel
transaction up to its acknowledgement (for nft: process start, parse, commit, exit).

``refresh`` is fenced's upsert that resets the expiry (NEWSETELEM + DELSETELEM +
NEWSETELEM in one batch); the nft script does the same three statements in one file.
The set is emptied (``add``) or filled (``refresh``, ``delete``) before each timed run,
outside the clock. The first repetition checks that the set holds what it should.
"""

from __future__ import annotations

import argparse
import ipaddress
import time
from collections.abc import Sequence

from bench.common import Netns, Summary, fmt, machine, mmm, table
from fenced.core.elements import Element, SetOp, ipv4_key, ipv6_key
from fenced.kernel.netlink import NftNetlink

TABLE = "bench"
ACTIONS = ("add", "refresh", "delete")
FAMILIES = ("v4", "v6")
_V4_BASE = int(ipaddress.IPv4Address("240.0.0.0"))  # reserved range: keys, never traffic
_V6_BASE = int(ipaddress.IPv6Address("2001:db8:b::"))

SETUP = f"""table inet {TABLE} {{
  set s4 {{ type ipv4_addr; flags timeout; }}
  set s6 {{ type ipv6_addr; flags timeout; }}
}}
"""


def addresses(family: str, n: int) -> list[str]:
    """``n`` distinct addresses as text (240.0.0.0/4 or 2001:db8:b::/48)."""
    if family == "v4":
        return [str(ipaddress.IPv4Address(_V4_BASE + i)) for i in range(n)]
    return [str(ipaddress.IPv6Address(_V6_BASE + i)) for i in range(n)]


def timeout_of(i: int) -> int:
    """The timeout (ms) of the ``i``-th element."""
    return 60_000 + i % 997


def set_name(family: str) -> str:
    """The benchmark set of ``family``."""
    return "s4" if family == "v4" else "s6"


def fenced_build(family: str, action: str, ips: Sequence[str]) -> SetOp:
    """The ``SetOp`` for ``ips``: keys with ``ipv4_key``/``ipv6_key``, then ``Element`` s."""
    key = ipv4_key if family == "v4" else ipv6_key
    if action == "delete":
        elements = tuple(Element(key(ip)) for ip in ips)
    else:
        elements = tuple(Element(key(ip), timeout_ms=timeout_of(i)) for i, ip in enumerate(ips))
    return SetOp(action, "inet", TABLE, set_name(family), elements)  # type: ignore[arg-type]


def fenced_write(nl: NftNetlink, family: str, action: str, ips: Sequence[str]) -> float:
    """Write ``ips`` with fenced's writer; return the seconds spent in ``apply`` alone."""
    op = fenced_build(family, action, ips)
    t0 = time.perf_counter()
    nl.apply([op])
    return time.perf_counter() - t0


def nft_script(family: str, action: str, ips: Sequence[str]) -> str:
    """The nft script doing ``action`` on ``ips`` in one transaction."""
    where = f"inet {TABLE} {set_name(family)}"
    bare = ", ".join(ips)
    timed = ", ".join(f"{ip} timeout {timeout_of(i)}ms" for i, ip in enumerate(ips))
    if action == "add":
        return f"add element {where} {{ {timed} }}\n"
    if action == "delete":
        return f"delete element {where} {{ {bare} }}\n"
    return (
        f"add element {where} {{ {bare} }}\n"
        f"delete element {where} {{ {bare} }}\n"
        f"add element {where} {{ {timed} }}\n"
    )


def nft_write(ns: Netns, family: str, action: str, ips: Sequence[str]) -> None:
    """Write ``ips`` with ``nft -f -`` in the namespace (script building included)."""
    ns.nft(nft_script(family, action, ips))


def prepare(ns: Netns, nl: NftNetlink, family: str, action: str, ips: Sequence[str]) -> None:
    """Empty the set; for refresh/delete fill it with ``ips`` (untimed)."""
    ns.nft(f"flush set inet {TABLE} {set_name(family)}\n")
    if action != "add":
        fenced_write(nl, family, "add", ips)


def count(nl: NftNetlink, family: str) -> int:
    """Elements in the set now."""
    return len(nl.dump("inet", TABLE, set_name(family)))


Result = tuple[int, str, str, Summary, Summary, Summary]


def measure(sizes: Sequence[int], reps: int) -> list[Result]:
    """Run every case; return (size, family, action, fenced, fenced apply only, nft) rates."""
    results = []
    with Netns("w") as ns:
        ns.nft(SETUP)
        nl = NftNetlink(ns.path)
        try:
            for n in sizes:
                for family in FAMILIES:
                    ips = addresses(family, n)
                    for action in ACTIONS:
                        rates: dict[str, list[float]] = {"fenced": [], "nft": [], "apply": []}
                        for rep in range(reps):
                            order = ("fenced", "nft") if rep % 2 == 0 else ("nft", "fenced")
                            for who in order:
                                prepare(ns, nl, family, action, ips)
                                t0 = time.perf_counter()
                                if who == "fenced":
                                    rates["apply"].append(n / fenced_write(nl, family, action, ips))
                                else:
                                    nft_write(ns, family, action, ips)
                                dt = time.perf_counter() - t0
                                rates[who].append(n / dt)
                                if rep == 0:
                                    want = 0 if action == "delete" else n
                                    got = count(nl, family)
                                    if got != want:
                                        raise RuntimeError(
                                            f"{who} {action} {family} {n}: set holds {got}, "
                                            f"expected {want}"
                                        )
                        f, t = Summary.of(rates["fenced"]), Summary.of(rates["nft"])
                        a = Summary.of(rates["apply"])
                        results.append((n, family, action, f, a, t))
                        print(
                            f"  {n:>7} {family} {action:<7} fenced {fmt(f.med)}/s "
                            f"nft {fmt(t.med)}/s ratio {f.med / t.med:.2f}",
                            flush=True,
                        )
        finally:
            nl.close()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run, print the table."""
    p = argparse.ArgumentParser(prog="python -m bench.setwrites", description=__doc__)
    p.add_argument("--sizes", default="1000,10000,100000", help="comma-separated N")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--smoke", action="store_true", help="tiny run: N=1000, 1 repetition")
    args = p.parse_args(argv)
    sizes = [1000] if args.smoke else [int(x) for x in args.sizes.split(",")]
    reps = 1 if args.smoke else args.reps
    print(f"# set writes, {reps} reps; {machine()}", flush=True)
    results = measure(sizes, reps)
    rows = [
        [
            str(n),
            fam,
            action,
            mmm(f),
            mmm(t),
            f"{f.med / t.med:.2f}",
            f"{f.lo / t.hi:.2f}-{f.hi / t.lo:.2f}",
            mmm(a),
            f"{a.med / t.med:.2f}",
        ]
        for n, fam, action, f, a, t in results
    ]
    print()
    print(
        "elements per second, min / median / max; ratio = fenced median / nft median; "
        "ratio range = worst/best pairing; apply() alone = the same fenced runs without "
        "building keys and Elements"
    )
    print()
    hdr = ["N", "fam", "action", "fenced (netlink)", "nft -f", "ratio", "ratio range"]
    hdr += ["fenced apply() alone", "ratio apply/nft"]
    print(table(hdr, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
