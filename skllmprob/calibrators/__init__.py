"""Calibration methods as small fitted objects: one class per ``calibration=`` name.

A calibrator learns from the class *log-masses* of samples (see
:mod:`skllmprob.scoring`), and from their labels if it ``needs_labels``, the
probabilities ``apply_offsets(log_mass, bias_, temperature_)`` and for
``"threshold"`` a decision threshold ``threshold_``; the maths stays in
:mod:`skllmprob.calibration`. :data:`CALIBRATORS` maps names to classes and
:func:`make_calibrator` builds one by name. A new method is one subclass of
:class:`Calibrator` decorated with :func:`register_calibrator`.

Modules: :mod:`~skllmprob.calibrators.base` (the base class, the registry),
:mod:`~skllmprob.calibrators.methods` (``"none"``, ``"bias"``, ``"affine"``,
``"threshold"``, ``"contextual"``, ``"contextual-bias"``),
:mod:`~skllmprob.calibrators.extra` (``"vector"``, ``"batch"``) and
:mod:`~skllmprob.calibrators.auto` (``"auto"``), registered in that order.

Labels are class *indices* into the columns of the log-masses. Without labels
(zero-shot) ``fit`` gets ``y=None`` (or an empty ``y``), and ``log_mass`` may be
``None`` when ``classes`` or ``content_free_log_mass`` tells the number of
classes: ``"none"`` and ``"contextual"`` work so, the others raise.

>>> import numpy as np
>>> log_mass = np.log([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.3, 0.7]])
>>> cal = make_calibrator("bias", alpha=0.3).fit(log_mass, np.array([0, 1, 1, 1]))
>>> cal.bias_.round(3), cal.temperature_, cal.threshold_, cal.predict(log_mass)
(array([-0.763,  0.763]), 1.0, None, array([0, 1, 1, 1]))
"""

from .auto import AutoCalibrator
from .base import CALIBRATORS, Calibrator, make_calibrator, register_calibrator
from .extra import BatchCalibrator, VectorCalibrator
from .methods import (
    AffineCalibrator,
    BiasCalibrator,
    ContextualBiasCalibrator,
    ContextualCalibrator,
    LabelMetric,
    NoCalibrator,
    ThresholdCalibrator,
)

__all__ = [
    "CALIBRATORS",
    "AffineCalibrator",
    "AutoCalibrator",
    "BatchCalibrator",
    "BiasCalibrator",
    "Calibrator",
    "ContextualBiasCalibrator",
    "ContextualCalibrator",
    "LabelMetric",
    "NoCalibrator",
    "ThresholdCalibrator",
    "VectorCalibrator",
    "make_calibrator",
    "register_calibrator",
]
