"""Token buckets: how many requests a key (a tenant, or all new tokens together) may make a minute."""

from __future__ import annotations

import time

MAX_BUCKETS = 100_000  # idle full buckets are dropped beyond this, so many one-off keys cannot fill memory


class RateLimiter:
    """A token bucket per key: `per_minute` requests a minute, in bursts of up to that many."""

    def __init__(self, per_minute: int) -> None:
        self._capacity = float(per_minute)
        self._rate = per_minute / 60.0
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def wait_seconds(self, key: str) -> float:
        """0 when the request may go now (and it is counted), else how long until it could."""
        now = time.monotonic()
        tokens, at = self._buckets.get(key, (self._capacity, now))
        tokens = min(self._capacity, tokens + (now - at) * self._rate)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / self._rate
        self._buckets[key] = (tokens - 1, now)
        if len(self._buckets) > MAX_BUCKETS:
            self._forget_full(now)
        return 0.0

    def _forget_full(self, now: float) -> None:
        for key, (tokens, at) in list(self._buckets.items()):
            if tokens + (now - at) * self._rate >= self._capacity:
                del self._buckets[key]
