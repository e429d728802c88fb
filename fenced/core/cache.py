"""Which addresses each source of DNS answers vouches for, and until when. Pure.

The cache is keyed by an opaque *source key*: for the refresher a domain name, for a
DNS-snooping gateway perhaps a (policy, pattern) pair; the cache never looks inside a key.
Each key holds a set of IP addresses, each with its own

* ``deadline``: when the answer that last named the IP stops being valid (its TTL ran
  out), and
* ``expires``: when the IP must leave the firewall: ``deadline + grace`` normally,
  ``deadline + max(grace, stale)`` while the key's DNS lookups fail.

Nothing here reads a clock or does I/O: every method is given ``now`` (seconds of a
monotonic clock, a float) and returns a :class:`Change` saying which (key, IP) pairs got a
new expiry and which left, so that a planner can turn it into firewall writes.

Invariant after every call given ``now``: every held IP has ``expires > now``, except IPs
whose expiry passed since then and that ``expire`` has not removed yet.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Generic, TypeVar

from fenced.core.model import IPAddress

K = TypeVar("K", bound=Hashable)

_NEVER_SEEN = float("-inf")


@dataclass(frozen=True)
class CacheEntry:
    """One IP of one key: answer deadline, removal time (``expires``) and when last seen.

    ``seen`` is the ``now`` of the last answer that listed the IP (``-inf`` for adopted
    entries), ``answer`` that answer's sequence number (0 for adopted entries, growing
    with every ``update``) and ``order`` the IP's position in it. ``answer`` and ``order``
    decide which IPs stay when a key holds more than its limit (see ``DnsCache.update``).
    """

    deadline: float
    expires: float
    seen: float = _NEVER_SEEN
    answer: int = 0
    order: int = 0

    def rank(self, ip: IPAddress) -> tuple[int, int, float, int, int]:
        """Sort key, newest first: later answer, earlier in it, later deadline, then the IP."""
        return (-self.answer, self.order, -self.deadline, ip.version, int(ip))


@dataclass
class KeyChange:
    """What one call changed for one key.

    ``updated`` maps each IP that is new or whose expiry or deadline changed to its new
    expiry; ``removed`` holds IPs the key no longer holds; ``capped`` counts IPs dropped
    because the key held more than its limit (they are in ``removed`` too).
    """

    updated: dict[IPAddress, float] = field(default_factory=dict)
    removed: set[IPAddress] = field(default_factory=set)
    capped: int = 0

    def __bool__(self) -> bool:
        return bool(self.updated or self.removed)


@dataclass
class Change(Generic[K]):
    """Per key, the IPs that got a new expiry and the IPs that left (see ``KeyChange``).

    Changes compose: ``a.merge(b)`` (b happened after a) gives the net effect, where an IP
    updated then removed counts as removed and removed then updated counts as updated.
    """

    keys: dict[K, KeyChange] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return any(self.keys.values())

    def _for(self, key: K) -> KeyChange:
        kc = self.keys.get(key)
        if kc is None:
            kc = self.keys[key] = KeyChange()
        return kc

    def merge(self, later: Change[K]) -> Change[K]:
        """Fold ``later`` into this change (in place) and return self."""
        for key, kc in later.keys.items():
            mine = self._for(key)
            for ip, exp in kc.updated.items():
                mine.removed.discard(ip)
                mine.updated[ip] = exp
            for ip in kc.removed:
                mine.updated.pop(ip, None)
                mine.removed.add(ip)
            mine.capped += kc.capped
        return self

    def touched(self) -> Iterator[tuple[K, IPAddress]]:
        """Every (key, IP) pair that was updated or removed."""
        for key, kc in self.keys.items():
            for ip in kc.updated:
                yield key, ip
            for ip in kc.removed:
                yield key, ip


class DnsCache(Generic[K]):
    """Per-key, per-IP expiry tracking (after Cilium's pkg/fqdn DNS cache).

    ``min_ttl``/``max_ttl`` bound every TTL given to ``update``; ``grace`` is how long an
    IP missing from newer answers stays past its deadline; ``stale`` how long it stays
    past its deadline while lookups fail (never less than ``grace``); ``max_ips`` how
    many IPs one key holds at most (the newest stay; 0 or less means no limit).
    """

    def __init__(
        self,
        *,
        min_ttl: float,
        max_ttl: float,
        grace: float,
        stale: float,
        max_ips: int,
    ) -> None:
        if min_ttl < 0 or max_ttl < min_ttl or grace < 0 or stale < 0:
            raise ValueError("need 0 <= min_ttl <= max_ttl, grace >= 0 and stale >= 0")
        self.min_ttl = min_ttl
        self.max_ttl = max_ttl
        self.grace = grace
        self.stale = max(stale, grace)
        self.max_ips = max_ips
        self._entries: dict[K, dict[IPAddress, CacheEntry]] = {}
        self._holders: dict[IPAddress, set[K]] = {}
        # Lazy heap of (expires, tiebreak, key, ip); stale rows are skipped when popped.
        self._heap: list[tuple[float, int, K, IPAddress]] = []
        # Per IP, a lazy max-heap of (-expires, tiebreak, key): the planner asks for the
        # latest holder of an IP on every write, and an IP of a CDN may have thousands.
        self._by_ip: dict[IPAddress, list[tuple[float, int, K]]] = {}
        self._pairs = 0
        self._tie = itertools.count()
        self._answers = itertools.count(1)

    # ------------------------------------------------------------------ reading
    def effective_ttl(self, ttl: float) -> float:
        """``ttl`` raised to ``min_ttl`` and lowered to ``max_ttl``."""
        return min(max(ttl, self.min_ttl), self.max_ttl)

    @property
    def max_lifetime(self) -> float:
        """The longest any IP can stay from now: ``max_ttl + max(grace, stale)``."""
        return self.max_ttl + self.stale

    def sources(self) -> Iterator[K]:
        """Every key that holds at least one IP."""
        return iter(list(self._entries))

    def ips(self, key: K) -> Iterator[IPAddress]:
        """The IPs ``key`` holds (none for an unknown key)."""
        return iter(list(self._entries.get(key, {})))

    def entries(self, key: K) -> Mapping[IPAddress, CacheEntry]:
        """A copy of ``key``'s IPs with their deadlines and expiries (for status pages)."""
        return dict(self._entries.get(key, {}))

    def holders(self, ip: IPAddress) -> Iterator[K]:
        """Every key holding ``ip``."""
        return iter(list(self._holders.get(ip, ())))

    def latest(self, ip: IPAddress) -> Iterator[tuple[K, float]]:
        """Every key holding ``ip`` with its expiry, the latest expiry first, each once.

        The first pair costs O(1) amortized however many keys hold ``ip``; going on
        costs a sort of the other holders. Consume it before changing the cache.
        """
        heap = self._by_ip.get(ip)
        while heap:
            neg, _, key = heap[0]
            entry = self._entries.get(key, {}).get(ip)
            if entry is not None and entry.expires == -neg:
                return self._latest_from(ip, key, -neg)
            heapq.heappop(heap)
        return iter(())

    def _latest_from(self, ip: IPAddress, first: K, expires: float) -> Iterator[tuple[K, float]]:
        yield first, expires
        rest = [(k, self._entries[k][ip].expires) for k in self._holders.get(ip, ()) if k != first]
        rest.sort(key=lambda pair: pair[1], reverse=True)
        yield from rest

    def expiry(self, key: K, ip: IPAddress) -> float | None:
        """When ``ip`` leaves ``key``, or None when ``key`` does not hold it."""
        entry = self._entries.get(key, {}).get(ip)
        return entry.expires if entry is not None else None

    def next_expiry(self) -> float | None:
        """The earliest expiry of any held IP, or None when the cache is empty."""
        heap = self._heap
        while heap:
            exp, _, key, ip = heap[0]
            entry = self._entries.get(key, {}).get(ip)
            if entry is not None and entry.expires == exp:
                return exp
            heapq.heappop(heap)
        return None

    def __len__(self) -> int:
        """The number of (key, IP) pairs held."""
        return self._pairs

    # ------------------------------------------------------------------ internals
    def _set(self, key: K, ip: IPAddress, entry: CacheEntry, change: KeyChange) -> None:
        ips = self._entries.setdefault(key, {})
        old = ips.get(ip)
        ips[ip] = entry
        holders = self._holders.setdefault(ip, set())
        holders.add(key)
        if old is None:
            self._pairs += 1
        if old is None or old.expires != entry.expires or old.deadline != entry.deadline:
            change.updated[ip] = entry.expires
            change.removed.discard(ip)
        if old is None or old.expires != entry.expires:
            heapq.heappush(self._heap, (entry.expires, next(self._tie), key, ip))
            by_ip = self._by_ip.setdefault(ip, [])
            heapq.heappush(by_ip, (-entry.expires, next(self._tie), key))
            if len(by_ip) > 2 * len(holders) + 16:  # mostly stale rows: rebuild
                by_ip[:] = [(-self._entries[k][ip].expires, next(self._tie), k) for k in holders]
                heapq.heapify(by_ip)

    def _drop(self, key: K, ip: IPAddress, change: KeyChange) -> None:
        ips = self._entries.get(key)
        if ips is None or ip not in ips:
            return
        del ips[ip]
        self._pairs -= 1
        if not ips:
            del self._entries[key]
        holders = self._holders.get(ip)
        if holders is not None:
            holders.discard(key)
            if not holders:
                del self._holders[ip]
                self._by_ip.pop(ip, None)
        change.updated.pop(ip, None)
        change.removed.add(ip)

    @staticmethod
    def _single(key: K, kc: KeyChange) -> Change[K]:
        return Change({key: kc}) if kc or kc.capped else Change()

    # ------------------------------------------------------------------ writing
    def update(
        self,
        now: float,
        key: K,
        ips: Iterable[IPAddress],
        ttl: float,
        *,
        partial: bool = False,
        max_ips: int | None = None,
    ) -> Change[K]:
        """Record a successful answer for ``key``: ``ips``, valid for ``ttl`` seconds.

        Each IP of the answer gets ``deadline = now + effective_ttl(ttl)`` and
        ``expires = deadline + grace``. IPs the key held that the answer lacks keep their
        deadline and get ``expires = deadline + grace`` (``+ stale`` when ``partial``:
        part of the answer is known missing, e.g. AAAA failed while A worked); those
        whose new expiry is not after ``now`` leave at once. An empty ``ips`` is how
        NXDOMAIN and NODATA are recorded. When the key then holds more than ``max_ips``
        (default: the cache's limit) IPs, the newest stay (``CacheEntry.rank``: this
        answer's IPs in answer order, then those of older answers, adopted ones last) and
        ``KeyChange.capped`` counts the rest.
        """
        kc = KeyChange()
        before = set(self._entries.get(key, {}))
        answer = list(dict.fromkeys(ips))
        in_answer = set(answer)
        deadline = now + self.effective_ttl(ttl)
        extra = self.stale if partial else self.grace
        for ip, old in list(self._entries.get(key, {}).items()):
            if ip in in_answer:
                continue
            expires = old.deadline + extra
            if expires <= now:
                self._drop(key, ip, kc)
            else:
                self._set(key, ip, replace(old, expires=expires), kc)
        seq = next(self._answers)
        for order, ip in enumerate(answer):
            self._set(key, ip, CacheEntry(deadline, deadline + self.grace, now, seq, order), kc)
        limit = self.max_ips if max_ips is None else max_ips
        held = self._entries.get(key, {})
        if limit > 0 and len(held) > limit:
            ranked = sorted(held.items(), key=lambda kv: kv[1].rank(kv[0]))
            for ip, _ in ranked[limit:]:
                self._drop(key, ip, kc)
                kc.capped += 1
            kc.removed &= before  # an IP of this answer dropped at once never was held
        return self._single(key, kc)

    def fail(self, now: float, key: K) -> Change[K]:
        """Record that ``key``'s lookup failed: its IPs stay until ``deadline + stale``.

        (``stale`` is never less than ``grace``.) IPs whose new expiry is not after
        ``now`` leave at once.
        """
        kc = KeyChange()
        for ip, old in list(self._entries.get(key, {}).items()):
            expires = old.deadline + self.stale
            if expires <= now:
                self._drop(key, ip, kc)
            else:
                self._set(key, ip, replace(old, expires=expires), kc)
        return self._single(key, kc)

    def hold(self, now: float, key: K, until: float) -> Change[K]:
        """Keep ``key``'s IPs until ``until`` while a lookup is in flight (never past stale).

        A lookup can take longer than ``grace`` (a resolver that times out); without this
        an IP would leave before the failure that keeps it until ``deadline + stale`` is
        known. Each IP's expiry becomes ``min(deadline + stale, until)`` when that is
        later than its current expiry; nothing else changes.
        """
        kc = KeyChange()
        for ip, old in list(self._entries.get(key, {}).items()):
            expires = min(old.deadline + self.stale, until)
            if expires > old.expires:
                self._set(key, ip, replace(old, expires=expires), kc)
        return self._single(key, kc)

    def expire(self, now: float) -> Change[K]:
        """Remove every IP whose expiry is not after ``now``; report them per key."""
        change: Change[K] = Change()
        heap = self._heap
        while heap and heap[0][0] <= now:
            exp, _, key, ip = heapq.heappop(heap)
            entry = self._entries.get(key, {}).get(ip)
            if entry is not None and entry.expires == exp:
                self._drop(key, ip, change._for(key))
        change.keys = {k: v for k, v in change.keys.items() if v}
        return change

    def forget(self, key: K) -> Change[K]:
        """Remove ``key`` and every IP it holds (other keys holding them are untouched)."""
        kc = KeyChange()
        for ip in list(self._entries.get(key, {})):
            self._drop(key, ip, kc)
        return self._single(key, kc)

    def adopt(self, now: float, key: K, ip: IPAddress, expires_at: float) -> Change[K]:
        """Take over an IP found in the firewall with its remaining lifetime (after a restart).

        The IP stays until ``expires_at`` (but no later than ``now + max_lifetime``);
        its deadline is taken as ``expires_at - grace`` (not before ``now``). It counts as
        the oldest IP for ``max_ips``. Nothing changes when ``expires_at <= now`` or the
        key already holds the IP until later.
        """
        kc = KeyChange()
        expires_at = min(expires_at, now + self.max_lifetime)
        old = self._entries.get(key, {}).get(ip)
        if expires_at > now and (old is None or old.expires < expires_at):
            deadline = max(now, expires_at - self.grace)
            self._set(key, ip, CacheEntry(deadline, expires_at), kc)
        return self._single(key, kc)


__all__ = ["CacheEntry", "Change", "DnsCache", "KeyChange"]
