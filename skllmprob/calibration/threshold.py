"""A binary decision threshold tuned for a metric: :func:`fit_threshold`, the
metrics it computes from confusion counts (:data:`THRESHOLD_METRICS`) and their
curve over the thresholds (:func:`threshold_metric_curve`)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .logmass import weights_or_ones

__all__ = ["THRESHOLD_METRICS", "fit_threshold", "threshold_metric_curve"]


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros(np.broadcast(num, den).shape)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _accuracy(tp, fp, tn, fn):
    return (tp + tn) / (tp + fp + tn + fn)


def _balanced_accuracy(tp, fp, tn, fn):
    # The mean recall over the classes that have samples (as scikit-learn).
    has_pos, has_neg = (tp + fn) > 0, (tn + fp) > 0
    total = _safe_div(tp, tp + fn) * has_pos + _safe_div(tn, tn + fp) * has_neg
    return _safe_div(total, has_pos * 1.0 + has_neg)


def _f1(tp, fp, tn, fn):
    return _safe_div(2 * tp, 2 * tp + fp + fn)


def _precision(tp, fp, tn, fn):
    return _safe_div(tp, tp + fp)


def _recall(tp, fp, tn, fn):
    return _safe_div(tp, tp + fn)


def _mcc(tp, fp, tn, fn):
    den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return _safe_div(tp * tn - fp * fn, den)


#: Metrics :func:`fit_threshold` computes from confusion counts (sklearn's
#: definitions; an undefined ratio counts as 0, like ``zero_division=0``).
THRESHOLD_METRICS: dict[str, Callable] = {
    "accuracy": _accuracy,
    "balanced_accuracy": _balanced_accuracy,
    "f1": _f1,
    "precision": _precision,
    "recall": _recall,
    "matthews_corrcoef": _mcc,
}


def threshold_metric_curve(
    scores: np.ndarray,
    y: np.ndarray,
    scoring: str | Callable = "accuracy",
    *,
    sample_weight: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A metric of the decision ``scores >= t`` at every distinct candidate ``t``.

    Candidates are the midpoints between consecutive distinct scores, plus one
    below and one above all of them (all positive, all negative).

    Parameters
    ----------
    scores : array-like of shape (n_samples,)
        Scores of the positive class (e.g. its probability).
    y : array-like of bool, shape (n_samples,)
        ``True`` for the positive class.
    scoring : str or callable, default="accuracy"
        A name in :data:`THRESHOLD_METRICS`, computed for all candidates at once
        from weighted confusion counts, or a callable ``metric(y_true, y_pred)``
        on booleans (called once per candidate, with ``sample_weight=`` when
        weights are given).
    sample_weight : array-like of shape (n_samples,), optional

    Returns
    -------
    thresholds : ndarray
        Increasing candidates.
    values : ndarray
        The metric at each candidate.

    Examples
    --------
    >>> t, v = threshold_metric_curve([0.1, 0.2, 0.3, 0.4], [False, False, True, True])
    >>> t.round(2).tolist(), v.tolist()
    ([0.1, 0.15, 0.25, 0.35, 0.4], [0.5, 0.75, 1.0, 0.75, 0.5])
    """
    s = np.asarray(scores, dtype=float)
    y = np.asarray(y)
    if s.ndim != 1 or y.shape != s.shape:
        raise ValueError(
            f"scores and y must be 1-D and of the same length, got {s.shape} and {y.shape}."
        )
    if len(s) == 0:
        raise ValueError("fit_threshold needs at least one sample.")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite.")
    y = y.astype(bool)
    w = weights_or_ones(sample_weight, len(s))
    u, inv = np.unique(s, return_inverse=True)
    cands = np.concatenate(
        [[np.nextafter(u[0], -np.inf)], (u[:-1] + u[1:]) / 2, [np.nextafter(u[-1], np.inf)]]
    )
    if callable(scoring):
        kw = {} if sample_weight is None else {"sample_weight": w}
        values = np.array([float(scoring(y, s >= t, **kw)) for t in cands])
        return cands, values
    if scoring not in THRESHOLD_METRICS:
        raise ValueError(
            f"scoring={scoring!r} is not one of {sorted(THRESHOLD_METRICS)} nor a callable."
        )
    pos = np.bincount(inv, weights=w * y, minlength=len(u))
    neg = np.bincount(inv, weights=w * ~y, minlength=len(u))
    # Candidate j predicts positive for the distinct scores u[j:].
    tp = np.append(np.cumsum(pos[::-1])[::-1], 0.0)
    fp = np.append(np.cumsum(neg[::-1])[::-1], 0.0)
    fn, tn = pos.sum() - tp, neg.sum() - fp
    return cands, np.asarray(THRESHOLD_METRICS[scoring](tp, fp, tn, fn), dtype=float)


def fit_threshold(
    scores: np.ndarray,
    y: np.ndarray,
    scoring: str | Callable = "accuracy",
    *,
    sample_weight: np.ndarray | None = None,
) -> float:
    """The decision threshold on ``scores`` that maximizes a metric.

    The decision is ``scores >= threshold``. The candidates are those of
    :func:`threshold_metric_curve`; when several are best, the middle one of the
    longest run of consecutive best candidates is kept: it lies between samples
    rather than on the edge of the best interval, which generalizes better.

    Parameters
    ----------
    scores : array-like of shape (n_samples,)
    y : array-like of bool, shape (n_samples,)
        ``True`` for the positive class.
    scoring : str or callable, default="accuracy"
        See :func:`threshold_metric_curve`.
    sample_weight : array-like of shape (n_samples,), optional

    Returns
    -------
    float

    Examples
    --------
    >>> fit_threshold(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0, 0, 1, 1]))
    0.25
    >>> from sklearn.metrics import f1_score
    >>> fit_threshold([0.1, 0.2, 0.3, 0.4], [0, 1, 0, 1], f1_score)
    0.15
    """
    cands, values = threshold_metric_curve(scores, y, scoring, sample_weight=sample_weight)
    if not np.isfinite(values).any():
        raise ValueError("the metric is not finite at any threshold.")
    values = np.where(np.isfinite(values), values, -np.inf)
    best = np.flatnonzero(values >= values.max() - 1e-12)
    runs = np.split(best, np.flatnonzero(np.diff(best) != 1) + 1)
    run = max(runs, key=len)
    return float(cands[run[len(run) // 2]])
