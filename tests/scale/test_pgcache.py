"""The PostgreSQL completion cache, against a real server (tests/pg_fixture.py)."""

from __future__ import annotations

import logging
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from cache_helpers import FileCountingBackend, count, make_texts

from skllmprob import LogprobClassifier
from skllmprob._engine import fetch_completions
from skllmprob.backends import Completion, DeterministicBackend, Query
from skllmprob.cache import KeyBuilder, open_cache
from skllmprob.exceptions import CacheError, ConfigurationError

psycopg = pytest.importorskip("psycopg")

from skllmprob.cache.postgres import (  # noqa: E402
    PG_SCHEMA_VERSION,
    PostgresCache,
    open_postgres,
)

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}


def completion(tokens=("yes", "no"), probs=(0.6, 0.3), **kw):
    return Completion(tuple(tokens), np.log(np.asarray(probs, dtype=float)), **kw)


def det_clf(cache, **kw):
    params = dict(labels=["positive", "negative"], backend=DeterministicBackend(), progress=False)
    params.update(kw)
    return LogprobClassifier(cache=cache, **params)


def rows(url, sql):
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


def _keys(backend, prompts):
    query = Query(5)
    return KeyBuilder(backend.identity(), backend.request_settings(query)).many(prompts)


# ---------------------------------------------------------------------- round trip


def test_round_trip_through_the_database(pg_url):
    cache = PostgresCache(pg_url)
    kb = KeyBuilder({"backend": "x"}, {"top_logprobs": 3})
    items = [
        (kb("a"), completion(prompt_tokens=5, completion_tokens=1)),
        (kb("b"), completion(("x\x00y", "\ud800", "z"), (0.5, 0.2, 0.1))),  # NUL, surrogate
        (kb("c"), Completion(("p",), np.log([0.9]), answer_logprobs=np.log([0.4, 0.5]))),
    ]
    cache.put_many(items)
    fresh = PostgresCache(pg_url, memory_mb=0)  # nothing from memory
    got = fresh.get_many([k for k, _ in items] + [kb("missing")])
    assert set(got) == {k for k, _ in items}
    for key, c in items:
        assert got[key].tokens == c.tokens
        np.testing.assert_array_equal(got[key].logprobs, c.logprobs)
        assert got[key].prompt_tokens == c.prompt_tokens
    np.testing.assert_array_equal(got[kb("c")].answer_logprobs, items[2][1].answer_logprobs)
    assert got[kb("a")].answer_logprobs is None
    # Write-once: a second answer for the same key does not replace the first.
    cache.put(kb("a"), completion(probs=(0.1, 0.1)))
    again = PostgresCache(pg_url, memory_mb=0).get_many([kb("a")])
    np.testing.assert_array_equal(again[kb("a")].logprobs, items[0][1].logprobs)
    assert fresh.info().entries == 3


def test_estimator_with_a_postgres_url(pg_url, reviews, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    texts, labels = reviews
    clf = det_clf(pg_url).fit(texts, labels)
    proba = clf.predict_proba(texts)
    assert isinstance(open_cache(pg_url), PostgresCache)
    clf.predict_proba(texts)
    assert clf.usage_.last.requests == 0
    open_cache(pg_url)._memory.clear()
    np.testing.assert_array_equal(clf.predict_proba(texts), proba)
    assert clf.usage_.last.requests == 0
    sqlite = det_clf(str(tmp_path / "c.sqlite")).fit(texts, labels)
    np.testing.assert_array_equal(sqlite.predict_proba(texts), proba)
    info = clf.cache_info()
    assert info.entries == len(texts)
    assert info.hits >= 2 * len(texts) and info.total_hits == info.hits
    assert info.total_misses == info.misses == len(texts)
    assert not any(p.name.startswith("postgres") for p in tmp_path.iterdir())
    clf.clear_cache()
    assert clf.cache_info().entries == 0


def test_clear_empties_the_memory_layer_of_other_processes(pg_url):
    a, b = PostgresCache(pg_url), PostgresCache(pg_url)
    kb = KeyBuilder({"backend": "x"}, {})
    a.put(kb("p"), completion())
    assert kb("p") in a.get_many([kb("p")])
    b.clear()
    assert a.get_many([kb("p")]) == {}
    assert a.info().entries == 0


def test_newer_schema_is_refused(pg_url):
    PostgresCache(pg_url)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE skllmprob_meta SET value = %s WHERE name = 'schema_version'",
            (str(PG_SCHEMA_VERSION + 1),),
        )
    with pytest.raises(CacheError, match="newer skllmprob"):
        PostgresCache(pg_url)


def test_corrupt_row_is_a_counted_miss_and_gets_rewritten(pg_url, reviews):
    texts, _ = reviews
    name = "pg-corrupt"
    clf = det_clf(pg_url, backend=DeterministicBackend(name=name)).fit(None, None)
    clf.predict_proba(texts)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE skllmprob_completions SET data = '\\x00'::bytea")
    cache = open_cache(pg_url)
    cache._memory.clear()
    before = DeterministicBackend.request_count(name)
    clf.predict_proba(texts)
    assert DeterministicBackend.request_count(name) - before == len(texts)
    assert cache.info().corrupt == len(texts)
    cache._memory.clear()
    clf.predict_proba(texts)
    assert clf.usage_.last.requests == 0


# ------------------------------------------------------------------------ claims


def test_concurrent_fetches_of_the_same_prompts_send_each_once(pg_url, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    cache = PostgresCache(pg_url)
    counter = tmp_path / "count"
    backend = FileCountingBackend(count_file=str(counter), name="pg-threads", latency=0.005)
    prompts = [f"Text: {i}\nAnswer:" for i in range(40)]
    orders = [prompts, prompts[::-1], prompts[10:30], prompts[5:] + prompts[:5]]
    with ThreadPoolExecutor(len(orders)) as pool:
        usages = [
            u
            for _, u in pool.map(
                lambda ps: fetch_completions(backend, cache, Query(5), ps), orders
            )
        ]
    assert count(counter) == 40
    assert sum(u.requests for u in usages) == 40
    assert sum(u.cache_hits for u in usages) == sum(map(len, orders)) - 40
    assert cache.info().waited > 0
    assert rows(pg_url, "SELECT count(*) FROM skllmprob_claims") == [(0,)]


def test_a_live_silent_claim_is_waited_for_then_taken_over(pg_url):
    cache = PostgresCache(pg_url, claim_timeout=0.5)
    backend = DeterministicBackend(name="pg-silent")
    prompts = [f"p{i}" for i in range(4)]
    keys = _keys(backend, prompts)
    # A live session elsewhere claimed two prompts and went silent (no renewal).
    with psycopg.connect(pg_url, autocommit=True) as other:
        other.execute(
            "INSERT INTO skllmprob_claims SELECT k, 'elsewhere', pg_backend_pid(),"
            " now() + interval '0.5 seconds' FROM unnest(%s::bytea[]) AS k",
            (keys[:2],),
        )
        started = time.monotonic()
        usage = fetch_completions(backend, cache, Query(5), prompts)[1]
        assert 0.3 < time.monotonic() - started < 10  # waited for the lease to expire
    assert usage.requests == 4


def test_claims_of_a_closed_session_are_taken_over_at_once(pg_url):
    cache = PostgresCache(pg_url)  # leases of 60 s
    backend = DeterministicBackend(name="pg-dead")
    prompts = [f"p{i}" for i in range(5)]
    other = psycopg.connect(pg_url, autocommit=True)
    other.execute(
        "INSERT INTO skllmprob_claims SELECT k, 'dead', pg_backend_pid(),"
        " now() + interval '1 hour' FROM unnest(%s::bytea[]) AS k",
        (_keys(backend, prompts),),
    )
    other.close()  # as a killed worker's connection
    start = time.monotonic()
    _, usage = fetch_completions(backend, cache, Query(5), prompts)
    assert usage.requests == 5
    assert time.monotonic() - start < 5


def test_a_released_claim_is_requested_by_the_waiter(pg_url):
    cache = PostgresCache(pg_url)
    backend = DeterministicBackend(name="pg-released")
    prompts = [f"p{i}" for i in range(3)]
    keys = _keys(backend, prompts)
    holder = PostgresCache(pg_url).session()
    _, mine, _ = holder.claim(keys)
    assert mine == keys
    threading.Timer(0.3, holder.close).start()  # gives up without results
    _, usage = fetch_completions(backend, cache, Query(5), prompts)
    assert usage.requests == 3


def _wait_for(condition, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.005)


def _worker(url, base_url, n, which=0, concurrency=4) -> subprocess.Popen:
    script = Path(__file__).with_name("pg_worker.py")
    args = [str(a) for a in (url, base_url, n, which, concurrency)]
    return subprocess.Popen([sys.executable, str(script), *args], env=ENV, stderr=subprocess.PIPE)


def test_three_processes_send_each_prompt_once(pg_url):
    from skllmprob.testing.openai_stub import OpenAIStub

    with OpenAIStub(latency=0.005) as stub:
        # 150 shared texts, each process in its own order, plus 40 texts of its own
        # for workers 1 and 2.
        procs = [_worker(pg_url, stub.base_url, 150, which) for which in range(3)]
        for p in procs:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
        assert stub.requests == 150 + 2 * 40
        assert max(stub.prompt_requests.values()) == 1
        assert rows(pg_url, "SELECT count(*) FROM skllmprob_completions") == [(230,)]
        assert rows(pg_url, "SELECT count(*) FROM skllmprob_claims") == [(0,)]
        again = _worker(pg_url, stub.base_url, 150, 2)
        _, err = again.communicate(timeout=120)
        assert again.returncode == 0, err
        assert stub.requests == 150 + 2 * 40  # the second run sends nothing


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_killed_worker_loses_only_what_was_in_flight(pg_url):
    from skllmprob.testing.openai_stub import OpenAIStub

    with OpenAIStub(latency=0.02) as stub:
        proc = _worker(pg_url, stub.base_url, 200, concurrency=4)
        _wait_for(lambda: stub.requests >= 100, timeout=60)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
        sent = stub.requests
        assert 100 <= sent < 200
        committed = rows(pg_url, "SELECT count(*) FROM skllmprob_completions")[0][0]
        assert rows(pg_url, "SELECT count(*) FROM skllmprob_claims")[0][0] > 0  # left behind
        assert sent - 8 <= committed <= sent
        start = time.monotonic()
        clf = LogprobClassifier(
            "stub-model",
            labels=["positive", "negative"],
            base_url=stub.base_url,
            cache=pg_url,
            progress=False,
        ).fit(None, None)
        clf.predict_proba(make_texts(200)[0])
        # The dead worker's leases (60 s) were taken over at once: its session is gone.
        assert time.monotonic() - start < 20
        assert clf.usage_.last.requests == 200 - committed
        assert stub.requests - sent == 200 - committed


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_uses_its_own_connections(pg_url):
    import multiprocessing as mp

    clf = det_clf(pg_url).fit(None, None)
    texts, _ = make_texts(20)
    clf.predict_proba(texts[:10])
    with mp.get_context("fork").Pool(2) as pool:
        results = pool.map(_child_predict, [(clf, texts[5:15]), (clf, texts[10:20])])
    assert [r.shape for r in results] == [(10, 2), (10, 2)]
    assert clf.cache_info().entries == 20
    clf.predict_proba(texts)
    assert clf.usage_.last.requests == 0


def _child_predict(args):
    clf, texts = args
    return clf.predict_proba(texts)


# ----------------------------------------------------------------- the password


def test_password_is_in_no_repr_pickle_error_or_log(pg_server, pg_url, caplog, monkeypatch):
    secret = pg_server.password
    caplog.set_level(logging.DEBUG)
    cache = open_postgres(pg_url)
    shown = [repr(cache), str(cache), cache.path, str(cache.info())]
    assert all(secret not in s for s in shown), shown
    assert "//skllm_app@127.0.0.1" in repr(cache)
    blob = pickle.dumps(cache)
    assert secret.encode() not in blob
    assert pickle.loads(blob) is cache  # this process: the open instance

    # A write error naming the URL: the warning and the log are scrubbed.
    def fail(conn, items):
        raise psycopg.OperationalError(f"server at {pg_url} is gone ({secret})")

    monkeypatch.setattr(PostgresCache, "_insert", staticmethod(fail))
    with pytest.warns(RuntimeWarning, match="could not write") as warned:
        fetch_completions(DeterministicBackend(name="pg-mask"), cache, Query(5), ["a", "b"])
    assert all(secret not in str(w.message) for w in warned)
    assert "***" in str(warned[0].message)
    monkeypatch.undo()
    with pytest.raises(CacheError) as e:
        PostgresCache(pg_url.replace(secret, secret + "x"))
    assert secret not in str(e.value) and "password" in str(e.value)
    with pytest.raises(CacheError) as e:
        PostgresCache(pg_url.rsplit("/", 1)[0] + "/no_such_db")
    assert secret not in str(e.value) and "no_such_db" in str(e.value)
    assert all(secret not in r.getMessage() for r in caplog.records)


def test_the_estimator_shows_and_pickles_no_password(pg_server, pg_url, reviews):
    from sklearn.base import clone

    secret = pg_server.password
    texts, labels = reviews
    clf = det_clf(pg_url)
    shown = [repr(clf), str(clf.get_params()), clf._repr_html_(), f"{clf.cache}"]
    assert all(secret not in s for s in shown)
    assert "***@127.0.0.1" in repr(clf)
    assert clone(clf).cache is clf.cache  # clone keeps the URL, password and all
    proba = clone(clf).fit(texts, labels).predict_proba(texts)  # the password works
    assert proba.shape == (len(texts), 2)
    blob = pickle.dumps(clf.fit(texts, labels))
    assert secret.encode() not in blob
    back = pickle.loads(blob)
    assert "***" not in str(back.cache) and secret not in str(back.cache)
    assert back.cache.startswith("postgresql://skllm_app@127.0.0.1")  # for $PGPASSWORD


def test_unpickled_cache_reads_the_password_from_the_environment(pg_server, pg_url):
    PostgresCache(pg_url)
    blob = pickle.dumps(PostgresCache(pg_url)).hex()
    code = """
        import pickle, sys
        cache = pickle.loads(bytes.fromhex(sys.argv[1]))
        print(cache.info().entries)
    """
    env = {k: v for k, v in ENV.items() if k not in ("PGPASSWORD", "PGPASSFILE")}
    env["PGPASSFILE"] = os.devnull

    def unpickle(env):
        return subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code), blob],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    done = unpickle(env)
    assert "PGPASSWORD" in done.stderr and pg_server.password not in done.stderr
    done = unpickle({**env, "PGPASSWORD": pg_server.password})
    assert done.stdout.strip() == "0", done.stderr


# ----------------------------------------------------------------- other schemes


@pytest.mark.parametrize(
    "url", ["redis://localhost:6379/0", "http://u:pw@example.org/c", "s3://bucket/cache"]
)
def test_unsupported_url_schemes_are_a_clear_error(url, reviews, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    texts, labels = reviews
    with pytest.raises(ConfigurationError, match="postgresql://user@host") as e:
        det_clf(url).fit(texts, labels)
    assert "pw" not in str(e.value)
    assert url.split("://")[0] in str(e.value)
    assert list(tmp_path.iterdir()) == []  # no folder named after the scheme


def test_missing_psycopg_gives_the_install_hint(monkeypatch):
    import skllmprob.cache.postgres as pg

    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(CacheError, match=r"pip install 'skllmprob\[postgres\]'"):
        pg.PostgresCache("postgresql://app@127.0.0.1:1/db")


def test_statistics_are_written_by_calls_that_sent_requests(pg_url, reviews):
    texts, _ = reviews
    clf = det_clf(pg_url, backend=DeterministicBackend(name="pg-stats")).fit(None, None)
    clf.predict_proba(texts)
    totals = "SELECT name, value FROM skllmprob_stats ORDER BY name"
    assert dict(rows(pg_url, totals))["misses"] == len(texts)  # written at once
    written = rows(pg_url, totals)
    clf.predict_proba(texts)  # every prompt a hit: no write now
    assert rows(pg_url, totals) == written
    info = clf.cache_info()  # ... but counted, and flushed when asked
    assert info.total_hits == info.hits == len(texts)
    assert dict(rows(pg_url, totals))["hits"] == len(texts)
    session = open_cache(pg_url).session()
    keys = _keys(DeterministicBackend(name="pg-stats"), ["new", "new2"])
    _, mine, _ = session.claim(keys + keys)  # a key twice is claimed once
    assert mine == keys
    session.close()


def test_an_unreachable_database_fails_before_any_request(pg_url, reviews, monkeypatch):
    texts, _ = reviews
    clf = det_clf(pg_url, backend=DeterministicBackend(name="pg-down")).fit(None, None)
    cache = open_cache(pg_url)
    cache.close()  # no idle connection left: the next call connects

    def down(self):
        raise psycopg.OperationalError("connection refused")

    monkeypatch.setattr(PostgresCache, "_connect", down)
    before = DeterministicBackend.request_count("pg-down")
    with pytest.raises(CacheError, match=r"cannot read the completion cache.*refused"):
        clf.predict_proba(texts)
    assert DeterministicBackend.request_count("pg-down") == before
