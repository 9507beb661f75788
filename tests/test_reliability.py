"""Fault scenarios of a long run against an OpenAI-compatible server: rate limits,
server errors and timeouts, a server that dies mid-run, a client killed with SIGKILL
again and again, and several processes and threads sharing one cache file.

The scenarios live in tests/fault_server.py and tests/fault_clients.py, their
counters in tests/fault_tools.py (``benchmarks/faults.py`` prints the same numbers as
a table); they drive the public API and count from the
outside: the stub server's request log, the cache file read with ``sqlite3``, and
the probabilities of an uninterrupted run. The full-size scenarios are marked
``slow`` (about a minute together on 2 cores); a small mixed-fault run and the
counters themselves are tested in the fast tier.
"""

from __future__ import annotations

import sqlite3
import sys

import numpy as np
import pytest
from fault_clients import client_sigkills, shared_cache
from fault_server import mixed_faults, server_goes_away
from fault_tools import StubProcess, audit_cache, reference_proba, synthetic_texts

from skllmprob import LogprobClassifier
from skllmprob.testing import OpenAIStub

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")


# ------------------------------------------------------------------ the counters


def test_audit_counts_undecodable_rows_and_a_missing_file(tmp_path):
    path = tmp_path / "c.sqlite"
    assert audit_cache(path).entries == 0 and audit_cache(path).corrupt == 0
    with OpenAIStub() as stub:
        clf = LogprobClassifier(
            "stub-model", labels=["positive", "negative"], base_url=stub.base_url, cache=str(path)
        ).fit(None, None)
        clf.predict_proba(synthetic_texts(5))
    audit = audit_cache(path)
    assert (audit.entries, audit.corrupt, audit.integrity, audit.claims) == (5, 0, "ok", 0)
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(
            "UPDATE completions SET data = x'0102' WHERE key IN "
            "(SELECT key FROM completions LIMIT 2)"
        )
    conn.close()
    assert audit_cache(path).corrupt == 2  # the audit can find what it looks for


def test_reference_is_what_the_stub_answers(tmp_path):
    texts = synthetic_texts(30, seed=3)
    with OpenAIStub(seed=3) as stub:
        clf = LogprobClassifier(
            "stub-model", labels=["positive", "negative"], base_url=stub.base_url, cache=False
        ).fit(None, None)
        np.testing.assert_array_equal(clf.predict_proba(texts), reference_proba(texts, 3))
    assert len(set(texts)) == 30
    assert not any(a != b and a in b for a in texts for b in texts)  # faults match one text


def test_small_mixed_fault_run(tmp_path):
    """The fast tier's version of the 2,000-text run below."""
    r = mixed_faults(
        n=120,
        rate_429=0.1,
        rate_500=0.05,
        rate_timeout=0.025,
        timeout=1.0,
        seed=2,
        cache=str(tmp_path / "c.sqlite"),
    )
    assert r.errors == []
    assert (r.results, r.lost, r.resent, r.corrupt) == (120, 0, 0, 0)
    assert r.injected["500"] == 6 and r.injected["timeout"] == 3 and r.injected["429"] > 0
    assert r.requests == 120 + r.retries
    assert r.retries == r.injected["429"] + r.injected["500"] + r.injected["timeout"]
    assert r.details["second_call_requests"] == 0


def test_a_killed_stub_process_restarts_on_its_port():
    server = StubProcess().start()
    try:
        url = server.base_url
        assert server.stats()["requests"] == 0
        server.kill()
        with pytest.raises(OSError):
            server.stats()
        server.start()
        assert server.base_url == url and server.stats()["requests"] == 0
    finally:
        server.stop()


# ------------------------------------------------------------------ the scenarios


@pytest.mark.slow
def test_2000_texts_through_429s_500s_and_timeouts(tmp_path):
    """5% of all requests get a 429 with Retry-After, 2% of the texts a 500 once, 1%
    of the texts no answer once (the client times out): every result arrives, right,
    and no text is requested again once it was answered."""
    r = mixed_faults(n=2000, cache=str(tmp_path / "c.sqlite"))
    assert r.errors == []
    assert r.results == 2000 and r.lost == 0
    assert r.resent == 0 and r.details["requests_after_their_answer"] == 0
    assert r.injected["500"] == 40 and r.injected["timeout"] == 20
    assert 0.03 * r.requests < r.injected["429"] < 0.07 * r.requests
    assert r.requests == 2000 + r.retries
    assert r.retries == sum(r.injected.values())  # each fault cost one request, no more
    assert r.details["second_call_requests"] == 0
    assert r.corrupt == 0 and audit_cache(tmp_path / "c.sqlite").entries == 2000


@pytest.mark.slow
@posix_only
def test_server_that_goes_away_mid_run(tmp_path):
    """The server is killed mid-run: one clear error, what completed is cached, and
    once the server is back the same call requests only the rest."""
    n = 600
    r = server_goes_away(n=n, max_retries=1, cache=str(tmp_path / "c.sqlite"))
    d = r.details
    assert d["errors_raised_by_the_failing_call"] == 1
    assert d["error_type"] == "PartialResultsError"
    message = d["error_message"]
    assert "stopped accepting connections" in message and "are cached" in message
    assert "once it is back, call again" in message
    cached = d["texts_cached_after_failure"]
    assert 0 < cached < n  # killed mid-run
    assert d["n_completed_reported"] == cached == d["cache_entries_after_failure"]
    assert d["n_failed_reported"] == n - cached
    assert d["rerun_requests"] == n - cached and d["rerun_texts_already_cached"] == 0
    assert r.errors[1:] == []  # the rerun succeeded
    assert r.results == n and r.lost == 0 and r.resent == 0 and r.corrupt == 0
    # The first request that cannot reconnect after its one retry stops the call.
    assert "were not sent once the server could not be reached" in message
    assert d["seconds_from_kill_to_error"] < 10


@pytest.mark.slow
@posix_only
def test_sigkill_of_the_client_five_times(tmp_path):
    """SIGKILL at a random point of a long run, five times: the cache always opens,
    nothing in it is corrupt, each kill loses only requests in flight, and the
    final results equal an uninterrupted run's."""
    conc = 8
    r = client_sigkills(n=1000, kills=5, max_concurrency=conc, cache=str(tmp_path / "c.sqlite"))
    assert r.errors == []
    rounds = r.details["rounds"]
    assert len(rounds) == 5 and r.injected["client SIGKILL"] == 5
    entries = 0
    for k, rd in enumerate(rounds):
        # The first kill comes at a random moment after the start: on a loaded machine
        # the child may not have created its cache file yet (an empty, healthy cache).
        healthy = ("ok", "ok (no file yet)") if k == 0 else ("ok",)
        assert rd["integrity"] in healthy and rd["corrupt"] == 0, rd
        assert not rd["finished_before_kill"], rd
        # Only the requests in flight (and answers not yet committed) are lost.
        assert rd["requests"] - (rd["entries"] - entries) <= 3 * conc, rd
        entries = rd["entries"]
    assert entries < 1000
    assert r.details["final_run_requests"] == 1000 - entries
    assert r.results == 1000 and r.lost == 0 and r.corrupt == 0
    assert r.details["final_entries"] == 1000 and r.details["final_claims"] == 0
    assert r.resent <= 5 * 3 * conc


@pytest.mark.slow
def test_two_processes_four_threads_one_cache_file(tmp_path):
    """Two processes with four threads each classify overlapping texts with the same
    cache file: identical results everywhere, each text requested once, every
    result stored, nothing corrupt."""
    r = shared_cache(n=800, processes=2, threads=4, window=300, cache=str(tmp_path / "c.sqlite"))
    d = r.details
    assert r.errors == []
    assert d["rows_returned"] == 2 * 4 * 300 and d["texts_asked_by_several_threads"] == 800
    assert r.results == 800 and r.lost == 0  # every row equals the uninterrupted run
    assert d["max_requests_for_one_text"] == 1 and r.requests == 800 and r.resent == 0
    assert d["cache_entries"] == 800 and d["claims_left"] == 0 and d["rerun_requests"] == 0
    assert r.corrupt == 0
