"""Calibration methods as small fitted objects, one class per ``calibration=`` name.

A calibrator learns, from the class *log-masses* of some samples (see
:mod:`skllmprob.scoring`) and optionally their labels, how to turn log-masses
into probabilities and decisions. The maths lives in the pure functions of
:mod:`skllmprob.calibration`; a calibrator holds the settings of one method, calls
those functions in ``fit`` and keeps what they return:

- ``bias_`` (ndarray of shape (n_classes,)) and ``temperature_`` (float): the
  probabilities are ``apply_offsets(log_mass, bias_, temperature_)``;
- ``threshold_`` (float or None): a tuned decision threshold on the probability
  of one class (``"threshold"`` only).

The registry :data:`CALIBRATORS` maps each name to its class;
:func:`make_calibrator` builds one by name and checks its settings. A new method is
one subclass of :class:`Calibrator` with a ``name``, a ``_fit`` and
``@register_calibrator``.

Labels are class *indices* (``0 .. n_classes - 1``, in the column order of the
log-masses). A fit without labels (zero-shot) passes ``y=None`` (an empty ``y``
counts the same); ``log_mass`` may then be ``None`` when the number of classes is
known from ``classes`` or ``content_free_log_mass``. Methods that learn from labels
(``needs_labels``) raise :class:`~skllmprob.exceptions.InputError` there.

Examples
--------
>>> import numpy as np
>>> log_mass = np.log([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.3, 0.7]])
>>> y = np.array([0, 1, 1, 1])
>>> cal = make_calibrator("bias", alpha=0.3).fit(log_mass, y)
>>> cal.bias_.round(3), cal.temperature_, cal.threshold_
(array([-0.763,  0.763]), 1.0, None)
>>> cal.predict(log_mass)
array([0, 1, 1, 1])
>>> make_calibrator("none", classes=["no", "yes"]).fit(None, None).predict_proba(log_mass)
array([[0.9, 0.1],
       [0.8, 0.2],
       [0.6, 0.4],
       [0.3, 0.7]])
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from typing import ClassVar

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from . import calibration as _cal
from .exceptions import ConfigurationError, InputError

__all__ = [
    "CALIBRATORS",
    "AffineCalibrator",
    "BiasCalibrator",
    "Calibrator",
    "ContextualBiasCalibrator",
    "ContextualCalibrator",
    "LabelMetric",
    "NoCalibrator",
    "ThresholdCalibrator",
    "make_calibrator",
    "register_calibrator",
]

#: The calibration methods by name, in the order they were registered.
CALIBRATORS: dict[str, type[Calibrator]] = {}

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _outside_stacklevel() -> int:
    """The ``stacklevel`` of the first caller outside skllmprob, for warnings issued
    by the function that calls this one."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    return level


class Calibrator(BaseEstimator):
    """Base class of the calibration methods: the identity (renormalized masses).

    Subclasses set ``name`` (the ``calibration=`` string), ``needs_labels`` and
    ``needs_content_free``, take their settings as keyword arguments of
    ``__init__`` (stored unchanged, as in scikit-learn) and override ``_fit``, which
    sets ``bias_``, ``temperature_`` or ``threshold_``. A calibrator is a
    scikit-learn estimator, so :func:`sklearn.base.clone` and ``get_params`` work.

    Parameters
    ----------
    classes : array-like of shape (n_classes,), optional
        The class labels, only for messages (indices are used without it).

    Attributes
    ----------
    bias_ : ndarray of shape (n_classes,)
        Offsets added to the normalized log-probabilities (mean 0).
    temperature_ : float
        Divides the normalized log-probabilities before the offsets.
    threshold_ : float or None
        A tuned threshold on the probability of one class, or ``None``.
    n_classes_ : int

    Examples
    --------
    A new method is one class; the registry then knows its name:

    >>> import numpy as np
    >>> @register_calibrator
    ... class HalfTemperature(Calibrator):
    ...     name = "half-temperature"
    ...
    ...     def _fit(self, log_mass, y, sample_weight):
    ...         self.temperature_ = 2.0
    >>> cal = make_calibrator("half-temperature").fit(np.log([[0.2, 0.8]]), None)
    >>> cal.predict_proba(np.log([[0.2, 0.8]]))
    array([[0.33333333, 0.66666667]])
    >>> del CALIBRATORS["half-temperature"]
    """

    #: The ``calibration=`` string of the method.
    name: ClassVar[str] = ""
    #: Whether ``fit`` needs labelled samples (``y``).
    needs_labels: ClassVar[bool] = False
    #: Whether the method needs ``content_free_log_mass``.
    needs_content_free: ClassVar[bool] = False
    #: What happens to classes without labelled samples (in the warning).
    _missing_effect: ClassVar[str] = "their offsets stay neutral (0, the mean of all offsets)"

    def __init__(self, *, classes=None):
        self.classes = classes

    @classmethod
    def setting_names(cls) -> tuple[str, ...]:
        """The keyword arguments the method takes (those of ``__init__``)."""
        return tuple(cls._get_param_names())

    @classmethod
    def check_task(cls, n_classes: int, *, labelled: bool) -> None:
        """Raise if the method cannot work on this task (before anything is scored).

        Parameters
        ----------
        n_classes : int
        labelled : bool
            Whether ``fit`` will get labelled samples.
        """
        if cls.needs_labels and not labelled:
            raise InputError(
                f"calibration={cls.name!r} learns from labelled samples; pass X and y to "
                "fit, or use calibration='none' or 'contextual' for zero-shot."
            )

    def fit(self, log_mass, y=None, sample_weight=None):
        """Learn the calibration.

        Parameters
        ----------
        log_mass : array-like of shape (n_samples, n_classes), or None
            Class log-masses of the samples (any row-wise constant is irrelevant).
            ``None`` without labels, when ``classes`` or ``content_free_log_mass``
            tells the number of classes.
        y : array-like of int, shape (n_samples,), or None
            Class indices; ``None`` (or empty) for a fit without labels.
        sample_weight : array-like of shape (n_samples,), optional
            Non-negative weights of the samples.

        Returns
        -------
        self
        """
        log_mass, y, sample_weight = self._check_fit_input(log_mass, y, sample_weight)
        k = log_mass.shape[1]
        self.check_task(k, labelled=y is not None)
        self.bias_ = np.zeros(k)
        self.temperature_ = 1.0
        self.threshold_ = None
        self.n_classes_ = k
        self._fit(log_mass, y, sample_weight)
        return self

    def _fit(self, log_mass, y, sample_weight) -> None:
        """Set the fitted attributes; ``y`` is ``None`` without labels."""

    def predict_proba(self, log_mass):
        """Calibrated probabilities ``apply_offsets(log_mass, bias_, temperature_)``.

        Parameters
        ----------
        log_mass : array-like of shape (n_samples, n_classes)

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
            Rows sum to one.
        """
        check_is_fitted(self)
        return _cal.apply_offsets(self._check_columns(log_mass), self.bias_, self.temperature_)

    def predict(self, log_mass):
        """The decided class index of each row (the most probable class).

        Parameters
        ----------
        log_mass : array-like of shape (n_samples, n_classes)

        Returns
        -------
        ndarray of int, shape (n_samples,)
        """
        check_is_fitted(self)
        return self.predict_proba(log_mass).argmax(axis=1)

    # ------------------------------------------------------------------ helpers

    def _check_fit_input(self, log_mass, y, sample_weight):
        """``log_mass`` as a 2-D float array, ``y`` as int indices or ``None``, and
        ``sample_weight`` as ``None`` or one float per row (``None`` without ``y``)."""
        if y is not None and len(y) == 0:
            y = None
        if log_mass is None:
            if y is not None:
                raise InputError("y is given but log_mass is None; pass both.")
            log_mass = np.zeros((0, self._implied_n_classes()))
        log_mass = self._check_2d(log_mass, "log_mass")
        n, k = log_mass.shape
        if self.classes is not None and len(self.classes) != k:
            raise InputError(
                f"log_mass has {k} columns but there are {len(self.classes)} classes."
            )
        if y is None:
            return log_mass, None, None
        y = np.asarray(y)
        if y.shape != (n,):
            raise InputError(f"y has shape {y.shape}, expected ({n},): one class per row.")
        if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= k:
            raise InputError(f"y must hold class indices in range({k}), got {y[:10]!r}.")
        if sample_weight is not None:
            sample_weight = np.asarray(sample_weight, dtype=float)
            if sample_weight.ndim == 0:
                sample_weight = np.full(n, float(sample_weight))
            if sample_weight.shape != (n,):
                raise InputError(
                    f"sample_weight has shape {sample_weight.shape}, expected ({n},)."
                )
        return log_mass, y, sample_weight

    def _implied_n_classes(self) -> int:
        cf = getattr(self, "content_free_log_mass", None)
        if cf is not None:
            return self._check_2d(cf, "content_free_log_mass").shape[1]
        if self.classes is not None:
            return len(self.classes)
        raise InputError(
            "log_mass is None and the number of classes is unknown; pass log_mass of "
            "shape (0, n_classes) or set classes=."
        )

    @staticmethod
    def _check_2d(a, name: str) -> np.ndarray:
        a = np.asarray(a, dtype=float)
        if a.ndim != 2:
            raise InputError(
                f"{name} must be 2-D (n_samples, n_classes), got shape {a.shape}; reshape "
                "a single row with .reshape(1, -1)."
            )
        return a

    def _check_columns(self, log_mass) -> np.ndarray:
        log_mass = self._check_2d(log_mass, "log_mass")
        if log_mass.shape[1] != self.n_classes_:
            raise InputError(
                f"log_mass has {log_mass.shape[1]} columns but the calibrator was fitted "
                f"on {self.n_classes_} classes."
            )
        return log_mass

    def _class_names(self, index: np.ndarray) -> list:
        if self.classes is None:
            return index.tolist()
        if isinstance(self.classes, np.ndarray):
            return self.classes[index].tolist()
        return [self.classes[i] for i in index]

    def _warn_missing_classes(self, y: np.ndarray, sample_weight) -> None:
        """Warn when some classes have no labelled sample of positive weight."""
        w = np.ones(len(y)) if sample_weight is None else sample_weight
        seen = np.bincount(y, weights=w, minlength=self.n_classes_) > 0
        if seen.all():
            return
        absent = self._class_names(np.flatnonzero(~seen))
        warnings.warn(
            f"calibration={self.name!r}: the classes {absent} have no labelled "
            f"sample (of positive weight), so {self._missing_effect}. Add samples of "
            "every class to calibrate them.",
            UserWarning,
            stacklevel=_outside_stacklevel(),
        )


def register_calibrator(cls: type[Calibrator]) -> type[Calibrator]:
    """Class decorator: add a :class:`Calibrator` subclass to :data:`CALIBRATORS`.

    Parameters
    ----------
    cls : type
        A subclass of :class:`Calibrator` with a non-empty ``name`` not yet
        registered by another class.

    Returns
    -------
    cls
    """
    if not (isinstance(cls, type) and issubclass(cls, Calibrator)):
        raise TypeError(f"register_calibrator takes a Calibrator subclass, got {cls!r}.")
    if not isinstance(cls.name, str) or not cls.name:
        raise ConfigurationError(
            f"{cls.__name__} has no name; set the class attribute name = '...'."
        )
    known = CALIBRATORS.get(cls.name)
    if known is not None and known is not cls:
        raise ConfigurationError(
            f"calibration {cls.name!r} is already registered by {known.__name__}; choose "
            f"another name, or remove the old one with del CALIBRATORS[{cls.name!r}]."
        )
    CALIBRATORS[cls.name] = cls
    return cls


def make_calibrator(name: str, **settings) -> Calibrator:
    """A new, unfitted calibrator of the method ``name``.

    Parameters
    ----------
    name : str
        A key of :data:`CALIBRATORS`.
    **settings
        Keyword arguments of that method (its ``setting_names()``).

    Returns
    -------
    Calibrator

    Raises
    ------
    ConfigurationError
        For an unknown name or a setting the method does not use.

    Examples
    --------
    >>> make_calibrator("affine", alpha=1.0)
    AffineCalibrator(alpha=1.0)
    >>> make_calibrator("threshold", alpha=1.0)
    Traceback (most recent call last):
    ...
    skllmprob.exceptions.ConfigurationError: calibration='threshold' does not use the \
settings ['alpha']; it takes ['classes', 'metric', 'pos_index'].
    """
    cls = CALIBRATORS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ConfigurationError(
            f"calibration={name!r} is not a known calibration method; choose one of "
            f"{list(CALIBRATORS)}."
        )
    accepted = cls.setting_names()
    unused = sorted(set(settings) - set(accepted))
    if unused:
        raise ConfigurationError(
            f"calibration={name!r} does not use the settings {unused}; it takes "
            f"{sorted(accepted)}."
        )
    return cls(**settings)


def _content_free_offsets(calibrator) -> np.ndarray:
    """:func:`~skllmprob.calibration.contextual_offsets` of the content-free inputs."""
    cf = calibrator.content_free_log_mass
    if cf is None:
        raise ConfigurationError(
            f"calibration={calibrator.name!r} needs the log-masses of content-free "
            "inputs; pass content_free_log_mass= of shape (n_inputs, n_classes)."
        )
    cf = calibrator._check_2d(cf, "content_free_log_mass")
    if cf.shape[1] != calibrator.n_classes_:
        raise InputError(
            f"content_free_log_mass has {cf.shape[1]} columns but log_mass has "
            f"{calibrator.n_classes_}."
        )
    return _cal.contextual_offsets(cf)


# ------------------------------------------------------------------------ methods


@register_calibrator
class NoCalibrator(Calibrator):
    """``"none"``: the renormalized label probabilities (``bias_`` = 0, ``T`` = 1).

    Works with and without labels (they are not used).
    """

    name = "none"


@register_calibrator
class BiasCalibrator(Calibrator):
    """``"bias"``: per-class offsets minimizing the L2-penalized log-loss.

    See :func:`~skllmprob.calibration.fit_offsets`. Classes without a labelled
    sample get the neutral offset, with a warning.

    Parameters
    ----------
    alpha : float, default=0.3
        Strength of the L2 penalty, in units of one sample's log-loss.
    classes : array-like of shape (n_classes,), optional
        The class labels, only for messages.
    """

    name = "bias"
    needs_labels = True
    _fit_temperature: ClassVar[bool] = False

    def __init__(self, *, alpha=_cal.DEFAULT_ALPHA, classes=None):
        self.alpha = alpha
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
    """``"affine"``: offsets and a shared temperature (``temperature_``).

    Parameters
    ----------
    alpha : float, default=0.3
        Strength of the L2 penalty on the offsets (three times that on the
        log-temperature).
    classes : array-like of shape (n_classes,), optional
        The class labels, only for messages.
    """

    name = "affine"
    _fit_temperature = True


class LabelMetric:
    """A metric on class labels, as :class:`ThresholdCalibrator` calls it: on booleans.

    ``LabelMetric(metric, positive, negative)(y_true, y_pred)`` is
    ``metric(labels(y_true), labels(y_pred))`` with ``True`` read as ``positive``,
    extra keywords (``sample_weight=``) passed on. Unlike a closure, it pickles
    whenever ``metric`` does.

    Parameters
    ----------
    metric : callable
        ``metric(y_true, y_pred, **kwargs)`` on class labels.
    positive, negative : label

    Examples
    --------
    >>> from sklearn.metrics import f1_score
    >>> m = LabelMetric(f1_score, "spam", "ham")
    >>> m.metric is f1_score
    True
    """

    def __init__(self, metric: Callable, positive, negative) -> None:
        self.metric = metric
        self.positive = positive
        self.negative = negative

    @classmethod
    def for_classes(cls, metric, classes, pos_index: int):
        """``metric`` itself when it is a name, else its wrapper for ``classes``."""
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

    The probabilities stay the renormalized ones; :meth:`predict` decides the
    class ``pos_index`` where its probability is at least ``threshold_``
    (see :func:`~skllmprob.calibration.fit_threshold`). When one class has no
    labelled sample of positive weight, the threshold stays at 0.5, with a warning.

    Parameters
    ----------
    pos_index : {0, 1}, default=1
        The index of the positive class.
    metric : str or callable, default="accuracy"
        A name in :data:`~skllmprob.calibration.THRESHOLD_METRICS`, or
        ``metric(y_true, y_pred)`` on booleans (``True``: the positive class;
        :class:`LabelMetric` adapts a metric on class labels).
    classes : array-like of shape (2,), optional
        The class labels, only for messages.
    """

    name = "threshold"
    needs_labels = True
    _missing_effect = "the threshold stays at 0.5"

    def __init__(self, *, pos_index=1, metric="accuracy", classes=None):
        self.pos_index = pos_index
        self.metric = metric
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
        if self.pos_index not in (0, 1) or isinstance(self.pos_index, bool):
            raise ConfigurationError(f"pos_index must be 0 or 1, got {self.pos_index!r}.")
        pos = int(self.pos_index)
        self._warn_missing_classes(y, sample_weight)
        p_pos = _cal.apply_offsets(log_mass, self.bias_)[:, pos]
        is_pos = y == pos
        w = np.ones(len(y)) if sample_weight is None else sample_weight
        if not (w[is_pos].sum() > 0 and w[~is_pos].sum() > 0):
            self.threshold_ = 0.5
            return
        self.threshold_ = _cal.fit_threshold(
            p_pos, is_pos, self.metric, sample_weight=sample_weight
        )

    def predict(self, log_mass):
        """``pos_index`` where its probability is at least ``threshold_``, else the
        other class.

        Parameters
        ----------
        log_mass : array-like of shape (n_samples, 2)

        Returns
        -------
        ndarray of int, shape (n_samples,)
        """
        check_is_fitted(self)
        pos = int(self.pos_index)
        p_pos = self.predict_proba(log_mass)[:, pos]
        return np.where(p_pos >= self.threshold_, pos, 1 - pos)


@register_calibrator
class ContextualCalibrator(Calibrator):
    """``"contextual"``: offsets that make the content-free inputs come out uniform.

    No labels needed (Zhao et al., 2021; see
    :func:`~skllmprob.calibration.contextual_offsets`); labels, when given, are
    not used.

    Parameters
    ----------
    content_free_log_mass : array-like of shape (n_inputs, n_classes)
        The class log-masses of the content-free inputs (``"N/A"``, ...).
    classes : array-like of shape (n_classes,), optional
        The class labels, only for messages.
    """

    name = "contextual"
    needs_content_free = True

    def __init__(self, *, content_free_log_mass=None, classes=None):
        self.content_free_log_mass = content_free_log_mass
        self.classes = classes

    def _fit(self, log_mass, y, sample_weight) -> None:
        self.bias_ = _content_free_offsets(self)


@register_calibrator
class ContextualBiasCalibrator(BiasCalibrator):
    """``"contextual-bias"``: the contextual offsets, corrected from labelled samples.

    Like ``"bias"``, with the penalty pulling towards the contextual offsets
    instead of zero; classes without a labelled sample keep their contextual
    offset (with a warning).

    Parameters
    ----------
    alpha : float, default=0.3
        Strength of the L2 penalty on the correction.
    content_free_log_mass : array-like of shape (n_inputs, n_classes)
        The class log-masses of the content-free inputs.
    classes : array-like of shape (n_classes,), optional
        The class labels, only for messages.
    """

    name = "contextual-bias"
    needs_content_free = True
    _missing_effect = "their offsets keep the contextual estimate (no correction)"

    def __init__(self, *, alpha=_cal.DEFAULT_ALPHA, content_free_log_mass=None, classes=None):
        self.alpha = alpha
        self.content_free_log_mass = content_free_log_mass
        self.classes = classes

    def _prior(self) -> np.ndarray:
        return _content_free_offsets(self)
