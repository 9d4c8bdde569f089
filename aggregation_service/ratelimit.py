"""Per-device token buckets on the injected clock (monotonic time)."""

from __future__ import annotations

from collections import OrderedDict

from fedge.clock import Clock


class RateLimiter:
    """``rate`` requests/s sustained, ``burst`` at once. Idle buckets are
    forgotten (LRU, ``max_keys``) so memory stays bounded with many devices."""

    def __init__(self, clock: Clock, rate: float, burst: int, *, max_keys: int = 100_000) -> None:
        self.clock = clock
        self.rate = rate
        self.burst = float(burst)
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str) -> float:
        """Spend one token; returns 0.0 if allowed, else seconds until a token."""
        now = self.clock.monotonic()
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            wait = 0.0
        else:
            self._buckets[key] = (tokens, now)
            wait = (1.0 - tokens) / self.rate
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait
