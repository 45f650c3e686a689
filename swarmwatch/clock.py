"""Clocks that crawlers, the demo and the simulated swarm share, so days can pass in minutes.

A Clock answers now() (timezone-aware UTC) and sleeps in *simulated* seconds;
CompressedClock runs simulated time `factor` times faster than the wall clock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """Simulated (or real) time: now() and an asyncio sleep in the same units."""

    def now(self) -> datetime: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock: what production crawlers use."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class CompressedClock:
    """Simulated time starting at `start`, running `factor` times faster than wall time.

    factor=1440 turns a day into a minute: a tracker interval of 1800 s then
    takes 1.25 s of wall time, which is how the demo and benchmarks compress days.
    """

    def __init__(
        self,
        start: datetime | None = None,
        factor: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if factor <= 0:
            raise ValueError("factor must be positive")
        self.start = start or datetime.now(UTC)
        self.factor = factor
        self._monotonic = monotonic
        self._t0 = monotonic()

    def now(self) -> datetime:
        return self.start + timedelta(seconds=(self._monotonic() - self._t0) * self.factor)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.factor)


class ManualClock:
    """Time that moves only when told to: sleep() advances it and yields once.

    Tests use it to run a scheduler through hours of simulated time instantly.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2017, 8, 21, tzinfo=UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)

    async def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)


__all__ = ["Clock", "CompressedClock", "ManualClock", "SystemClock"]
