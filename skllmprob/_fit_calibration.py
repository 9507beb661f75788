"""How :class:`~skllmprob.LogprobClassifier` sets up its calibrator: the settings
each method takes from the estimator's parameters, the base of ``"threshold"``,
unlabelled rows for ``"batch"`` and domain-context inputs for the contextual
methods."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import make_scorer

from ._validation import as_table, check_fit_input
from .calibration_ext import domain_context_texts
from .calibrators import CALIBRATORS, Calibrator, LabelMetric, make_calibrator
from .exceptions import ConfigurationError, InputError
from .labels import check_pos_label

__all__ = [
    "DOMAIN_CONTEXT",
    "calibration_chosen",
    "calibration_cv_results",
    "check_calibration_name",
    "check_fit_rows",
    "content_free_items",
    "estimator_calibrator",
]

#: The ``content_free=`` value that draws content-free inputs from the fit texts.
DOMAIN_CONTEXT = "domain-context"


def check_calibration_name(name) -> None:
    """Raise unless ``name`` is a registered calibration method (registered after
    import, too)."""
    if name not in CALIBRATORS:
        raise ConfigurationError(
            "The 'calibration' parameter of LogprobClassifier must be one of "
            f"{list(CALIBRATORS)}; got {name!r}."
        )


def estimator_calibrator(est, *, labelled: bool) -> Calibrator:
    """The unfitted calibrator of ``est.calibration`` with the settings it takes
    from ``est``'s parameters, checked for the task."""
    cls = CALIBRATORS[est.calibration]
    classes = est.classes_
    cls.check_task(len(classes), labelled=labelled)
    pos_label = check_pos_label(est.pos_label, classes)
    wanted = set(cls.setting_names())
    alpha = float(est.calibration_alpha)
    settings = {"classes": classes, "alpha": alpha, "class_weight": est.class_weight}
    if "pos_index" in wanted:
        pos = int(np.flatnonzero(classes == pos_label)[0])
        settings["pos_index"] = pos
        metric = "accuracy" if est.scoring is None else est.scoring
        settings["metric"] = LabelMetric.for_classes(metric, classes, pos)
        settings["base"] = _threshold_base(est.calibration_base, classes, alpha)
    if "scoring" in wanted and est.scoring is not None:
        scoring = est.scoring
        settings["scoring"] = scoring if isinstance(scoring, str) else make_scorer(scoring)
    return make_calibrator(est.calibration, **{k: v for k, v in settings.items() if k in wanted})


def _threshold_base(name, classes, alpha: float) -> Calibrator | None:
    """The unfitted ``calibration_base`` of ``"threshold"`` (the threshold
    calibrator applies the class weights itself)."""
    if name is None:
        return None
    usable = [n for n, c in CALIBRATORS.items() if n != "threshold" and not c.needs_content_free]
    if name not in usable:
        raise ConfigurationError(
            f"calibration_base={name!r} is not a probability calibration the threshold "
            f"can be tuned on; choose one of {usable}."
        )
    wanted = set(CALIBRATORS[name].setting_names())
    settings = {"classes": classes, "alpha": alpha}
    return make_calibrator(name, **{k: v for k, v in settings.items() if k in wanted})


def check_fit_rows(est, X, y):
    """``(zero_shot, table, y)`` of ``fit(X, y)``; unlabelled rows (``y=None``)
    only for a method that learns from rows (``"batch"``), with ``labels``."""
    cls = CALIBRATORS[est.calibration]
    empty = X is None or (hasattr(X, "__len__") and len(X) == 0)
    if y is None and not empty and getattr(cls, "learns_from_rows", False):
        if est.labels is None:
            raise InputError(
                f"calibration={est.calibration!r} with y=None needs the classes: pass "
                "labels=[...], or labelled X and y."
            )
        return False, as_table(X), np.empty(0, dtype=object)
    return check_fit_input(X, y, labels_given=est.labels is not None)


def content_free_items(content_free, table) -> list:
    """The content-free inputs: ``content_free`` itself, or for
    ``"domain-context"`` random texts of the words of the fit rows (all cells of
    a row joined; Fei et al., 2023)."""
    if not (isinstance(content_free, str) and content_free == DOMAIN_CONTEXT):
        return list(content_free)
    if table is None or len(table) == 0:
        raise ConfigurationError(
            "content_free='domain-context' draws its inputs from the texts given to "
            "fit; pass X to fit, or give content_free=('N/A', '', '[MASK]')."
        )
    texts = table.texts if table.is_1d else [" ".join(map(str, row)) for row in table.rows]
    return domain_context_texts(texts)


def calibration_chosen(calibrator: Calibrator) -> dict:
    """``{"method", "alpha"}`` of a fitted calibrator (``"auto"``: its choice)."""
    chosen = getattr(calibrator, "chosen_", None)
    if chosen is not None:
        return dict(chosen)
    return {"method": calibrator.name, "alpha": getattr(calibrator, "alpha", None)}


def calibration_cv_results(calibrator: Calibrator) -> dict:
    """The cross-validation table of a calibrator fitted by ``"auto"``."""
    results = getattr(calibrator, "cv_results_", None)
    if results is None:
        raise AttributeError(
            "calibration_cv_results_ exists only after fit with calibration='auto'."
        )
    return results
