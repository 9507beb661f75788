"""Two more calibration methods: ``"vector"`` (a temperature per class) and
``"batch"`` (label-free, from the rows given to ``fit``)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from .. import calibration_ext as _ext
from ..exceptions import InputError
from .base import Calibrator, register_calibrator
from .methods import BiasCalibrator

__all__ = ["BatchCalibrator", "VectorCalibrator"]


@register_calibrator
class VectorCalibrator(BiasCalibrator):
    """``"vector"``: vector scaling, per-class offsets and per-class temperatures
    minimizing the penalized log-loss
    (:func:`~skllmprob.calibration_ext.fit_vector_offsets`); settings ``alpha``,
    ``class_weight``, ``classes``.

    Attributes
    ----------
    temperatures_ : ndarray of shape (n_classes,)
        What divides each class's log-probability.
    temperature_ : float
        Their geometric mean (for display; the probabilities use
        ``temperatures_``).

    Examples
    --------
    >>> z = np.log([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.3, 0.7]])
    >>> cal = VectorCalibrator(alpha=0.1).fit(z, np.array([0, 1, 1, 1]))
    >>> cal.predict(z), cal.temperatures_.round(2)
    (array([0, 1, 1, 1]), array([0.66, 0.85]))
    """

    name = "vector"
    _missing_effect = (
        "their offsets stay neutral and their temperature is the geometric mean of the others"
    )

    def _fit(self, log_mass, y, sample_weight) -> None:
        self._warn_missing_classes(y, sample_weight)
        self.bias_, self.temperatures_ = _ext.fit_vector_offsets(
            log_mass, y, alpha=float(self.alpha), sample_weight=sample_weight
        )
        self.temperature_ = float(np.exp(np.log(self.temperatures_).mean()))

    def _proba(self, log_mass: np.ndarray) -> np.ndarray:
        return _ext.apply_vector_offsets(log_mass, self.bias_, self.temperatures_)


@register_calibrator
class BatchCalibrator(Calibrator):
    """``"batch"``: batch calibration (Zhou et al., 2024) from unlabelled rows.

    ``fit`` takes the log-masses of real inputs, labels or not (labels are
    ignored), and learns the offsets
    :func:`~skllmprob.calibration_ext.batch_offsets`: minus the mean over those
    rows of the normalized class log-probabilities. The offsets are then fixed:
    the probabilities of a row never depend on the other rows predicted with it.
    Settings ``classes``.

    Attributes
    ----------
    n_batch_ : int
        The number of rows the offsets were estimated on.

    Examples
    --------
    >>> z = np.log([[0.9, 0.1], [0.7, 0.3], [0.6, 0.4]])
    >>> cal = BatchCalibrator().fit(z)
    >>> cal.bias_.round(3), cal.predict(z)
    (array([-0.575,  0.575]), array([0, 1, 1]))
    """

    name = "batch"
    #: ``fit`` learns from the log-masses of unlabelled rows (``y=None``).
    learns_from_rows: ClassVar[bool] = True

    def _fit(self, log_mass, y, sample_weight) -> None:
        if len(log_mass) == 0:
            raise InputError(
                "calibration='batch' estimates the label bias from the rows given to fit; "
                "pass X to fit (y may be None), or use calibration='none' or "
                "'contextual' without rows."
            )
        self.bias_ = _ext.batch_offsets(log_mass, sample_weight)
        self.n_batch_ = len(log_mass)
