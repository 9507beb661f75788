"""The completion cache: keys, encoding, robustness, statistics, coordination."""

from __future__ import annotations

import os
import pickle
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from cache_helpers import (
    ROOT,
    FileCountingBackend,
    completion,
    count,
    det_clf,
    make_texts,
    run_model_selection,
    run_python,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV

from skllmprob import LogprobClassifier
from skllmprob._engine import fetch_completions
from skllmprob.backends import Completion, DeterministicBackend, Query
from skllmprob.cache import (
    CACHE_SCHEMA_VERSION,
    CacheInfo,
    CompletionCache,
    KeyBuilder,
    NullCache,
    _decode,
    _encode,
    default_cache_path,
    open_cache,
)
from skllmprob.exceptions import BackendError, CacheError

# ----------------------------------------------------------------------------- keys

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


@settings(max_examples=60)
@given(
    st.dictionaries(st.text(max_size=6), json_values, max_size=4),
    st.dictionaries(st.text(max_size=6), json_values, max_size=4),
    st.text(max_size=30),
    st.text(min_size=1, max_size=6),
    json_values,
)
def test_key_changes_with_any_identity_setting_or_prompt(identity, settings_, prompt, name, v):
    base = KeyBuilder(identity, settings_)(prompt)
    # Insertion order does not matter: the JSON is canonical.
    assert KeyBuilder(dict(reversed(identity.items())), settings_)(prompt) == base
    if identity.get(name, object()) != v:
        assert KeyBuilder({**identity, name: v}, settings_)(prompt) != base
    if settings_.get(name, object()) != v:
        assert KeyBuilder(identity, {**settings_, name: v})(prompt) != base
    assert KeyBuilder(identity, settings_)(prompt + " ") != base
    # What is identity and what is a setting is part of the key.
    if identity or settings_:
        assert KeyBuilder(settings_, identity)(prompt) != base or identity == settings_


@pytest.mark.parametrize(
    "change",
    [
        {"model": "other-model"},
        {"base_url": "http://127.0.0.1:9999/v1"},
        {"endpoint": "chat"},
    ],
)
def test_key_changes_with_backend_identity(change):
    identity = {"backend": "openai", "model": "m", "base_url": None, "endpoint": "completions"}
    settings_ = {"top_logprobs": 20}
    assert KeyBuilder({**identity, **change}, settings_)("p") != KeyBuilder(identity, settings_)(
        "p"
    )


@pytest.mark.parametrize(
    "change",
    [{"top_logprobs": 5}, {"temperature": 0.5}, {"logit_bias": {"123": 5}}, {"seed": 1}],
)
def test_key_changes_with_every_request_setting(change):
    settings_ = {"top_logprobs": 20, "temperature": 0.0, "logit_bias": {}}
    kb = KeyBuilder({"model": "m"}, settings_)
    assert KeyBuilder({"model": "m"}, {**settings_, **change})("p") != kb("p")


def test_deterministic_backend_settings_reach_the_key():
    q = Query(top_logprobs=20, answers=("negative", "positive"))

    def key(backend, query=q):
        return KeyBuilder(backend.identity(), backend.request_settings(query))("p")

    base = key(DeterministicBackend())
    assert key(DeterministicBackend(seed=1)) != base
    assert key(DeterministicBackend(name="other")) != base
    assert key(DeterministicBackend(bias={"positive": 1.0})) != base
    assert key(DeterministicBackend(), Query(top_logprobs=5)) != base
    assert key(DeterministicBackend(exact=True)) != base
    # Answers matter only to exact backends.
    q2 = Query(top_logprobs=20, answers=("no", "yes"))
    assert key(DeterministicBackend(), q2) == base
    assert key(DeterministicBackend(exact=True), q2) != key(DeterministicBackend(exact=True))
    # Latency and failure injection do not change answers.
    assert key(DeterministicBackend(latency=0.01)) == base


def test_unjsonable_identity_is_a_clear_error():
    with pytest.raises(CacheError, match="plain JSON"):
        KeyBuilder({"model": object()}, {})
    with pytest.raises(CacheError, match="plain JSON"):
        KeyBuilder({"model": "m"}, {"temperature": float("nan")})


def test_calibration_settings_do_not_change_requests(reviews):
    texts, labels = reviews
    backend = DeterministicBackend(name="calib-key")
    before = DeterministicBackend.request_count("calib-key")
    det_clf(backend=backend).fit(texts, labels)
    first = DeterministicBackend.request_count("calib-key") - before
    assert first == len(texts)
    for params in [
        {"calibration": "bias", "calibration_alpha": 1.0},
        {"calibration": "affine", "calibration_alpha": 0.001},
        {"calibration": "threshold", "scoring": "f1"},
    ]:
        clf = det_clf(backend=backend, **params).fit(texts, labels)
        assert clf.usage_.last.requests == 0
        assert clf.usage_.last.cache_hits == len(texts)
    assert DeterministicBackend.request_count("calib-key") - before == first


# ------------------------------------------------------------------------- encoding

tokens_st = st.lists(st.text(max_size=6), max_size=25)


@settings(max_examples=100)
@given(
    tokens_st,
    st.data(),
    st.booleans(),
    st.tuples(*[st.integers(0, 2**31)] * 3),
)
def test_encoding_round_trips(tokens, data, with_answers, usage):
    # Plausible numbers: log-probabilities <= 0 whose probabilities sum to <= 1.
    weights = np.asarray(
        data.draw(st.lists(st.floats(0, 1), min_size=len(tokens), max_size=len(tokens))),
        dtype=float,
    )
    total = data.draw(st.floats(0, 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        lps = np.log(weights / weights.sum() * total)
    lps[~np.isfinite(lps)] = -np.inf
    answers = (
        np.asarray(data.draw(st.lists(st.floats(max_value=0.0), min_size=1, max_size=5)))
        if with_answers
        else None
    )
    c = Completion(tuple(tokens), lps, answers, *usage)
    assert _decode(*_encode(c)) == c


@pytest.mark.parametrize(
    "logprobs",
    [[0.5, -1.0], [np.nan, -1.0], [np.log(0.7), np.log(0.6)]],
    ids=["above-zero", "nan", "mass-above-one"],
)
def test_implausible_numbers_are_neither_stored_nor_read(logprobs):
    bad = Completion(("a", "b"), np.asarray(logprobs))
    with pytest.raises(ValueError, match="implausible"):
        _encode(bad)
    # A value of the old format (no checksum) with such numbers is refused on read.
    data, text = _encode(completion(("a", "b")))
    old = bytes([1]) + data[1:20] + bytes(4) + np.asarray(logprobs, "<f8").tobytes()
    with pytest.raises(ValueError):
        _decode(old, text)


def test_encoding_handles_nul_and_lone_surrogates(tmp_path):
    c = completion(tokens=("a\x00b", "\ud83d", ""), probs=(0.5, 0.2, 0.1))
    cache = CompletionCache(tmp_path / "c.sqlite")
    key = KeyBuilder({}, {})("x")
    cache.put(key, c)
    cache._memory.clear()
    assert cache.get_many([key])[key] == c


def test_values_are_compact(tmp_path):
    c = completion(tokens=[f" tok{i}" for i in range(20)], probs=np.full(20, 0.01))
    data, text = _encode(c)
    assert len(data) == 24 + 8 * 20
    assert len(text) == 1 + sum(len(t) for t in c.tokens) + 19


# ------------------------------------------------------------------ file and settings


def test_default_path_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SKLLMPROB_CACHE_DIR", str(tmp_path / "here"))
    assert default_cache_path() == tmp_path / "here" / "completions.sqlite"
    monkeypatch.delenv("SKLLMPROB_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert default_cache_path() == tmp_path / "xdg" / "skllmprob" / "completions.sqlite"


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_file_and_folder_are_owner_only(tmp_path, reviews):
    old = os.umask(0o022)
    try:
        folder = tmp_path / "new" / "cachedir"
        path = folder / "c.sqlite"
        clf = det_clf(cache=str(path)).fit(*reviews)
        clf.predict(reviews[0])
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        files = sorted(p.name for p in folder.iterdir())
        assert files == ["c.sqlite", "c.sqlite-shm", "c.sqlite-wal"]
        for p in folder.iterdir():
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    finally:
        os.umask(old)


def test_cache_false_stores_nothing(reviews, tmp_path):
    texts, labels = reviews
    backend = DeterministicBackend(name="no-cache")
    clf = det_clf(backend=backend, cache=False).fit(texts, labels)
    clf.predict_proba(texts)
    assert DeterministicBackend.request_count("no-cache") == 2 * len(texts)
    assert not default_cache_path().exists()
    assert isinstance(open_cache(False), NullCache)
    assert clf.cache_info() == CacheInfo(path=None)


def test_default_cache_is_used_and_shared_by_clones(reviews):
    texts, labels = reviews
    clf = det_clf(backend=DeterministicBackend(name="clones")).fit(texts, labels)
    assert default_cache_path().exists()
    assert clf.usage_.last.requests == len(texts)
    twin = clone(clf).fit(texts, labels)
    assert twin.usage_.last.requests == 0 and twin.usage_.last.cache_hits == len(texts)
    assert open_cache(True) is open_cache(str(default_cache_path()))
    assert pickle.loads(pickle.dumps(open_cache(True))) is open_cache(True)


def test_future_schema_is_refused_with_a_clear_error(tmp_path):
    path = tmp_path / "c.sqlite"
    CompletionCache(path)
    conn = sqlite3.connect(path)
    conn.execute(
        "UPDATE meta SET value = ? WHERE name = 'schema_version'", (str(CACHE_SCHEMA_VERSION + 1),)
    )
    conn.commit()
    conn.close()
    with pytest.raises(CacheError, match=r"newer skllmprob.*Upgrade skllmprob or use another"):
        CompletionCache(path)
    with pytest.raises(CacheError, match="newer skllmprob"):
        det_clf(cache=str(path)).fit(["a gem"], ["positive"])


def test_foreign_or_broken_files_are_refused(tmp_path):
    other = tmp_path / "other.sqlite"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(CacheError, match="not a skllmprob completion cache"):
        CompletionCache(other)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(CacheError, match="cannot open the completion cache"):
        CompletionCache(junk)


def test_old_layout_is_upgraded(tmp_path):
    path = tmp_path / "c.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    conn.execute("CREATE TABLE completions (key TEXT PRIMARY KEY, tokens TEXT)")
    conn.execute("INSERT INTO completions VALUES ('abc', '[]')")
    conn.commit()
    conn.close()
    with pytest.warns(RuntimeWarning, match="dropping the entries of an old cache layout"):
        cache = CompletionCache(path)
    assert cache.info().entries == 0
    key = KeyBuilder({}, {})("p")
    cache.put(key, completion())
    assert key in cache.get_many([key])


# -------------------------------------------------------------------- robustness


def _corrupt_all(path, sql, *params):
    conn = sqlite3.connect(path)
    conn.execute(sql, params)
    conn.commit()
    conn.close()


@pytest.mark.parametrize(
    ("sql", "params"),
    [
        ("UPDATE completions SET data = substr(data, 1, 30)", ()),
        ("UPDATE completions SET data = 'text, not bytes'", ()),
        ("UPDATE completions SET tokens = 'x'", ()),
        ("UPDATE completions SET tokens = 'j[1, 2]'", ()),
        ("UPDATE completions SET tokens = ?", (b"sbytes",)),
        ("UPDATE completions SET data = zeroblob(24)", ()),
    ],
)
def test_corrupt_row_is_a_counted_miss_and_gets_rewritten(tmp_path, reviews, sql, params):
    texts, labels = reviews
    path = tmp_path / "c.sqlite"
    backend = DeterministicBackend(name="corrupt")
    clf = det_clf(backend=backend, cache=str(path)).fit(texts, labels)
    expected = clf.predict_proba(texts)
    _corrupt_all(path, sql, *params)
    cache = open_cache(str(path))
    cache._memory.clear()
    before = DeterministicBackend.request_count("corrupt")
    with pytest.warns(RuntimeWarning, match=f"{len(texts)} damaged entries"):
        np.testing.assert_array_equal(clf.predict_proba(texts), expected)
    assert DeterministicBackend.request_count("corrupt") - before == len(texts)
    assert cache.info().corrupt == len(texts)
    cache._memory.clear()
    clf.predict_proba(texts)  # rewritten: hits again
    assert DeterministicBackend.request_count("corrupt") - before == len(texts)
    assert cache.info().corrupt == len(texts)


def test_error_midway_keeps_what_was_answered(tmp_path):
    texts, _ = make_texts(12)
    texts[7] = "review BOOM was great"
    path = str(tmp_path / "c.sqlite")
    clf = det_clf(backend=DeterministicBackend(name="boom", fail_on="BOOM"), cache=path)
    clf.fit(None, None)
    with pytest.raises(BackendError):
        clf.predict_proba(texts)
    assert open_cache(path).info().entries == 7
    clf.set_params(backend=DeterministicBackend(name="boom"))
    clf.predict_proba(texts)
    assert clf.usage_.last.requests == 5 and clf.usage_.last.cache_hits == 7


def test_write_failure_warns_and_keeps_results(tmp_path, monkeypatch):
    import skllmprob.cache.store as store_mod

    def broken(c, token_ids=None):
        raise OSError("disk full")

    monkeypatch.setattr(store_mod, "encode", broken)
    texts, _ = make_texts(5)
    path = str(tmp_path / "c.sqlite")
    clf = det_clf(cache=path).fit(None, None)
    with pytest.warns(RuntimeWarning, match="disk full.*kept in memory"):
        proba = clf.predict_proba(texts)
    assert proba.shape == (5, 2)
    assert open_cache(path).info().entries == 0
    # No claim is left behind: another session can request the prompts at once.
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 0


def test_results_from_another_thread_are_written(tmp_path):
    class ThreadedBackend(DeterministicBackend):
        def complete(self, prompts, query, *, on_result):
            errors = []

            def run(part):
                try:
                    super(ThreadedBackend, self).complete(
                        [prompts[i] for i in part],
                        query,
                        on_result=lambda j, c: on_result(part[j], c),
                    )
                except BaseException as e:  # pragma: no cover
                    errors.append(e)

            parts = [list(range(len(prompts)))[k::3] for k in range(3)]
            threads = [threading.Thread(target=run, args=(p,)) for p in parts]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert not errors

    texts, _ = make_texts(40)
    path = str(tmp_path / "c.sqlite")
    clf = det_clf(backend=ThreadedBackend(name="threaded"), cache=path).fit(None, None)
    expected = det_clf(cache=False).fit(None, None).predict_proba(texts)
    np.testing.assert_allclose(clf.predict_proba(texts), expected)
    cache = open_cache(path)
    assert cache.info().entries == 40 and cache.info().writes == 40
    cache._memory.clear()
    np.testing.assert_allclose(clf.predict_proba(texts), expected)
    assert clf.usage_.last.cache_hits == 40


# ----------------------------------------------------------------------- statistics


def test_cache_info_counts_hits_misses_and_saved_tokens(tmp_path):
    texts, _ = make_texts(6)
    path = str(tmp_path / "c.sqlite")
    clf = det_clf(cache=path).fit(None, None)
    info = clf.cache_info()
    assert (info.entries, info.hits, info.misses) == (0, 0, 0)
    clf.predict_proba(texts[:4])
    clf.predict_proba(texts)
    info = clf.cache_info()
    assert (info.entries, info.hits, info.misses, info.writes) == (6, 4, 6, 6)
    assert info.saved_tokens == clf.usage_.last.saved_tokens > 0
    assert (info.total_hits, info.total_misses) == (4, 6)
    assert info.size_bytes > 0 and info.memory_entries == 6
    assert info.as_dict()["hits"] == 4
    assert clf.clear_cache() is clf
    info = clf.cache_info()
    assert (info.entries, info.hits, info.total_hits, info.memory_entries) == (0, 0, 0, 0)
    clf.predict_proba(texts[:2])
    assert clf.cache_info().misses == 2


def test_clear_in_one_process_empties_memory_layers_of_others(tmp_path):
    path = tmp_path / "c.sqlite"
    a, b = CompletionCache(path), CompletionCache(path)  # as two processes would
    key = KeyBuilder({}, {})("p")
    a.put(key, completion())
    assert key in b.get_many([key])
    assert key in b._memory.data
    a.clear()
    assert b.get_many([key]) == {}
    assert not b._memory.data


def test_memory_layer_is_bounded(tmp_path):
    cache = CompletionCache(tmp_path / "c.sqlite", memory_mb=0.01)
    kb = KeyBuilder({}, {})
    cache.put_many((kb(str(i)), completion()) for i in range(100))
    assert 0 < len(cache._memory.data) < 100
    assert cache._memory.nbytes <= 0.01 * 2**20
    keys = [kb(str(i)) for i in range(100)]
    assert len(cache.get_many(keys)) == 100  # the rest comes from SQLite
    off = CompletionCache(tmp_path / "c.sqlite", memory_mb=0)
    assert len(off.get_many(keys)) == 100 and not off._memory.data


# -------------------------------------------------------------- model selection


def test_grid_search_over_calibration_settings_sends_each_prompt_once(tmp_path):
    texts, labels = make_texts(60)
    name = "grid-once"
    backend = DeterministicBackend(name=name)
    grid = [
        {"calibration": ["none", "contextual"]},
        {"calibration": ["bias", "affine"], "calibration_alpha": [0.001, 0.01, 0.1, 1.0]},
        {"calibration": ["threshold"], "scoring": ["accuracy"]},
    ]
    search = GridSearchCV(det_clf(backend=backend), grid, cv=5, n_jobs=1)
    before = DeterministicBackend.request_count(name)
    search.fit(texts, labels)
    assert len(search.cv_results_["params"]) == 11
    # Every text once, plus the three content-free prompts of "contextual".
    assert DeterministicBackend.request_count(name) - before == len(texts) + 3
    search.fit(texts, labels)
    assert DeterministicBackend.request_count(name) - before == len(texts) + 3


# ----------------------------------------------------------------- claims (threads)


def test_concurrent_fetches_of_the_same_prompts_send_each_once(tmp_path):
    path = tmp_path / "c.sqlite"
    cache = CompletionCache(path)
    count_file = tmp_path / "count"
    backend = FileCountingBackend(count_file=str(count_file), name="threads", latency=0.005)
    prompts = [f"Text: {i}\nAnswer:" for i in range(40)]
    outs, errors = [], []

    def run(ps):
        try:
            outs.append(fetch_completions(backend, cache, Query(5), ps))
        except BaseException as e:  # pragma: no cover
            errors.append(e)

    threads = [
        threading.Thread(target=run, args=(prompts,)),
        threading.Thread(target=run, args=(prompts[::-1],)),
        threading.Thread(target=run, args=(prompts[10:30],)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert count(count_file) == 40
    assert sum(u.requests for _, u in outs) == 40
    assert sum(u.cache_hits for _, u in outs) == 40 + 40 + 20 - 40
    assert cache.info().waited > 0
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 0


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _plant_claims(path, keys, *, pid, host, heartbeat):
    conn = sqlite3.connect(path)
    conn.executemany(
        "INSERT INTO claims VALUES (?, ?, ?, ?, ?)",
        [(k, f"{host}:{pid}:x", pid, host, heartbeat) for k in keys],
    )
    conn.commit()
    conn.close()


def _keys(backend, query, prompts):
    return KeyBuilder(backend.identity(), backend.request_settings(query)).many(prompts)


@pytest.mark.skipif(sys.platform == "win32", reason="pid liveness is POSIX here")
def test_claims_of_a_dead_process_are_taken_over_at_once(tmp_path):
    from skllmprob.cache.claims import HOST

    path = tmp_path / "c.sqlite"
    cache = CompletionCache(path)
    backend = DeterministicBackend(name="dead-claims")
    prompts = [f"p{i}" for i in range(5)]
    _plant_claims(
        path,
        _keys(backend, Query(5), prompts),
        pid=_dead_pid(),
        host=HOST,
        heartbeat=time.time(),
    )
    start = time.monotonic()
    _, usage = fetch_completions(backend, cache, Query(5), prompts)
    assert usage.requests == 5
    assert time.monotonic() - start < 5
    # clear() also forgets claims of dead processes, and keeps live ones.
    others = [f"q{i}" for i in range(3)]
    _plant_claims(
        path,
        _keys(backend, Query(5), others[:2]),
        pid=_dead_pid(),
        host=HOST,
        heartbeat=time.time(),
    )
    _plant_claims(
        path,
        _keys(backend, Query(5), others[2:]),
        pid=os.getpid(),
        host=HOST,
        heartbeat=time.time(),
    )
    cache.clear()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 1


def test_claims_from_elsewhere_are_waited_for_then_taken_over(tmp_path):
    path = tmp_path / "c.sqlite"
    cache = CompletionCache(path, claim_timeout=0.5)
    backend = DeterministicBackend(name="remote-claims")
    prompts = [f"p{i}" for i in range(4)]
    keys = _keys(backend, Query(5), prompts)
    # Another host's live claim: its pid cannot be checked, only its heartbeat.
    _plant_claims(path, keys[:2], pid=1, host="elsewhere", heartbeat=time.time())
    start = time.monotonic()
    _, usage = fetch_completions(backend, cache, Query(5), prompts)
    waited = time.monotonic() - start
    assert usage.requests == 4
    assert 0.3 < waited < 10


def test_a_released_claim_is_requested_by_the_waiter(tmp_path):
    path = tmp_path / "c.sqlite"
    cache = CompletionCache(path)
    backend = DeterministicBackend(name="released")
    prompts = [f"p{i}" for i in range(3)]
    keys = _keys(backend, Query(5), prompts)
    holder = cache.session()
    _, mine, _ = holder.claim(keys)
    assert mine == keys
    threading.Timer(0.3, holder.close).start()  # gives up without results
    _, usage = fetch_completions(backend, cache, Query(5), prompts)
    assert usage.requests == 3


# -------------------------------------------------------------------- processes


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_uses_its_own_connections(tmp_path):
    import multiprocessing as mp

    path = str(tmp_path / "c.sqlite")
    clf = det_clf(cache=path).fit(None, None)
    texts, _ = make_texts(20)
    clf.predict_proba(texts[:10])
    ctx = mp.get_context("fork")
    with ctx.Pool(2) as pool:
        results = pool.map(_child_predict, [(clf, texts[5:15]), (clf, texts[10:20])])
    assert [r.shape for r in results] == [(10, 2), (10, 2)]
    info = clf.cache_info()
    assert info.entries == 20
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    clf.predict_proba(texts)
    assert clf.usage_.last.requests == 0


def _child_predict(args):
    clf, texts = args
    return clf.predict_proba(texts)


@pytest.mark.slow
def test_two_processes_writing_the_same_file(tmp_path):
    path = tmp_path / "c.sqlite"
    count_file = tmp_path / "count"
    code = """
        import sys
        from cache_helpers import FileCountingBackend, make_texts
        from skllmprob import LogprobClassifier
        path, count_file, which = sys.argv[1], sys.argv[2], int(sys.argv[3])
        texts, _ = make_texts(300)
        # Each process: 100 texts of its own and 200 shared ones, in its own order.
        mine = texts[:200] + texts[200 + 50 * which: 250 + 50 * which]
        mine = mine[::-1] if which else mine
        backend = FileCountingBackend(count_file=count_file, latency=0.001)
        clf = LogprobClassifier(labels=["positive", "negative"], backend=backend,
                                cache=path, progress=False).fit(None, None)
        for start in range(0, len(mine), 50):
            clf.predict_proba(mine[start:start + 50])
        print(clf.cache_info().waited)
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + str(ROOT / "tests")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), str(path), str(count_file), str(w)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in (0, 1)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("SELECT COUNT(*) FROM completions").fetchone()[0] == 300
    assert conn.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 0
    conn.close()
    # No lost entries, none sent twice: the claims kept the processes apart.
    assert count(count_file) == 300
    cache = CompletionCache(path)
    texts, _ = make_texts(300)
    clf = det_clf(cache=str(path)).fit(None, None)
    clf.predict_proba(texts)
    assert clf.usage_.last.requests == 0
    assert cache.info().corrupt == 0


# ------------------------------------------------------- through the OpenAI backend


def _openai_clf(base_url, path, **kw):
    return LogprobClassifier(
        "stub-model",
        labels=["positive", "negative"],
        base_url=base_url,
        cache=str(path),
        progress=False,
        **kw,
    )


def test_openai_backend_keys_follow_settings_not_the_api_key(tmp_path):
    from skllmprob.backends.openai import OpenAIBackend

    q = Query(top_logprobs=20)

    def key(**kw):
        params = {"model": "m", "base_url": "http://127.0.0.1:1/v1", "api_key": "sk-a"}
        params.update(kw)
        b = OpenAIBackend(**params)
        return KeyBuilder(b.identity(), b.request_settings(q))("p")

    base = key()
    assert key(api_key="sk-b") == base
    assert key(api_key=None) == base
    assert key(endpoint="chat") != key(endpoint="completions")
    for change in [
        {"model": "m2"},
        {"base_url": "http://127.0.0.1:2/v1"},
        {"temperature": 0.7},
        {"logit_bias": {"123": 1.0}},
        {"seed": 3},
    ]:
        assert key(**change) != base, change
    b = OpenAIBackend(model="m", base_url="http://127.0.0.1:1/v1")
    assert KeyBuilder(b.identity(), b.request_settings(Query(top_logprobs=5)))("p") != base


def test_openai_backend_results_are_cached_without_the_key(tmp_path):
    from skllmprob.testing.openai_stub import OpenAIStub

    texts, labels = make_texts(20)
    path = tmp_path / "c.sqlite"
    with OpenAIStub(api_key="sk-very-secret-123") as stub:
        clf = _openai_clf(stub.base_url, path, api_key="sk-very-secret-123").fit(texts, labels)
        assert stub.requests == 20
        proba = clf.predict_proba(texts)
        clone(clf).fit(texts, labels)
        assert stub.requests == 20
        open_cache(str(path))._memory.clear()
        np.testing.assert_array_equal(clf.predict_proba(texts), proba)
        assert stub.requests == 20
    for f in path.parent.iterdir():
        assert b"sk-very-secret-123" not in f.read_bytes(), f


@pytest.mark.slow
def test_parallel_model_selection_sends_each_prompt_once_to_the_server(tmp_path):
    from skllmprob.testing.openai_stub import OpenAIStub

    path = tmp_path / "c.sqlite"
    with OpenAIStub(latency=0.005) as stub:
        run_model_selection(str(path), stub.base_url, n_texts=60, n_jobs=2)
        # Each text once, plus the 3 content-free prompts; the claims kept the two
        # loky worker processes from sending the same prompt twice.
        assert stub.requests == 60 + 3
        assert max(stub.prompt_requests.values()) == 1
        second = run_python(
            """
            import sys
            from cache_helpers import run_model_selection
            run_model_selection(sys.argv[1], sys.argv[2], n_texts=60, n_jobs=2)
            """,
            str(path),
            stub.base_url,
        )
        assert second.returncode == 0, second.stderr
        assert stub.requests == 60 + 3


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_rerun_after_sigkill_sends_only_what_was_not_completed(tmp_path):
    import signal

    from skllmprob.testing.openai_stub import OpenAIStub

    path = tmp_path / "c.sqlite"
    code = """
        import sys
        from cache_helpers import make_texts
        from skllmprob import LogprobClassifier
        path, base_url = sys.argv[1], sys.argv[2]
        clf = LogprobClassifier("stub-model", labels=["positive", "negative"],
                                base_url=base_url, cache=path, progress=False,
                                max_concurrency=4).fit(None, None)
        clf.predict_proba(make_texts(200)[0])
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + str(ROOT / "tests")}
    with OpenAIStub(latency=0.02) as stub:
        proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), str(path), stub.base_url], env=env
        )
        deadline = time.monotonic() + 60
        while stub.requests < 100 and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        sent = stub.requests
        assert 100 <= sent < 200
        conn = sqlite3.connect(path)
        committed = conn.execute("SELECT COUNT(*) FROM completions").fetchone()[0]
        assert conn.execute("SELECT COUNT(*) FROM claims").fetchone()[0] > 0  # left behind
        conn.close()
        # Only requests in flight (at most 4) or just answered were lost.
        assert sent - 8 <= committed <= sent
        clf = _openai_clf(stub.base_url, path).fit(None, None)
        clf.predict_proba(make_texts(200)[0])
        assert clf.usage_.last.requests == 200 - committed
        assert stub.requests - sent == 200 - committed
        assert sum(stub.prompt_successes.values()) >= 200
