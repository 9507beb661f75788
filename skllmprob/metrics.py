"""Calibration metrics: the reliability of predicted probabilities.

Pure functions, numpy in and numpy out. They look at the *top label*: for each
sample, the probability of the predicted class (its confidence) and whether that
prediction is right. A well-calibrated classifier is right 80 % of the time when it
says 0.8.

Examples
--------
>>> import numpy as np
>>> proba = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
>>> y = np.array([0, 1, 1, 1])
>>> confidence, correct = top_label(proba, y)
>>> confidence, correct
(array([0.9, 0.8, 0.7, 0.6]), array([ True, False,  True,  True]))
>>> round(expected_calibration_error(confidence, correct, n_bins=10), 3)
0.4
"""

from __future__ import annotations

import numpy as np

__all__ = ["expected_calibration_error", "reliability_bins", "top_label"]


def top_label(proba, y_idx) -> tuple[np.ndarray, np.ndarray]:
    """Confidence and correctness of the most probable class.

    Parameters
    ----------
    proba : array-like of shape (n_samples, n_classes)
        Class probabilities.
    y_idx : array-like of int, shape (n_samples,)
        Index of the true class of each sample (a column of ``proba``).

    Returns
    -------
    confidence : ndarray of float, shape (n_samples,)
        The largest probability of each row.
    correct : ndarray of bool, shape (n_samples,)
        Whether that class is the true one (ties go to the first column).
    """
    proba = np.asarray(proba, dtype=float)
    y_idx = np.asarray(y_idx, dtype=int)
    if proba.ndim != 2 or y_idx.shape != (proba.shape[0],):
        raise ValueError(
            f"proba must be (n_samples, n_classes) and y_idx (n_samples,); got "
            f"{proba.shape} and {y_idx.shape}."
        )
    pred = proba.argmax(axis=1)
    return proba[np.arange(len(pred)), pred], pred == y_idx


def reliability_bins(
    confidence, correct, n_bins: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group predictions into equal-width confidence bins.

    Bin ``b`` holds confidences in ``[b / n_bins, (b + 1) / n_bins)``; a
    confidence of exactly 1 goes into the last bin.

    Parameters
    ----------
    confidence : array-like of float in [0, 1], shape (n_samples,)
    correct : array-like of bool, shape (n_samples,)
    n_bins : int, default=10

    Returns
    -------
    mean_confidence : ndarray of shape (n_bins,)
        Mean confidence in each bin (NaN for empty bins).
    accuracy : ndarray of shape (n_bins,)
        Fraction of correct predictions in each bin (NaN for empty bins).
    count : ndarray of int, shape (n_bins,)
        Number of samples in each bin.

    Examples
    --------
    >>> conf, acc, n = reliability_bins([0.95, 0.91, 0.55], [True, False, True], n_bins=2)
    >>> conf.round(2).tolist(), acc.round(3).tolist(), n.tolist()
    ([nan, 0.8], [nan, 0.667], [0, 3])
    """
    if int(n_bins) < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}.")
    n_bins = int(n_bins)
    confidence = np.asarray(confidence, dtype=float)
    correct = np.asarray(correct, dtype=bool)
    if confidence.shape != correct.shape or confidence.ndim != 1:
        raise ValueError("confidence and correct must be 1-D arrays of the same length.")
    if confidence.size and (
        not np.all(np.isfinite(confidence)) or confidence.min() < 0 or confidence.max() > 1
    ):
        raise ValueError("confidence must hold probabilities in [0, 1].")
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    conf_sum = np.bincount(bins, weights=confidence, minlength=n_bins)
    hit_sum = np.bincount(bins, weights=correct.astype(float), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, conf_sum / count, np.nan)
        accuracy = np.where(count > 0, hit_sum / count, np.nan)
    return mean_conf, accuracy, count


def expected_calibration_error(confidence, correct, n_bins: int = 10) -> float:
    """Expected calibration error of the top label.

    The mean, over equal-width confidence bins weighted by their number of
    samples, of ``|accuracy - mean confidence|``. 0 is perfect; it is at most 1.

    Parameters
    ----------
    confidence : array-like of float in [0, 1], shape (n_samples,)
    correct : array-like of bool, shape (n_samples,)
    n_bins : int, default=10

    Returns
    -------
    float
        NaN when there are no samples.

    Examples
    --------
    >>> expected_calibration_error([0.8] * 5, [True, True, True, True, False])
    0.0
    """
    mean_conf, accuracy, count = reliability_bins(confidence, correct, n_bins)
    total = count.sum()
    if total == 0:
        return float("nan")
    filled = count > 0
    gaps = np.abs(accuracy[filled] - mean_conf[filled])
    return float(np.sum(gaps * count[filled]) / total)
