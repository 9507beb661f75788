"""Correcting the label bias of an LLM: offsets, temperature, thresholds, contextual
calibration.

Pure functions on arrays of class *log-masses* (``log`` of the probability the
model put on each class, see :mod:`skllmprob.scoring`), shape
``(n_samples, n_classes)``. Adding a constant to a row changes nothing: only
differences between classes matter.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> y = rng.integers(0, 2, 400)
>>> clean = np.where(y[:, None] == np.arange(2), 1.0, -1.0)
>>> biased = clean + np.array([2.5, 0.0])          # the model prefers class 0
>>> (biased.argmax(1) == y).mean()
np.float64(0.4475)
>>> bias, temperature = fit_offsets(biased, y, n_classes=2)
>>> (apply_offsets(biased, bias, temperature).argmax(1) == y).mean()
np.float64(1.0)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax, softmax

__all__ = [
    "apply_offsets",
    "contextual_offsets",
    "fit_offsets",
    "fit_threshold",
    "log_normalize",
]


def log_normalize(log_mass: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax: class log-masses to normalized log-probabilities.

    >>> np.exp(log_normalize(np.log([[1.0, 3.0]])))
    array([[0.25, 0.75]])
    """
    return log_softmax(np.asarray(log_mass, dtype=float), axis=1)


def apply_offsets(log_mass: np.ndarray, bias: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Calibrated probabilities ``softmax(log_normalize(log_mass) / temperature + bias)``.

    >>> apply_offsets(np.log([[0.5, 0.5]]), np.array([0.0, np.log(3.0)]))
    array([[0.25, 0.75]])
    """
    z = log_normalize(log_mass) / float(temperature) + np.asarray(bias, dtype=float)
    return softmax(z, axis=1)


def fit_offsets(
    log_mass: np.ndarray,
    y: np.ndarray,
    *,
    n_classes: int,
    alpha: float = 1e-2,
    fit_temperature: bool = False,
    sample_weight: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """Per-class offsets (and optionally a shared temperature) minimizing log-loss.

    Minimizes the weighted mean negative log-likelihood of
    ``softmax(z / T + b)`` plus ``alpha * ||b||^2`` (and ``alpha * log(T)^2`` when the
    temperature is fitted), with ``z`` the normalized log-probabilities. Classes
    absent from ``y`` keep a neutral offset of 0.

    Parameters
    ----------
    log_mass : ndarray of shape (n_samples, n_classes)
    y : ndarray of int, shape (n_samples,)
        Class indices.
    n_classes : int
    alpha : float, default=1e-2
        Strength of the L2 penalty that keeps offsets small with few samples.
    fit_temperature : bool, default=False
    sample_weight : ndarray of shape (n_samples,), optional

    Returns
    -------
    bias : ndarray of shape (n_classes,)
        Centered over the classes present in ``y``.
    temperature : float
    """
    z = log_normalize(log_mass)
    y = np.asarray(y, dtype=int)
    n = len(y)
    w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=float)
    w = w / w.sum()
    present = np.unique(y)
    free = np.zeros(n_classes, dtype=bool)
    free[present] = True
    onehot = np.zeros((n, n_classes))
    onehot[np.arange(n), y] = 1.0

    def unpack(theta: np.ndarray) -> tuple[np.ndarray, float]:
        b = np.zeros(n_classes)
        b[free] = theta[: free.sum()]
        log_t = theta[-1] if fit_temperature else 0.0
        return b, log_t

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        b, log_t = unpack(theta)
        inv_t = np.exp(-log_t)
        logits = z * inv_t + b
        lp = log_softmax(logits, axis=1)
        loss = -(w * lp[np.arange(n), y]).sum() + alpha * (b @ b)
        resid = np.exp(lp) - onehot  # d loss / d logits, per sample
        g_b = (w[:, None] * resid).sum(axis=0) + 2 * alpha * b
        grad = [g_b[free]]
        if fit_temperature:
            g_logt = -(w[:, None] * resid * z).sum() * inv_t
            loss += alpha * log_t**2
            grad.append([g_logt + 2 * alpha * log_t])
        return loss, np.concatenate(grad)

    theta0 = np.zeros(free.sum() + int(fit_temperature))
    res = minimize(objective, theta0, jac=True, method="L-BFGS-B")
    b, log_t = unpack(res.x)
    b[free] -= b[free].mean()
    return b, float(np.exp(log_t))


def contextual_offsets(content_free_log_mass: np.ndarray) -> np.ndarray:
    """Offsets that divide out the model's answer to content-free inputs.

    The probabilities for the content-free inputs are averaged per class, and the
    offsets are minus their logarithm (centered), so that a content-free input
    becomes uniform (Zhao et al., 2021, "Calibrate Before Use").

    >>> b = contextual_offsets(np.log([[0.8, 0.2], [0.6, 0.4]]))
    >>> np.round(apply_offsets(np.log([[0.7, 0.3]]), b), 3)
    array([[0.5, 0.5]])
    """
    p = np.exp(log_normalize(content_free_log_mass)).mean(axis=0)
    b = -np.log(np.clip(p, 1e-300, None))
    return b - b.mean()


def fit_threshold(
    scores: np.ndarray,
    y: np.ndarray,
    metric: Callable[[np.ndarray, np.ndarray], float],
) -> float:
    """The decision threshold on ``scores`` that maximizes ``metric(y, y_pred)``.

    ``y_pred = scores >= threshold``. Candidates are the midpoints between
    consecutive distinct scores (and one below and above all of them); among the
    best, the middle one of the best run is kept, which generalizes better than its
    edges.

    >>> from sklearn.metrics import accuracy_score
    >>> fit_threshold(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0, 0, 1, 1]),
    ...               accuracy_score)
    0.25
    """
    scores = np.asarray(scores, dtype=float)
    y = np.asarray(y).astype(bool)
    u = np.unique(scores)
    cands = np.concatenate([[u[0] - 1e-12], (u[:-1] + u[1:]) / 2, [u[-1] + 1e-12]])
    vals = np.array([metric(y, scores >= t) for t in cands])
    best = np.flatnonzero(vals == vals.max())
    # The middle of the longest run of best candidates.
    runs = np.split(best, np.flatnonzero(np.diff(best) != 1) + 1)
    run = max(runs, key=len)
    return float(cands[run[len(run) // 2]])
