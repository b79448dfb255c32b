"""Flow control: request/token pacing per minute, shared cool-downs after 429, backoff.

What a per-minute limit means here. Providers count requests and tokens over windows far
shorter than a minute (a 600 RPM key is typically cut off at about 10 requests in a
second), so "r requests per minute" is taken to mean *evenly spaced* starts: consecutive
calls start at least 60/r seconds apart, and in any window of w seconds at most
ceil(w * r / 60) calls start. There is no burst credit by default: a limiter that sat idle
(or was just created) does not let a burst through, because the provider's short window
would reject it. Token limits are paced the same way, with each call's estimated tokens
occupying its share of the minute.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable


class RateLimiter:
    """Paces calls to stay under requests-per-minute and tokens-per-minute limits.

    Each limit is a schedule (generic cell rate): a call reserves the next free slot and
    sleeps until it. Token costs are estimated before the call and corrected afterwards
    with the usage the endpoint reports. `pause` makes every caller wait (after a 429).
    `burst_s` (default 0) lets a limiter that was idle catch up on at most that many
    seconds of missed slots; `clock` and `sleep` are injectable for tests.
    """

    def __init__(self, requests_per_minute: float | None = None,
                 tokens_per_minute: float | None = None, burst_s: float = 0.0,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] | None = None):
        self.rpm = requests_per_minute
        self.tpm = tokens_per_minute
        self.burst_s = max(0.0, burst_s)
        self.clock = clock
        self._sleep = sleep
        self._next_req: float | None = None  # None: no call yet, the first one starts at once
        self._next_tok: float | None = None
        self.paused_until = 0.0

    async def _wait(self, seconds: float) -> None:
        await (self._sleep or asyncio.sleep)(seconds)

    def _slot(self, nxt: float | None, now: float) -> float:
        return now if nxt is None else max(nxt, now - self.burst_s)

    async def acquire(self, tokens: int = 0) -> None:
        """Wait until one call of about `tokens` tokens may start."""
        while True:
            now = self.clock()
            if self.paused_until > now:
                await self._wait(self.paused_until - now)
                continue
            break
        start = now
        if self.rpm:
            slot = self._slot(self._next_req, now)
            self._next_req = slot + 60.0 / self.rpm
            start = max(start, slot)
        if self.tpm and tokens > 0:
            slot = self._slot(self._next_tok, now)
            self._next_tok = slot + tokens * 60.0 / self.tpm
            start = max(start, slot)
        if start > now:
            await self._wait(start - now)

    def correct_tokens(self, estimated: int, actual: int) -> None:
        """Account for the difference between estimated and reported tokens."""
        if self.tpm and self._next_tok is not None:
            self._next_tok += (actual - estimated) * 60.0 / self.tpm

    def pause(self, seconds: float) -> None:
        """Hold every caller for `seconds` from now (the endpoint said it is overloaded)."""
        self.paused_until = max(self.paused_until, self.clock() + max(0.0, seconds))


def backoff_delay(attempt: int, base_s: float, max_s: float, retry_after: float | None = None,
                  rng: random.Random | None = None) -> float:
    """Seconds before retry number `attempt` (0-based): server hint, else exponential + jitter."""
    r = rng or random
    if retry_after is not None:
        # Honour the hint; a little jitter spreads the callers that were told the same time.
        return retry_after + r.uniform(0.0, min(1.0, 0.1 * retry_after + 0.01))
    cap = min(max_s, base_s * (2 ** attempt))
    return r.uniform(cap / 2, cap)
