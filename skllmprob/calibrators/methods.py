"""The calibration methods of today's ``calibration=`` strings: "none", "bias",
"affine", "threshold", "contextual" and "contextual-bias", registered in that
order."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import ClassVar

import numpy as np
from sklearn.base import clone
from sklearn.utils.validation import check_is_fitted

from .. import calibration as _cal
from ..exceptions import ConfigurationError, InputError
from .base import Calibrator, as_2d, make_calibrator, register_calibrator

__all__ = [
    "AffineCalibrator",
    "BiasCalibrator",
    "ContextualBiasCalibrator",
    "ContextualCalibrator",
    "LabelMetric",
    "NoCalibrator",
    "ThresholdCalibrator",
]


def _content_free_offsets(calibrator: Calibrator) -> np.ndarray:
    """:func:`~skllmprob.calibration.contextual_offsets` of the content-free inputs."""
    if calibrator.content_free_log_mass is None:
        raise ConfigurationError(
            f"calibration={calibrator.name!r} needs the log-masses of content-free "
            "inputs; pass content_free_log_mass= of shape (n_inputs, n_classes)."
        )
    content_free = as_2d(calibrator.content_free_log_mass, "content_free_log_mass")
    if content_free.shape[1] != calibrator.n_classes_:
        raise InputError(
            f"content_free_log_mass has {content_free.shape[1]} columns but log_mass has "
            f"{calibrator.n_classes_}."
        )
    return _cal.contextual_offsets(content_free)


# ------------------------------------------------------------------------ methods
# Settings: ``alpha`` (float, default 0.3), the L2 penalty of
# :func:`~skllmprob.calibration.fit_offsets` in units of one sample's log-loss;
# ``content_free_log_mass`` (array (n_inputs, n_classes)), the class log-masses of
# the content-free inputs ("N/A", ...); ``class_weight`` (None, "balanced" or a
# dict keyed by class, see :func:`~skllmprob.calibration_ext.class_sample_weight`),
# multiplying the sample weights of labelled fits; ``classes``, as in
# :class:`Calibrator`.


@register_calibrator
class NoCalibrator(Calibrator):
    """``"none"``: the renormalized label probabilities; labels are not used."""

    name = "none"


@register_calibrator
class BiasCalibrator(Calibrator):
    """``"bias"``: per-class offsets minimizing the L2-penalized log-loss
    (:func:`~skllmprob.calibration.fit_offsets`); settings ``alpha``, ``classes``."""

    name = "bias"
    needs_labels = True
    _fit_temperature: ClassVar[bool] = False

    def __init__(self, *, alpha=_cal.DEFAULT_ALPHA, class_weight=None, classes=None):
        self.alpha = alpha
        self.class_weight = class_weight
        self.classes = classes

    def _prior(self) -> np.ndarray | None:
        """The offsets the penalty pulls towards (``None``: zeros)."""
        return None

    def _fit(self, log_mass, y, sample_weight) -> None:
        prior = self._prior()
        self._warn_missing_classes(y, sample_weight)
        self.bias_, self.temperature_ = _cal.fit_offsets(
            log_mass,
            y,
            alpha=float(self.alpha),
            fit_temperature=self._fit_temperature,
            sample_weight=sample_weight,
            prior=prior,
        )


@register_calibrator
class AffineCalibrator(BiasCalibrator):
    """``"affine"``: offsets and a shared temperature (penalized by ``3 * alpha``);
    settings ``alpha``, ``classes``."""

    name = "affine"
    _fit_temperature = True


class LabelMetric:
    """``metric(y_true, y_pred, **kwargs)`` on class labels, called with the booleans
    of the threshold fit (``True``: ``positive``). Unlike a closure, it pickles
    whenever ``metric`` does.

    Examples
    --------
    >>> from sklearn.metrics import recall_score
    >>> m = LabelMetric.for_classes(recall_score, np.array(["ham", "spam"]), 1)
    >>> m(np.array([True, True]), np.array([True, False]), pos_label="spam")
    0.5
    """

    def __init__(self, metric: Callable, positive, negative) -> None:
        self.metric, self.positive, self.negative = metric, positive, negative

    @classmethod
    def for_classes(cls, metric, classes, pos_index: int):
        """``metric`` itself if it is a name, else its wrapper for ``classes``."""
        if isinstance(metric, str):
            return metric
        return cls(metric, classes[pos_index], classes[1 - pos_index])

    def __call__(self, y_true, y_pred, **kwargs):
        yes, no = self.positive, self.negative
        return self.metric(np.where(y_true, yes, no), np.where(y_pred, yes, no), **kwargs)

    def __repr__(self) -> str:
        return f"LabelMetric({self.metric!r}, {self.positive!r}, {self.negative!r})"


@register_calibrator
class ThresholdCalibrator(Calibrator):
    """``"threshold"``: binary only; a tuned threshold on one class's probability.

    :meth:`predict` decides ``pos_index`` where its probability is at least
    ``threshold_`` (see :func:`~skllmprob.calibration.fit_threshold`). The
    probabilities are the renormalized ones, or those of ``base``, fitted first
    on the same samples. With one class alone among the labelled samples the
    threshold stays at 0.5, with a warning.

    Parameters
    ----------
    pos_index : {0, 1}, default=1
        The column of the positive class.
    metric : str or callable, default="accuracy"
        A name in :data:`~skllmprob.calibration.THRESHOLD_METRICS` or
        ``metric(y_true, y_pred)`` on booleans (see :class:`LabelMetric`).
    base : None, str or Calibrator, default=None
        The probability calibration the threshold is tuned on: a method name
        (built with its defaults and ``classes``) or an unfitted calibrator
        (cloned); ``None`` keeps the renormalized probabilities.
    class_weight : None, "balanced" or dict, default=None
    classes : array-like of shape (2,), optional

    Attributes
    ----------
    base_ : Calibrator or None
        The fitted ``base``.
    """

    name = "threshold"
    needs_labels = True
    _missing_effect = "the threshold stays at 0.5"

    def __init__(
        self, *, pos_index=1, metric="accuracy", base=None, class_weight=None, classes=None
    ):
        self.pos_index = pos_index
        self.metric = metric
        self.base = base
        self.class_weight = class_weight
        self.classes = classes

    @classmethod
    def check_task(cls, n_classes: int, *, labelled: bool) -> None:
        if n_classes != 2:
            raise ConfigurationError(
                f"calibration='threshold' tunes a binary decision, but there are "
                f"{n_classes} classes; use calibration='bias' or 'affine' for "
                "several classes."
            )
        super().check_task(n_classes, labelled=labelled)

    def _fit(self, log_mass, y, sample_weight) -> None:
        if isinstance(self.pos_index, bool) or self.pos_index not in (0, 1):
            raise ConfigurationError(f"pos_index must be 0 or 1, got {self.pos_index!r}.")
        pos = int(self.pos_index)
        self.base_ = self._fitted_base(log_mass, y, sample_weight)
        self._warn_missing_classes(y, sample_weight)
        p_pos = self._proba(log_mass)[:, pos]
        is_pos = y == pos
        w = np.ones(len(y)) if sample_weight is None else sample_weight
        if not (w[is_pos].sum() > 0 and w[~is_pos].sum() > 0):
            self.threshold_ = 0.5
            return
        self.threshold_ = _cal.fit_threshold(
            p_pos, is_pos, self.metric, sample_weight=sample_weight
        )

    def _fitted_base(self, log_mass, y, sample_weight) -> Calibrator | None:
        if self.base is None:
            return None
        if isinstance(self.base, str) and self.base != self.name:
            base = make_calibrator(self.base, classes=self.classes)
        elif isinstance(self.base, Calibrator) and not isinstance(self.base, type(self)):
            base = clone(self.base)
        else:
            raise ConfigurationError(
                f"base must be None, a calibration method name other than 'threshold' "
                f"or an unfitted Calibrator, got {self.base!r}."
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # warned once, below
            base.fit(log_mass, y, sample_weight)
        self.bias_, self.temperature_ = base.bias_, base.temperature_
        return base

    def _proba(self, log_mass: np.ndarray) -> np.ndarray:
        base = getattr(self, "base_", None)
        return super()._proba(log_mass) if base is None else base._proba(log_mass)

    def predict(self, log_mass):
        """``pos_index`` where its probability is at least ``threshold_``, else the
        other class index."""
        check_is_fitted(self)
        pos = int(self.pos_index)
        return np.where(self.predict_proba(log_mass)[:, pos] >= self.threshold_, pos, 1 - pos)


@register_calibrator
class ContextualCalibrator(Calibrator):
    """``"contextual"``: offsets that make the content-free inputs come out uniform
    (:func:`~skllmprob.calibration.contextual_offsets`); labels are not used.
    Settings ``content_free_log_mass``, ``classes``."""

    name = "contextual"
    needs_content_free = True

    def __init__(self, *, content_free_log_mass=None, classes=None):
        self.content_free_log_mass = content_free_log_mass
        self.classes = classes

    def _fit(self, log_mass, y, sample_weight) -> None:
        self.bias_ = _content_free_offsets(self)


@register_calibrator
class ContextualBiasCalibrator(BiasCalibrator):
    """``"contextual-bias"``: ``"bias"`` with the penalty pulling towards the
    contextual offsets instead of zero; settings ``alpha``,
    ``content_free_log_mass``, ``classes``."""

    name = "contextual-bias"
    needs_content_free = True
    _missing_effect = "their offsets keep the contextual estimate (no correction)"

    def __init__(
        self,
        *,
        alpha=_cal.DEFAULT_ALPHA,
        content_free_log_mass=None,
        class_weight=None,
        classes=None,
    ):
        self.alpha = alpha
        self.content_free_log_mass = content_free_log_mass
        self.class_weight = class_weight
        self.classes = classes

    def _prior(self) -> np.ndarray:
        return _content_free_offsets(self)
