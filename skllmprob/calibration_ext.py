"""More calibration maths: vector scaling, class weights, batch calibration and
domain-context inputs.

Pure numpy/scipy functions in the conventions of :mod:`skllmprob.calibration`:
arrays of class *log-masses* of shape ``(n_samples, n_classes)`` whose rows are
first renormalized (:func:`~skllmprob.calibration.log_normalize`), so adding a
constant to a row changes nothing.

- :func:`fit_vector_offsets` / :func:`apply_vector_offsets`: "vector scaling", one
  temperature per class plus offsets, ``softmax(z / t + b)``.
- :func:`class_sample_weight`: ``class_weight="balanced"`` or a dict to per-sample
  weights, as :class:`sklearn.linear_model.LogisticRegression` does.
- :func:`batch_offsets`: offsets from unlabelled rows (Zhou et al., 2024).
- :func:`domain_context_texts`: content-free inputs made of the task's own words
  (Fei et al., 2023).

Examples
--------
>>> import numpy as np
>>> z = np.log([[0.9, 0.1], [0.7, 0.3], [0.6, 0.4]])
>>> b = batch_offsets(z)                 # the batch leans to class 0 ...
>>> b.round(3)
array([-0.575,  0.575])
>>> apply_vector_offsets(z, b, np.ones(2)).argmax(axis=1)   # ... no more
array([0, 1, 1])
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax, softmax

from .calibration import DEFAULT_ALPHA, log_normalize
from .calibration.offsets import _LOG_T_BOUNDS, _T_PENALTY

__all__ = [
    "apply_vector_offsets",
    "batch_offsets",
    "class_sample_weight",
    "domain_context_texts",
    "fit_vector_offsets",
]


def _weights(sample_weight, n: int) -> np.ndarray:
    """``sample_weight`` as ``n`` finite non-negative floats, some positive."""
    w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=float)
    w = np.full(n, float(w)) if w.ndim == 0 else w
    if w.shape != (n,):
        raise ValueError(f"sample_weight has shape {w.shape}, expected ({n},).")
    if not (np.isfinite(w).all() and (w >= 0).all() and (w > 0).any()):
        raise ValueError("sample_weight must be finite, non-negative and not all zero.")
    return w


def _class_indices(y, n: int, k: int) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,):
        raise ValueError(f"y has shape {y.shape}, expected ({n},): one class index per row.")
    if n and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= k):
        raise ValueError(f"y must hold class indices in range({k}).")
    return y


# ---------------------------------------------------------------- class weights


def class_sample_weight(y, class_weight, n_classes: int, sample_weight=None) -> np.ndarray:
    """Per-sample weights of ``class_weight``, times ``sample_weight``.

    As in :class:`~sklearn.linear_model.LogisticRegression` (scikit-learn 1.9):
    ``"balanced"`` weighs class ``c`` by ``W / (n_present * W_c)``, with ``W_c``
    the total ``sample_weight`` of its samples, ``W`` their sum and ``n_present``
    the number of classes with samples (without ``sample_weight``:
    ``n_samples / (n_classes * bincount(y))``); a dict maps class indices to
    weights (absent classes weigh 1). The result multiplies ``sample_weight``.

    Parameters
    ----------
    y : array-like of int, shape (n_samples,)
        Class indices in ``range(n_classes)``.
    class_weight : None, "balanced" or dict
    n_classes : int
    sample_weight : array-like of shape (n_samples,), optional

    Returns
    -------
    ndarray of shape (n_samples,)

    Examples
    --------
    >>> class_sample_weight([0, 0, 0, 1], "balanced", 2)
    array([0.66666667, 0.66666667, 0.66666667, 2.        ])
    >>> class_sample_weight([0, 1, 2], {2: 5.0}, 3, sample_weight=[1.0, 2.0, 0.5])
    array([1. , 2. , 2.5])
    """
    y = _class_indices(y, len(np.asarray(y).reshape(-1)), int(n_classes))
    w = _weights(sample_weight, len(y))
    per_class = np.ones(n_classes)
    if class_weight is None:
        pass
    elif isinstance(class_weight, str) and class_weight == "balanced":
        totals = np.bincount(y, weights=w, minlength=n_classes)
        present = totals > 0
        per_class[present] = totals.sum() / (present.sum() * totals[present])
    elif isinstance(class_weight, dict):
        unknown = [c for c in class_weight if not (0 <= _as_index(c) < n_classes)]
        if unknown:
            raise ValueError(
                f"class_weight has keys {unknown} that are not class indices in "
                f"range({n_classes})."
            )
        for c, value in class_weight.items():
            per_class[_as_index(c)] = float(value)
        if not (np.isfinite(per_class).all() and (per_class >= 0).all()):
            raise ValueError(f"class_weight values must be finite and >= 0, got {class_weight}.")
    else:
        raise ValueError(f"class_weight must be None, 'balanced' or a dict, got {class_weight!r}.")
    return w * per_class[y]


def _as_index(key) -> int:
    if isinstance(key, bool | np.bool_) or not isinstance(key, int | np.integer):
        return -1
    return int(key)


# ---------------------------------------------------------------- vector scaling


def apply_vector_offsets(log_mass, bias, temperatures) -> np.ndarray:
    """Calibrated probabilities ``softmax(log_normalize(log_mass) / temperatures + bias)``.

    With all ``temperatures`` equal to ``T`` this is
    :func:`~skllmprob.calibration.apply_offsets` with temperature ``T``.

    Parameters
    ----------
    log_mass : array-like of shape (n_samples, n_classes)
    bias : array-like of shape (n_classes,)
    temperatures : array-like of shape (n_classes,)
        Positive; class ``c``'s log-probability is divided by ``temperatures[c]``.

    Returns
    -------
    ndarray of shape (n_samples, n_classes)

    Examples
    --------
    >>> apply_vector_offsets(np.log([[0.5, 0.5]]), np.zeros(2), [1.0, 0.5])
    array([[0.66666667, 0.33333333]])
    """
    z = log_normalize(log_mass)
    k = z.shape[1]
    b = np.asarray(bias, dtype=float)
    t = np.asarray(temperatures, dtype=float)
    if b.shape != (k,) or t.shape != (k,):
        raise ValueError(
            f"bias and temperatures must have shape ({k},), got {b.shape} and {t.shape}."
        )
    if not (np.isfinite(t).all() and (t > 0).all()):
        raise ValueError(f"temperatures must be positive numbers, got {t!r}.")
    return softmax(z / t + b, axis=1)


def fit_vector_offsets(
    log_mass,
    y,
    *,
    alpha: float = DEFAULT_ALPHA,
    sample_weight=None,
    temperature_alpha: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Vector scaling: per-class offsets and per-class temperatures minimizing log-loss.

    With ``z = log_normalize(log_mass)``, the offsets ``b`` and temperatures ``t``
    minimize

    .. math::

        \\sum_i w_i \\, \\mathrm{NLL}_i(\\mathrm{softmax}(z_i / t + b))
        + \\alpha \\lVert b \\rVert^2 + \\alpha_T \\lVert \\log t \\rVert^2

    penalized as in :func:`~skllmprob.calibration.fit_offsets` (``alpha_T = 3
    alpha`` unless given, ``t`` bounded to ``[0.01, 100]``); Guo et al. (2017)'s
    vector scaling on the normalized log-probabilities. With two classes it is a
    logistic regression on ``(log p, log(1 - p))``, i.e. beta calibration (Kull
    et al., 2017). Classes without a sample (of positive weight) get a neutral
    offset (the mean) and the geometric mean of the fitted temperatures.

    Parameters
    ----------
    log_mass : array-like of shape (n_samples, n_classes)
    y : array-like of int, shape (n_samples,)
    alpha : float, default=0.3
    sample_weight : array-like of shape (n_samples,), optional
    temperature_alpha : float, optional

    Returns
    -------
    bias : ndarray of shape (n_classes,)
        Mean zero.
    temperatures : ndarray of shape (n_classes,)

    Examples
    --------
    >>> z = np.log([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
    >>> b, t = fit_vector_offsets(z, np.array([0, 1, 0, 1]), alpha=0.01)
    >>> apply_vector_offsets(z, b, t).mean(axis=0).round(2)
    array([0.5, 0.5])
    """
    z_all = log_normalize(log_mass)
    n, k = z_all.shape
    y = _class_indices(y, n, k)
    alpha_t = _T_PENALTY * alpha if temperature_alpha is None else temperature_alpha
    for name, a in (("alpha", alpha), ("temperature_alpha", alpha_t)):
        if not (np.isfinite(a) and a >= 0):
            raise ValueError(f"{name} must be a non-negative number, got {a!r}.")
    bias, log_t = np.zeros(k), np.zeros(k)
    w = _weights(sample_weight, n) if n else np.ones(0)
    present = np.flatnonzero(np.bincount(y, weights=w, minlength=k) > 0)
    if len(present) < 2:  # nothing to learn: the conditional likelihood is constant
        return bias, np.exp(log_t)
    keep = w > 0
    remap = np.full(k, -1)
    remap[present] = np.arange(len(present))
    theta = _vector_fit(z_all[keep][:, present], remap[y[keep]], w[keep], alpha, alpha_t)
    kp = len(present)
    bias[present] = theta[:kp] - theta[:kp].mean()
    log_t[:] = theta[kp:].mean()
    log_t[present] = theta[kp:]
    return bias - bias.mean(), np.exp(log_t)


def _vector_fit(z, yy, w, alpha, alpha_t):
    """Minimize the penalized log-loss over ``(b, log t)``, one of each per class."""
    m, kp = z.shape
    rows = np.arange(m)
    onehot = np.zeros((m, kp))
    onehot[rows, yy] = 1.0

    def objective(theta):
        b, log_t = theta[:kp], theta[kp:]
        scaled = z * np.exp(-log_t)
        lp = log_softmax(scaled + b, axis=1)
        loss = -(w * lp[rows, yy]).sum() + alpha * (b @ b) + alpha_t * (log_t @ log_t)
        resid = w[:, None] * (np.exp(lp) - onehot)
        grad_b = resid.sum(axis=0) + 2 * alpha * b
        grad_t = -(resid * scaled).sum(axis=0) + 2 * alpha_t * log_t
        return loss / m, np.concatenate([grad_b, grad_t]) / m

    res = minimize(
        objective,
        np.zeros(2 * kp),
        jac=True,
        method="L-BFGS-B",
        bounds=[(None, None)] * kp + [_LOG_T_BOUNDS] * kp,
        options={"maxiter": 2000, "ftol": 1e-12, "gtol": 1e-9},
    )
    return res.x


# ---------------------------------------------------------------- label-free


def batch_offsets(log_mass, sample_weight=None) -> np.ndarray:
    """Batch calibration: offsets from the class log-probabilities of unlabelled rows.

    Zhou et al. (ICLR 2024), "Batch Calibration": the contextual bias is the mean
    over a batch of inputs of the model's class scores (their Eq. 1), and it is
    subtracted from the scores of every input (Eq. 2). Here the scores are the
    normalized log-probabilities ``z = log_normalize(log_mass)``, so

    .. math::

        b = -\\frac{\\sum_i w_i z_i}{\\sum_i w_i}, \\quad \\text{centered to mean 0},

    and the calibrated probabilities are ``softmax(z + b)``
    (:func:`~skllmprob.calibration.apply_offsets`). Unlike
    :func:`~skllmprob.calibration.contextual_offsets`, which averages
    *probabilities*, this averages log-probabilities: after the correction the
    batch mean of ``z + b`` is the same for every class. Adding one vector ``v`` to
    the log-masses of every row only shifts ``b`` by ``-v``: the calibrated
    probabilities do not change.

    Parameters
    ----------
    log_mass : array-like of shape (n_rows, n_classes)
        Log-masses of the unlabelled rows (at least one).
    sample_weight : array-like of shape (n_rows,), optional

    Returns
    -------
    ndarray of shape (n_classes,)

    Examples
    --------
    >>> batch_offsets(np.log([[0.5, 0.5], [0.8, 0.2]])).round(3)
    array([-0.347,  0.347])
    """
    z = log_normalize(log_mass)
    if len(z) == 0:
        raise ValueError("batch calibration needs the log-masses of at least one row.")
    w = _weights(sample_weight, len(z))
    b = -(w @ z) / w.sum()
    return b - b.mean()


def domain_context_texts(texts, *, n_texts: int = 20, length: int | None = None, seed=0):
    """Content-free inputs made of random words of the task's own texts.

    Fei et al. (ACL 2023), "Mitigating Label Biases for In-context Learning":
    "domain-context" calibration estimates the label bias on texts of random
    in-domain words instead of ``"N/A"``. Each text is ``length`` words drawn with
    replacement from all words (whitespace-split) of ``texts``, so frequent words
    come more often; the result depends on ``texts``, ``n_texts``, ``length`` and
    ``seed`` only.

    Parameters
    ----------
    texts : sequence of str
    n_texts : int, default=20
    length : int, optional
        Words per text; by default the mean number of words of ``texts``
        (rounded, at least 1).
    seed : int, default=0
        Seed of :func:`numpy.random.default_rng`.

    Returns
    -------
    list of str

    Examples
    --------
    >>> domain_context_texts(["a good film", "a bad plot"], n_texts=2, seed=1)
    ['film a bad', 'plot a a']
    """
    per_text = [str(t).split() for t in texts]
    words = [w for ws in per_text for w in ws]
    if not words:
        raise ValueError("domain_context_texts needs texts with at least one word.")
    if length is None:
        length = max(1, round(len(words) / len(per_text)))
    if int(length) < 1 or int(n_texts) < 1:
        raise ValueError(f"n_texts and length must be >= 1, got {n_texts} and {length}.")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(words), size=(int(n_texts), int(length)))
    return [" ".join(words[i] for i in row) for row in picks]
