"""Names a gateway policy may ask because an allowed answer led there, and until when. Pure.

When the gateway answers an allowed name ``www.example.com`` with a CNAME chain
(``www`` -> ``cdn`` -> ``edge``), stub resolvers such as ``host`` and ``nslookup`` go on
to ask for the names on the chain themselves, and a validating stub asks for the DNSSEC
records (DS, DNSKEY, SOA, NS) of every zone cut above them. :class:`LiveChains` remembers
the names on such chains with the outbound entries (:class:`~fenced.core.model.Target`) that
allowed the first name and until when each stays *live* (the chain's TTL plus grace; the
caller computes it). A live name may be asked, any type, by the same policy; the addresses
it resolves to open only the ports of those entries. The proper ancestors of live names
(up to the root) are remembered too, for the DNSSEC record types only.

Nothing here reads a clock or does I/O: every call that depends on time is given ``now``
(seconds of a monotonic clock).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import dns.exception
import dns.name

from fenced.core.model import Target

__all__ = ["Labels", "LiveChains", "ancestors", "name_labels"]

#: A DNS name as its lower-cased labels, root label left out (the root is ``()``).
Labels = tuple[bytes, ...]


def name_labels(name: str | dns.name.Name) -> Labels | None:
    """The lower-cased labels of ``name``, root label left out; None if it is no name."""
    if isinstance(name, str):
        try:
            name = dns.name.from_text(name, origin=dns.name.root)
        except (dns.exception.DNSException, ValueError):
            return None
    labels = name.labels
    if labels and labels[-1] == b"":
        labels = labels[:-1]
    return tuple(label.lower() for label in labels)


def ancestors(labels: Labels) -> Iterable[Labels]:
    """The proper ancestors of ``labels``, parent first, the root (``()``) last."""
    for i in range(1, len(labels) + 1):
        yield labels[i:]


class LiveChains:
    """The live names of one policy's CNAME chains (see the module text).

    Holds at most ``limit`` names (and ``limit`` ancestors); when a new name would pass
    it, expired ones leave first, then those that expire soonest.
    """

    def __init__(self, limit: int = 4096) -> None:
        if limit < 1:
            raise ValueError("LiveChains needs a limit of at least 1")
        self.limit = limit
        self._names: dict[Labels, dict[Target, float]] = {}
        self._ancestors: dict[Labels, float] = {}

    def __len__(self) -> int:
        """How many names are held (live or expired but not yet dropped)."""
        return len(self._names)

    def add(self, names: Iterable[Labels], until: Mapping[Target, float], now: float) -> None:
        """Make each of ``names`` live for each target of ``until`` until its time.

        A name already live for a target keeps the later of the two times. Times not
        after ``now`` are ignored. The proper ancestors of each name become ancestors of
        a live name until the latest time given.
        """
        wanted = {t: u for t, u in until.items() if u > now}
        if not wanted:
            return
        last = max(wanted.values())
        for labels in names:
            held = self._names.get(labels)
            if held is None:
                self._make_room(False, now)
                held = self._names[labels] = {}
            for target, u in wanted.items():
                held[target] = max(held.get(target, u), u)
            for parent in ancestors(labels):
                if parent not in self._ancestors:
                    self._make_room(True, now)
                self._ancestors[parent] = max(self._ancestors.get(parent, last), last)

    def match(self, labels: Labels, now: float) -> dict[Target, float]:
        """The targets for which ``labels`` is live at ``now``, each with its end."""
        held = self._names.get(labels)
        if held is None:
            return {}
        return {t: u for t, u in held.items() if u > now}

    def is_ancestor(self, labels: Labels, now: float) -> bool:
        """Whether ``labels`` is a proper ancestor of a name live at ``now``."""
        return self._ancestors.get(labels, now) > now

    def retain(self, targets: Iterable[Target]) -> None:
        """Forget every target not in ``targets`` (a reload removed its entry).

        Names left without a target leave; the ancestors stay until their own time
        (they only ever allow DNSSEC record types).
        """
        keep = set(targets)
        for labels in list(self._names):
            held = {t: u for t, u in self._names[labels].items() if t in keep}
            if held:
                self._names[labels] = held
            else:
                del self._names[labels]

    def expire(self, now: float) -> None:
        """Drop every name and ancestor that is no longer live at ``now``."""
        for labels in list(self._names):
            held = {t: u for t, u in self._names[labels].items() if u > now}
            if held:
                self._names[labels] = held
            else:
                del self._names[labels]
        for labels in [a for a, u in self._ancestors.items() if u <= now]:
            del self._ancestors[labels]

    def _make_room(self, ancestor: bool, now: float) -> None:
        """Below ``limit`` names (or ancestors): the expired leave, then the soonest."""
        size = len(self._ancestors) if ancestor else len(self._names)
        if size < self.limit:
            return
        self.expire(now)
        if ancestor:
            while len(self._ancestors) >= self.limit:
                del self._ancestors[min(self._ancestors, key=self._ancestors.__getitem__)]
        else:
            while len(self._names) >= self.limit:
                del self._names[min(self._names, key=lambda k: max(self._names[k].values()))]
