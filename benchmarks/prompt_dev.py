"""Default-prompt candidates compared on held-out *training* rows (never test rows).

For one data folder, draws ``--n-dev`` rows of ``train.csv`` (disjoint from the
few-shot examples, which are drawn as in ``benchmarks/calibration.py``), and for each
candidate template, zero-shot and with ``--shots`` examples, reports

- ``raw``: the accuracy of the uncalibrated label probabilities on the dev rows;
- ``bias64``: the mean accuracy of ``calibration="bias"`` fitted on 64 dev rows and
  evaluated on the other dev rows, over ``--splits`` random splits (the criterion
  the default prompt was chosen by).

The candidates are the previous default without delimiters ("F") and two delimited
variants of it. Every completion goes through the library's cache, so the splits
cost nothing more than one pass over the dev rows per template.

Example::

    python benchmarks/prompt_dev.py /work/shared/data/mr --n-dev 400 --shots-seed 5
    python benchmarks/prompt_dev.py /work/shared/data/ag_news --n-dev 300 --shots-seed 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from calibration import few_shot_examples

from skllmprob import LogprobClassifier

CANDIDATES = {
    "F": "Categories: {labels}.\n\n{examples}Text: {text}\nCategory:",
    "F-tags": "Categories: {labels}.\n\n{examples}Text: <text>{text}</text>\nCategory:",
    "F-tags2": (
        "Categories: {labels}. The text is between <text> and </text>.\n\n"
        "{examples}<text>{text}</text>\nCategory:"
    ),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", type=Path, help="folder with train.csv (text,label)")
    ap.add_argument("--n-dev", type=int, default=400)
    ap.add_argument("--shots", type=int, default=4)
    ap.add_argument("--shots-seed", type=int, default=0)
    ap.add_argument("--splits", type=int, default=40)
    ap.add_argument("--cache", default=None, help="completion cache file")
    ap.add_argument("--json", default=None, help="write the results to this JSON file")
    args = ap.parse_args(argv)

    train = pd.read_csv(args.data / "train.csv", keep_default_na=False)
    classes = sorted(train.label.unique())
    shot_rows = few_shot_examples(train, classes, args.shots, args.shots_seed)
    rest = np.setdiff1d(np.arange(len(train)), shot_rows)
    dev = np.random.default_rng(123).choice(rest, args.n_dev, replace=False)
    X, y = train.text.to_numpy()[dev], train.label.to_numpy()[dev]
    examples = [(train.text[i], train.label[i]) for i in shot_rows]
    cache = args.cache or True

    rows = []
    for name, template in CANDIDATES.items():
        for shots in (0, args.shots):
            start = time.perf_counter()
            base = {
                "labels": classes,
                "prompt": template,
                "examples": examples if shots else None,
                "cache": cache,
            }
            raw = LogprobClassifier(**base).fit(None, None)
            raw_acc = float(np.mean(raw.predict(X) == y))
            rng = np.random.default_rng(0)
            accs = []
            for _ in range(args.splits):
                idx = rng.permutation(args.n_dev)
                fit_rows, eval_rows = idx[:64], idx[64:]
                clf = LogprobClassifier(calibration="bias", **base).fit(X[fit_rows], y[fit_rows])
                accs.append(float(np.mean(clf.predict(X[eval_rows]) == y[eval_rows])))
            row = {
                "prompt": name,
                "shots": shots,
                "raw": raw_acc,
                "bias64": float(np.mean(accs)),
                "seconds": round(time.perf_counter() - start, 1),
            }
            rows.append(row)
            sys.stdout.write(
                f"{args.data.name:8s} {name:8s} shots={shots}  raw {row['raw']:.3f}  "
                f"bias64 {row['bias64']:.3f}  ({row['seconds']} s)\n"
            )
            sys.stdout.flush()
    if args.json:
        Path(args.json).write_text(
            json.dumps({"command": " ".join(sys.argv), "candidates": CANDIDATES, "rows": rows})
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
