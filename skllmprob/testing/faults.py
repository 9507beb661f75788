"""Fault scenarios: what a long run against a server meets, injected and counted.

Each scenario runs :class:`~skllmprob.LogprobClassifier` through its public API
(``LogprobClassifier(model, base_url=..., cache=path)``) against the stub server
(:class:`~skllmprob.testing.OpenAIStub`), injects faults, and returns a
:class:`ScenarioResult` counted from the outside: by the server (requests, answers
per prompt, their order), by reading the cache file with :mod:`sqlite3` (entries,
undecodable rows, ``PRAGMA integrity_check``) and by comparing the final
probabilities with an uninterrupted run of the same model. The stub's answers are
those of :class:`~skllmprob.backends.DeterministicBackend`, so the uninterrupted run
is computed in-process, bit for bit.

- :func:`mixed_faults`: 429 with ``Retry-After`` on a share of all requests, a 500
  once for some texts, a timeout once for others.
- :func:`server_goes_away`: the server process is killed mid-run (``SIGKILL``), then
  restarted on the same port, and the call is made again.
- :func:`client_sigkills`: the classifying Python process is killed at random points
  of a long run, several times, then the run is finished.
- :func:`shared_cache`: several processes, each with several threads, classify
  overlapping texts with the same cache file.

``tests/test_reliability.py`` asserts on these results; ``benchmarks/faults.py``
prints them as a table.

Examples
--------
>>> r = mixed_faults(n=40, rate_429=0.1, rate_500=0.05, rate_timeout=0.0, seed=1)
>>> r.results, r.lost, r.resent, r.corrupt, r.requests == 40 + r.retries
(40, 0, 0, 0, True)
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CacheAudit",
    "ScenarioResult",
    "StubProcess",
    "audit_cache",
    "client_sigkills",
    "mixed_faults",
    "reference_proba",
    "server_goes_away",
    "shared_cache",
    "synthetic_texts",
]

LABELS = ["positive", "negative"]
MODEL = "stub-model"
_ROOT = str(Path(__file__).resolve().parents[2])  # the folder that holds skllmprob/

_POS = ["great", "wonderful", "brilliant", "fun", "superb", "moving", "excellent", "gem"]
_NEG = ["boring", "dull", "awful", "worst", "tedious", "poor", "stupid", "mess"]
_NOUNS = ["plot", "actors", "story", "ending", "music", "script", "camera", "pace"]


def synthetic_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct short reviews; no text is a substring of another's prompt.

    >>> synthetic_texts(2)
    ['review #00000#: the plot was great', 'review #00001#: the actors was dull']
    """
    rng = random.Random(seed)
    out = []
    for i in range(n):
        cue = (_POS if i % 2 == 0 else _NEG)[rng.randrange(8) if seed else i % 8]
        out.append(f"review #{i:05d}#: the {_NOUNS[i % 8]} was {cue}")
    return out


def reference_proba(texts: list[str], seed: int = 0) -> np.ndarray:
    """An uninterrupted run of the stub's model (the deterministic backend with the
    stub's ``seed``) in-process, without cache: what every scenario must end with,
    bit for bit."""
    from ..backends.deterministic import DeterministicBackend
    from ..classifier import LogprobClassifier

    clf = LogprobClassifier(
        labels=LABELS, backend=DeterministicBackend(seed=seed), cache=False, progress=False
    )
    return clf.fit(None, None).predict_proba(texts)


def _classifier(base_url: str, cache: str | bool, **kw):
    from ..classifier import LogprobClassifier

    kw.setdefault("progress", False)
    return LogprobClassifier(MODEL, labels=LABELS, base_url=base_url, cache=cache, **kw).fit(
        None, None
    )


# ------------------------------------------------------------------------------------
# Counting from the outside


@dataclass
class CacheAudit:
    """What a cache file holds, read with :mod:`sqlite3` and the cache's decoder.

    Attributes
    ----------
    entries : int
        Rows of the completions table.
    corrupt : int
        Rows that do not decode (plus 1 if ``PRAGMA integrity_check`` is not ok).
    integrity : str
        The result of ``PRAGMA integrity_check``.
    claims : int
        Claims left in the file (by killed processes, or in flight).
    """

    entries: int = 0
    corrupt: int = 0
    integrity: str = "missing"
    claims: int = 0


def audit_cache(path: str | os.PathLike) -> CacheAudit:
    """Open the cache file read-only with :mod:`sqlite3` and check every entry.

    A file that does not exist yet (a process killed before it made one) is an
    empty, healthy cache.
    """
    from ..cache import _DECODE_ERRORS, _decode

    path = Path(path)
    if not path.exists():
        return CacheAudit(integrity="ok (no file yet)")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60)
    try:
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        if "completions" not in tables:
            return CacheAudit(integrity=integrity, corrupt=int(integrity != "ok"))
        entries = corrupt = 0
        for data, text in conn.execute("SELECT data, tokens FROM completions"):
            entries += 1
            try:
                _decode(data, text)
            except _DECODE_ERRORS:
                corrupt += 1
        claims = conn.execute("SELECT COUNT(*) FROM claims").fetchone()[0]
    finally:
        conn.close()
    return CacheAudit(entries, corrupt + int(integrity != "ok"), integrity, claims)


@dataclass
class ScenarioResult:
    """What a scenario injected and what came out.

    Attributes
    ----------
    scenario : str
    texts : int
        Distinct texts classified.
    injected : dict
        The faults that fired, by kind (counted by the server or the scenario).
    requests : int
        Requests the server(s) received.
    retries : int
        Requests that got no answer the client kept: failed attempts that were
        retried (429, 500, timeouts, connections cut), or that were in flight when
        the server died.
    resent : int
        Texts the server had already answered and was asked for again. Must be 0,
        except after a ``SIGKILL`` of the client, which loses the answers it had
        received but not yet committed.
    results : int
        Texts with a result at the end.
    lost : int
        Texts whose final probabilities differ from an uninterrupted run, or that
        have none (must be 0).
    corrupt : int
        Unreadable cache entries, after every fault (must be 0).
    errors : list of str
        The errors the runs raised, one line each, in order.
    seconds : float
    details : dict
    """

    scenario: str
    texts: int
    injected: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    retries: int = 0
    resent: int = 0
    results: int = 0
    lost: int = 0
    corrupt: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _lost(proba: np.ndarray | None, reference: np.ndarray) -> int:
    if proba is None or proba.shape != reference.shape:
        return len(reference)
    return int((~(proba == reference).all(axis=1)).sum())


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


def _successes(counts: dict[str, int]) -> tuple[int, int]:
    """(answers, answers beyond the first per prompt)."""
    return sum(counts.values()), sum(max(0, n - 1) for n in counts.values())


def _tmp_cache(cache: str | None) -> str:
    if cache is not None:
        return str(cache)
    return os.path.join(tempfile.mkdtemp(prefix="skllmprob-faults-"), "completions.sqlite")


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = _ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


# ------------------------------------------------------------------------------------
# A stub server in its own process, to kill and restart


class StubProcess:
    """``python -m skllmprob.testing.openai_stub`` as a child process.

    Parameters
    ----------
    latency : float
        Seconds per answer.
    port : int
        0 picks a free port on the first start; later starts reuse it, so that the
        base URL (part of every cache key) stays the same.
    args : list of str
        More command-line arguments (e.g. ``["--fault", "429,probability=0.1"]``).
    """

    def __init__(self, *, latency: float = 0.0, port: int = 0, args: list[str] = ()) -> None:
        self.latency = latency
        self.port = port
        self.args = list(args)
        self.proc: subprocess.Popen | None = None
        self.base_url = ""

    def start(self) -> StubProcess:
        cmd = [sys.executable, "-m", "skllmprob.testing.openai_stub", "--port", str(self.port)]
        cmd += ["--latency", str(self.latency), *self.args]
        deadline = time.monotonic() + 30
        while True:
            self.proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=_child_env()
            )
            line = self.proc.stdout.readline().strip()
            if line.startswith("http://"):
                break
            self.proc.wait()  # the port is not free again yet
            if time.monotonic() > deadline:
                raise RuntimeError(f"the stub server did not start on port {self.port}")
            time.sleep(0.2)
        self.base_url = line
        self.port = int(line.rsplit(":", 1)[1].split("/", 1)[0])
        return self

    def stats(self) -> dict[str, Any]:
        url = self.base_url.removesuffix("/v1") + "/_stub/stats"
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.loads(r.read())

    def kill(self) -> None:
        """``SIGKILL``: connections are cut, nothing is answered any more."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> StubProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------------------------------------------------------
# The scenarios


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
    from .openai_stub import OpenAIStub

    texts = synthetic_texts(n, seed)
    rng = random.Random(seed)
    chosen = rng.sample(range(n), round(n * (rate_500 + rate_timeout)))
    n_500 = round(n * rate_500)
    path = _tmp_cache(cache)
    result = ScenarioResult("mixed faults", n)
    with OpenAIStub(latency=latency, seed=seed) as stub:
        if rate_429:
            stub.add_fault("429", probability=rate_429, times=None, retry_after=retry_after)
        for k, i in enumerate(chosen):
            if k < n_500:
                stub.add_fault("500", match=texts[i], retry_after=retry_after)
            else:  # held until the stub stops: the client must time out and retry
                stub.add_fault("hang", match=texts[i], hang=3600.0)
        clf = _classifier(
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
            result.errors.append(_one_line(e))
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
    answers, extra = _successes(successes)
    result.injected = {
        "429": statuses.get(429, 0),
        "500": statuses.get(500, 0),
        "timeout": statuses.get("timeout", 0),
    }
    result.requests = first
    result.retries = first - answers
    result.resent = max(after_answer, extra)
    result.results = 0 if proba is None else len(proba)
    result.lost = _lost(proba, reference_proba(texts, seed))
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
    from ..backends.base import Query
    from ..cache import KeyBuilder

    texts = synthetic_texts(n, seed)
    path = _tmp_cache(cache)
    result = ScenarioResult("server goes away", n, injected={"server SIGKILL": 1})
    server = StubProcess(latency=latency).start()
    try:
        clf = _classifier(
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
        result.errors = [_one_line(e) for e in errors]
        after_failure = audit_cache(path)
        # Which texts does the cache hold now? The keys are computed as the
        # classifier computes them.
        backend = clf._make_backend()
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
            again = _classifier(server.base_url, path, max_concurrency=max_concurrency)
            proba = again.predict_proba(texts)
        except Exception as e:
            result.errors.append(_one_line(e))
        rerun_seconds = time.perf_counter() - t1
        rerun = server.stats()
    finally:
        server.stop()
    rerun_prompts = rerun["prompt_requests"]
    answers_before, extra_before = _successes(seen["successes"])
    result.requests = seen["requests"] + rerun["requests"]
    result.retries = result.requests - answers_before - sum(rerun["prompt_successes"].values())
    result.resent = len(cached & set(rerun_prompts)) + extra_before
    result.results = 0 if proba is None else len(proba)
    result.lost = _lost(proba, reference_proba(texts))
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


_CHILD_RUN = textwrap.dedent(
    """
    import sys
    from skllmprob import LogprobClassifier
    from skllmprob.testing.faults import LABELS, MODEL, synthetic_texts
    path, base_url, n, seed, conc = sys.argv[1:6]
    texts = synthetic_texts(int(n), int(seed))
    clf = LogprobClassifier(MODEL, labels=LABELS, base_url=base_url, cache=path,
                            progress=False, max_concurrency=int(conc)).fit(None, None)
    clf.predict_proba(texts)
    """
)


def client_sigkills(
    n: int = 1000,
    *,
    kills: int = 5,
    latency: float = 0.002,
    max_concurrency: int = 8,
    seed: int = 0,
    cache: str | None = None,
) -> ScenarioResult:
    """A child process classifies ``n`` texts and is killed with ``SIGKILL`` at a
    random point, ``kills`` times (the first time at a random moment after it
    starts, possibly while it imports or opens the cache; later times after a random
    share of the remaining requests). After each kill the cache file is audited;
    then this process finishes the run and compares with an uninterrupted one.

    ``details["rounds"]`` lists each kill: when, requests sent, cache entries, claims
    left behind, and whether the child had already finished.
    """
    from .openai_stub import OpenAIStub

    texts = synthetic_texts(n, seed)
    path = _tmp_cache(cache)
    rng = random.Random(seed)
    result = ScenarioResult(f"client SIGKILL x{kills}", n, injected={"client SIGKILL": 0})
    rounds = []
    t0 = time.perf_counter()
    with OpenAIStub(latency=latency, seed=seed) as stub:
        for k in range(kills):
            before = audit_cache(path)
            remaining = n - before.entries
            start_requests = stub.requests
            proc = subprocess.Popen(
                [sys.executable, "-c", _CHILD_RUN, path, stub.base_url]
                + [str(v) for v in (n, seed, max_concurrency)],
                env=_child_env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            started = time.monotonic()
            if k == 0:
                delay = rng.uniform(0.0, 2.0)
                when = f"{delay:.2f} s after start"
                while time.monotonic() - started < delay and proc.poll() is None:
                    time.sleep(0.002)
            else:
                target = start_requests + max(1, int(remaining * rng.uniform(0.1, 0.6)))
                when = f"after {target - start_requests} requests"
                deadline = started + 120
                while stub.requests < target and proc.poll() is None:
                    if time.monotonic() > deadline:  # pragma: no cover - a stuck child
                        break
                    time.sleep(0.001)
            finished = proc.poll() is not None
            proc.send_signal(signal.SIGKILL)
            _, err = proc.communicate()
            if finished and proc.returncode != 0:
                result.errors.append(f"child exited with {proc.returncode}: {err[-500:]!r}")
            if not finished:
                result.injected["client SIGKILL"] += 1
            audit = audit_cache(path)
            result.corrupt = max(result.corrupt, audit.corrupt)
            rounds.append(
                {
                    "kill": when,
                    "finished_before_kill": finished,
                    "requests": stub.requests - start_requests,
                    "entries": audit.entries,
                    "claims_left": audit.claims,
                    "integrity": audit.integrity,
                    "corrupt": audit.corrupt,
                }
            )
        killed_requests = stub.requests
        proba = None
        try:
            clf = _classifier(stub.base_url, path, max_concurrency=max_concurrency)
            proba = clf.predict_proba(texts)
            final_requests = clf.usage_.last.requests
        except Exception as e:
            result.errors.append(_one_line(e))
            final_requests = None
        result.seconds = time.perf_counter() - t0
        requests = stub.requests
        successes = dict(stub.prompt_successes)
        # An uninterrupted run through the same server, without cache.
        uninterrupted = _classifier(stub.base_url, False).predict_proba(texts)
    answers, extra = _successes(successes)
    final = audit_cache(path)
    result.requests = requests
    result.retries = requests - answers
    result.resent = extra
    result.results = 0 if proba is None else len(proba)
    result.lost = max(_lost(proba, uninterrupted), _lost(proba, reference_proba(texts, seed)))
    result.corrupt = max(result.corrupt, final.corrupt)
    result.details = {
        "rounds": rounds,
        "requests_by_killed_processes": killed_requests,
        "final_run_requests": final_requests,
        "final_entries": final.entries,
        "final_claims": final.claims,
        "max_concurrency": max_concurrency,
    }
    return result


_CHILD_SHARED = textwrap.dedent(
    """
    import json, random, sys, threading
    from skllmprob import LogprobClassifier
    from skllmprob.testing.faults import LABELS, MODEL, synthetic_texts
    path, base_url, n, which, procs, threads, window, batch = sys.argv[1:9]
    n, which, procs, threads, window, batch = map(
        int, (n, which, procs, threads, window, batch))
    texts = synthetic_texts(n)
    clf = LogprobClassifier(MODEL, labels=LABELS, base_url=base_url, cache=path,
                            progress=False, max_concurrency=4).fit(None, None)
    out, errors = {}, []

    def work(t):
        worker = which * threads + t
        start = (worker * n) // (procs * threads)  # windows overlap their neighbours
        idx = [(start + j) % n for j in range(window)]
        random.Random(worker).shuffle(idx)
        try:
            for s in range(0, len(idx), batch):
                part = idx[s:s + batch]
                proba = clf.predict_proba([texts[i] for i in part])  # one shared clf
                for i, row in zip(part, proba.tolist()):
                    out.setdefault(i, []).append(row)
        except Exception as e:
            errors.append(repr(e))

    ts = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for t in ts: t.start()
    for t in ts: t.join()
    print(json.dumps({"rows": out, "errors": errors, "info": clf.cache_info().as_dict()}))
    """
)


def shared_cache(
    n: int = 800,
    *,
    processes: int = 2,
    threads: int = 4,
    window: int = 300,
    batch: int = 50,
    latency: float = 0.002,
    cache: str | None = None,
) -> ScenarioResult:
    """``processes`` processes, each with ``threads`` threads sharing one classifier,
    classify overlapping windows of ``window`` of ``n`` texts (each thread in its
    own order, ``batch`` texts per call) with the same cache file.

    Every row each thread got must equal the uninterrupted run; the server must have
    been asked for each text once (the cache's claims keep processes and threads
    from sending a text another is requesting); the file must hold every text, and
    a rerun here must send nothing.
    """
    from .openai_stub import OpenAIStub

    texts = synthetic_texts(n)
    path = _tmp_cache(cache)
    result = ScenarioResult(f"{processes} processes x {threads} threads", n)
    t0 = time.perf_counter()
    with OpenAIStub(latency=latency) as stub:
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _CHILD_SHARED, path, stub.base_url]
                + [str(v) for v in (n, w, processes, threads, window, batch)],
                env=_child_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for w in range(processes)
        ]
        outs = [p.communicate(timeout=600) for p in procs]
        result.seconds = time.perf_counter() - t0
        requests = stub.requests
        per_prompt = dict(stub.prompt_requests)
        successes = dict(stub.prompt_successes)
        rerun = _classifier(stub.base_url, path)
        rerun.predict_proba(texts)
        rerun_requests = stub.requests - requests
    reference = reference_proba(texts)
    rows_seen = Counter()
    mismatched = set()
    for p, (out, err) in zip(procs, outs, strict=True):
        if p.returncode != 0:
            result.errors.append(f"process exited with {p.returncode}: {err[-500:]}")
            continue
        data = json.loads(out.strip().splitlines()[-1])
        result.errors += data["errors"]
        for i, rows in data["rows"].items():
            for row in rows:
                rows_seen[int(i)] += 1
                if not np.array_equal(np.asarray(row), reference[int(i)]):
                    mismatched.add(int(i))
    covered = set(rows_seen)
    expected = {
        (((w * threads + t) * n) // (processes * threads) + j) % n
        for w in range(processes)
        for t in range(threads)
        for j in range(window)
    }
    answers, extra = _successes(successes)
    audit = audit_cache(path)
    result.requests = requests
    result.retries = requests - answers
    result.resent = extra
    result.results = len(covered)
    result.lost = len(expected - covered) + len(mismatched)
    result.corrupt = audit.corrupt
    result.details = {
        "distinct_texts_classified": len(expected),
        "rows_returned": sum(rows_seen.values()),
        "texts_asked_by_several_threads": sum(1 for v in rows_seen.values() if v > 1),
        "max_requests_for_one_text": max(per_prompt.values(), default=0),
        "cache_entries": audit.entries,
        "claims_left": audit.claims,
        "rerun_requests": rerun_requests,
    }
    return result
