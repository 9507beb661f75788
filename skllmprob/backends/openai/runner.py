"""Running the requests of one call: a process-wide event loop on a daemon thread,
per-settings semaphores and rate limiters, and the workers that send the prompts.

The SDK client does the retrying (``max_retries``, ``timeout``, ``Retry-After``);
nothing here retries. A worker stops sending when the call has failed for good.
"""

from __future__ import annotations

import asyncio
import atexit
import queue
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ...exceptions import BackendError
from ..base import Completion, OnResult, shared_resource
from .errors import _Failure, _Fatal
from .parsing import (
    _fast_loads,
    _loads_keeping_duplicates,
    parse_chat_response,
    parse_completions_response,
)


class _LoopThread:
    """An asyncio event loop running forever on a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.semaphores: dict[tuple, asyncio.Semaphore] = {}
        self.limiters: dict[tuple, _RateLimiter] = {}
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.call_soon(ready.set)
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name="skllmprob-openai-loop", daemon=True)
        self.thread.start()
        ready.wait()
        atexit.register(self.stop)

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)

    # Used from the loop's thread only.
    def semaphore(self, key: tuple, n: int) -> asyncio.Semaphore:
        sem = self.semaphores.get(key)
        if sem is None:
            sem = self.semaphores[key] = asyncio.Semaphore(n)
        return sem

    def limiter(self, key: tuple, rpm: float | None, tpm: float | None) -> _RateLimiter:
        lim = self.limiters.get(key)
        if lim is None:
            lim = self.limiters[key] = _RateLimiter(rpm, tpm)
        return lim


def _loop_thread() -> _LoopThread:
    return shared_resource(("openai-loop",), _LoopThread)


class _Bucket:
    """A token bucket: ``rate`` units per second, bursts up to ``capacity``."""

    def __init__(self, per_minute: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)  # one second's worth
        self.level = self.capacity
        self.stamp = time.monotonic()

    async def take(self, amount: float) -> None:
        amount = min(float(amount), self.capacity)
        while True:
            now = time.monotonic()
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.level >= amount:
                self.level -= amount
                return
            await asyncio.sleep((amount - self.level) / self.rate)


class _RateLimiter:
    """Requests-per-minute and tokens-per-minute pacing (one second's burst)."""

    def __init__(self, rpm: float | None, tpm: float | None) -> None:
        self.requests = _Bucket(rpm) if rpm else None
        self.tokens = _Bucket(tpm) if tpm else None

    async def acquire(self, tokens: int, requests: int = 1) -> None:
        """Wait for ``requests`` requests of ``tokens`` tokens each."""
        for _ in range(requests):
            if self.requests is not None:
                await self.requests.take(1)
            if self.tokens is not None:
                await self.tokens.take(tokens)


@dataclass
class _Plan:
    """Everything constant across the requests of one call."""

    path: str
    chat: bool
    body: dict
    messages: tuple
    secret: str | None
    response_type: type
    semaphore_key: tuple
    limiter_key: tuple | None
    rpm: float | None
    tpm: float | None
    max_concurrency: int
    token_overhead: int
    breaker: int
    #: ``request(client, prompt)`` sends one prompt and parses its answer, for
    #: endpoints other than chat and completions (``None``: those two).
    request: Callable[[Any, str], Awaitable[Completion]] | None = None
    #: The HTTP requests ``request`` sends per prompt (each paced as one).
    requests_per_item: int = 1


async def post_raw(client: Any, path: str, body: dict, response_type: type) -> Any:
    """POST ``body`` to ``path`` (relative to the client's base URL) with the
    client's key and retries, returning the unparsed HTTP response."""
    return await client.post(
        path, cast_to=response_type, body=body, options={"security": {"bearer_auth": True}}
    )


def pacing_fields(settings: Any, base: tuple) -> dict[str, Any]:
    """The concurrency and pacing fields of a :class:`_Plan` for ``settings`` (with
    ``model``, ``max_concurrency``, ``requests_per_minute``, ``tokens_per_minute``);
    ``base`` identifies the server and key the limits are shared by."""
    rpm, tpm = settings.requests_per_minute, settings.tokens_per_minute
    return {
        "semaphore_key": (*base, settings.model, settings.max_concurrency),
        "limiter_key": (*base, settings.model, rpm, tpm) if rpm or tpm else None,
        "rpm": rpm,
        "tpm": tpm,
        "max_concurrency": settings.max_concurrency,
    }


#: Turns the exception of one request into a failure of it or a fatal error.
Classify = Callable[[BaseException], "_Failure | _Fatal"]


@dataclass
class Outcome:
    """What one call produced, once every request is finished."""

    answered: int
    empty: list
    failures: list
    fatal: _Fatal | None


class _Call:
    """The workers of one call, on the loop's thread. Successes are put on
    ``channel`` as they arrive, then ``None`` when the call is over."""

    def __init__(self, plan: _Plan, client: Any, prompts: list, classify: Classify) -> None:
        self.plan = plan
        self.client = client
        self.prompts = prompts
        self.classify = classify
        self.channel: queue.SimpleQueue = queue.SimpleQueue()
        self.parse = parse_chat_response if plan.chat else parse_completions_response
        self.loads = _fast_loads if plan.chat else _loads_keeping_duplicates
        self.pending = iter(range(len(prompts)))
        self.failures: list[_Failure] = []
        self.unsent: list[int] = []
        self.fatal: _Fatal | None = None
        self.stopped = False
        self.streak = 0
        self.ok = 0
        self.workers: list[asyncio.Task] = []

    async def run(self, runner: _LoopThread) -> tuple[list[_Failure], _Fatal | None]:
        plan = self.plan
        semaphore = runner.semaphore(plan.semaphore_key, plan.max_concurrency)
        limiter = None
        if plan.limiter_key is not None:
            limiter = runner.limiter(plan.limiter_key, plan.rpm, plan.tpm)
        try:
            n = min(len(self.prompts), plan.max_concurrency)
            self.workers.extend(
                asyncio.ensure_future(self.worker(semaphore, limiter)) for _ in range(n)
            )
            try:
                await asyncio.wait(self.workers)
            except asyncio.CancelledError:
                for w in self.workers:
                    w.cancel()
                await asyncio.wait(self.workers)
                raise
            if self.stopped and self.fatal is None:
                # The call was stopped: the rest are not sent.
                last = self.failures[-1]
                note = BackendError("not sent: the call was stopped after failures")
                for i in [*self.unsent, *self.pending]:
                    self.failures.append(
                        _Failure(i, note, last.reason, last.connection, sent=False)
                    )
            return self.failures, self.fatal
        finally:
            self.channel.put(None)

    def _body(self, prompt: str) -> dict:
        body = dict(self.plan.body)
        if self.plan.chat:
            body["messages"] = [*self.plan.messages, {"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        return body

    async def worker(self, semaphore: asyncio.Semaphore, limiter: _RateLimiter | None) -> None:
        plan = self.plan
        while self.fatal is None and not self.stopped:
            i = next(self.pending, None)
            if i is None:
                return
            prompt = self.prompts[i]
            if limiter is not None:
                tokens = len(prompt) // 4 + plan.token_overhead
                await limiter.acquire(tokens, plan.requests_per_item)
            body = None if plan.request is not None else self._body(prompt)
            async with semaphore:
                if self.fatal is not None or self.stopped:
                    self.unsent.append(i)
                    return
                try:
                    completion = await self._send(prompt, body)
                except asyncio.CancelledError:
                    raise
                except BaseException as e:
                    self._failed(i, self.classify(e))
                    continue
            self.streak = 0
            self.ok += 1
            self.channel.put((i, completion))

    async def _send(self, prompt: str, body: dict | None) -> Completion:
        plan = self.plan
        if plan.request is not None:
            return await plan.request(self.client, prompt)
        response = await post_raw(self.client, plan.path, body, plan.response_type)
        return self.parse(self.loads(response.content))

    def _failed(self, i: int, outcome: _Failure | _Fatal) -> None:
        if isinstance(outcome, _Fatal):
            if self.fatal is None:
                self.fatal = outcome
                for w in self.workers:
                    if w is not asyncio.current_task():
                        w.cancel()
            return
        outcome.index = i
        self.failures.append(outcome)
        self.streak += 1
        # The rest are not sent after too many failures in a row, after a request
        # that still cannot connect once its retries are spent (the server is down
        # or gone: the others would wait as long and fail too), or when the first
        # answers are not completions at all (a wrong base_url).
        if (
            self.streak >= self.plan.breaker
            or outcome.connection
            or (outcome.malformed and not self.ok)
        ):
            self.stopped = True


def run_requests(
    plan: _Plan, client: Any, prompts: list, classify: Classify, on_result: OnResult
) -> Outcome:
    """Send ``prompts`` on the shared loop and report each answered one through
    ``on_result`` as it arrives; answers without tokens are returned, not reported.

    If the caller is interrupted (or ``on_result`` raises), the call is cancelled,
    what had already arrived is reported, and the exception goes on.
    """
    runner = _loop_thread()
    call = _Call(plan, client, prompts, classify)
    future = asyncio.run_coroutine_threadsafe(call.run(runner), runner.loop)
    outcome = Outcome(0, [], [], None)
    finished = False
    try:
        finished = _drain(call.channel, outcome, on_result, None)
        outcome.failures, outcome.fatal = future.result()
    except BaseException:
        future.cancel()
        if not finished:  # report what had already arrived
            _drain(call.channel, outcome, on_result, time.monotonic() + 5.0)
        if outcome.answered:
            for item in outcome.empty:
                on_result(*item)
        raise
    return outcome


def _drain(
    channel: queue.SimpleQueue, outcome: Outcome, on_result: OnResult, deadline: float | None
) -> bool:
    """Report the answers on ``channel`` until its end (``True``) or ``deadline``."""
    while True:
        if deadline is None:
            item = channel.get()
        else:
            try:
                item = channel.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return False
        if item is None:
            return True
        completion: Completion = item[1]
        if completion.tokens:
            outcome.answered += 1
            on_result(*item)
        else:
            outcome.empty.append(item)
