"""A fitted LogprobClassifier on a real dask.distributed cluster (2 worker processes),
sharing the PostgreSQL cache with the driver; requests counted at the stub server."""

from __future__ import annotations

import os

import numpy as np
import pytest
from cache_helpers import make_texts
from dask_helpers import local_cluster
from dask_helpers import meta as _meta
from dask_helpers import proba_frame as _proba_frame

from skllmprob import LogprobClassifier
from skllmprob.exceptions import SkllmprobError

pytest.importorskip("psycopg")
pytest.importorskip("distributed")
dd = pytest.importorskip("dask.dataframe")
pd = pytest.importorskip("pandas")

pytestmark = pytest.mark.postgres

KEY = "sk-dask-secret-4711"
LABELS = ["positive", "negative"]


@pytest.fixture(scope="module")
def stub():
    from skllmprob.testing.openai_stub import OpenAIStub

    with OpenAIStub(latency=0.01, api_key=KEY) as server:
        yield server


@pytest.fixture(scope="module")
def cluster(pg_server):
    """Two worker processes whose environment has the API key and the database
    password (neither is ever pickled)."""
    env = {"OPENAI_API_KEY": KEY, "PGPASSWORD": pg_server.password}
    with local_cluster(env, threads_per_worker=2) as client:
        yield client


@pytest.fixture
def url(pg_server, pg_url, monkeypatch):
    """The test database's URL without its password: every process reads it from
    $PGPASSWORD (the driver too)."""
    monkeypatch.setenv("PGPASSWORD", pg_server.password)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    return pg_url.replace(f":{pg_server.password}@", "@")


def make_clf(stub, url, **kw):
    return LogprobClassifier(
        "stub-model",
        labels=LABELS,
        base_url=stub.base_url,
        api_key=KEY,  # the driver's key; the workers read theirs from $OPENAI_API_KEY
        cache=url,
        progress=False,
        **kw,
    )


def _worker_misses(url):
    from skllmprob.cache import open_cache

    return open_cache(url).info().misses


def test_predict_proba_over_a_dask_dataframe_sends_each_prompt_once(cluster, stub, url):
    texts, labels = make_texts(120, seed=3)
    clf = make_clf(stub, url).fit(texts[:20], labels[:20])
    before = stub.requests
    assert before == 20
    # Both halves hold the same 120 texts (the second reversed), in 4 partitions:
    # the two workers need the same prompts at the same time.
    frame = pd.DataFrame({"text": texts + texts[::-1]})
    ddf = dd.from_pandas(frame, npartitions=4)
    out = ddf.map_partitions(_proba_frame, clf, meta=_meta(clf)).compute()
    assert out.shape == (240, 2)
    assert stub.requests - before == 100  # 120 unique, 20 already cached by fit
    assert max(stub.prompt_requests.values()) == 1
    misses = cluster.run(_worker_misses, url)
    assert sum(misses.values()) == 100
    # The driver reads the workers' answers from the database: nothing is sent.
    local = clf.predict_proba(frame["text"].tolist())
    assert clf.usage_.last.requests == 0
    np.testing.assert_allclose(out.to_numpy(), local, rtol=0, atol=0)
    # A second run on the cluster sends nothing.
    again = ddf.map_partitions(_proba_frame, clf, meta=_meta(clf)).compute()
    np.testing.assert_array_equal(again.to_numpy(), out.to_numpy())
    assert stub.requests - before == 100


def test_dask_bag_of_texts(cluster, stub, url):
    import dask.bag as db

    texts, _ = make_texts(40, seed=5)
    clf = make_clf(stub, url).fit(None, None)
    before = stub.requests
    bag = db.from_sequence(texts + texts, npartitions=4)
    rows = bag.map_partitions(lambda part: list(clf.predict_proba(list(part)))).compute()
    assert np.asarray(rows).shape == (80, 2)
    assert stub.requests - before == 40


def test_grid_search_on_the_cluster_sends_each_prompt_once(cluster, stub, url):
    import joblib
    from sklearn.model_selection import GridSearchCV

    texts, labels = make_texts(60, seed=7)
    grid = {"calibration": ["none", "bias", "affine", "contextual"]}
    before = stub.requests
    with joblib.parallel_config(backend="dask"):
        search = GridSearchCV(make_clf(stub, url), grid, cv=3, n_jobs=-1).fit(texts, labels)
    # Every text once, plus the 3 content-free prompts of "contextual"; the refit of
    # the best candidate on the driver was answered by the database.
    assert stub.requests - before == 60 + 3
    assert max(stub.prompt_requests.values()) == 1
    workers = cluster.run(_worker_misses, url)
    assert sum(workers.values()) > 0  # the candidates ran on the workers
    with joblib.parallel_config(backend="dask"):
        GridSearchCV(make_clf(stub, url), grid, cv=3, n_jobs=-1).fit(texts, labels)
    assert stub.requests - before == 60 + 3
    assert search.best_estimator_.predict(texts).shape == (60,)


def test_a_worker_without_the_api_key_says_why(cluster, stub, url):
    texts, _ = make_texts(8, seed=11)
    clf = make_clf(stub, url).fit(None, None)
    saved = cluster.run(lambda: os.environ.pop("OPENAI_API_KEY", None))
    try:
        ddf = dd.from_pandas(pd.DataFrame({"text": texts}), npartitions=2)
        with pytest.raises(SkllmprobError) as e:
            ddf.map_partitions(_proba_frame, clf, meta=_meta(clf)).compute()
    finally:
        key = next(iter(saved.values()))
        cluster.run(lambda: os.environ.__setitem__("OPENAI_API_KEY", key))
    message = str(e.value)
    assert "never pickled" in message and "OPENAI_API_KEY" in message
    assert KEY not in message


def test_killing_a_worker_mid_run_loses_nothing_committed(cluster, stub, url):
    import signal
    import time

    texts, _ = make_texts(160, seed=17)
    clf = make_clf(stub, url, max_concurrency=4).fit(None, None)
    ddf = dd.from_pandas(pd.DataFrame({"text": texts}), npartitions=4)
    before = stub.requests
    future = cluster.compute(ddf.map_partitions(_proba_frame, clf, meta=_meta(clf)))
    deadline = time.monotonic() + 60
    while stub.requests - before < 40 and time.monotonic() < deadline:
        time.sleep(0.005)
    victim = next(iter(cluster.run(os.getpid).values()))
    assert not future.done()
    os.kill(victim, signal.SIGKILL)  # the nanny starts a new worker; dask reruns its tasks
    out = future.result(timeout=120)
    assert victim not in cluster.run(os.getpid).values()
    assert out.shape == (160, 2)
    sent = stub.requests - before
    # At most the killed worker's requests in flight (max_concurrency=4 per task,
    # 2 tasks per worker) were paid twice; everything else was sent once.
    assert 160 <= sent <= 160 + 8
    local = clf.predict_proba(texts)
    assert clf.usage_.last.requests == 0
    np.testing.assert_array_equal(out.to_numpy(), local)
