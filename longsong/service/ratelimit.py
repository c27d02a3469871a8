"""Requests per second per user: a token bucket in this process's memory.

In memory, not in the database: a database round trip per request would spend the API's latency budget
on rate limiting. So each API process limits on its own; N replicas behind a balancer let a user through
up to N times the rate (size `rate_per_s` for one replica, or route users to replicas by key).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

MAX_BUCKETS = 100_000  # users tracked at once; the least recently seen bucket goes first beyond this


class RateLimiter:
    """Token buckets keyed by user, refilled at `rate_per_s` up to `burst`; thread-safe, bounded memory.

    A bucket idle long enough to be full equals a fresh one, so evicting it loses nothing; eviction only
    forgets a partly drained bucket when more than `max_buckets` users are active at once."""

    def __init__(self, max_buckets: int = MAX_BUCKETS):
        self.max_buckets = max_buckets
        # user -> (tokens, when counted, rate_per_s, burst), least recently used first
        self._buckets: OrderedDict[str, tuple[float, float, float, int]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, user_id: str, rate_per_s: float, burst: int, now: float | None = None) -> float:
        """Spend one token: 0.0 when allowed, else the seconds until one is there (the API's Retry-After,
        rounded up to whole seconds by the caller). `now`: a time.monotonic() reading (tests pass their own)."""
        if rate_per_s <= 0 or burst < 1:
            raise ValueError(f"rate_per_s must be > 0 and burst >= 1, got {rate_per_s!r} and {burst!r}")
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, at, _, _ = self._buckets.pop(user_id, (float(burst), now, rate_per_s, burst))
            tokens = min(float(burst), tokens + max(0.0, now - at) * rate_per_s)
            wait = 0.0 if tokens >= 1.0 else (1.0 - tokens) / rate_per_s
            self._buckets[user_id] = (tokens - 1.0 if wait == 0.0 else tokens, now, rate_per_s, burst)
            self._evict(now)
        return wait

    def _evict(self, now: float) -> None:
        """From the least recently used end: drop buckets that have refilled, and any beyond the cap."""
        while self._buckets:
            user, (tokens, at, rate, burst) = next(iter(self._buckets.items()))
            if len(self._buckets) <= self.max_buckets and tokens + (now - at) * rate < burst:
                break
            del self._buckets[user]

    def __len__(self) -> int:
        return len(self._buckets)
