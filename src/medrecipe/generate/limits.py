"""Flow control: request/token pacing per minute, shared cool-downs after 429, backoff."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable


class RateLimiter:
    """Paces calls to stay under requests-per-minute and tokens-per-minute limits.

    Each limit is a schedule (generic cell rate): a call reserves the next free slot and
    sleeps until it. Token costs are estimated before the call and corrected afterwards
    with the usage the endpoint reports. `pause` makes every caller wait (after a 429).
    """

    def __init__(self, requests_per_minute: float | None = None,
                 tokens_per_minute: float | None = None, burst_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        self.rpm = requests_per_minute
        self.tpm = tokens_per_minute
        self.burst_s = burst_s
        self.clock = clock
        now = clock()
        self._next_req = now
        self._next_tok = now
        self.paused_until = 0.0

    async def acquire(self, tokens: int = 0) -> None:
        """Wait until one call of about `tokens` tokens may start."""
        while True:
            now = self.clock()
            if self.paused_until > now:
                await asyncio.sleep(self.paused_until - now)
                continue
            break
        start = now
        if self.rpm:
            slot = max(self._next_req, now - self.burst_s)
            self._next_req = slot + 60.0 / self.rpm
            start = max(start, slot)
        if self.tpm and tokens > 0:
            slot = max(self._next_tok, now - self.burst_s)
            self._next_tok = slot + tokens * 60.0 / self.tpm
            start = max(start, slot)
        if start > now:
            await asyncio.sleep(start - now)

    def correct_tokens(self, estimated: int, actual: int) -> None:
        """Account for the difference between estimated and reported tokens."""
        if self.tpm:
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
