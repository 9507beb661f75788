"""The classifier of a command: built from the options, loaded, saved, scored, and
its results written as CSV columns.

Examples
--------
>>> import numpy as np
>>> from skllmprob.cli.csvio import CsvTable
>>> table = CsvTable("in.csv", ["text"], [["a gem"]], [2])
>>> scored = Scored(np.array([[0.25, 0.75]]), np.array(["pos"]), np.array([0.9]))
>>> header, rows = scored_table(table, ["pos", "neg"], ["neg", "pos"], scored)
>>> header, rows
(['text', 'proba_pos', 'proba_neg', 'predicted', 'coverage'], [['a gem', '0.75', '0.25', \
'pos', '0.9']])
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..exceptions import InputError
from .csvio import CsvTable, replace_keeping_mode
from .inputs import UsageError, read_descriptions
from .run import Run

__all__ = [
    "LOW_COVERAGE",
    "Scored",
    "build_classifier",
    "check_output_columns",
    "class_order",
    "coverage_note",
    "load_model",
    "model_name",
    "save_model",
    "score",
    "scored_table",
    "use_loaded",
]

LOW_COVERAGE = 0.5


def _api_key(args) -> str | None:
    name = getattr(args, "api_key_env", None)
    if not name:
        return None
    value = os.environ.get(name)
    if not value:
        raise UsageError(f"--api-key-env {name}: the environment variable {name} is not set.")
    return value


def runtime_params(run: Run) -> dict[str, Any]:
    """The cache, progress and server options given on the command line."""
    args = run.args
    params: dict[str, Any] = {"cache": run.cache_setting, "progress": run.progress()}
    for name in ("base_url", "max_concurrency", "timeout", "max_retries"):
        value = getattr(args, name, None)
        if value is not None:
            params[name] = value
    key = _api_key(args)
    if key is not None:
        params["api_key"] = key
    return params


def build_classifier(run: Run, *, labels, prompt, examples, calibration, scoring=None):
    """A new :class:`~skllmprob.LogprobClassifier` from the options of ``run``."""
    from ..classifier import LogprobClassifier

    args = run.args
    params: dict[str, Any] = {
        "model": args.model,
        "labels": labels,
        "prompt": prompt,
        "examples": examples,
        "calibration": calibration,
        "backend": args.backend,
        "endpoint": args.endpoint,
        "top_logprobs": args.top_logprobs,
        "option_codes": args.option_codes,
        "backend_options": dict(args.backend_option) or None,
        "descriptions": read_descriptions(getattr(args, "descriptions", None)),
    }
    if scoring is not None:
        params["scoring"] = scoring
    params.update(runtime_params(run))
    clf = LogprobClassifier(**params)
    run.track(clf)
    return clf


def load_model(path: str):
    """A fitted classifier saved by ``skllmprob fit``."""
    from ..classifier import LogprobClassifier

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{path}: no such file (the model saved by 'skllmprob fit').")
    import joblib

    try:
        clf = joblib.load(p)
    except Exception as e:
        raise InputError(
            f"{path} is not a model saved by 'skllmprob fit' ({type(e).__name__}: {e})."
        ) from e
    if not isinstance(clf, LogprobClassifier):
        raise InputError(
            f"{path} holds a {type(clf).__name__}, not a LogprobClassifier saved by "
            "'skllmprob fit'."
        )
    if not hasattr(clf, "classes_"):
        raise InputError(f"{path} holds a LogprobClassifier that was never fitted.")
    return clf


def use_loaded(run: Run, clf) -> None:
    """Apply the command line's runtime options to a loaded classifier; without
    ``--cache`` or ``--no-cache`` it keeps the cache it was fitted with."""
    runtime = runtime_params(run)
    if not run.args.cache and not run.args.no_cache:
        runtime.pop("cache")
        run.cache_setting = clf.cache
    clf.set_params(**runtime)
    run.track(clf)


def save_model(clf, run: Run, path: str) -> None:
    """Save ``clf`` atomically, without a throw-away cache and with default progress."""
    import joblib

    params: dict[str, Any] = {"progress": "auto"}
    if run.cache_is_temporary:
        params["cache"] = False
    clf.set_params(**params)  # set_params on a fitted estimator keeps what it learned
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        joblib.dump(clf, tmp)
        replace_keeping_mode(tmp, target, None)  # a new model file stays 0600
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def model_name(clf) -> str:
    if clf.model is not None:
        name = os.fspath(clf.model)
        return os.path.basename(name) if name.lower().endswith(".gguf") else name
    return "deterministic" if backend_name(clf) == "deterministic" else "Gemma 3 270M"


def backend_name(clf) -> str:
    return clf.backend if isinstance(clf.backend, str) else type(clf.backend).__name__


# ------------------------------------------------------------------------ scoring


@dataclass(frozen=True)
class Scored:
    """What a command writes for its rows, in ``classes_`` order."""

    proba: np.ndarray
    pred: np.ndarray
    coverage: np.ndarray
    raw: np.ndarray | None = None  # the probabilities before calibration


def score(clf, X, *, raw: bool = False) -> Scored:
    """Probabilities, predictions and coverage of ``X`` (and, with ``raw``, the
    probabilities before calibration), from one pass to the backend."""
    scores = clf.score_texts(X)
    proba = clf.calibrator_.predict_proba(scores.log_mass)
    pred = clf.classes_[clf.calibrator_.predict(scores.log_mass)]
    return Scored(proba, pred, scores.coverage, scores.raw_proba if raw else None)


def class_order(labels, classes) -> list:
    """The classes in the order of the labels given, else of ``classes``."""
    classes = list(classes)
    if isinstance(labels, dict):
        labels = list(labels)
    if labels is not None:
        order = [c for c in np.asarray(labels, dtype=object).ravel().tolist() if c in classes]
        if sorted(map(str, order)) == sorted(map(str, classes)):
            return order
    return classes


def _added_columns(order) -> list[str]:
    return [f"proba_{c}" for c in order] + ["predicted", "coverage"]


def check_output_columns(table: CsvTable, order) -> None:
    """The columns the output adds must not be in the input already."""
    clash = [n for n in _added_columns(order) if n in table.header]
    if clash:
        raise InputError(
            f"{table.name} already has the column(s) {', '.join(clash)}, which the output "
            "adds; rename them first (or classify the original file)."
        )


def scored_table(table: CsvTable, order, classes, scored: Scored):
    """The header and rows of ``table`` with ``proba_<class>`` (in ``order``),
    ``predicted`` and ``coverage`` added."""
    position = {c: i for i, c in enumerate(list(classes))}
    cols = [position[c] for c in order]
    rows = [
        [
            *row,
            *(f"{p:.6g}" for p in scored.proba[i, cols]),
            str(scored.pred[i]),
            f"{scored.coverage[i]:.6g}",
        ]
        for i, row in enumerate(table.rows)
    ]
    return [*table.header, *_added_columns(order)], rows


def coverage_note(run: Run, coverage: float, clf=None) -> None:
    """Warn when the model put little of its probability on the labels."""
    if math.isnan(coverage) or coverage >= LOW_COVERAGE:
        return
    other = ""
    tokens = clf.other_tokens_ if clf is not None else None
    if tokens:
        top = sorted(tokens.items(), key=lambda kv: -kv[1])[:5]
        other = "; it answered instead: " + ", ".join(f"{t!r} ({m:.2f})" for t, m in top)
    run.warn(
        f"the model put only {coverage:.0%} of its probability on the labels on average"
        f"{other}. Check the prompt (--prompt-file) and the labels, or give --examples."
    )
