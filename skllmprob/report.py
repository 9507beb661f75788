"""Evaluating classifiers on a labelled test set: metrics, a Markdown report and
plots.

The metrics of :func:`score_predictions` are accuracy, macro F1, log loss, Brier
score (scikit-learn's :func:`~sklearn.metrics.brier_score_loss`: for two classes the
mean squared error of the probability of the second class, for more the squared
error summed over the classes) and the expected calibration error of the top label
(:func:`skllmprob.metrics.expected_calibration_error`, 10 bins). Plots
need matplotlib (extra ``plot``); they are drawn on a
:class:`matplotlib.figure.Figure`, without pyplot, so no window opens and no global
backend is changed.

Examples
--------
>>> import numpy as np
>>> classes = np.array(["negative", "positive"])
>>> y = np.array(["positive", "negative", "positive"])
>>> proba = np.array([[0.2, 0.8], [0.6, 0.4], [0.7, 0.3]])
>>> r = Evaluated("toy", proba, classes[proba.argmax(axis=1)])
>>> m = score_predictions(r, y, classes)
>>> round(m["accuracy"], 3), round(m["macro_f1"], 3)
(0.667, 0.667)
>>> print(format_table([m], ["model", "accuracy", "log_loss"]))
model  accuracy  log loss
toy       0.667     0.646
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    log_loss,
)

from .metrics import expected_calibration_error, reliability_bins, top_label

__all__ = [
    "METRIC_COLUMNS",
    "Evaluated",
    "format_table",
    "markdown_report",
    "markdown_table",
    "plot_confusion",
    "plot_reliability",
    "require_matplotlib",
    "score_predictions",
    "summary_text",
    "tfidf_baseline",
    "write_report",
]

#: Columns of the metrics table, in order, with their headings.
METRIC_COLUMNS = {
    "model": "model",
    "accuracy": "accuracy",
    "macro_f1": "macro F1",
    "log_loss": "log loss",
    "brier": "Brier",
    "ece": "ECE",
    "coverage": "coverage",
}


@dataclass
class Evaluated:
    """The predictions of one model on the test set.

    Parameters
    ----------
    name : str
        How the model is called in tables and plots.
    proba : ndarray of shape (n_samples, n_classes)
        Probabilities, columns in the order of the ``classes`` given to the
        functions of this module.
    pred : ndarray of shape (n_samples,)
        Predicted labels.
    coverage : ndarray of shape (n_samples,), optional
        Label coverage (LLM classifiers only).
    note : str, optional
        How the model was trained, for the report.
    metrics : dict, optional
        Its scores, once computed (:func:`score_predictions`).
    """

    name: str
    proba: np.ndarray
    pred: np.ndarray
    coverage: np.ndarray | None = None
    note: str = ""
    metrics: dict | None = None


def _y_index(y_true, classes) -> np.ndarray:
    index = {c: i for i, c in enumerate(np.asarray(classes).tolist())}
    try:
        return np.array([index[v] for v in np.asarray(y_true).tolist()], dtype=int)
    except KeyError as e:
        raise ValueError(f"label {e.args[0]!r} is not one of the classes.") from e


def score_predictions(result: Evaluated, y_true, classes, n_bins: int = 10) -> dict:
    """The metrics of one model.

    Parameters
    ----------
    result : Evaluated
    y_true : array-like of shape (n_samples,)
    classes : array-like of shape (n_classes,)
        The labels, in the order of the columns of ``result.proba``.
    n_bins : int, default=10
        Bins of the expected calibration error.

    Returns
    -------
    dict
        ``model``, ``accuracy``, ``macro_f1``, ``log_loss``, ``brier``, ``ece`` and
        ``coverage`` (mean label coverage, NaN when not known).
    """
    classes = np.asarray(classes)
    y_true = np.asarray(y_true)
    proba = np.asarray(result.proba, dtype=float)
    y_idx = _y_index(y_true, classes)
    labels = classes.tolist()
    confidence, correct = top_label(proba, y_idx)
    if len(labels) == 2:
        brier = brier_score_loss(y_idx, proba[:, 1], pos_label=1)
    else:
        brier = brier_score_loss(y_idx, proba, labels=list(range(len(labels))))
    return {
        "model": result.name,
        "accuracy": float(accuracy_score(y_true, result.pred)),
        "macro_f1": float(
            f1_score(y_true, result.pred, labels=labels, average="macro", zero_division=0)
        ),
        "log_loss": float(log_loss(y_idx, proba, labels=list(range(len(labels))))),
        "brier": float(brier),
        "ece": expected_calibration_error(confidence, correct, n_bins=n_bins),
        "coverage": (
            float(np.mean(result.coverage)) if result.coverage is not None else float("nan")
        ),
    }


def _cell(value) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def format_table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    """A plain-text table of metric rows (numbers right-aligned, 3 decimals)."""
    columns = list(columns or [c for c in METRIC_COLUMNS if any(c in r for r in rows)])
    cells = [[_cell(r.get(c, float("nan"))) for c in columns] for r in rows]
    heads = [METRIC_COLUMNS.get(c, c) for c in columns]
    widths = [max(len(h), *(len(row[j]) for row in cells)) for j, h in enumerate(heads)]
    lines = [
        "  ".join(
            h.ljust(w) if j == 0 else h.rjust(w)
            for j, (h, w) in enumerate(zip(heads, widths, strict=True))
        ).rstrip()
    ]
    for row in cells:
        lines.append(
            "  ".join(
                c.ljust(w) if j == 0 else c.rjust(w)
                for j, (c, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )
    return "\n".join(lines)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table; numbers right-aligned.

    >>> print(markdown_table(["a", "b"], [["x", 0.5]]))
    | a | b |
    |:--|--:|
    | x | 0.500 |
    """

    def esc(v) -> str:
        return _cell(v).replace("|", "\\|").replace("\n", " ")

    numeric = [
        all(isinstance(r[j], int | float | np.integer | np.floating) for r in rows)
        and len(rows) > 0
        for j in range(len(header))
    ]
    out = ["| " + " | ".join(esc(h) for h in header) + " |"]
    out.append("|" + "|".join("--:" if n else ":--" for n in numeric) + "|")
    out.extend("| " + " | ".join(esc(v) for v in r) + " |" for r in rows)
    return "\n".join(out)


def require_matplotlib():
    """Import matplotlib's Figure, or raise ImportError with the install hint."""
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(
            "plots need matplotlib: pip install 'skllmprob[plot]' (or pip install matplotlib)."
        ) from e
    return Figure


def plot_reliability(
    results: Sequence[Evaluated], y_true, classes, path, n_bins: int = 10
) -> Path:
    """Write a reliability diagram (top-label confidence against accuracy) as PNG.

    The upper panel shows, per confidence bin, the accuracy of each model next to
    the diagonal of perfect calibration; the lower one how many samples fall in each
    bin.
    """
    Figure = require_matplotlib()
    y_idx = _y_index(y_true, classes)
    fig = Figure(figsize=(6, 6.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect")
    edges = np.linspace(0, 1, n_bins + 1)
    width = 1.0 / n_bins / (len(results) + 1)
    for m, r in enumerate(results):
        confidence, correct = top_label(r.proba, y_idx)
        mean_conf, acc, count = reliability_bins(confidence, correct, n_bins)
        ece = expected_calibration_error(confidence, correct, n_bins)
        filled = count > 0
        top.plot(mean_conf[filled], acc[filled], marker="o", label=f"{r.name} (ECE {ece:.3f})")
        bottom.bar(edges[:-1] + (m + 0.5) * width, count, width=width, label=r.name)
    k = len(np.asarray(classes))
    low = max(0.0, 1.0 / k - 0.05) if k else 0.0
    top.set_xlim(low, 1.0)
    top.set_ylim(-0.02, 1.02)
    top.set_ylabel("accuracy")
    top.set_title("Reliability of the top label")
    top.legend(loc="best", fontsize="small")
    top.grid(alpha=0.3)
    bottom.set_xlabel("confidence (probability of the predicted class)")
    bottom.set_ylabel("samples")
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def plot_confusion(results: Sequence[Evaluated], y_true, classes, path) -> Path:
    """Write the confusion matrices of the models side by side as PNG (rows: true
    label, columns: predicted label)."""
    Figure = require_matplotlib()
    labels = np.asarray(classes).tolist()
    k = len(labels)
    n = len(results)
    size = max(3.5, 0.45 * k + 2.5)
    fig = Figure(figsize=(size * n, size), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, n))
    for ax, r in zip(axes, results, strict=True):
        cm = confusion_matrix(y_true, r.pred, labels=labels)
        ax.imshow(cm, cmap="Blues", vmin=0)
        if k <= 30:
            limit = cm.max() / 2 if cm.size else 0
            for i in range(k):
                for j in range(k):
                    ax.text(
                        j,
                        i,
                        str(cm[i, j]),
                        ha="center",
                        va="center",
                        fontsize="small" if k > 10 else "medium",
                        color="white" if cm[i, j] > limit else "black",
                    )
        ticks = np.arange(k)
        shown = [str(lab)[:18] for lab in labels]
        ax.set_xticks(ticks, shown, rotation=45 if k > 3 else 0, ha="right" if k > 3 else "center")
        ax.set_yticks(ticks, shown)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(r.name, fontsize="medium")
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def tfidf_baseline(
    train_texts,
    train_y,
    test_texts,
    classes,
    *,
    test_y=None,
    max_folds: int = 5,
    random_state: int = 0,
) -> tuple[np.ndarray | None, str]:
    """A TF-IDF + logistic regression baseline on the same labels.

    Trained on ``train_texts``; without them, cross-validated on the test set
    itself (stratified, ``min(max_folds, smallest class count)`` folds), so every
    test prediction comes from a model that did not see that sample.

    Returns
    -------
    proba : ndarray of shape (n_test, n_classes) or None
        Columns in the order of ``classes`` (0 for a class the model never saw);
        ``None`` when no baseline can be trained.
    note : str
        How it was trained, or why there is no baseline.

    Examples
    --------
    >>> proba, note = tfidf_baseline(["good", "bad", "great", "awful"],
    ...                              ["pos", "neg", "pos", "neg"], ["good"], ["neg", "pos"])
    >>> proba.shape, note, bool(proba[0, 1] > 0.5)
    ((1, 2), 'trained', True)
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline

    model = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
        LogisticRegression(max_iter=2000),
    )
    classes_list = np.asarray(classes).tolist()
    test_texts = list(test_texts)
    if train_texts is not None:
        train_y = list(train_y)
        if len(set(train_y)) < 2:
            return None, "no baseline: the training set has a single label"
        model.fit(list(train_texts), train_y)
        fitted = model.classes_.tolist()
        raw = model.predict_proba(test_texts)
        note = "trained"
    else:
        test_y = list(test_y)
        counts = {c: test_y.count(c) for c in set(test_y)}
        folds = min(max_folds, min(counts.values()))
        if len(counts) < 2 or folds < 2:
            return None, (
                "no baseline: without a training set it is cross-validated on the test "
                "set, which needs at least 2 samples of each of at least 2 labels"
            )
        cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=random_state)
        raw = cross_val_predict(model, test_texts, test_y, cv=cv, method="predict_proba")
        fitted = sorted(counts)
        note = f"{folds}-fold cross-validation"
    proba = np.zeros((len(test_texts), len(classes_list)))
    for j, c in enumerate(fitted):
        if c in classes_list:
            proba[:, classes_list.index(c)] = raw[:, j]
    return proba, note


def _confusion_text(y_true, pred, labels) -> str:
    cm = confusion_matrix(y_true, pred, labels=labels)
    width = max(5, *(len(str(c)) for c in labels), len(str(cm.max())))
    out = [" " * width + "  " + "  ".join(str(c).rjust(width) for c in labels)]
    for c, row in zip(labels, cm, strict=True):
        out.append(str(c).ljust(width) + "  " + "  ".join(str(v).rjust(width) for v in row))
    return "\n".join(out)


def summary_text(results: Sequence[Evaluated], y_true, classes, *, n_bins: int = 10) -> str:
    """The metrics table, how each model was trained, and the confusion matrix of
    the first model, as plain text. Fills ``metrics`` of each result."""
    rows = []
    for r in results:
        r.metrics = score_predictions(r, y_true, classes, n_bins=n_bins)
        rows.append(r.metrics)
    labels = np.asarray(classes).tolist()
    lines = [format_table(rows), ""]
    lines += [f"  {r.name}: {r.note}" for r in results]
    lines += [
        "",
        f"confusion matrix of {results[0].name} (rows: true, columns: predicted)",
        _confusion_text(y_true, results[0].pred, labels),
        "",
    ]
    return "\n".join(lines)


def _confusion_section(first: Evaluated, y_true, labels) -> list[str]:
    cm = confusion_matrix(y_true, first.pred, labels=labels)
    return [
        f"## Confusion matrix of {first.name}",
        "",
        "Rows: true label; columns: predicted label.",
        "",
        markdown_table(
            ["true \\ predicted", *map(str, labels)],
            [[str(c), *map(int, row)] for c, row in zip(labels, cm, strict=True)],
        ),
        "",
        "![Confusion matrices](confusion.png)",
        "",
    ]


def markdown_report(
    results: Sequence[Evaluated],
    y_true,
    classes,
    *,
    n_bins: int = 10,
    data: str = "",
    notes: Sequence[str] = (),
    about: Sequence[str] = (),
) -> str:
    """The evaluation as Markdown, linking ``confusion.png`` and ``reliability.png``."""
    labels = np.asarray(classes).tolist()
    y_list = np.asarray(y_true).tolist()
    for r in results:
        if r.metrics is None:
            r.metrics = score_predictions(r, y_true, classes, n_bins=n_bins)
    cols = list(METRIC_COLUMNS)
    lines = ["# skllmprob evaluation", ""]
    if data:
        lines += [data, ""]
    lines += [
        "Labels and their counts in the test set: "
        + ", ".join(f"{c} ({y_list.count(c)})" for c in labels)
        + ".",
        "",
        "## Metrics",
        "",
        markdown_table(
            [METRIC_COLUMNS[c] for c in cols],
            [[r.metrics.get(c, float("nan")) for c in cols] for r in results],
        ),
        "",
        *(f"- **{r.name}**: {r.note}." for r in results),
        "",
        "Accuracy and macro F1 use the predicted labels; log loss, Brier score "
        "(scikit-learn's `brier_score_loss`) and ECE (top-label expected calibration "
        f"error, {n_bins} equal-width bins) use the probabilities. Coverage is the mean "
        "probability the model put on any label before renormalization.",
        "",
    ]
    lines += [x for n in notes for x in (f"_{n}._", "")]
    lines += _confusion_section(results[0], y_true, labels)
    lines += ["## Reliability", "", "![Reliability diagram](reliability.png)", ""]
    if about:
        lines += ["## Classifier", "", *(f"- {a}" for a in about), ""]
    return "\n".join(lines)


def write_report(
    folder, results: Sequence[Evaluated], y_true, classes, *, n_bins: int = 10, **markdown
) -> Path:
    """Write ``report.md``, ``reliability.png`` and ``confusion.png`` into ``folder``.

    The confusion matrices are those of the first model and of the models that are
    not the first one's uncalibrated twin (names ending in ``calibration=none``).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plot_reliability(results, y_true, classes, folder / "reliability.png", n_bins=n_bins)
    shown = [r for i, r in enumerate(results) if i == 0 or not r.name.endswith("calibration=none")]
    plot_confusion(shown, y_true, classes, folder / "confusion.png")
    text = markdown_report(results, y_true, classes, n_bins=n_bins, **markdown)
    path = folder / "report.md"
    tmp = folder / ".report.md.tmp"
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path
