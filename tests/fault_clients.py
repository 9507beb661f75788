"""Fault scenarios of the clients: killed processes and one cache file shared by many.

Counted from the outside as in tests/fault_server.py (the server's log, the cache
file read with :mod:`sqlite3`, the probabilities of an uninterrupted run):

- :func:`client_sigkills`: the classifying Python process is killed at random points
  of a long run, several times, then the run is finished.
- :func:`shared_cache`: several processes, each with several threads, classify
  overlapping texts with the same cache file.

The child processes import this checkout's skllmprob and tests/fault_tools.py
(:func:`fault_tools.child_env`).
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter

import numpy as np
from fault_tools import (
    ScenarioResult,
    audit_cache,
    child_env,
    classifier,
    lost_rows,
    one_line,
    reference_proba,
    successes_of,
    synthetic_texts,
    tmp_cache,
)

from skllmprob.testing import OpenAIStub

__all__ = ["client_sigkills", "shared_cache"]


_CHILD_RUN = textwrap.dedent(
    """
    import sys
    from skllmprob import LogprobClassifier
    from fault_tools import LABELS, MODEL, synthetic_texts
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
    texts = synthetic_texts(n, seed)
    path = tmp_cache(cache)
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
                env=child_env(),
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
            clf = classifier(stub.base_url, path, max_concurrency=max_concurrency)
            proba = clf.predict_proba(texts)
            final_requests = clf.usage_.last.requests
        except Exception as e:
            result.errors.append(one_line(e))
            final_requests = None
        result.seconds = time.perf_counter() - t0
        requests = stub.requests
        successes = dict(stub.prompt_successes)
        # An uninterrupted run through the same server, without cache.
        uninterrupted = classifier(stub.base_url, False).predict_proba(texts)
    answers, extra = successes_of(successes)
    final = audit_cache(path)
    result.requests = requests
    result.retries = requests - answers
    result.resent = extra
    result.results = 0 if proba is None else len(proba)
    result.lost = max(
        lost_rows(proba, uninterrupted), lost_rows(proba, reference_proba(texts, seed))
    )
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
    from fault_tools import LABELS, MODEL, synthetic_texts
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
    texts = synthetic_texts(n)
    path = tmp_cache(cache)
    result = ScenarioResult(f"{processes} processes x {threads} threads", n)
    t0 = time.perf_counter()
    with OpenAIStub(latency=latency) as stub:
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _CHILD_SHARED, path, stub.base_url]
                + [str(v) for v in (n, w, processes, threads, window, batch)],
                env=child_env(),
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
        rerun = classifier(stub.base_url, path)
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
    answers, extra = successes_of(successes)
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
