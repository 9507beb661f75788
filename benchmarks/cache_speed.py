"""predict_proba on cached texts vs. TfidfVectorizer + LogisticRegression.

Fills a fresh completion cache with the deterministic backend for N texts, fits a
TF-IDF + logistic regression model on other texts of the same file, then times, side
by side and interleaved, ``predict_proba`` of both on the same N texts:

- ``warm``: the usual case, cache entries in this process's memory layer;
- ``sqlite``: the memory layer emptied before each call (every entry read and
  decoded from the SQLite file);
- ``new process``: the first ``predict_proba`` of a fresh Python process, against
  the first TF-IDF ``predict_proba`` of that process. Not counted on either side:
  interpreter start, imports (scikit-learn, pandas, skllmprob), reading the texts,
  unpickling the TF-IDF model and ``fit``. Counted for skllmprob: opening the cache
  file (connection, schema check), reading and decoding every entry, and its first
  classification of every returned token. Measured skllmprob first, then TF-IDF;
- ``new process, collected``: the same after ``gc.collect()`` (before each side's
  call): the full garbage collection that the imports left due is then not paid
  inside the first call that allocates many objects (here skllmprob's).

The targets are ``warm`` ratio <= 1.0 (issue 4), ``sqlite`` and ``new process``
ratios <= 2.0 (issue 13). Usage::

    python benchmarks/cache_speed.py /work/shared/data/sst2/train.csv --n 10000 \
        --json cache_speed.json

``--breakdown`` adds one more fresh process, not timed with the others: the first
``predict_proba`` under :mod:`cProfile` (its slowest functions, by own time) and
the time of the garbage collections that ran inside it.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pickle
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from skllmprob import LogprobClassifier  # noqa: E402
from skllmprob.backends import DeterministicBackend  # noqa: E402
from skllmprob.cache import open_cache  # noqa: E402

LABELS = ["positive", "negative"]


def make_clf(cache: str) -> LogprobClassifier:
    return LogprobClassifier(
        labels=LABELS, backend=DeterministicBackend(), cache=cache, progress=False
    ).fit(None, None)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def child(cache: str, texts_file: str, model_file: str, collect: str) -> None:
    """The new-process measurement: first calls of each model in a fresh process
    (``collect == "1"``: a full garbage collection before each; ``"profile"``: the
    breakdown of skllmprob's call instead)."""
    texts = json.loads(Path(texts_file).read_text())
    with open(model_file, "rb") as f:
        tfidf = pickle.load(f)
    clf = make_clf(cache)
    if collect == "profile":
        breakdown(clf, texts)
        return
    before = gc.collect if collect == "1" else lambda: None
    before()
    t_llm = timed(lambda: clf.predict_proba(texts))
    before()
    t_tfidf = timed(lambda: tfidf.predict_proba(texts))
    assert clf.usage_.last.requests == 0, "texts were not cached"
    print(json.dumps({"llm": t_llm, "tfidf": t_tfidf}))


def breakdown(clf: LogprobClassifier, texts: list[str]) -> None:
    """The first ``predict_proba`` of this process under cProfile, and its garbage
    collections (generation, milliseconds)."""
    import cProfile
    import io
    import pstats

    collections: list[tuple[int, float]] = []
    started = [0.0]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            collections.append((info["generation"], 1000 * (time.perf_counter() - started[0])))

    gc.callbacks.append(on_gc)
    profile = cProfile.Profile()
    profile.runcall(clf.predict_proba, texts)
    gc.callbacks.remove(on_gc)
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(15)
    print(out.getvalue())
    total = sum(ms for _, ms in collections)
    by_gen = {g: sum(ms for gen, ms in collections if gen == g) for g in (0, 1, 2)}
    print(f"garbage collections: {len(collections)}, {total:.1f} ms (by generation {by_gen})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", help="a CSV file with a 'text' column (and 'label')")
    parser.add_argument("--n", type=int, default=10_000, help="texts to predict")
    parser.add_argument("--repeat", type=int, default=7, help="timed rounds per case")
    parser.add_argument(
        "--processes", type=int, default=5, help="fresh processes per new-process case"
    )
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument(
        "--breakdown", action="store_true", help="profile the first call of a new process"
    )
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    df = pd.read_csv(args.data)
    if len(df) < 2 * args.n:
        raise SystemExit(f"{args.data} has {len(df)} rows; need {2 * args.n} (predict + train)")
    texts = df.text.astype(str).tolist()[: args.n]
    train = df.iloc[args.n : 2 * args.n]

    tmp = tempfile.mkdtemp(prefix="skllmprob-bench-")
    cache = os.path.join(tmp, "completions.sqlite")
    clf = make_clf(cache)
    fill = timed(lambda: clf.predict_proba(texts))
    n_unique = len(set(texts))
    assert clf.usage_.last.requests == n_unique

    tfidf = make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=1000))
    tfidf.fit(train.text.astype(str), train.label)
    mem = open_cache(cache)._memory

    def sqlite_call():
        mem.clear()
        return timed(lambda: clf.predict_proba(texts))

    cases = {
        "warm": lambda: timed(lambda: clf.predict_proba(texts)),
        "sqlite": sqlite_call,
    }
    # Each case in its own interleaved rounds (TF-IDF call, case call, ...), so that
    # load changes on the machine hit both sides alike.
    tf_times: dict[str, list[float]] = {k: [] for k in cases}
    times: dict[str, list[float]] = {k: [] for k in cases}
    for name, fn in cases.items():
        fn()  # one untimed call to reach the case's steady state
        for _ in range(args.repeat):
            tf_times[name].append(timed(lambda: tfidf.predict_proba(texts)))
            times[name].append(fn())
            assert clf.usage_.last.requests == 0

    texts_file = os.path.join(tmp, "texts.json")
    Path(texts_file).write_text(json.dumps(texts))
    model_file = os.path.join(tmp, "tfidf.pkl")
    with open(model_file, "wb") as f:
        pickle.dump(tfidf, f)
    fresh: dict[str, tuple[list[float], list[float]]] = {}
    for name, collect in (("new process", "0"), ("new process, collected", "1")):
        llm_times, tf_times_fresh = fresh[name] = ([], [])
        for _ in range(args.processes):
            cmd = [sys.executable, __file__, args.data, "--child", cache, texts_file, model_file]
            out = subprocess.run([*cmd, collect], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            llm_times.append(r["llm"])
            tf_times_fresh.append(r["tfidf"])

    if args.breakdown:
        cmd = [sys.executable, __file__, args.data, "--child", cache, texts_file, model_file]
        print(subprocess.run([*cmd, "profile"], capture_output=True, text=True, check=True).stdout)

    rows = []
    for name in cases:
        med, tf_med = statistics.median(times[name]), statistics.median(tf_times[name])
        rows.append((name, med, tf_med, med / tf_med))
    for name, (llm_times, tf_times_fresh) in fresh.items():
        fl, ft = statistics.median(llm_times), statistics.median(tf_times_fresh)
        rows.append((name, fl, ft, fl / ft))

    print(f"predict_proba on {args.n} cached texts ({n_unique} unique) of {args.data}")
    print(
        f"cache filled in {fill:.2f} s; {args.repeat} interleaved rounds per case "
        f"({args.processes} processes for a new process), medians"
    )
    print(f"{'case':<24} {'skllmprob s':>12} {'tfidf+LR s':>11} {'ratio':>7}")
    for name, a, b, r in rows:
        print(f"{name:<24} {a:>12.4f} {b:>11.4f} {r:>7.2f}")
    print(f"target: warm ratio <= 1.0 -> {'met' if rows[0][3] <= 1.0 else 'NOT met'}")
    within = all(r <= 2.0 for name, _, _, r in rows if name in ("sqlite", "new process"))
    print(f"target: sqlite and new process ratios <= 2.0 -> {'met' if within else 'NOT met'}")
    result = {
        "data": args.data,
        "n_texts": args.n,
        "n_unique": n_unique,
        "repeat": args.repeat,
        "processes": args.processes,
        "fill_seconds": fill,
        "cases": {name: {"skllmprob_s": a, "tfidf_lr_s": b, "ratio": r} for name, a, b, r in rows},
        "raw": {
            **{f"{k}_skllmprob": v for k, v in times.items()},
            **{f"{k}_tfidf": v for k, v in tf_times.items()},
            "new_process_skllmprob": fresh["new process"][0],
            "new_process_tfidf": fresh["new process"][1],
            "new_process_collected_skllmprob": fresh["new process, collected"][0],
            "new_process_collected_tfidf": fresh["new process, collected"][1],
        },
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
