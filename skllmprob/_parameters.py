"""The parameters of :class:`~skllmprob.LogprobClassifier`: the constraints that
scikit-learn checks at ``fit`` (``_parameter_constraints``)."""

from __future__ import annotations

import numbers
import os

import numpy as np
from sklearn.utils._param_validation import Interval, StrOptions

from ._fit_calibration import DOMAIN_CONTEXT
from ._secrets import SecretKey, SecretURL
from .backends.base import Backend
from .backends.factory import DECISION_BACKENDS
from .calibration import THRESHOLD_METRICS

__all__ = ["BACKEND_NAMES", "PARAMETER_CONSTRAINTS"]

#: The names ``backend=`` accepts (or a :class:`~skllmprob.backends.Backend`).
BACKEND_NAMES = frozenset({"auto", "llamacpp", "openai", "deterministic", *DECISION_BACKENDS})


def _int_from(low: int):
    return Interval(numbers.Integral, low, None, closed="left")


PARAMETER_CONSTRAINTS: dict = {
    "model": [str, os.PathLike, None],
    "labels": [list, tuple, np.ndarray, dict, None],
    "prompt": [str, None],
    "examples": [list, tuple, None],
    "calibration": [str],  # a name of CALIBRATORS, checked in fit
    "scoring": [StrOptions(set(THRESHOLD_METRICS)), callable, None],
    "pos_label": [numbers.Real, str, "boolean", None],
    "calibration_alpha": [Interval(numbers.Real, 0, None, closed="left")],
    "class_weight": [dict, StrOptions({"balanced"}), None],
    "calibration_base": [str, None],
    "content_free": [list, tuple, StrOptions({DOMAIN_CONTEXT})],
    "backend": [StrOptions(set(BACKEND_NAMES)), Backend],
    "base_url": [str, SecretURL, None],
    "api_key": [SecretKey, None],
    "endpoint": [StrOptions({"auto", "chat", "completions"})],
    "top_logprobs": [_int_from(1)],
    "option_codes": [StrOptions({"auto", "never", "letters", "numbers"})],
    "cache": ["boolean", str, os.PathLike, SecretURL],
    "max_concurrency": [_int_from(1)],
    "timeout": [Interval(numbers.Real, 0, None, closed="neither")],
    "max_retries": [_int_from(0)],
    "backend_options": [dict, None],
    "descriptions": [dict, None],
    "progress": ["boolean", StrOptions({"auto"})],
}
