"""The status document: built from the daemon's memory, shown by ``fenced status``.

:func:`build_status` turns the daemon's state, its config and the refresher's view of
every name into the JSON-able document ``GET /status`` serves (pure, in-memory: cheap
enough to build on every request). :func:`fetch_status` gets that document over HTTP
and :func:`format_status` renders it for people. The document's layout is described in
docs/operations.md; ``schema`` grows when a field changes meaning, not when one is added.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Protocol

from fenced import __version__
from fenced.core.cache import CacheEntry
from fenced.core.model import Config, IPAddress, Policy
from fenced.dns.answers import FAILURES
from fenced.dns.refresher import Learned, NameStatus
from fenced.errors import HttpError

#: Version of the document's layout.
SCHEMA = 1
#: Where ``fenced status`` looks by default (``daemon.listen``'s default).
DEFAULT_URL = "http://127.0.0.1:9100"


class StateView(Protocol):
    """What :func:`build_status` reads of the daemon's ``State``."""

    @property
    def config_path(self) -> str:
        """The main config file."""
        ...

    @property
    def started(self) -> float:
        """Unix time the daemon started."""
        ...

    @property
    def generation(self) -> int:
        """How many rulesets were installed."""
        ...

    @property
    def installed(self) -> bool:
        """Whether a ruleset is installed."""
        ...

    @property
    def repairs(self) -> int:
        """How often the table was installed again after another process changed it."""
        ...

    @property
    def last_reload(self) -> str:
        """``ok``, ``error`` or ``none``."""
        ...

    @property
    def last_reload_time(self) -> float | None:
        """Unix time of the last load or reload."""
        ...

    @property
    def last_reload_error(self) -> str | None:
        """Why the last reload failed."""
        ...

    @property
    def cgroup_ids(self) -> Mapping[str, int | None]:
        """Current id of each configured cgroup path (None: it does not exist)."""
        ...


def _r(x: float) -> float:
    return round(x, 3)


def _ttl(entries: Mapping[IPAddress, CacheEntry]) -> float | None:
    """The TTL the newest answer among ``entries`` gave (None: no answer gave any)."""
    seen = [e.seen for e in entries.values() if e.seen != float("-inf")]
    if not seen:
        return None
    newest = max(seen)
    return _r(max(e.deadline - e.seen for e in entries.values() if e.seen == newest))


def _ip_docs(
    policy: Policy,
    entries: Mapping[IPAddress, CacheEntry],
    mono_now: float,
) -> list[dict[str, object]]:
    """One document per address: time left in the sets, stale or not, in the sets or not."""
    ips: list[dict[str, object]] = []
    for ip, entry in sorted(entries.items(), key=lambda item: (item[0].version, item[0])):
        in_set = policy.admits(ip)
        ips.append(
            {
                "ip": str(ip),
                "seconds_left": _r(max(0.0, entry.expires - mono_now)),
                "stale": entry.deadline <= mono_now,
                "in_set": in_set,
            }
        )
    return ips


def _domain_doc(
    policy: Policy,
    ns: NameStatus | None,
    *,
    ports: list[str],
    now: tuple[float, float],
) -> dict[str, object]:
    mono_now, wall_now = now

    def wall(t: float) -> float:
        return _r(wall_now + (t - mono_now))

    doc: dict[str, object] = {
        "ports": ports,
        "ttl": None,
        "last_resolution": None,
        "next_refresh": None,
        "resolving": False,
        "last_error": None,
        "ips": [],
    }
    if ns is None:
        return doc
    doc["ttl"] = _ttl(ns.ips)
    if ns.last_status is not None and ns.last_time is not None:
        doc["last_resolution"] = {
            "status": ns.last_status,
            "time": wall(ns.last_time),
            "detail": ns.last_detail,
        }
        if ns.last_status != "ok":
            doc["last_error"] = {
                "status": ns.last_status,
                "time": wall(ns.last_time),
                "detail": ns.last_detail,
                "failed": ns.last_status in FAILURES,
            }
    doc["next_refresh"] = wall(ns.next_due) if ns.next_due is not None else None
    doc["resolving"] = ns.in_flight
    doc["ips"] = _ip_docs(policy, ns.ips, mono_now)
    return doc


def _learned_doc(
    policy: Policy,
    entries: Mapping[IPAddress, CacheEntry],
    *,
    now: tuple[float, float],
) -> dict[str, object]:
    """One name a gateway answer gave: when it was last answered, its TTL, its addresses."""
    mono_now, wall_now = now
    seen = [e.seen for e in entries.values() if e.seen != float("-inf")]
    return {
        "last_answer": _r(wall_now + (max(seen) - mono_now)) if seen else None,
        "ttl": _ttl(entries),
        "ips": _ip_docs(policy, entries, mono_now),
    }


def build_status(
    state: StateView,
    config: Config | None,
    names: Mapping[str, NameStatus],
    *,
    mono_now: float,
    wall_now: float,
    version: str = __version__,
    health: tuple[bool, str] | None = None,
    learned: Mapping[Learned, Mapping[IPAddress, CacheEntry]] | None = None,
) -> dict[str, object]:
    """The ``GET /status`` document. Pure and in-memory.

    ``names`` is ``Refresher.status()`` and ``learned`` ``Refresher.learned()`` (every
    name a DNS gateway answer gave, listed under its policy), whose times are on the
    refresher's monotonic clock: ``mono_now`` is that clock's now and ``wall_now`` the
    Unix time now, used to turn them into Unix times. ``health`` is
    ``StatusProvider.health()``'s answer, if the caller wants it in the document.
    """
    doc: dict[str, object] = {
        "schema": SCHEMA,
        "version": version,
        "time": _r(wall_now),
        "started": _r(state.started),
        "config_path": state.config_path,
        "table": config.daemon.table if config is not None else None,
        "generation": state.generation,
        "installed": state.installed,
        "repairs": state.repairs,
    }
    if health is not None:
        doc["health"] = {"ok": health[0], "reason": health[1]}
    doc["last_reload"] = {
        "result": state.last_reload,
        "time": _r(state.last_reload_time) if state.last_reload_time is not None else None,
        "error": state.last_reload_error,
    }
    policies: dict[str, object] = {}
    by_policy: dict[str, dict[str, Mapping[IPAddress, CacheEntry]]] = {}
    for key, entries in (learned or {}).items():
        if entries:
            by_policy.setdefault(key.policy, {})[key.name] = entries
    for p in config.policies if config is not None else ():
        ports: dict[str, set[str]] = {}
        for t in p.outbound:
            if t.domain is not None:
                ports.setdefault(t.domain, set()).add(t.spec.describe())
        policies[p.name] = {
            "mode": p.mode,
            "dns": p.dns,
            "subjects": {
                "uids": list(p.uids),
                "gids": list(p.gids),
                "cgroups": {c: state.cgroup_ids.get(c) for c in p.cgroups},
            },
            "inbound": [entry.spec.describe() for entry in p.inbound],
            "loopback": p.loopback,
            "allow_private": p.allow_private,
            "static": [
                {"network": str(t.network), "ports": t.spec.describe()}
                for t in p.outbound
                if t.network is not None
            ],
            "domains": {
                d: _domain_doc(
                    p,
                    names.get(d),
                    ports=sorted(ports.get(d, ())),
                    now=(mono_now, wall_now),
                )
                for d in p.domains
            },
            "wildcards": list(p.wildcards),
            "learned": {
                name: _learned_doc(p, entries, now=(mono_now, wall_now))
                for name, entries in sorted(by_policy.get(p.name, {}).items())
            },
        }
    doc["policies"] = policies
    return doc


# ------------------------------------------------------------------------------ client


def status_url(url: str) -> str:
    """The ``/status`` URL of a daemon given its base URL (or its ``/status`` URL)."""
    base = url.rstrip("/")
    return base if base.endswith("/status") else base + "/status"


def fetch_status(url: str = DEFAULT_URL, *, timeout: float = 5.0) -> dict[str, object]:
    """GET the status document of the daemon at ``url`` (its base URL).

    Proxy settings from the environment are ignored (the daemon is local or reached
    directly). Raises ``HttpError`` with a one-line reason when the daemon does not
    answer, answers with an HTTP error, or answers something that is not a document.
    """
    target = status_url(url)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(target, headers={"Accept": "application/json"})
    try:
        with opener.open(request, timeout=timeout) as response:
            body = response.read(64 << 20)
    except urllib.error.HTTPError as exc:
        raise HttpError(f"{target}: the daemon answered HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        reason = exc.reason
        text = reason.strerror if isinstance(reason, OSError) and reason.strerror else reason
        raise HttpError(f"{target}: no answer ({text})") from exc
    except (OSError, ValueError) as exc:  # timeouts, resets, malformed URLs
        raise HttpError(f"{target}: no answer ({exc})") from exc
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise HttpError(f"{target}: the answer is not JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise HttpError(f"{target}: the answer is not a status document")
    return doc


# ------------------------------------------------------------------------------ text


def _dict(x: object) -> dict[str, object]:
    return {str(k): v for k, v in x.items()} if isinstance(x, dict) else {}


def _list(x: object) -> list[object]:
    return list(x) if isinstance(x, list) else []


def _num(x: object) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def duration(seconds: float) -> str:
    """A short human duration: ``45s``, ``4m08s``, ``2h03m``, ``3d04h``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _when(t: object, now: float) -> str:
    value = _num(t)
    if value is None:
        return "never"
    delta = value - now
    return f"in {duration(delta)}" if delta > 0.5 else f"{duration(-delta)} ago"


def _stamp(t: object) -> str:
    value = _num(t)
    if value is None:
        return "?"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(value))


def _join(items: Sequence[object]) -> str:
    return ",".join(str(i) for i in items)


def format_status(doc: Mapping[str, object]) -> str:
    """``doc`` (a ``/status`` document) as text for people. Pure.

    Relative times are counted from the document's ``time``; missing or unexpected
    fields are shown as unknown, never an error, so that a newer or older daemon's
    document still prints.
    """
    now = _num(doc.get("time")) or 0.0
    lines: list[str] = []
    health = _dict(doc.get("health"))
    if health:
        state = "healthy" if health.get("ok") is True else f"UNHEALTHY: {health.get('reason')}"
    else:
        state = "health unknown"
    started = doc.get("started")
    lines.append(
        f"fenced {doc.get('version', '?')}: {state}; up {duration(now - (_num(started) or now))}"
        f" (since {_stamp(started)})"
    )
    table = doc.get("table")
    lines.append(
        f"config {doc.get('config_path', '?')}; "
        + (f"table inet {table}" if table else "no table")
        + f", generation {doc.get('generation', '?')}"
        + (f", repaired {doc['repairs']}x" if doc.get("repairs") else "")
        + ("" if doc.get("installed", True) else ", NOT INSTALLED")
    )
    reload = _dict(doc.get("last_reload"))
    result = reload.get("result", "none")
    if result in (None, "none"):
        lines.append("last reload: none")
    else:
        text = f"last reload: {result} {_when(reload.get('time'), now)}"
        if reload.get("error"):
            text += f": {reload['error']}"
        lines.append(text)
    for name, pol in _dict(doc.get("policies")).items():
        lines.extend(_format_policy(name, _dict(pol), now))
    return "\n".join(lines) + "\n"


def _format_policy(name: str, pol: dict[str, object], now: float) -> list[str]:
    lines = [f"policy {name} ({pol.get('mode', '?')})"]
    subjects = _dict(pol.get("subjects"))
    parts: list[str] = []
    if _list(subjects.get("uids")):
        parts.append("uids " + _join(_list(subjects.get("uids"))))
    if _list(subjects.get("gids")):
        parts.append("gids " + _join(_list(subjects.get("gids"))))
    cgroups = _dict(subjects.get("cgroups"))
    if cgroups:
        shown = [f"{p} (id {i})" if i is not None else f"{p} (absent)" for p, i in cgroups.items()]
        parts.append("cgroups " + ", ".join(shown))
    lines.append("  subjects: " + ("; ".join(parts) if parts else "none"))
    inbound = _list(pol.get("inbound"))
    lines.append("  inbound: " + (" ".join(str(i) for i in inbound) if inbound else "none"))
    statics = [_dict(s) for s in _list(pol.get("static"))]
    if statics:
        lines.append(
            "  static: " + ", ".join(f"{s.get('network')} ({s.get('ports')})" for s in statics)
        )
    domains = _dict(pol.get("domains"))
    lines.append(f"  domains: {len(domains)}")
    for domain, raw in domains.items():
        d = _dict(raw)
        last = _dict(d.get("last_resolution"))
        if last:
            text = f"{last.get('status')} {_when(last.get('time'), now)}"
            if last.get("detail"):
                text += f" ({last['detail']})"
        else:
            text = "not resolved yet"
        parts = [text]
        ttl = _num(d.get("ttl"))
        if ttl is not None:
            parts.append(f"ttl {ttl:g}s")
        if d.get("resolving") is True:
            parts.append("resolving now")
        elif d.get("next_refresh") is not None:
            parts.append(f"next {_when(d.get('next_refresh'), now)}")
        ports = " ".join(str(p) for p in _list(d.get("ports")))
        lines.append(f"    {domain}" + (f" ({ports})" if ports else "") + ": " + ", ".join(parts))
        lines.extend(_ip_lines(_list(d.get("ips"))))
    wildcards = _list(pol.get("wildcards"))
    if wildcards:
        lines.append("  wildcards: " + " ".join(str(w) for w in wildcards))
    learned = _dict(pol.get("learned"))
    if learned or pol.get("dns") == "gateway":
        lines.append(f"  learned from DNS answers: {len(learned)}")
    for qname, raw in learned.items():
        d = _dict(raw)
        parts = [f"answered {_when(d.get('last_answer'), now)}"]
        ttl = _num(d.get("ttl"))
        if ttl is not None:
            parts.append(f"ttl {ttl:g}s")
        lines.append(f"    {qname}: " + ", ".join(parts))
        lines.extend(_ip_lines(_list(d.get("ips"))))
    return lines


def _ip_lines(ips: list[object]) -> list[str]:
    lines: list[str] = []
    for raw_ip in ips:
        ip = _dict(raw_ip)
        notes = [f"{duration(_num(ip.get('seconds_left')) or 0.0)} left"]
        if ip.get("stale") is True:
            notes.append("stale")
        if ip.get("in_set") is False:
            notes.append("not in set: private")
        lines.append(f"      {ip.get('ip')} ({', '.join(notes)})")
    return lines


__all__ = [
    "DEFAULT_URL",
    "SCHEMA",
    "StateView",
    "build_status",
    "duration",
    "fetch_status",
    "format_status",
    "status_url",
]
