"""The base class of the calibrators, the registry and :func:`make_calibrator`."""

from __future__ import annotations

import inspect
import os
import sys
import warnings
from typing import ClassVar

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from .. import calibration as _cal
from .. import calibration_ext as _ext
from .._validation import check_sample_weight
from ..exceptions import ConfigurationError, InputError

__all__ = [
    "CALIBRATORS",
    "Calibrator",
    "as_2d",
    "make_calibrator",
    "outside_stacklevel",
    "register_calibrator",
]

#: The calibration methods by name, in the order they were registered.
CALIBRATORS: dict[str, type[Calibrator]] = {}

#: skllmprob/ (warnings point at the first frame outside it).
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def outside_stacklevel() -> int:
    """The ``stacklevel`` that points a warning of the calling function at the
    first caller outside skllmprob."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    return level


def as_2d(a, name: str) -> np.ndarray:
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
        if y is not None and getattr(self, "class_weight", None) is not None:
            sample_weight = self._class_weighted(y, sample_weight)
        self._fit(log_mass, y, sample_weight)
        return self

    def _fit(self, log_mass, y, sample_weight) -> None:
        """Set the fitted attributes (the identity keeps the defaults)."""

    def predict_proba(self, log_mass):
        """Calibrated probabilities ``apply_offsets(log_mass, bias_, temperature_)``
        (n_samples, n_classes) of ``log_mass`` (n_samples, n_classes)."""
        check_is_fitted(self)
        log_mass = as_2d(log_mass, "log_mass")
        if log_mass.shape[1] != self.n_classes_:
            raise InputError(
                f"log_mass has {log_mass.shape[1]} columns but the calibrator was fitted "
                f"on {self.n_classes_} classes."
            )
        return self._proba(log_mass)

    def _proba(self, log_mass: np.ndarray) -> np.ndarray:
        """The probabilities of checked ``log_mass``."""
        return _cal.apply_offsets(log_mass, self.bias_, self.temperature_)

    def _class_weighted(self, y: np.ndarray, sample_weight) -> np.ndarray:
        """``sample_weight`` times the weights of ``class_weight`` (keyed by the
        class labels when ``classes`` is set, else by class indices)."""
        cw = self.class_weight
        if isinstance(cw, dict) and self.classes is not None:
            names = list(np.asarray(self.classes, dtype=object))
            unknown = [c for c in cw if c not in names]
            if unknown:
                raise ConfigurationError(
                    f"class_weight has keys {unknown} that are not classes; the classes "
                    f"are {names}."
                )
            cw = {names.index(c): v for c, v in cw.items()}
        try:
            return _ext.class_sample_weight(y, cw, self.n_classes_, sample_weight)
        except ValueError as e:
            raise ConfigurationError(f"calibration={self.name!r}: {e}") from e

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
        log_mass = as_2d(log_mass, "log_mass")
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
        return log_mass, y, check_sample_weight(sample_weight, n)

    def _implied_n_classes(self) -> int:
        content_free = getattr(self, "content_free_log_mass", None)
        if content_free is not None:
            return as_2d(content_free, "content_free_log_mass").shape[1]
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
            stacklevel=outside_stacklevel(),
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
settings ['alpha']; it takes ['base', 'class_weight', 'classes', 'metric', \
'pos_index'].
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
