"""Per-client rate limits (429) on writes and on the expensive reads.

A token bucket per client address and class of request, kept in memory: the
address of an API client is never stored or logged, only used as the key.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from swarmwatch.api.errors import send_json_error

#: Reads that aggregate or stream a whole study; the rest are cheap lookups.
EXPENSIVE_SUFFIXES = (
    "/summary",
    "/rankings",
    "/rankings.csv",
    "/rankings.json",
    "/frames",
    "/cells.geojson",
    "/cities.geojson",
    "/video.mp4",
)
#: Buckets kept at most; the least recently used client is forgotten first.
MAX_CLIENTS = 10_000


class TokenBucket:
    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst, self.tokens, self.stamp = rate, burst, burst, now

    def take(self, now: float, cost: float = 1.0) -> float:
        """0 if `cost` tokens were taken, else the seconds until they will be there."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= cost:
            self.tokens -= cost
            return 0.0
        return (cost - self.tokens) / self.rate


class RateLimitMiddleware:
    def __init__(
        self,
        app: Any,
        *,
        write_rate: float,
        write_burst: float,
        read_rate: float,
        read_burst: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.limits = {"write": (write_rate, write_burst), "read": (read_rate, read_burst)}
        self.clock = clock
        self.buckets: OrderedDict[tuple[str, str], TokenBucket] = OrderedDict()

    def _class(self, scope: Any) -> str | None:
        if scope["method"] in ("POST", "PUT", "PATCH", "DELETE"):
            return "write"
        path: str = scope["path"]
        if (
            scope["method"] == "GET"
            and path.startswith("/api/")
            and path.endswith(EXPENSIVE_SUFFIXES)
        ):
            return "read"
        return None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        kind = self._class(scope) if scope["type"] == "http" else None
        if kind is None:
            await self.app(scope, receive, send)
            return
        client = (scope.get("client") or ("?", 0))[0]
        key = (client, kind)
        now = self.clock()
        bucket = self.buckets.get(key)
        if bucket is None:
            rate, burst = self.limits[kind]
            bucket = self.buckets[key] = TokenBucket(rate, burst, now)
            if len(self.buckets) > MAX_CLIENTS:
                self.buckets.popitem(last=False)
        else:
            self.buckets.move_to_end(key)
        wait = bucket.take(now)
        if wait == 0:
            await self.app(scope, receive, send)
            return
        await send_json_error(
            send,
            429,
            f"too many {kind} requests: retry in {wait:.1f} s",
            [(b"retry-after", str(math.ceil(wait)).encode())],
        )
