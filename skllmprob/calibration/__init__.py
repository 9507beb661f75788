"""Correcting the label bias of an LLM: offsets, temperature, thresholds, contextual
calibration.

Pure functions on arrays of class *log-masses* (``log`` of the probability the
model put on each class, see :mod:`skllmprob.scoring`), shape
``(n_samples, n_classes)``. Adding a constant to a row changes nothing: every
function first renormalizes the rows (:func:`log_normalize`), so only differences
between classes matter, and the mass the model put on tokens that are no label at
all drops out.

The calibrated probabilities are ``softmax(log_normalize(log_mass) / T + b)``
(:func:`apply_offsets`): per-class offsets ``b`` and a shared temperature ``T``.

- :func:`fit_offsets` learns ``b`` (and optionally ``T``) from labelled samples by
  minimizing a lightly L2-regularized log-loss.
- :func:`contextual_offsets` needs no labels: ``b`` divides out the model's answer to
  content-free inputs (Zhao et al., 2021, "Calibrate Before Use").
- :func:`fit_threshold` tunes a binary decision threshold for a metric.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> logits = rng.normal(0, 2, size=(1000, 3))     # a calibrated model ...
>>> y = np.array([rng.choice(3, p=p) for p in apply_offsets(logits, np.zeros(3))])
>>> biased = logits + np.array([1.5, 0.0, -1.5])  # ... with an injected bias
>>> float((biased.argmax(1) == y).mean())
0.635
>>> bias, temperature = fit_offsets(biased, y)
>>> bias.round(1)                                  # undone, up to noise
array([-1.4, -0.1,  1.5])
>>> float((apply_offsets(biased, bias, temperature).argmax(1) == y).mean())
0.755
"""

from .logmass import LOG_PROB_FLOOR, apply_offsets, log_normalize
from .offsets import DEFAULT_ALPHA, contextual_offsets, fit_offsets
from .threshold import THRESHOLD_METRICS, fit_threshold, threshold_metric_curve

__all__ = [
    "DEFAULT_ALPHA",
    "LOG_PROB_FLOOR",
    "THRESHOLD_METRICS",
    "apply_offsets",
    "contextual_offsets",
    "fit_offsets",
    "fit_threshold",
    "log_normalize",
    "threshold_metric_curve",
]
