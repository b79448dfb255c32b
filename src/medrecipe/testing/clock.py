"""A fake clock for code that takes `clock=` and `sleep=` (the engine, its rate limiters).

    clock = FakeClock()
    Engine(teachers, cache, clock=clock, sleep=clock.sleep)
    clock.sleeps                         # every wait asked for, in order

`sleep(s)` moves the clock on by `s` at once (time passes without waiting) and then yields
to the event loop once, so other tasks run as they would while a real sleep waits.
"""

from __future__ import annotations

import asyncio

_yield = asyncio.sleep  # held here: a test may replace asyncio.sleep with FakeClock.sleep

class FakeClock:
    """Time that only moves when someone sleeps; every requested sleep is recorded."""

    def __init__(self, start: float = 100.0):
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        """Advance the clock by `seconds` and yield once."""
        self.sleeps.append(seconds)
        self.now += seconds
        await _yield(0)
