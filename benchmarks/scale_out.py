"""Scale-out: one process vs a 2-worker Dask cluster, and cached reads from PostgreSQL.

Starts a throwaway PostgreSQL server (``tests/pg_fixture.py``; needs ``initdb`` and
psycopg) unless ``--pg-url`` names one, and the stub OpenAI-compatible server with a
fixed latency. Three parts:

1. ``fan_out``: N unique texts, one process with ``max_concurrency=C`` against a
   2-worker ``distributed.LocalCluster`` (one thread each, ``max_concurrency=C/2``:
   the same total), each on a fresh database: wall times, their ratio and requests
   per unique prompt (target 1.00).
2. ``model_selection``: ``GridSearchCV`` (cv=5, 8 candidates) under joblib's Dask
   backend with the shared cache: requests == unique prompts (the texts, plus the 3
   content-free prompts of the contextual calibration).
3. ``cached``: ``predict_proba`` of M cached texts (deterministic backend), the
   memory layer emptied before each call: PostgreSQL vs SQLite, and the warm memory
   layer and TF-IDF + LR for reference; interleaved rounds, medians.

Usage::

    python benchmarks/scale_out.py --data /work/shared/data/sst2/train.csv \
        --n 2000 --latency 0.05 --concurrency 16 --cached-n 10000 --json scale_out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
for extra in (ROOT, ROOT / "tests"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from skllmprob import LogprobClassifier  # noqa: E402
from skllmprob.backends import DeterministicBackend  # noqa: E402
from skllmprob.cache import open_cache  # noqa: E402
from skllmprob.testing.openai_stub import OpenAIStub  # noqa: E402

LABELS = ["positive", "negative"]


def load_texts(path: str | None, n: int) -> tuple[list[str], list[str]]:
    """``n`` distinct texts and labels from a CSV (text, label), else synthetic."""
    if path:
        frame = pd.read_csv(path).drop_duplicates("text").head(n)
        if len(frame) < n:
            raise SystemExit(f"{path} has only {len(frame)} distinct texts (asked for {n})")
        return frame["text"].astype(str).tolist(), frame["label"].astype(str).tolist()
    words = ["great", "awful", "fine", "dull", "superb", "poor", "moving", "boring"]
    texts = [f"review {i}: the film was {words[i % 8]}" for i in range(n)]
    return texts, [LABELS[(i % 8) % 2] for i in range(n)]


def stub_clf(stub: OpenAIStub, url: str, concurrency: int) -> LogprobClassifier:
    return LogprobClassifier(
        "stub-model",
        labels=LABELS,
        base_url=stub.base_url,
        cache=url,
        progress=False,
        max_concurrency=concurrency,
    )


def _predict_partition(part, clf):
    return pd.DataFrame(clf.predict_proba(part["text"].tolist()), index=part.index)


def fan_out(stub, urls, texts, concurrency) -> dict:
    """Part 1: the same texts from one process, then from the two workers."""
    import dask.dataframe as dd

    before = stub.requests
    start = time.perf_counter()
    stub_clf(stub, urls[0], concurrency).fit(None, None).predict_proba(texts)
    one = time.perf_counter() - start
    one_requests = stub.requests - before
    clf = stub_clf(stub, urls[1], max(1, concurrency // 2)).fit(None, None)
    meta = pd.DataFrame({0: pd.Series(dtype="float64"), 1: pd.Series(dtype="float64")})
    # Warm the workers up (imports, first connection) on texts of their own.
    warm = dd.from_pandas(pd.DataFrame({"text": [f"warm-up {i}" for i in range(8)]}), 8)
    warm.map_partitions(_predict_partition, clf, meta=meta).compute()
    frame = dd.from_pandas(pd.DataFrame({"text": texts}), npartitions=8)
    before = stub.requests
    start = time.perf_counter()
    frame.map_partitions(_predict_partition, clf, meta=meta).compute()
    two = time.perf_counter() - start
    return {
        "n": len(texts),
        "one_process_s": one,
        "dask_2_workers_s": two,
        "ratio_one_over_dask": one / two,
        "requests_per_unique_one_process": one_requests / len(texts),
        "requests_per_unique_dask": (stub.requests - before) / len(texts),
    }


def model_selection(stub, url, texts, labels, concurrency) -> dict:
    """Part 2: 8 candidates x 5 folds on the cluster, one shared cache."""
    import joblib
    from sklearn.model_selection import GridSearchCV

    grid = [
        {"calibration": ["none", "contextual"]},
        {"calibration": ["bias", "affine"], "calibration_alpha": [0.01, 0.1, 1.0]},
    ]
    before = stub.requests
    start = time.perf_counter()
    with joblib.parallel_config(backend="dask"):
        GridSearchCV(stub_clf(stub, url, concurrency), grid, cv=5, n_jobs=-1).fit(texts, labels)
    requests = stub.requests - before
    return {
        "n": len(texts),
        "candidates": 8,
        "folds": 5,
        "seconds": time.perf_counter() - start,
        "requests": requests,
        "unique_prompts": len(texts) + 3,
        "requests_per_unique": requests / (len(texts) + 3),
    }


def cached(url: str, sqlite: str, texts, labels, repeat: int) -> dict:
    """Part 3: cached predict_proba, PostgreSQL vs SQLite vs memory vs TF-IDF + LR."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    def det(cache):
        return LogprobClassifier(
            labels=LABELS, backend=DeterministicBackend(), cache=cache, progress=False
        ).fit(None, None)

    pg, lite = det(url), det(sqlite)
    pg.predict_proba(texts)
    lite.predict_proba(texts)
    tfidf = make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=1000)).fit(texts, labels)

    def cold(clf, cache):
        def call():
            open_cache(cache)._memory.clear()
            clf.predict_proba(texts)

        return call

    cases = {
        "postgresql": cold(pg, url),
        "sqlite": cold(lite, sqlite),
        "memory": lambda: pg.predict_proba(texts),
        "tfidf_lr": lambda: tfidf.predict_proba(texts),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeat):
        for name, call in cases.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    return {
        "n": len(texts),
        "median_s": medians,
        "postgresql_over_sqlite": medians["postgresql"] / medians["sqlite"],
        "postgresql_over_tfidf": medians["postgresql"] / medians["tfidf_lr"],
        "requests_last_call": pg.usage_.last.requests,
    }


@contextlib.contextmanager
def databases(pg_url: str | None, count: int):
    """``count`` fresh databases (URLs without the password, which is in $PGPASSWORD)."""
    if pg_url:  # an existing server: one fresh schema per part
        import psycopg

        with psycopg.connect(pg_url, autocommit=True) as conn:
            for i in range(count):
                conn.execute(f"DROP SCHEMA IF EXISTS scale_out_{i} CASCADE")
                conn.execute(f"CREATE SCHEMA scale_out_{i}")
        yield [f"{pg_url}?options=-csearch_path%3Dscale_out_{i}" for i in range(count)]
        return
    import pg_fixture

    reason = pg_fixture.available()
    if reason:
        raise SystemExit(f"cannot start PostgreSQL: {reason} (or pass --pg-url)")
    with pg_fixture.throwaway_server() as server:
        os.environ["PGPASSWORD"] = server.password
        names = [f"scale_out_{i}" for i in range(count)]
        for name in names:
            server.create_database(name)
        yield [server.url(name, password=False) for name in names]


def distributed_parts(args, urls: list[str], texts, labels) -> dict:
    """Parts 1 and 2, on a 2-worker Dask cluster and the stub server."""
    import distributed

    result = {}
    with OpenAIStub(latency=args.latency) as stub:
        env = {"PYTHONPATH": str(ROOT), "PGPASSWORD": os.environ.get("PGPASSWORD", "")}
        with (
            distributed.LocalCluster(
                n_workers=2,
                threads_per_worker=1,
                host="127.0.0.1",
                dashboard_address=None,
                env=env,
            ) as cluster,
            distributed.Client(cluster),
        ):
            result["fan_out"] = fan_out(stub, urls[:2], texts[: args.n], args.concurrency)
            print(json.dumps(result["fan_out"], indent=2))
            result["model_selection"] = model_selection(
                stub, urls[2], texts[: args.n], labels[: args.n], args.concurrency
            )
            print(json.dumps(result["model_selection"], indent=2))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="a CSV file with 'text' and 'label' columns")
    parser.add_argument("--n", type=int, default=2000, help="texts of parts 1 and 2")
    parser.add_argument("--cached-n", type=int, default=10_000, help="texts of part 3")
    parser.add_argument("--latency", type=float, default=0.05, help="stub seconds/answer")
    parser.add_argument("--concurrency", type=int, default=16, help="total max_concurrency")
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds of part 3")
    parser.add_argument("--pg-url", help="an existing database (its schema must exist)")
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument(
        "--cached-only", action="store_true", help="run part 3 only (no cluster, no stub)"
    )
    args = parser.parse_args()

    texts, labels = load_texts(args.data, max(args.n, args.cached_n))
    result = {"python": platform.python_version(), "args": vars(args)}
    with databases(args.pg_url, 4) as urls:
        if not args.cached_only:
            result.update(distributed_parts(args, urls, texts, labels))
        sqlite = os.path.join(tempfile.mkdtemp(), "c.sqlite")
        result["cached"] = cached(
            urls[3], sqlite, texts[: args.cached_n], labels[: args.cached_n], args.repeat
        )
        print(json.dumps(result["cached"], indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
