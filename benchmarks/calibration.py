"""Calibration benchmark: what ``fit`` gains from a few labelled samples.

For one data folder (``train.csv`` and ``test.csv`` with columns ``text,label``), on
the embedded local model (``LogprobClassifier(model=None)``: Gemma 3 270M through
llama.cpp), this scores the first ``--n-test`` test rows and reports accuracy, macro
F1, log loss, Brier score and expected calibration error (ECE, 15 equal-width bins
of the top-class confidence) for

- the raw zero-shot probabilities (``calibration="none"``) and every calibration
  method, with labelled samples of ``--n-labels`` sizes drawn from train with fixed
  seeds (``--seeds`` draws each; the table shows the mean and the standard
  deviation over draws);
- the same with a few-shot prompt (``--shots`` examples drawn from train, as
  balanced over the classes as possible; they are never among the labelled
  samples);
- ``TfidfVectorizer + LogisticRegression`` trained on the same labelled samples,
  and on every train row.

It prints one table per prompt, writes every figure to ``<out>/results.json``,
saves a reliability diagram per configuration (``<out>/reliability/*.png``, first
draw) and checks the targets of issue 8 when the folder is ``mr`` or ``ag_news``.

Every completion goes through the library's cache (``--cache``, by default
``<out>/cache.sqlite``): configurations that share prompts cost nothing more, and a
second run is all cache hits. The Brier score is scikit-learn's
``brier_score_loss`` (binary: on the positive class; several classes: the sum over
classes, between 0 and 2).

Example::

    python benchmarks/calibration.py /work/shared/data/mr --n-test 500
    python benchmarks/calibration.py /work/shared/data/ag_news --n-test 2000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from calibration_report import (  # the folder of this script
    check_targets,
    issue16_targets,
    markdown_tables,
    metrics,
    print_tables,
    reliability_diagram,
    summarize,
)
from many_classes import plain

from skllmprob import LogprobClassifier

LABEL_FREE = ("none", "contextual")
LABELLED = ("bias", "affine", "vector", "auto", "threshold", "contextual-bias")
#: Fitted from the texts of the drawn rows, without their labels (``fit(X, None)``).
ROW_FREE = ("batch",)


# ------------------------------------------------------------------------------ data


def few_shot_examples(train: pd.DataFrame, classes, shots: int, seed: int):
    """``shots`` train rows, as balanced over the classes as possible, interleaved."""
    rng = np.random.default_rng(seed)
    per = [shots // len(classes) + (i < shots % len(classes)) for i in range(len(classes))]
    chosen = []
    for c, m in zip(classes, per, strict=True):
        rows = np.flatnonzero(train.label.to_numpy() == c)
        chosen.append(list(rng.choice(rows, m, replace=False)))
    order = [r for i in range(max(per)) for rows in chosen if i < len(rows) for r in [rows[i]]]
    return order


# ------------------------------------------------------------------------------- run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", type=Path, help="folder with train.csv and test.csv (text,label)")
    ap.add_argument("--n-test", type=int, default=500, help="first N test rows (default 500)")
    ap.add_argument(
        "--test-rows",
        choices=["first", "random"],
        default="first",
        help="the first N test rows, or N drawn at random (seed 0; for test files sorted "
        "by class, as Banking77's)",
    )
    ap.add_argument("--n-labels", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--seeds", type=int, default=5, help="labelled draws per size (default 5)")
    ap.add_argument("--shots", type=int, default=4, help="few-shot examples (default 4)")
    ap.add_argument("--shots-seed", type=int, default=0)
    ap.add_argument(
        "--prompts",
        nargs="+",
        choices=["zero-shot", "few-shot"],
        default=["zero-shot", "few-shot"],
        help="which prompts to run (default both)",
    )
    ap.add_argument("--prompt", default=None, help="prompt template (default: the library's)")
    ap.add_argument("--methods", nargs="+", default=[*LABEL_FREE, *LABELLED, *ROW_FREE])
    ap.add_argument("--alpha", type=float, default=None, help="calibration_alpha override")
    ap.add_argument("--n-threads", type=int, default=None, help="llama.cpp threads")
    ap.add_argument(
        "--out", type=Path, default=None, help="default benchmarks/results/calibration-<data>"
    )
    ap.add_argument(
        "--cache", default=None, help="completion cache file (default <out>/cache.sqlite)"
    )
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument(
        "--plain-labels",
        action="store_true",
        help="ask for the labels as plain words ('activate_my_card' -> 'activate my card')",
    )
    args = ap.parse_args(argv)

    name = args.data.resolve().name
    out = args.out or Path(__file__).resolve().parent / "results" / f"calibration-{name}"
    (out / "reliability").mkdir(parents=True, exist_ok=True)
    cache = args.cache or str(out / "cache.sqlite")

    train = pd.read_csv(args.data / "train.csv", keep_default_na=False)
    test = pd.read_csv(args.data / "test.csv", keep_default_na=False)
    if args.test_rows == "random":
        test = test.iloc[np.random.default_rng(0).permutation(len(test))]
    test = test.iloc[: args.n_test]
    classes = np.array(sorted(set(train.label)))
    k = len(classes)
    y_test = np.searchsorted(classes, test.label.to_numpy())
    X_test = test.text.tolist()

    shot_rows = few_shot_examples(train, classes, args.shots, args.shots_seed)
    examples = [(train.text.iloc[i], train.label.iloc[i]) for i in shot_rows]
    pool = np.setdiff1d(np.arange(len(train)), shot_rows)
    draws = {}
    for seed in range(args.seeds):
        rows = np.random.default_rng(seed).choice(pool, max(args.n_labels), replace=False)
        for n in args.n_labels:
            draws[(n, seed)] = rows[:n]

    methods = [m for m in args.methods if not (m == "threshold" and k != 2)]
    base = {
        "labels": ({c: plain(c) for c in classes} if args.plain_labels else list(classes)),
        "prompt": args.prompt,
        "cache": cache,
        "progress": False,
    }
    if args.n_threads:
        base["backend_options"] = {"n_threads": args.n_threads}
    if args.alpha is not None:
        base["calibration_alpha"] = args.alpha

    results: dict = {"configs": [], "coverage": {}}
    requests = 0
    t_start = time.perf_counter()
    prompt_modes = [
        (m, e) for m, e in [("zero-shot", None), ("few-shot", examples)] if m in args.prompts
    ]
    for mode, exs in prompt_modes:
        t_mode = time.perf_counter()
        for method in methods:
            sizes = [0] if method in LABEL_FREE else args.n_labels
            for n in sizes:
                runs = []
                for seed in range(1 if n == 0 else args.seeds):
                    clf = LogprobClassifier(calibration=method, examples=exs, **base)
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        if n == 0:
                            clf.fit(None, None)
                        else:
                            rows = draws[(n, seed)]
                            labelled = method not in ROW_FREE
                            y_rows = train.label.iloc[rows].to_numpy() if labelled else None
                            clf.fit(train.text.iloc[rows].tolist(), y_rows)
                    proba = clf.predict_proba(X_test)
                    pred = np.searchsorted(classes, clf.predict(X_test))
                    requests += clf.usage_.total.requests
                    r = metrics(y_test, proba, pred, k)
                    r["warnings"] = len(caught)
                    r["chosen"] = clf.calibration_chosen_
                    runs.append(r)
                    if method == "none":
                        cov = clf.predict_coverage(X_test)
                        results["coverage"][mode] = float(cov.mean())
                    if seed == 0 and not args.no_plots:
                        tag = f"{name}-{mode}-{method}" + (f"-n{n}" if n else "")
                        reliability_diagram(y_test, proba, tag, out / "reliability" / f"{tag}.png")
                results["configs"].append(
                    {
                        "prompt": mode,
                        "method": method,
                        "n": n,
                        "runs": runs,
                        "summary": summarize(
                            [
                                {kk: v for kk, v in r.items() if kk not in ("warnings", "chosen")}
                                for r in runs
                            ]
                        ),
                    }
                )
                print(
                    f"  {mode:9s} {method:15s} n={n:<4d} "
                    f"acc {np.mean([r['accuracy'] for r in runs]):.3f}  "
                    f"ll {np.mean([r['log_loss'] for r in runs]):.3f}",
                    flush=True,
                )
        results.setdefault("seconds", {})[mode] = time.perf_counter() - t_mode

    # TF-IDF + logistic regression on the same labelled samples, and on all of train.
    t_lr = time.perf_counter()
    for n in [*args.n_labels, len(train)]:
        runs = []
        for seed in range(args.seeds if n != len(train) else 1):
            rows = draws[(n, seed)] if n != len(train) else np.arange(len(train))
            yy = np.searchsorted(classes, train.label.iloc[rows].to_numpy())
            lr = make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=2000))
            lr.fit(train.text.iloc[rows].tolist(), yy)
            proba = np.full((len(X_test), k), 1e-6)
            proba[:, lr.classes_] = lr.predict_proba(X_test)  # classes absent from yy
            proba /= proba.sum(axis=1, keepdims=True)
            runs.append(metrics(y_test, proba, proba.argmax(axis=1), k))
            if seed == 0 and not args.no_plots:
                tag = f"{name}-tfidf-lr-n{n}"
                reliability_diagram(y_test, proba, tag, out / "reliability" / f"{tag}.png")
        results["configs"].append(
            {"prompt": "tfidf+lr", "method": "-", "n": n, "runs": runs, "summary": summarize(runs)}
        )
    results["seconds"]["tfidf+lr"] = time.perf_counter() - t_lr
    results["seconds"]["total"] = time.perf_counter() - t_start

    results["run"] = {
        "command": " ".join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "data": name,
        "n_test": len(test),
        "n_train": len(train),
        "classes": classes.tolist(),
        "n_labels": args.n_labels,
        "seeds": args.seeds,
        "shots": [(train.text.iloc[i], str(train.label.iloc[i])) for i in shot_rows],
        "prompt": args.prompt,
        "calibration_alpha": args.alpha,
        "model_requests": requests,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_end": os.getloadavg(),
        },
    }
    targets = check_targets(name, results) + issue16_targets(name, results)
    results["targets"] = targets
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(markdown_tables(results))
    print_tables(results)
    print(
        f"\n{requests} model requests; {results['seconds']['total']:.0f} s in all "
        f"({', '.join(f'{m}: {s:.0f} s' for m, s in results['seconds'].items() if m != 'total')})"
    )
    print(f"results: {out / 'results.json'}; reliability diagrams: {out / 'reliability'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
