"""Wire parsers: time per first payload judged, against a raw scan of the same bytes.

    python -m bench.wire --reps 7 --calls 2000
    python -m bench.wire --smoke

For each input (a real OpenSSL ClientHello, a longer one, an http.client request, an
aioquic Initial, and a ClientHello spread over four Initials) one repetition times
``--calls`` calls of the parser (``fenced.core.wire``) and, alternating with it, as many
calls of the baseline: ``bytes.find`` of the name in the same bytes (for QUIC, in the
decrypted CRYPTO data), the least any reader of the name must do. QUIC calls empty the
Initial keys cache first, so each pays the key derivation of a new flow's DCID. Prints microseconds
per call (min / median / max over repetitions), the ratio parser / baseline, and judged
payloads per second on one core. Runs in this process; needs no root and no network
(the inputs come from ``tests.unit.wire.clients``, made in memory).
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable, Sequence

from bench.common import Summary, fmt, machine, mmm, table
from fenced.core.wire.http import parse_http
from fenced.core.wire.quic import crypto_pieces, initial_keys, parse_quic
from fenced.core.wire.result import Named, WireResult
from fenced.core.wire.tls import parse_tls
from tests.unit.wire.clients import http_request_head, quic_initials, tls_client_hello

NAME = "registry.example.org"


def inputs() -> list[tuple[str, Callable[[], WireResult], bytes, int]]:
    """(label, parser call, bytes the baseline scans, bytes on the wire) per input."""
    short = tls_client_hello(NAME)
    long = tls_client_hello(NAME, alpn=[f"proto-{i:04d}" for i in range(150)])
    request = http_request_head(NAME, 80, "/simple/fenced/")
    one = quic_initials(NAME)
    four = quic_initials(NAME, alpn_count=300)

    def plain(datagrams: Sequence[bytes]) -> bytes:
        pieces: list[tuple[int, bytes]] = []
        for datagram in datagrams:
            found = crypto_pieces(datagram)
            if not isinstance(found, list):
                raise RuntimeError(f"not an Initial: {found}")
            pieces += found
        return b"".join(data for _, data in sorted(pieces))

    return [
        (f"TLS ClientHello, {len(short)} B", lambda: parse_tls(short), short, len(short)),
        (f"TLS ClientHello, {len(long)} B", lambda: parse_tls(long), long, len(long)),
        (f"HTTP request, {len(request)} B", lambda: parse_http(request), request, len(request)),
        ("QUIC Initial, 1 datagram", lambda: new_flow(one), plain(one), sum(map(len, one))),
        ("QUIC Initial, 4 datagrams", lambda: new_flow(four), plain(four), sum(map(len, four))),
    ]


def new_flow(datagrams: Sequence[bytes]) -> WireResult:
    """``parse_quic`` as for a flow never seen: the Initial keys cache is emptied first."""
    initial_keys.cache_clear()
    return parse_quic(datagrams)


def per_call_us(call: Callable[[], object], calls: int) -> float:
    """Mean microseconds per call over ``calls`` calls."""
    start = time.perf_counter_ns()
    for _ in range(calls):
        call()
    return (time.perf_counter_ns() - start) / calls / 1000


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--smoke", action="store_true", help="2 repetitions of 100 calls")
    args = parser.parse_args(argv)
    reps, calls = (2, 100) if args.smoke else (args.reps, args.calls)
    print(f"# bench.wire: {machine()}; {reps} reps x {calls} calls")
    needle = NAME.encode()
    rows = []
    for label, parse, plain, wire in inputs():
        result = parse()
        if not (isinstance(result, Named) and result.name == NAME):
            raise RuntimeError(f"{label}: the parser says {result}")
        ours: list[float] = []
        base: list[float] = []
        for _ in range(reps):
            ours.append(per_call_us(parse, calls))
            base.append(per_call_us(functools.partial(plain.find, needle), calls))
        o, b = Summary.of(ours), Summary.of(base)
        rows.append([label, str(wire), mmm(o), mmm(b), fmt(o.med / b.med), fmt(1e6 / o.med)])
    headers = ["input", "wire B", "parser us", "find us", "ratio", "judged/s"]
    print(table(headers, rows))


if __name__ == "__main__":
    main()
