"""Fault scenarios of the server: what a long run against a server meets, injected and counted.

Each scenario runs :class:`~skllmprob.LogprobClassifier` through its public API
(``LogprobClassifier(model, base_url=..., cache=path)``) against the stub server
(:class:`~skllmprob.testing.OpenAIStub`), injects faults, and returns a
``ScenarioResult`` counted from the outside (see tests/fault_tools.py): by the
server (requests, answers per prompt, their order), by reading the cache file with
:mod:`sqlite3` (entries, undecodable rows, ``PRAGMA integrity_check``) and by
comparing the final probabilities with an uninterrupted run of the same model.

- :func:`mixed_faults`: 429 with ``Retry-After`` on a share of all requests, a 500
  once for some texts, a timeout once for others.
- :func:`server_goes_away`: the server process is killed mid-run (``SIGKILL``), then
  restarted on the same port, and the call is made again.

The faults of the clients (killed processes, a shared cache file) are in
tests/fault_clients.py. ``tests/test_reliability.py`` asserts on these results;
``benchmarks/faults.py`` prints them as a table (it puts tests/ on ``sys.path``).

Examples
--------
>>> r = mixed_faults(n=40, rate_429=0.1, rate_500=0.05, rate_timeout=0.0, seed=1)
>>> r.results, r.lost, r.resent, r.corrupt, r.requests == 40 + r.retries
(40, 0, 0, 0, True)
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
import threading
import time
from collections import Counter

from fault_tools import (
    ScenarioResult,
    StubProcess,
    audit_cache,
    classifier,
    lost_rows,
    one_line,
    reference_proba,
    successes_of,
    synthetic_texts,
    tmp_cache,
)

from skllmprob.backends import Query
from skllmprob.cache import KeyBuilder
from skllmprob.testing import OpenAIStub

__all__ = ["mixed_faults", "server_goes_away"]


def mixed_faults(
    n: int = 2000,
    *,
    rate_429: float = 0.05,
    rate_500: float = 0.02,
    rate_timeout: float = 0.01,
    retry_after: float = 0.02,
    timeout: float = 1.0,
    max_concurrency: int = 8,
    max_retries: int = 5,
    latency: float = 0.0,
    seed: int = 0,
    cache: str | None = None,
) -> ScenarioResult:
    """One ``predict_proba`` over ``n`` texts while the server answers a share
    ``rate_429`` of *all* requests with 429 (``Retry-After``), a share ``rate_500`` of
    the texts with a 500 once, and a share ``rate_timeout`` of the texts not at all
    once (the client times out after ``timeout`` seconds and retries).

    ``resent`` counts texts that were requested after the server had answered them,
    from the order of the requests the server saw; ``details["second_call_requests"]``
    is what the same call sends again (0: all came from the cache).
    """
    texts = synthetic_texts(n, seed)
    rng = random.Random(seed)
    chosen = rng.sample(range(n), round(n * (rate_500 + rate_timeout)))
    n_500 = round(n * rate_500)
    path = tmp_cache(cache)
    result = ScenarioResult("mixed faults", n)
    with OpenAIStub(latency=latency, seed=seed) as stub:
        if rate_429:
            stub.add_fault("429", probability=rate_429, times=None, retry_after=retry_after)
        for k, i in enumerate(chosen):
            if k < n_500:
                stub.add_fault("500", match=texts[i], retry_after=retry_after)
            else:  # held until the stub stops: the client must time out and retry
                stub.add_fault("hang", match=texts[i], hang=3600.0)
        clf = classifier(
            stub.base_url,
            path,
            timeout=timeout,
            max_concurrency=max_concurrency,
            max_retries=max_retries,
        )
        t0 = time.perf_counter()
        proba = None
        try:
            proba = clf.predict_proba(texts)
        except Exception as e:
            result.errors.append(one_line(e))
        result.seconds = time.perf_counter() - t0
        first = stub.requests
        with contextlib.suppress(Exception):
            clf.predict_proba(texts)
        result.details["second_call_requests"] = stub.requests - first
        log = list(stub.log)[:first]
        # Requests still held by a "hang" fault have no status yet (the client
        # timed out on them); the stub gives them one when it stops.
        statuses = Counter(e.get("status", "timeout") for e in log)
        successes = dict(stub.prompt_successes)
    # Order of the requests per prompt: nothing may arrive after its 200.
    by_prompt: dict[str, list] = {}
    for entry in log:
        body = entry["body"]
        prompt = body["messages"][-1]["content"] if "messages" in body else body["prompt"]
        by_prompt.setdefault(prompt, []).append(entry)
    after_answer = 0
    for entries in by_prompt.values():
        ok = [e["time"] for e in entries if e.get("status") == 200]
        if ok:
            after_answer += sum(e["time"] > min(ok) for e in entries)
    answers, extra = successes_of(successes)
    result.injected = {
        "429": statuses.get(429, 0),
        "500": statuses.get(500, 0),
        "timeout": statuses.get("timeout", 0),
    }
    result.requests = first
    result.retries = first - answers
    result.resent = max(after_answer, extra)
    result.results = 0 if proba is None else len(proba)
    result.lost = lost_rows(proba, reference_proba(texts, seed))
    result.corrupt = audit_cache(path).corrupt
    result.details.update(
        {
            "statuses": {str(k): v for k, v in statuses.items()},
            "texts_with_a_500": n_500,
            "texts_with_a_timeout": len(chosen) - n_500,
            "timeout": timeout,
            "max_retries": max_retries,
            "max_concurrency": max_concurrency,
            "requests_after_their_answer": after_answer,
        }
    )
    return result


def server_goes_away(
    n: int = 600,
    *,
    kill_at: float = 0.4,
    latency: float = 0.002,
    max_concurrency: int = 4,
    max_retries: int = 2,
    timeout: float = 5.0,
    seed: int = 0,
    cache: str | None = None,
) -> ScenarioResult:
    """The server process is killed (``SIGKILL``) once it has received ``kill_at``
    of the ``n`` requests; the call must fail with one clear error, with what
    completed in the cache. The server is started again on the same port and the
    call is made again: it must send only the texts that are not in the cache.

    ``details`` holds the error, the entries in the cache after the failure, the
    requests of the rerun and how many of them were for texts already cached.
    """
    texts = synthetic_texts(n, seed)
    path = tmp_cache(cache)
    result = ScenarioResult("server goes away", n, injected={"server SIGKILL": 1})
    server = StubProcess(latency=latency).start()
    try:
        clf = classifier(
            server.base_url,
            path,
            max_concurrency=max_concurrency,
            max_retries=max_retries,
            timeout=timeout,
        )
        killed = threading.Event()
        seen = {"requests": 0, "successes": {}, "killed_at": None}

        def killer() -> None:
            while not killed.is_set():
                stats = server.stats()
                if stats["requests"] >= kill_at * n:
                    seen["requests"] = stats["requests"]
                    seen["successes"] = stats["prompt_successes"]
                    server.kill()
                    seen["killed_at"] = time.perf_counter()
                    killed.set()
                    return
                time.sleep(0.01)

        watcher = threading.Thread(target=killer, daemon=True)
        watcher.start()
        t0 = time.perf_counter()
        errors: list[BaseException] = []
        try:
            clf.predict_proba(texts)
        except Exception as e:
            errors.append(e)
        failed_at = time.perf_counter()
        failed_after = failed_at - t0
        killed.set()
        watcher.join()
        result.errors = [one_line(e) for e in errors]
        after_failure = audit_cache(path)
        # Which texts does the cache hold now? The keys are computed as the
        # classifier computes them.
        backend = clf.backend_
        keyer = KeyBuilder(
            backend.identity(), backend.request_settings(Query(top_logprobs=clf.top_logprobs))
        )
        prompts = clf.render_prompts(texts)
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        stored = {r[0] for r in conn.execute("SELECT key FROM completions")}
        conn.close()
        cached = {p for p in prompts if keyer(p) in stored}

        server.start()  # same port, same base URL, fresh counters
        t1 = time.perf_counter()
        proba = None
        try:
            again = classifier(server.base_url, path, max_concurrency=max_concurrency)
            proba = again.predict_proba(texts)
        except Exception as e:
            result.errors.append(one_line(e))
        rerun_seconds = time.perf_counter() - t1
        rerun = server.stats()
    finally:
        server.stop()
    rerun_prompts = rerun["prompt_requests"]
    answers_before, extra_before = successes_of(seen["successes"])
    result.requests = seen["requests"] + rerun["requests"]
    result.retries = result.requests - answers_before - sum(rerun["prompt_successes"].values())
    result.resent = len(cached & set(rerun_prompts)) + extra_before
    result.results = 0 if proba is None else len(proba)
    result.lost = lost_rows(proba, reference_proba(texts))
    result.corrupt = max(after_failure.corrupt, audit_cache(path).corrupt)
    result.seconds = failed_after + rerun_seconds
    first = errors[0] if errors else None
    result.details = {
        "errors_raised_by_the_failing_call": len(errors),
        "error_type": type(first).__name__ if first else None,
        "error_message": str(first) if first else None,
        "n_completed_reported": getattr(first, "n_completed", None),
        "n_failed_reported": getattr(first, "n_failed", None),
        "requests_before_kill": seen["requests"],
        "seconds_to_fail": failed_after,
        "seconds_from_kill_to_error": (
            failed_at - seen["killed_at"] if seen["killed_at"] is not None else None
        ),
        "cache_entries_after_failure": after_failure.entries,
        "texts_cached_after_failure": len(cached),
        "rerun_requests": rerun["requests"],
        "rerun_texts_already_cached": len(cached & set(rerun_prompts)),
        "max_retries": max_retries,
        "max_concurrency": max_concurrency,
    }
    return result
