"""backend="decisions" with the rest of the library, unchanged: GridSearchCV, the
cache across processes (a second process sends no request) and the CLI's
``evaluate`` next to its TF-IDF + logistic regression baseline."""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from skllmprob import LogprobClassifier
from skllmprob.testing.openai_stub import OpenAIStub

MODEL = "gpt-6-luna"
TEAMS = ("billing", "shipping", "account")
ROOT = Path(__file__).resolve().parents[2]


def weights(text: str, values: list) -> list[float]:
    """The class named in the text gets 4, the others 1; 'account' is inflated x5
    (a bias that calibration removes)."""
    words = text.replace("<", " ").replace(">", " ").split()
    return [(1.0 + 3.0 * (v in words)) * (5.0 if v == "account" else 1.0) for v in values]


def rows(n: int, seed: int):
    y = [TEAMS[(i * 7 + seed) % 3] for i in range(n)]
    return [f"ticket {seed}-{i} about {t}" for i, t in enumerate(y)], y


def classifier(stub, **kw):
    """A LogprobClassifier on the stub's /v1/decisions (``kw``: more parameters)."""
    kw = {"cache": False, "labels": list(TEAMS), "max_retries": 0, **kw}
    return LogprobClassifier(MODEL, backend="decisions", base_url=stub.base_url, api_key="k", **kw)


def test_grid_search_one_request_per_unique_row(tmp_path):
    from sklearn.model_selection import GridSearchCV

    X, y = rows(30, seed=1)
    with OpenAIStub(decisions=weights) as stub:
        clf = classifier(stub, cache=str(tmp_path / "c.sqlite"))
        grid = GridSearchCV(clf, {"calibration": ["none", "bias", "affine"]}, cv=3)
        grid.fit(X, y)
        assert stub.requests == len(set(X))  # every fit and score after the first: cache
    assert grid.best_params_["calibration"] in ("bias", "affine")
    results = grid.cv_results_
    scores = dict(zip(results["param_calibration"], results["mean_test_score"], strict=True))
    assert scores["none"] < 0.7 and grid.best_score_ == 1.0  # the bias hurts; fit removes it


def test_a_second_process_sends_no_request(tmp_path):
    cache = str(tmp_path / "c.sqlite")
    X, y = rows(12, seed=2)
    with OpenAIStub(decisions=weights) as stub:
        first = classifier(stub, cache=cache, calibration="bias").fit(X, y).predict_proba(X)
        assert stub.requests == 12
        code = (
            "import sys, json, numpy as np\n"
            "from skllmprob import LogprobClassifier\n"
            "X, y = json.loads(sys.argv[1])\n"
            f"clf = LogprobClassifier({MODEL!r}, backend='decisions', base_url=sys.argv[2],\n"
            f"    api_key='sk-test', labels={list(TEAMS)!r}, cache=sys.argv[3],\n"
            "    calibration='bias', max_retries=0).fit(X, y)\n"
            "print(json.dumps(clf.predict_proba(X).tolist()))\n"
        )
        import json

        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        out = subprocess.run(
            [sys.executable, "-c", code, json.dumps([X, y]), stub.base_url, cache],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=True,
        )
        assert stub.requests == 12  # answered from the cache file
    np.testing.assert_allclose(json.loads(out.stdout), first)


def _write(path: Path, X, y) -> str:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(zip(X, y, strict=True))
    return str(path)


def test_cli_evaluate_against_the_baseline(tmp_path, monkeypatch):
    from skllmprob.cli import main

    train = _write(tmp_path / "train.csv", *rows(64, seed=3))
    test = _write(tmp_path / "test.csv", *rows(30, seed=4))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with OpenAIStub(decisions=weights) as stub:
        out, err = io.StringIO(), io.StringIO()
        argv = ["evaluate", test, "--train", train, "--backend", "decisions", "--model", MODEL]
        argv += ["--base-url", stub.base_url, "--no-cache", "--labels", *TEAMS]
        code = main(argv, stdout=out, stderr=err)
        assert code == 0, err.getvalue()
        assert stub.requests == 94
    text = out.getvalue()
    accuracy = {
        m.group(1): float(m.group(2))
        for m in re.finditer(r"^(.+?)\s{2,}(\d\.\d{3})\s", text, flags=re.M)
    }
    assert accuracy["gpt-6-luna, calibration=bias"] == 1.0  # the bias removed by fit
    assert accuracy["gpt-6-luna, calibration=none"] < 0.5
    assert accuracy["TF-IDF + logistic regression"] > 0.9


@pytest.mark.parametrize("backend", ["decisions", "systemone"])
def test_cli_backend_choice(backend):
    from skllmprob.cli.parser import build_parser

    args = build_parser().parse_args(["classify", "x.csv", "--model", "m", "--backend", backend])
    assert args.backend == backend
