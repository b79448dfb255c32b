"""The generation engine: cache, flow control, retries, cost ledger, budget and progress.

Backends only make calls. The engine decides which samples still need a call (each
sample of each question is its own cache entry), how many calls run at once, how fast
they start (requests and tokens per minute), what to do when one fails (retry with
backoff and jitter, honouring `retry-after`; record a failed generation after the retry
limit), what it cost, and when to stop (budget reached, credentials rejected).
Every response is committed to the cache in the event-loop pass in which it arrives, and
always before any worker launches another request, so a killed run loses at most the calls
that were in flight (answers that arrive together share one transaction).

A teacher may be a fleet of servers (`base_urls` / `endpoints`): each endpoint has its own
backend, in-flight limit and rate limiter; each call goes to the healthy endpoint with the
most free capacity; an endpoint that stops answering (no connection, timeouts, 5xx) cools
down for an exponentially growing time, then gets one probe call of real traffic; a retry
after a failure goes to another endpoint when one is healthy. The cache key never names
the endpoint, so any fleet serving the same model reuses every cached answer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medrecipe.config import Price, SamplingConfig, TeacherConfig
from medrecipe.errors import UserError
from medrecipe.generate.backends import Backend, BackendError, ChatRequest, make_backend
from medrecipe.generate.cache import RequestCache, base_key, sample_key
from medrecipe.generate.limits import RateLimiter, backoff_delay
from medrecipe.prompts import PromptTemplate, image_refs, load_template
from medrecipe.schema import Generation, Item

if TYPE_CHECKING:
    from medrecipe.images import ImageStore

log = logging.getLogger("medrecipe.generate")

__all__ = ["Engine", "EngineResult", "GenRequest", "request_for"]

SINK_BATCH = 1024
BREAKER_FAILURES = 100  # consecutive failed calls (no success in between) that stop a teacher
DOWN_AFTER = 5  # health failures in a row (no answer in between) that take an endpoint out


@dataclass
class GenRequest:
    """One question for one teacher: `n` samples, indices 0..n-1."""

    item_id: str
    teacher: str
    messages: list[dict[str, Any]]
    n: int = 1
    source: str = ""
    template: str = ""
    template_hash: str = ""
    sampling: SamplingConfig | None = None  # None: the teacher's sampling


def request_for(item: Item, teacher: str, cfg: TeacherConfig, n: int,
                template: str | Path | PromptTemplate | None = None,
                sampling: SamplingConfig | None = None, **extra: Any) -> GenRequest:
    """A GenRequest for an item, rendered with `template` (default: the teacher's template)."""
    tpl = load_template(template if template is not None else cfg.template)
    return GenRequest(item_id=item.id, teacher=teacher, messages=tpl.render(item, **extra), n=n,
                      source=item.source, template=tpl.name, template_hash=tpl.hash,
                      sampling=sampling)


@dataclass(repr=False)
class EngineResult:
    """What one engine run produced and what it cost."""

    generations: list[Generation] = field(default_factory=list)
    complete: bool = True
    stopped: str | None = None  # "budget" when the budget stopped new calls
    spend_usd: float = 0.0
    cost_usd_total: float = 0.0
    failures: int = 0
    cached: int = 0
    requests_sent: int = 0
    not_launched: int = 0
    samples: int = 0
    by_teacher: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __repr__(self) -> str:  # short: asyncio and loggers may repr a result of millions
        return (f"EngineResult(generations={len(self.generations)}, complete={self.complete}, "
                f"spend_usd={self.spend_usd:.6f}, failures={self.failures}, "
                f"cached={self.cached}, requests_sent={self.requests_sent})")


@dataclass
class _Unit:
    """Samples of one request still to fetch from the backend."""

    ordinal: int
    req: GenRequest
    sampling: SamplingConfig
    base: str
    indices: list[int]
    prompt_estimate: int


@dataclass(eq=False)
class _Endpoint:
    """One server of a teacher: its backend, in-flight limit, pacing, health and counts."""

    label: str
    backend: Backend
    limiter: RateLimiter
    limit: int  # calls in flight at most (waiting for the limiter included)
    in_flight: int = 0
    strikes: int = 0  # health failures since its last answer
    downs: int = 0  # cool-downs in a row; each one doubles the next
    down_until: float | None = None  # None: healthy; else out until then, then one probe
    probing: bool = False  # the probe call of a cooled-down endpoint is in flight
    # The ledger of this endpoint: calls sent, calls that failed or returned nothing usable,
    # calls answered (and their summed latency), times taken out.
    requests: int = 0
    failures: int = 0
    answered: int = 0
    latency_total: float = 0.0
    times_down: int = 0

    def counts(self) -> dict[str, Any]:
        return {"requests": self.requests, "failures": self.failures, "answered": self.answered,
                "latency_s": round(self.latency_total / self.answered, 4) if self.answered
                else None, "times_down": self.times_down, "max_in_flight": self.limit}


@dataclass
class _Teacher:
    name: str
    cfg: TeacherConfig
    endpoints: list[_Endpoint]
    queue: asyncio.Queue[_Unit | None]
    native: bool
    avg_completion: float
    completions_seen: int = 0
    consecutive_failures: int = 0
    tripped: str | None = None
    rr: int = 0  # where the next endpoint scan starts, so equal loads take turns
    # Calls waiting for a slot: one is woken per freed slot (waking all of them, hundreds
    # when an endpoint of a large fleet is down, costs CPU on every call), all of them when
    # capacity comes back (an endpoint answers again, a probe ends) or the run stops.
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)
    last_error: str = ""  # the last health failure, with its endpoint

    @property
    def n_workers(self) -> int:
        return sum(ep.limit for ep in self.endpoints)


def _label(url: str) -> str:
    """An endpoint's name in the ledger: its base URL without any user:password part."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _cost(price: Price, prompt_tokens: float, completion_tokens: float) -> float:
    return (prompt_tokens * price.input_per_mtok + completion_tokens * price.output_per_mtok) / 1e6


def _split_tokens(total: int, texts: Sequence[str | None]) -> list[int]:
    """Share `total` completion tokens over choices in proportion to their length."""
    weights = [max(1, len(t or "")) for t in texts]
    s = sum(weights)
    raw = [total * w / s for w in weights]
    out = [int(x) for x in raw]
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - out[i], reverse=True)[:total - sum(out)]:
        out[i] += 1
    return out


def _is_empty(c: Any) -> bool:
    """A choice with no text at all (content null or blank): a failed attempt, not an answer."""
    return c.text is None or not str(c.text).strip()


def _prompt_estimate(messages: Sequence[Mapping[str, Any]]) -> int:
    chars, images = 0, 0
    for m in messages:
        c = m.get("content")
        if isinstance(c, str):
            chars += len(c)
        elif isinstance(c, list):
            for p in c:
                if p.get("type") == "text":
                    chars += len(p.get("text", ""))
                else:
                    images += 1
    return chars // 4 + 350 * images + 8


class _Progress:
    """A rich progress bar (done/total, rate, ETA, spend, failures), or nothing."""

    def __init__(self, enabled: bool, description: str, total: int | None):
        self.enabled = enabled
        self._p = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._p = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TaskProgressColumn(), TextColumn("{task.fields[rate]}"),
            TextColumn("ETA"), TimeRemainingColumn(), TimeElapsedColumn(),
            TextColumn("[green]${task.fields[spend]:.4f}"),
            TextColumn("[red]{task.fields[failed]} failed"),
            refresh_per_second=4, transient=False, console=Console(stderr=True))
        self._task = self._p.add_task(description, total=total, spend=0.0, failed=0, rate="")
        self._t0 = time.perf_counter()
        self._fetched = 0

    def __enter__(self) -> _Progress:
        if self._p is not None:
            self._p.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._p is not None:
            self._p.stop()

    def total(self, total: int) -> None:
        if self._p is not None:
            self._p.update(self._task, total=total)

    def advance(self, k: int, spend: float, failed: int, fetched: int = 0) -> None:
        if self._p is None:
            return
        self._fetched += fetched
        dt = time.perf_counter() - self._t0
        rate = f"{self._fetched / dt:.1f} samples/s" if dt > 0 else ""
        self._p.update(self._task, advance=k, spend=spend, failed=failed, rate=rate)


class Engine:
    """Runs GenRequests through teachers' backends with caching and flow control."""

    def __init__(self, teachers: Mapping[str, TeacherConfig],
                 cache: RequestCache | str | Path | None, *, images: ImageStore | None = None,
                 budget_usd: float | None = None, progress: bool | None = None,
                 backends: Mapping[str, Backend] | None = None, description: str = "generate",
                 seed: int | None = None, clock: Callable[[], float] | None = None,
                 sleep: Callable[[float], Any] | None = None):
        self.teachers = dict(teachers)
        self.cache_spec = cache  # a RequestCache, or a folder / .sqlite path opened per run
        self.images = images
        self.budget_usd = budget_usd
        self.progress = sys.stderr.isatty() if progress is None else progress
        self._given_backends = dict(backends or {})
        self.description = description
        self._rng = random.Random(seed)
        # Time source and sleep of the rate limiters and retry waits (tests inject fakes).
        self.clock = clock or time.monotonic
        self.sleep = sleep or asyncio.sleep
        # Secrets known to this process: scrubbed from every error text the engine keeps.
        self._secrets = sorted({os.environ[t.api_key_env] for t in self.teachers.values()
                                if t.api_key_env and os.environ.get(t.api_key_env)},
                               key=len, reverse=True)

    def __repr__(self) -> str:
        return f"Engine(teachers={sorted(self.teachers)}, cache={self.cache_spec!r})"

    def redact(self, text: str) -> str:
        """`text` without any API key this process knows."""
        for s in self._secrets:
            text = text.replace(s, "***")
        return text

    # ------------------------------------------------------------------ entry points
    def run(self, requests: Iterable[GenRequest],
            sink: Callable[[list[Generation]], None] | None = None,
            total: int | None = None) -> EngineResult:
        """Run all requests to completion (or to the budget) and return the result."""
        return asyncio.run(self.arun(requests, sink=sink, total=total))

    async def arun(self, requests: Iterable[GenRequest],
                   sink: Callable[[list[Generation]], None] | None = None,
                   total: int | None = None) -> EngineResult:
        """Async form of `run`; `total` (samples) sizes the progress bar for lazy inputs."""
        if total is None and isinstance(requests, Sequence):
            total = sum(r.n for r in requests)
        run = _Run(self, sink)
        with _Progress(self.progress, self.description, total) as bar:
            run.bar = bar
            try:
                await run.execute(requests)
            finally:
                await run.shutdown()
        return run.result()


class _Run:
    """State of one `Engine.arun` call."""

    def __init__(self, engine: Engine, sink: Callable[[list[Generation]], None] | None):
        self.e = engine
        self.sink = sink
        spec = engine.cache_spec
        self._own_cache = spec is not None and not isinstance(spec, RequestCache)
        self.cache: RequestCache | None = RequestCache(spec) if self._own_cache else spec  # type: ignore[arg-type]
        self.bar: _Progress | None = None
        self.teachers: dict[str, _Teacher] = {}
        self.workers: list[asyncio.Task[None]] = []
        self.res = EngineResult()
        self.buffer: list[Generation] = []
        self.collected: list[tuple[int, int, Generation]] = []
        self.stop_reason: str | None = None
        self.fatal: UserError | None = None
        self.reserved = 0.0  # worst-case cost of the calls in flight (for the budget)
        self._calls_in_flight = 0
        self._budget_cond = asyncio.Condition()
        self._cache_failed = False
        self._owned: list[Backend] = []
        self._cache_buf: list[tuple[str, dict[str, Any]]] = []
        self._flush_handle: asyncio.Handle | None = None  # the commit at the end of this pass

    # ------------------------------------------------------------------ setup
    def _teacher(self, name: str) -> _Teacher:
        t = self.teachers.get(name)
        if t is not None:
            return t
        cfg = self.e.teachers.get(name)
        if cfg is None:
            raise UserError(f"no teacher named {name!r}; the recipe defines "
                            f"{', '.join(sorted(self.e.teachers)) or 'none'}")
        endpoints = [self._endpoint_for(name, cfg, label, sub)
                     for label, sub in self._fleet(name, cfg)]
        t = _Teacher(name=name, cfg=cfg, endpoints=endpoints,
                     queue=asyncio.Queue(maxsize=2 * sum(ep.limit for ep in endpoints)),
                     native=cfg.native_n and all(getattr(ep.backend, "supports_n", False)
                                                 for ep in endpoints),
                     avg_completion=float(min(cfg.sampling.max_tokens, 1024)))
        self.teachers[name] = t
        self.workers += [asyncio.create_task(self._worker(t)) for _ in range(t.n_workers)]
        return t

    def _fleet(self, name: str, cfg: TeacherConfig) -> list[tuple[str, TeacherConfig | None]]:
        """(ledger label, one-server config) per endpoint; config None: the given backend."""
        given = self.e._given_backends.get(name)
        if given is not None:
            return [(getattr(given, "name", name), None)]
        if not cfg.urls():
            return [(cfg.backend, cfg)]  # a local model or a replay file: one "endpoint"
        return [(_label(ep.url), cfg.for_endpoint(ep)) for ep in cfg.fleet()]

    def _endpoint_for(self, name: str, cfg: TeacherConfig, label: str,
                      sub: TeacherConfig | None) -> _Endpoint:
        if sub is None:
            backend, sub = self.e._given_backends[name], cfg
        else:
            backend = make_backend(sub, self.e.images, name=name)
            self._owned.append(backend)
        return _Endpoint(label=label, backend=backend, limit=sub.max_in_flight,
                         limiter=RateLimiter(sub.requests_per_minute, sub.tokens_per_minute,
                                             clock=self.e.clock, sleep=self.e.sleep))

    def _ledger(self, teacher: str) -> dict[str, Any]:
        return self.res.by_teacher.setdefault(teacher, {
            "samples": 0, "cached": 0, "failures": 0, "prompt_tokens": 0,
            "completion_tokens": 0, "cost_usd": 0.0, "spend_usd": 0.0, "requests": 0})

    # ------------------------------------------------------------------ producer
    async def execute(self, requests: Iterable[GenRequest]) -> None:
        it = requests if isinstance(requests, AsyncIterator) else None
        try:
            if it is not None:
                async for req in it:
                    await self._admit(req)
            else:
                for ordinal, req in enumerate(requests):
                    await self._admit(req, ordinal)
        except (asyncio.CancelledError, KeyboardInterrupt):
            # Interrupted: stop at once; answers already received are in the cache.
            self.stop_reason = self.stop_reason or "interrupted"
            for w in self.workers:
                w.cancel()
            await asyncio.gather(*self.workers, return_exceptions=True)
            self._flush_cache()
            raise
        except BaseException:
            self.stop_reason = self.stop_reason or "error"  # queued work is skipped
            self._wake_all()
            await self._drain()
            raise
        await self._drain()
        self._flush(final=True)
        if self.fatal is not None:
            raise self.fatal

    async def _drain(self) -> None:
        """Let the workers finish the calls in flight, then stop them."""
        for t in self.teachers.values():
            for _ in range(t.n_workers):
                await t.queue.put(None)
        if self.workers:
            await asyncio.gather(*self.workers)
        self._flush_cache()

    async def _admit(self, req: GenRequest, ordinal: int = 0) -> None:
        t = self._teacher(req.teacher)
        cfg = t.cfg
        sampling = req.sampling or cfg.sampling
        base = base_key(cfg.backend, cfg.model, sampling, req.messages, image_refs(req.messages))
        keys = [sample_key(base, i) for i in range(req.n)]
        hits = self.cache.get_many(keys, item_id=req.item_id) if self.cache is not None else {}
        led = self._ledger(t.name)
        done = 0
        for i, k in enumerate(keys):
            rec = hits.get(k)
            if rec is None:
                continue
            cost = _cost(cfg.price, rec.get("prompt_billed", rec.get("prompt_tokens", 0)),
                         rec.get("completion_tokens", 0))
            self._emit(ordinal, req, t, i, k, rec, cost)
            self.res.cached += 1
            led["cached"] += 1
            done += 1
        if done and self.bar:
            self.bar.advance(done, self.res.spend_usd, self.res.failures)
        missing = [i for i in range(req.n) if keys[i] not in hits]
        if not missing:
            return
        est = _prompt_estimate(req.messages)
        groups = [missing] if t.native else [[i] for i in missing]
        for g in groups:
            if self.stop_reason is not None or t.tripped:
                self.res.not_launched += len(g)
                continue
            await t.queue.put(_Unit(ordinal, req, sampling, base, g, est))

    # ------------------------------------------------------------------ workers
    def _fits_budget(self, estimate: float) -> bool:
        budget = self.e.budget_usd
        return budget is None or self.res.spend_usd + self.reserved + estimate <= budget + 1e-12

    def _estimate(self, t: _Teacher, unit: _Unit) -> float:
        # The most this unit can cost: its prompt and the longest answer the sampling allows.
        # Reserving the worst case keeps the committed spend under the cap; what a call did
        # not use goes back to the pool the moment it returns.
        return _cost(t.cfg.price, unit.prompt_estimate,
                     unit.sampling.max_tokens * len(unit.indices))

    async def _reserve(self, t: _Teacher, unit: _Unit) -> float | None:
        """Reserve this unit's worst-case cost; wait while calls in flight may free enough.

        None when the budget cannot take it even with nothing in flight (the run stops).
        """
        estimate = self._estimate(t, unit)
        if self.e.budget_usd is not None:
            async with self._budget_cond:
                await self._budget_cond.wait_for(
                    lambda: self._fits_budget(estimate) or self._calls_in_flight == 0
                    or self.stop_reason is not None)
                if self.stop_reason is None and not self._fits_budget(estimate):
                    self.stop_reason = "budget"
                    log.warning("budget of $%.4f reached ($%.4f spent); no new requests are "
                                "launched", self.e.budget_usd, self.res.spend_usd)
        if self.stop_reason is not None or t.tripped:
            return None
        self.reserved += estimate
        self._calls_in_flight += 1
        return estimate

    async def _release(self, reservation: float) -> None:
        self.reserved -= reservation
        self._calls_in_flight -= 1
        if self.e.budget_usd is not None:
            async with self._budget_cond:
                self._budget_cond.notify_all()

    async def _worker(self, t: _Teacher) -> None:
        while True:
            unit = await t.queue.get()
            if unit is None:
                return
            reservation = None
            if self.stop_reason is None and not t.tripped:
                reservation = await self._reserve(t, unit)
            if reservation is None:
                self.res.not_launched += len(unit.indices)
                continue
            try:
                await self._fetch(t, unit)
                if self._cache_buf:
                    # Let the answers of this pass commit together before the next launch.
                    await asyncio.sleep(0)
            except Exception as e:  # noqa: BLE001 - a bug in one call must not sink the run
                msg = self.e.redact(f"{type(e).__name__}: {e}")
                log.error("teacher %s, item %s: unexpected error: %s", t.name,
                          unit.req.item_id, msg)
                self._fail(t, unit, unit.indices, f"unexpected error: {msg}")
            finally:
                await self._release(reservation)

    # ------------------------------------------------------------------ endpoints
    def _pick(self, t: _Teacher, avoid: set[_Endpoint]
              ) -> tuple[_Endpoint | None, bool, float | None]:
        """Take a slot on the best endpoint now: (endpoint or None, all down?, wake-up time).

        Best: among healthy endpoints whose limiter is not paused by a 429 (leaving out
        `avoid`, those that just failed this call, while there are others), a cooled-down
        endpoint that is due its probe, else the one with the lowest in-flight / limit.
        Only when no such endpoint exists at all does a call go to a paused one (it waits
        out the pause in that limiter); full endpoints mean waiting for a slot there.
        """
        now = self.e.clock()
        eps = t.endpoints
        k = len(eps)
        start = t.rr
        best: _Endpoint | None = None
        best_load = 2.0
        usable = 0
        fallback: _Endpoint | None = None  # the least loaded of the avoided ones
        fallback_load = 2.0
        wake: float | None = None
        any_healthy = False
        for j in range(k):
            ep = eps[(start + j) % k]
            if ep.down_until is None:
                any_healthy = True
                load = ep.in_flight / ep.limit
            elif ep.down_until > now or ep.probing:
                if ep.down_until > now:
                    wake = ep.down_until if wake is None else min(wake, ep.down_until)
                continue
            else:
                load = -1.0  # its cool-down is over: the next call is its probe
            resume = ep.limiter.paused_until
            if resume > now:
                wake = resume if wake is None else min(wake, resume)
                continue
            if ep in avoid:
                if load < fallback_load and ep.in_flight < ep.limit:
                    fallback, fallback_load = ep, load
                continue
            usable += 1
            if load < best_load and ep.in_flight < ep.limit:
                best, best_load = ep, load
        if best is None and usable == 0:
            best = fallback  # only endpoints that failed this call are left: try one again
        if best is None and usable == 0 and fallback is None:
            # Every healthy endpoint is paused: the one that resumes first, if it has room.
            paused = [ep for ep in eps if ep.down_until is None and ep.in_flight < ep.limit]
            if paused:
                best = min(paused, key=lambda ep: ep.limiter.paused_until)
        if best is None:
            return None, not any_healthy, wake
        t.rr = (start + 1) % k
        best.in_flight += 1
        if best.down_until is not None:
            best.probing = True
        return best, False, None

    async def _slot(self, t: _Teacher, attempt: int, avoid: set[_Endpoint]
                    ) -> tuple[_Endpoint, bool] | str | None:
        """A slot on an endpoint and whether the call is a probe; an error text when every
        endpoint stayed down longer than this call's retry budget; None when the run ends."""
        cfg = t.cfg
        deadline: float | None = None
        waited_from = self.e.clock()
        while True:
            if self.stop_reason in ("auth", "cache", "error") or t.tripped:
                return None
            ep, all_down, wake = self._pick(t, avoid)
            if ep is not None:
                return ep, ep.down_until is not None
            now = self.e.clock()
            if all_down:
                # Wait for a cool-down to end (or a probe to answer) rather than spin, but no
                # longer than the backoff the call's remaining retries would have slept.
                if deadline is None:
                    deadline = now + sum(min(cfg.backoff_max_s, cfg.backoff_base_s * 2 ** a)
                                         for a in range(attempt, cfg.max_retries))
                if now >= deadline:
                    n = len(t.endpoints)
                    which = f"every one of the {n} endpoints" if n > 1 else "the endpoint"
                    return (f"{which} is down (last: {t.last_error}); waited "
                            f"{now - waited_from:.3g} s")
                wake = deadline if wake is None else min(wake, deadline)
            await self._wait_change(t, None if wake is None else wake - now)

    async def _wait_change(self, t: _Teacher, seconds: float | None) -> None:
        """Until a slot frees or an endpoint's health changes (or `seconds` pass)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        t.waiters.append(fut)
        if seconds is None:
            await fut  # cancelled with this task if the run is interrupted
            return
        timer = asyncio.ensure_future(self.e.sleep(max(0.0, seconds)))
        try:
            await asyncio.wait({fut, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            if not fut.done():
                fut.cancel()  # left in the queue; waking skips it

    def _wake(self, t: _Teacher, everyone: bool = False) -> None:
        waiters = t.waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                if not everyone:
                    return

    def _wake_all(self) -> None:
        for t in self.teachers.values():
            self._wake(t, everyone=True)

    def _health(self, t: _Teacher, ep: _Endpoint, probe: bool, error: BackendError | None) -> None:
        """Track whether `ep` answers: a run of failures takes it out for a cool-down."""
        if error is None or (not error.unhealthy and error.status is not None):
            ep.strikes = ep.downs = 0
            if ep.down_until is not None:  # it answered (an HTTP status is an answer)
                log.warning("teacher %s: endpoint %s answers again", t.name, ep.label)
                ep.down_until = None
                self._wake(t, everyone=True)
            return
        if not error.unhealthy:
            return
        ep.strikes += 1
        t.last_error = f"{ep.label}: {self.e.redact(error.message)}"
        # Calls sent before it went down fail late; only a failed probe (or a fresh run of
        # failures) starts a new, longer cool-down.
        if probe or (ep.down_until is None and ep.strikes >= DOWN_AFTER):
            ep.downs += 1
            ep.times_down += 1
            cool = min(t.cfg.backoff_max_s, t.cfg.backoff_base_s * 2 ** (ep.downs - 1))
            ep.down_until = self.e.clock() + cool
            log.warning("teacher %s: endpoint %s is down (%s); probing it again in %.3g s",
                        t.name, ep.label, self.e.redact(error.message), cool)

    def _free_slot(self, t: _Teacher, ep: _Endpoint, probe: bool) -> None:
        ep.in_flight -= 1
        if probe:
            ep.probing = False
        self._wake(t, everyone=probe)

    def _fail_over(self, t: _Teacher, tried: set[_Endpoint]) -> bool:
        """An endpoint this call has not failed on is healthy and not paused: the retry goes
        there at once. Once every one has failed it, the retry backs off as usual."""
        now = self.e.clock()
        return any(o not in tried and o.down_until is None and o.limiter.paused_until <= now
                   for o in t.endpoints)

    async def _back_off(self, t: _Teacher, ep: _Endpoint, tried: set[_Endpoint],
                        delay: float) -> None:
        tried.add(ep)
        if not self._fail_over(t, tried):
            await self.e.sleep(delay)
            tried.clear()
            tried.add(ep)  # after the wait, still rather not the endpoint that just failed

    async def _fetch(self, t: _Teacher, unit: _Unit) -> None:
        """Every attempt counts: each call that may have reached the server is in the ledger,
        and the calls for one sample never exceed 1 + max_retries, whichever endpoints
        they went to."""
        cfg = t.cfg
        req = unit.req
        led = self._ledger(t.name)
        pending = list(unit.indices)
        attempt = 0
        tried: set[_Endpoint] = set()  # endpoints this call failed on since its last backoff
        while pending:
            n = len(pending) if t.native else 1
            tokens_est = unit.prompt_estimate + int(t.avg_completion * n)
            slot = await self._slot(t, attempt, tried)
            if slot is None:  # the run is ending with an error
                self.res.not_launched += len(pending)
                return
            if isinstance(slot, str):
                self._fail(t, unit, pending, slot)
                return
            ep, probe = slot
            error: BackendError | None = None
            try:
                await ep.limiter.acquire(tokens_est)
                if self._cache_buf:
                    self._flush_cache()  # no launch while an answer is not yet committed
                if self.stop_reason in ("auth", "cache", "error") or t.tripped:
                    self.res.not_launched += len(pending)  # the run is ending with an error
                    return
                base_seed = unit.sampling.seed
                call = ChatRequest(messages=req.messages, model=cfg.model,
                                   sampling=unit.sampling, n=n,
                                   seed=None if base_seed is None else base_seed + pending[0],
                                   item_id=req.item_id, sample_indices=tuple(pending[:n]))
                self.res.requests_sent += 1
                led["requests"] += 1
                ep.requests += 1
                try:
                    resp = await ep.backend.complete(call)
                except BackendError as e:
                    error = e
                self._health(t, ep, probe, error)
            finally:
                self._free_slot(t, ep, probe)
            tries = attempt + 1
            if error is not None:
                ep.failures += 1
                msg = self.e.redact(error.message)
                if error.auth:
                    self.stop_reason = "auth"
                    self._wake_all()
                    env = cfg.api_key_env or "(none configured)"
                    self.fatal = UserError(
                        f"teacher {t.name!r}: the endpoint rejected the credentials ({msg}); "
                        f"check the API key in the environment variable {env}")
                    self._fail(t, unit, pending, msg)
                    return
                if not error.retryable or attempt >= cfg.max_retries:
                    self._fail(t, unit, pending, f"{msg} (after {tries} attempt"
                                                 f"{'s' if tries > 1 else ''})")
                    return
                delay = backoff_delay(attempt, cfg.backoff_base_s, cfg.backoff_max_s,
                                      error.retry_after, self.e._rng)
                if error.status == 429:  # every call to this endpoint waits, not just this one
                    ep.limiter.pause(delay)
                log.debug("teacher %s, item %s: %s from %s; retry %d in %.2fs", t.name,
                          req.item_id, msg, ep.label, attempt + 1, delay)
                attempt += 1
                await self._back_off(t, ep, tried, delay)
                continue
            ep.answered += 1
            ep.latency_total += resp.latency_s
            ep.limiter.correct_tokens(tokens_est, resp.prompt_tokens + resp.completion_tokens)
            asked = list(call.sample_indices)
            got = resp.completions[:len(asked)]
            usable = [(i, c) for i, c in zip(asked, got, strict=False)
                      if cfg.allow_empty or not _is_empty(c)]
            if usable:
                # An empty choice carries (almost) no tokens: the call's usage is shared
                # over the kept ones, so its cost is still fully counted.
                self._store(t, unit, [i for i, _ in usable], resp, [c for _, c in usable])
                done = {i for i, _ in usable}
                pending = [i for i in pending if i not in done]
                t.consecutive_failures = 0
            else:
                # Nothing usable came back, but the call was made and billed: charge it.
                ep.failures += 1
                self._charge_unusable(t, resp)
            if pending and len(usable) < len(asked):
                problem = "the response had no choices" if not got else (
                    "empty reply (content null or empty)")
                if attempt >= cfg.max_retries:
                    self._fail(t, unit, pending, f"{problem} (after {tries} attempt"
                                                 f"{'s' if tries > 1 else ''})")
                    return
                attempt += 1
                await self._back_off(t, ep, tried, backoff_delay(
                    attempt - 1, cfg.backoff_base_s, cfg.backoff_max_s, None, self.e._rng))

    # ------------------------------------------------------------------ results
    def _charge_unusable(self, t: _Teacher, resp: Any) -> None:
        """Spend of a call whose choices were all unusable (no generation carries it)."""
        cost = _cost(t.cfg.price, resp.prompt_tokens, resp.completion_tokens)
        self.res.spend_usd += cost
        self.res.cost_usd_total += cost
        led = self._ledger(t.name)
        led["spend_usd"] += cost
        led["cost_usd"] += cost

    def _store(self, t: _Teacher, unit: _Unit, indices: list[int], resp: Any,
               got: list[Any]) -> None:
        cfg = t.cfg
        k = len(got)
        per_choice = [c.completion_tokens for c in got]
        if all(isinstance(x, int) for x in per_choice):
            comp = list(per_choice)
        else:
            comp = _split_tokens(int(resp.completion_tokens), [c.text for c in got])
        prompt_billed = resp.prompt_tokens / k  # a prompt is billed once per call
        records = []
        spent = 0.0
        led = self._ledger(t.name)
        seed = unit.sampling.seed
        for idx, c, ct in zip(indices, got, comp, strict=True):
            rec = {"text": c.text, "reasoning": c.reasoning, "finish_reason": c.finish_reason,
                   "prompt_tokens": resp.prompt_tokens, "prompt_billed": prompt_billed,
                   "completion_tokens": ct, "latency_s": round(resp.latency_s, 4),
                   "seed": None if seed is None else seed + indices[0], "model": cfg.model}
            records.append((idx, sample_key(unit.base, idx), rec))
        if self.cache is not None:
            # Committed before any request is launched (see _launch_guard) and before the
            # event loop waits for anything: a kill at any moment loses at most the answers
            # of requests that were in flight. Answers that arrive in one pass of the event
            # loop share one transaction (one commit is ~0.1 ms of CPU: per answer, it was
            # the largest cost the engine itself added to a call).
            self._cache_buf.extend((key, rec) for _, key, rec in records)
            if self._flush_handle is None:
                self._flush_handle = asyncio.get_running_loop().call_soon(self._flush_soon)
        for idx, key, rec in records:
            cost = _cost(cfg.price, prompt_billed, rec["completion_tokens"])
            spent += cost
            self._emit(unit.ordinal, unit.req, t, idx, key, rec, cost)
        self.res.spend_usd += spent
        led["spend_usd"] += spent
        t.completions_seen += k
        t.avg_completion += (sum(comp) / k - t.avg_completion) * min(1.0, k / max(1, t.completions_seen))
        if self.bar:
            self.bar.advance(k, self.res.spend_usd, self.res.failures, fetched=k)

    def _flush_soon(self) -> None:
        self._flush_handle = None
        self._flush_cache()

    def _flush_cache(self) -> None:
        if not self._cache_buf or self.cache is None:
            return
        batch, self._cache_buf = self._cache_buf, []
        if self._cache_failed:
            return  # said once already; answers of calls still in flight are not stored
        try:
            self.cache.put_many(batch)  # one transaction: all of the batch or none of it
        except Exception as e:  # noqa: BLE001 - disk full, read-only folder, ...
            self._cache_failed = True  # said once, by the error this run ends with
            self.stop_reason = "cache"
            self._wake_all()
            self.fatal = UserError(
                f"cannot write the request cache at {self.cache.path}: {e}. Free disk space "
                "or make the folder writable (or set generate.cache_dir), then re-run: the "
                "cache holds every answer stored before this point, and nothing half-written")

    def _fail(self, t: _Teacher, unit: _Unit, indices: list[int], error: str) -> None:
        error = self.e.redact(error)
        log.warning("teacher %s, item %s, samples %s failed: %s", t.name, unit.req.item_id,
                    indices, error)
        for idx in indices:
            self._emit(unit.ordinal, unit.req, t, idx, sample_key(unit.base, idx), None, 0.0,
                       error=error)
        self.res.failures += len(indices)
        self._ledger(t.name)["failures"] += len(indices)
        t.consecutive_failures += 1
        if t.consecutive_failures >= BREAKER_FAILURES and t.tripped is None:
            t.tripped = error
            self._wake_all()
            self.fatal = UserError(
                f"teacher {t.name!r}: {BREAKER_FAILURES} requests in a row failed, the last "
                f"with: {error}; check base_url, the model name and the endpoint")
        if self.bar:
            self.bar.advance(len(indices), self.res.spend_usd, self.res.failures)

    def _emit(self, ordinal: int, req: GenRequest, t: _Teacher, idx: int, key: str,
              rec: Mapping[str, Any] | None, cost: float, error: str | None = None) -> None:
        rec = rec or {}
        g = Generation.model_construct(
            key=key, item_id=req.item_id, source=req.source, teacher=t.name,
            model=t.cfg.model, template=req.template, template_hash=req.template_hash,
            sample_index=idx, seed=rec.get("seed"), text=rec.get("text"),
            reasoning=rec.get("reasoning"), finish_reason=rec.get("finish_reason"),
            prompt_tokens=int(rec.get("prompt_tokens", 0)),
            completion_tokens=int(rec.get("completion_tokens", 0)),
            latency_s=float(rec.get("latency_s", 0.0)), cost_usd=cost, forced_end=False,
            error=error)
        self.res.samples += 1
        self.res.cost_usd_total += cost
        led = self._ledger(t.name)
        led["samples"] += 1
        led["prompt_tokens"] += g.prompt_tokens
        led["completion_tokens"] += g.completion_tokens
        led["cost_usd"] += cost
        if self.sink is None:
            self.collected.append((ordinal, idx, g))
        else:
            self.buffer.append(g)
            if len(self.buffer) >= SINK_BATCH:
                self._flush()

    def _flush(self, final: bool = False) -> None:
        if self.sink is not None and self.buffer:
            batch, self.buffer = self.buffer, []
            self.sink(batch)

    async def shutdown(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._flush_cache()
        for w in self.workers:
            if not w.done():
                w.cancel()
        for b in self._owned:
            try:
                await b.aclose()
            except Exception as e:  # noqa: BLE001 - closing must not hide the real outcome
                log.debug("closing backend: %s", self.e.redact(str(e)))
        if self._own_cache and self.cache is not None:
            self.cache.close()

    def result(self) -> EngineResult:
        r = self.res
        r.stopped = self.stop_reason
        r.complete = self.stop_reason is None and self.fatal is None
        if self.sink is None:
            self.collected.sort(key=lambda x: (x[0], x[1]))
            r.generations = [g for _, _, g in self.collected]
        for t in self.teachers.values():
            # Where the calls went: the spread over a fleet, each endpoint's failures, latency.
            self._ledger(t.name)["endpoints"] = {ep.label: ep.counts() for ep in t.endpoints}
        for led in r.by_teacher.values():
            led["cost_usd"] = round(led["cost_usd"], 8)
            led["spend_usd"] = round(led["spend_usd"], 8)
        return r
