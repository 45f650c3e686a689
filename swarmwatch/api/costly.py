"""Bounds on costly answers anyone may ask for: a per-client budget of work, and whole
answers kept for reuse so that the same question asked by every viewer is computed once.

A client's address is only the key of its budget, in memory; it is never stored or logged.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from swarmwatch.api.ratelimit import MAX_CLIENTS, TokenBucket


class WorkBudget:
    """A token bucket per client, in units of work (cells, rows) rather than requests."""

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._lock = threading.Lock()  # routes run in worker threads

    def charge(self, client: str, cost: float) -> float:
        """0 if the client may spend `cost` now (and it is spent), else seconds to wait."""
        now = self.clock()
        with self._lock:
            bucket = self._buckets.get(client)
            if bucket is None:
                bucket = self._buckets[client] = TokenBucket(self.rate, self.burst, now)
                if len(self._buckets) > MAX_CLIENTS:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(client)
            return bucket.take(now, cost)


class KeptAnswers:
    """Whole answers by key for `ttl` seconds, least recently used dropped past `max_bytes`."""

    def __init__(
        self, max_bytes: int, ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_bytes, self.ttl, self.clock = max_bytes, ttl, clock
        self._answers: OrderedDict[bytes, tuple[float, bytes]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: bytes) -> bytes | None:
        with self._lock:
            kept = self._answers.get(key)
            if kept is None:
                return None
            if self.clock() - kept[0] > self.ttl:
                self._drop(key)
                return None
            self._answers.move_to_end(key)
            return kept[1]

    def put(self, key: bytes, body: bytes) -> None:
        if len(body) > self.max_bytes:
            return
        with self._lock:
            if key in self._answers:
                self._drop(key)
            self._answers[key] = (self.clock(), body)
            self._bytes += len(body)
            while self._bytes > self.max_bytes:
                self._drop(next(iter(self._answers)))

    def _drop(self, key: bytes) -> None:
        _, body = self._answers.pop(key)
        self._bytes -= len(body)


__all__ = ["KeptAnswers", "WorkBudget"]
