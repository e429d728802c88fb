"""BIND (named) as an authoritative server for a DNSSEC-signed zone in a bed's server namespace.

For tests against real DNS software: the zone is signed in the test (``dnssec-keygen`` and
``dnssec-signzone`` in a directory of the bed's temp dir), ``named`` serves it on
:data:`BIND_V4` (an address added to ``lo`` of the server namespace, gone with it), and
``anchor`` is a trust-anchor file for ``delv -a FILE +root=ZONE``::

    server = SignedZone(bed, "example.com", ["www CNAME cdn", "cdn A 198.51.100.10"]).start()
    bed.run(["delv", "@" + BIND_V4, "-a", str(server.anchor), "+root=example.com", ...])

``named`` runs as root in the foreground (``-g``), authoritative only (no recursion), and
is killed by PID with the bed (or by ``stop``).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.bed.bed import Bed, BedError, Proc

#: Where named listens (UDP and TCP 53) in the server namespace.
BIND_V4 = "198.51.100.54"
#: The SOA's negative TTL and the zone's default TTL.
NEGATIVE_TTL = 60
DEFAULT_TTL = 300
READY_TIMEOUT = 20.0


def _tool(argv: Sequence[str], cwd: Path) -> str:
    """Run a BIND tool on the host (it touches only ``cwd``); its stdout, or BedError."""
    cp = subprocess.run(
        list(argv), cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    if cp.returncode != 0:
        raise BedError(f"{argv[0]} failed: {cp.stderr.strip()}")
    return cp.stdout.strip()


class SignedZone:
    """DNSSEC-signed zones served by one named: ``origin`` with ``records``, and ``more``.

    ``more`` maps further zone names to their records. Each zone gets an SOA (negative
    TTL :data:`NEGATIVE_TTL`) and an NS ``ns.ZONE`` with the address :data:`BIND_V4`;
    each record is a zone-file line relative to its zone, such as ``"www 60 CNAME cdn"``.
    A zone whose parent zone is also given is delegated from it (NS, glue and DS), so
    with ``"."`` among them the whole tree validates from the root. Keys are ECDSA P-256
    (a KSK and a ZSK per zone); ``anchor`` holds the KSK of the topmost zone.
    """

    def __init__(
        self,
        bed: Bed,
        origin: str,
        records: Sequence[str],
        more: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.bed = bed
        self.zones: dict[str, list[str]] = {_absolute(origin): list(records)}
        for name, lines in (more or {}).items():
            self.zones[_absolute(name)] = list(lines)
        self.top = min(self.zones, key=lambda z: z.count("."))
        self.dir = bed.tmpdir / "bind"
        self.anchor = self.dir / "anchor.conf"
        """The trust anchor (the topmost zone's KSK) for ``delv -a``, readable by every uid."""
        self.proc: Proc | None = None

    def _sign(self) -> dict[str, Path]:
        d = self.dir
        d.mkdir(mode=0o755, exist_ok=True)
        extra: dict[str, list[str]] = {z: [] for z in self.zones}
        signed: dict[str, Path] = {}
        # children first: their DS records go into the parent before it is signed
        for zone in sorted(self.zones, key=lambda z: -z.count(".")):
            file = d / f"{zone.rstrip('.') or 'root'}.zone"
            ksk = _tool(["dnssec-keygen", "-q", "-a", "ECDSAP256SHA256", "-f", "KSK", zone], d)
            zsk = _tool(["dnssec-keygen", "-q", "-a", "ECDSAP256SHA256", zone], d)
            lines = [
                f"$ORIGIN {zone}",
                f"$TTL {DEFAULT_TTL}",
                f"@ SOA ns hostmaster 1 3600 600 86400 {NEGATIVE_TTL}",
                "@ NS ns",
                f"ns A {BIND_V4}",
                *self.zones[zone],
                *extra[zone],
                f"$INCLUDE {ksk}.key",
                f"$INCLUDE {zsk}.key",
            ]
            file.write_text("\n".join(lines) + "\n")
            _tool(["dnssec-signzone", "-q", "-o", zone, "-f", f"{file}.signed", str(file)], d)
            signed[zone] = Path(f"{file}.signed")
            parent = _parent(zone, self.zones)
            if parent is not None:
                ds = _tool(["dnssec-dsfromkey", "-2", f"{ksk}.key"], d)
                extra[parent] += [f"{zone} NS ns.{zone}", f"ns.{zone} A {BIND_V4}", ds]
            if zone == self.top:
                key = (d / f"{ksk}.key").read_text().split()
                # "<owner> IN DNSKEY <flags> <proto> <alg> <base64...>" (after comments)
                at = key.index("DNSKEY")
                flags, proto, alg, *b64 = key[at + 1 :]
                anchor = f'{zone} static-key {flags} {proto} {alg} "{"".join(b64)}";'
                self.anchor.write_text(f"trust-anchors {{ {anchor} }};\n")
                self.anchor.chmod(0o644)
        return signed

    def _config(self, signed: dict[str, Path]) -> Path:
        d = self.dir
        conf = d / "named.conf"
        conf.write_text(
            "options {\n"
            f'  directory "{d}";\n'
            f'  pid-file "{d}/named.pid";\n'
            f'  session-keyfile "{d}/session.key";\n'
            f'  managed-keys-directory "{d}";\n'
            f"  listen-on port 53 {{ {BIND_V4}; }};\n"
            "  listen-on-v6 { none; };\n"
            "  recursion no;\n"
            "  dnssec-validation no;\n"
            "};\n"
            "controls { };\n"
            + "".join(f'zone "{z}" {{ type primary; file "{f}"; }};\n' for z, f in signed.items())
        )
        return conf

    def start(self) -> SignedZone:
        """Sign the zone, start named in the server namespace, wait until it answers."""
        signed = self._sign()
        conf = self._config(signed)
        self.bed.ns_exec(["ip", "addr", "add", f"{BIND_V4}/32", "dev", "lo"], ns="server")
        self.proc = self.bed.spawn(
            ["named", "-g", "-c", str(conf)], ns="server", stdin=False, label="named"
        )
        deadline = time.monotonic() + READY_TIMEOUT
        while not self._answers():
            if not self.proc.alive or time.monotonic() > deadline:
                raise BedError(f"named did not start: {self.proc.stderr_text()[-2000:]}")
            time.sleep(0.1)
        return self

    def _answers(self) -> bool:
        argv = ["dig", "+short", "+time=1", "+tries=1", f"@{BIND_V4}", self.top, "SOA"]
        cp = self.bed.run(argv, ns="server", timeout=10)
        return cp.returncode == 0 and bool(cp.stdout.strip())

    def stop(self) -> None:
        """Kill named by PID."""
        if self.proc is not None:
            self.proc.kill()
            self.proc = None


def _absolute(name: str) -> str:
    """``name`` with exactly one final dot (``"."`` for the root)."""
    return name.rstrip(".") + "."


def _parent(zone: str, zones: Mapping[str, object]) -> str | None:
    """The closest zone of ``zones`` strictly above ``zone``, or None."""
    labels = zone.rstrip(".").split(".") if zone != "." else []
    for i in range(1, len(labels) + 1):
        above = ".".join(labels[i:]) + "."
        if above in zones:
            return above
    return None
