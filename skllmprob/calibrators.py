"""Calibration methods as small fitted objects: one class per ``calibration=`` name.

A calibrator learns from the class *log-masses* of samples (see
:mod:`skllmprob.scoring`), and from their labels if it ``needs_labels``, the
probabilities ``apply_offsets(log_mass, bias_, temperature_)`` and for
``"threshold"`` a decision threshold ``threshold_``; the maths stays in
:mod:`skllmprob.calibration`. :data:`CALIBRATORS` maps names to classes and
:func:`make_calibrator` builds one by name. A new method is one subclass of
:class:`Calibrator` decorated with :func:`register_calibrator`.

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

from __future__ import annotations

import inspect
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
    """The ``stacklevel`` that points a warning of the calling function at the
    first caller outside skllmprob."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    return level


def _as_2d(a, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=float)
    if a.ndim != 2:
        raise InputError(
            f"{name} must be 2-D (n_samples, n_classes), got shape {a.shape}; reshape a "
            "single row with .reshape(1, -1)."
        )
    return a


class Calibrator(BaseEstimator):
    """Base class of the calibration methods; by itself the identity.

    A subclass sets the class attributes ``name`` (its ``calibration=`` string),
    ``needs_labels`` and ``needs_content_free``, takes its settings as keywords of
    ``__init__`` (stored as given, so ``clone`` and ``get_params`` work) and
    overrides ``_fit(log_mass, y, sample_weight)`` to set ``bias_``,
    ``temperature_`` or ``threshold_`` (``y`` is ``None`` without labels).

    Parameters
    ----------
    classes : array-like of shape (n_classes,), optional
        The class labels, for messages only (class indices without it).

    Attributes
    ----------
    bias_ : ndarray of shape (n_classes,)
        Offsets added to the normalized log-probabilities (mean 0).
    temperature_ : float
        Divides the normalized log-probabilities before the offsets.
    threshold_ : float or None
        A tuned threshold on the probability of one class (``"threshold"``).
    n_classes_ : int

    Examples
    --------
    >>> @register_calibrator
    ... class Flatten(Calibrator):
    ...     name = "flatten"
    ...
    ...     def _fit(self, log_mass, y, sample_weight):
    ...         self.temperature_ = 2.0
    >>> cal = make_calibrator("flatten", classes=["a", "b"]).fit(None)
    >>> cal.predict_proba(np.log([[0.2, 0.8]]))
    array([[0.33333333, 0.66666667]])
    >>> del CALIBRATORS["flatten"]
    """

    #: The ``calibration=`` string of the method.
    name: ClassVar[str] = ""
    #: Whether ``fit`` needs labelled samples.
    needs_labels: ClassVar[bool] = False
    #: Whether the method needs ``content_free_log_mass``.
    needs_content_free: ClassVar[bool] = False
    #: What becomes of classes without labelled samples (said in the warning).
    _missing_effect: ClassVar[str] = "their offsets stay neutral (0, the mean of all offsets)"

    def __init__(self, *, classes=None):
        self.classes = classes

    @classmethod
    def setting_names(cls) -> tuple[str, ...]:
        """The keyword arguments of ``__init__``, sorted."""
        return tuple(sorted(p for p in inspect.signature(cls.__init__).parameters if p != "self"))

    @classmethod
    def check_task(cls, n_classes: int, *, labelled: bool) -> None:
        """Raise if the method cannot serve ``n_classes`` classes, with labels or
        not (``labelled``); ``fit`` calls it, callers may call it before scoring."""
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
            Class log-masses (a constant added to a row changes nothing). ``None``
            without labels, when ``classes`` or ``content_free_log_mass`` tells the
            number of classes.
        y : array-like of int, shape (n_samples,), or None
            Class indices; ``None`` or empty without labels.
        sample_weight : array-like of shape (n_samples,), optional

        Returns
        -------
        self
        """
        log_mass, y, sample_weight = self._check_fit_input(log_mass, y, sample_weight)
        k = log_mass.shape[1]
        self.check_task(k, labelled=y is not None)
        self.bias_, self.temperature_, self.threshold_ = np.zeros(k), 1.0, None
        self.n_classes_ = k
        self._fit(log_mass, y, sample_weight)
        return self

    def _fit(self, log_mass, y, sample_weight) -> None:
        """Set the fitted attributes (the identity keeps the defaults)."""

    def predict_proba(self, log_mass):
        """Calibrated probabilities ``apply_offsets(log_mass, bias_, temperature_)``
        (n_samples, n_classes) of ``log_mass`` (n_samples, n_classes)."""
        check_is_fitted(self)
        log_mass = _as_2d(log_mass, "log_mass")
        if log_mass.shape[1] != self.n_classes_:
            raise InputError(
                f"log_mass has {log_mass.shape[1]} columns but the calibrator was fitted "
                f"on {self.n_classes_} classes."
            )
        return _cal.apply_offsets(log_mass, self.bias_, self.temperature_)

    def predict(self, log_mass):
        """The decided class index of each row of ``log_mass``: the most probable."""
        check_is_fitted(self)
        return self.predict_proba(log_mass).argmax(axis=1)

    def _check_fit_input(self, log_mass, y, sample_weight):
        """``log_mass`` 2-D, ``y`` int indices or ``None`` (no labels), and
        ``sample_weight`` ``None`` or one float per row."""
        if log_mass is None:
            if y is not None and len(y):
                raise InputError("y is given but log_mass is None; pass both.")
            log_mass = np.zeros((0, self._implied_n_classes()))
        log_mass = _as_2d(log_mass, "log_mass")
        (n, k), names = log_mass.shape, self.classes
        if names is not None and len(names) != k:
            raise InputError(f"log_mass has {k} columns but there are {len(names)} classes.")
        if y is None or (n == 0 and len(y) == 0):
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
        content_free = getattr(self, "content_free_log_mass", None)
        if content_free is not None:
            return _as_2d(content_free, "content_free_log_mass").shape[1]
        if self.classes is not None:
            return len(self.classes)
        raise InputError(
            "log_mass is None and the number of classes is unknown; pass log_mass of "
            "shape (0, n_classes) or set classes=."
        )

    def _warn_missing_classes(self, y: np.ndarray, sample_weight) -> None:
        """Warn when classes have no labelled sample of positive weight."""
        w = np.ones(len(y)) if sample_weight is None else sample_weight
        missing = np.flatnonzero(~(np.bincount(y, weights=w, minlength=self.n_classes_) > 0))
        if not len(missing):
            return
        names = np.arange(self.n_classes_) if self.classes is None else self.classes
        absent = np.asarray(names, dtype=object)[missing].tolist()  # plain scalars
        warnings.warn(
            f"calibration={self.name!r}: the classes {absent} have no labelled "
            f"sample (of positive weight), so {self._missing_effect}. Add samples of "
            "every class to calibrate them.",
            UserWarning,
            stacklevel=_outside_stacklevel(),
        )


def register_calibrator(cls: type[Calibrator]) -> type[Calibrator]:
    """Class decorator: add ``cls``, a :class:`Calibrator` subclass, to
    :data:`CALIBRATORS` under ``cls.name`` (a name no other class holds)."""
    if not (isinstance(cls, type) and issubclass(cls, Calibrator)):
        raise TypeError(f"register_calibrator takes a Calibrator subclass, got {cls!r}.")
    if not isinstance(cls.name, str) or not cls.name:
        raise ConfigurationError(f"{cls.__name__} has no name; set name = '...' on the class.")
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
        Raises :class:`~skllmprob.exceptions.ConfigurationError` for an unknown
        name or a setting the method does not use.

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
    unused = sorted(set(settings) - set(cls.setting_names()))
    if unused:
        raise ConfigurationError(
            f"calibration={name!r} does not use the settings {unused}; it takes "
            f"{list(cls.setting_names())}."
        )
    return cls(**settings)


def _content_free_offsets(calibrator: Calibrator) -> np.ndarray:
    """:func:`~skllmprob.calibration.contextual_offsets` of the content-free inputs."""
    if calibrator.content_free_log_mass is None:
        raise ConfigurationError(
            f"calibration={calibrator.name!r} needs the log-masses of content-free "
            "inputs; pass content_free_log_mass= of shape (n_inputs, n_classes)."
        )
    content_free = _as_2d(calibrator.content_free_log_mass, "content_free_log_mass")
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
# the content-free inputs ("N/A", ...); ``classes``, as in :class:`Calibrator`.


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

    The probabilities stay the renormalized ones; :meth:`predict` decides
    ``pos_index`` where its probability is at least ``threshold_`` (see
    :func:`~skllmprob.calibration.fit_threshold`). With one class alone among the
    labelled samples the threshold stays at 0.5, with a warning.

    Parameters
    ----------
    pos_index : {0, 1}, default=1
        The column of the positive class.
    metric : str or callable, default="accuracy"
        A name in :data:`~skllmprob.calibration.THRESHOLD_METRICS` or
        ``metric(y_true, y_pred)`` on booleans (see :class:`LabelMetric`).
    classes : array-like of shape (2,), optional
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
        if isinstance(self.pos_index, bool) or self.pos_index not in (0, 1):
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

    def __init__(self, *, alpha=_cal.DEFAULT_ALPHA, content_free_log_mass=None, classes=None):
        self.alpha = alpha
        self.content_free_log_mass = content_free_log_mass
        self.classes = classes

    def _prior(self) -> np.ndarray:
        return _content_free_offsets(self)
