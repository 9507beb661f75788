"""Class log-masses to probabilities: the normalized log-probabilities
(:func:`log_normalize`) and the calibrated probabilities of offsets and a
temperature (:func:`apply_offsets`), with the checks every calibration function
shares."""

from __future__ import annotations

import numpy as np
from scipy.special import log_softmax, softmax

from .._validation import check_sample_weight

__all__ = ["LOG_PROB_FLOOR", "apply_offsets", "check_log_mass", "log_normalize", "weights_or_ones"]

#: Normalized log-probabilities are clipped from below at this value (a probability
#: of about 4e-44): an "impossible" class then costs a bounded log-loss, a class
#: whose mass underflowed to ``-inf`` can still be recovered by an offset, and the
#: temperature gradient stays finite.
LOG_PROB_FLOOR = -100.0


def check_log_mass(log_mass: np.ndarray, name: str = "log_mass") -> np.ndarray:
    z = np.asarray(log_mass, dtype=float)
    if z.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D (n_samples, n_classes), got shape {z.shape}; reshape a "
            "single row with log_mass.reshape(1, -1)."
        )
    if z.shape[1] < 1:
        raise ValueError(f"{name} has no class columns (shape {z.shape}).")
    if np.isnan(z).any():
        rows = np.flatnonzero(np.isnan(z).any(axis=1))
        raise ValueError(
            f"{name} holds NaN in rows {rows[:10].tolist()}; log-masses must be numbers."
        )
    if np.isposinf(z).any():
        raise ValueError(f"{name} holds +inf; log-masses are logarithms of probabilities.")
    return z


def weights_or_ones(sample_weight, n: int) -> np.ndarray:
    w = check_sample_weight(sample_weight, n)
    return np.ones(n) if w is None else w


def log_normalize(log_mass: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax: class log-masses to normalized log-probabilities.

    ``-inf`` (a mass that underflowed) is allowed; results are clipped from below
    at :data:`LOG_PROB_FLOOR`, and a row that is ``-inf`` everywhere becomes
    uniform.

    Parameters
    ----------
    log_mass : array-like of shape (n_samples, n_classes)

    Returns
    -------
    ndarray of shape (n_samples, n_classes)

    Examples
    --------
    >>> np.exp(log_normalize(np.log([[1.0, 3.0]])))
    array([[0.25, 0.75]])
    >>> log_normalize([[-np.inf, 0.0], [-np.inf, -np.inf]])
    array([[-100.        ,    0.        ],
           [  -0.69314718,   -0.69314718]])
    """
    z = check_log_mass(log_mass)
    empty = np.isneginf(z).all(axis=1)
    if empty.any():
        z = z.copy()
        z[empty] = 0.0
    with np.errstate(invalid="ignore"):
        out = log_softmax(z, axis=1)
    return np.maximum(out, LOG_PROB_FLOOR)


def apply_offsets(log_mass: np.ndarray, bias: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Calibrated probabilities ``softmax(log_normalize(log_mass) / temperature + bias)``.

    Parameters
    ----------
    log_mass : array-like of shape (n_samples, n_classes)
    bias : array-like of shape (n_classes,)
    temperature : float, default=1.0

    Returns
    -------
    ndarray of shape (n_samples, n_classes)
        Rows sum to one.

    Examples
    --------
    >>> apply_offsets(np.log([[0.5, 0.5]]), np.array([0.0, np.log(3.0)]))
    array([[0.25, 0.75]])
    >>> apply_offsets(np.log([[0.2, 0.8]]), np.zeros(2), temperature=2.0)
    array([[0.33333333, 0.66666667]])
    """
    z = log_normalize(log_mass)
    b = np.asarray(bias, dtype=float)
    if b.shape != (z.shape[1],):
        raise ValueError(f"bias has shape {b.shape}, expected ({z.shape[1]},).")
    t = float(temperature)
    if not (np.isfinite(t) and t > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}.")
    return softmax(z / t + b, axis=1)
