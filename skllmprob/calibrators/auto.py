"""``"auto"``: the calibration method and its penalty chosen by cross-validation."""

from __future__ import annotations

import warnings
from numbers import Real

import numpy as np
from scipy.stats import rankdata
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.metrics import get_scorer
from sklearn.model_selection import RepeatedKFold, RepeatedStratifiedKFold

from .. import calibration as _cal
from ..exceptions import ConfigurationError
from .base import CALIBRATORS, Calibrator, make_calibrator, outside_stacklevel, register_calibrator
from .extra import VectorCalibrator  # noqa: F401  (registers "vector")

__all__ = ["DEFAULT_ALPHAS", "DEFAULT_METHODS", "AutoCalibrator", "choose"]

#: The methods ``"auto"`` chooses among by default.
DEFAULT_METHODS = ("none", "bias", "affine", "vector")
#: The penalties tried for each method that takes ``alpha``: a log scale.
DEFAULT_ALPHAS = tuple(float(a) for a in 10.0 ** np.linspace(-3, 1, 9))
_NOT_CHOOSABLE = ("threshold", "auto")  # a decision rule; itself


class _Scored(ClassifierMixin, BaseEstimator):
    """A fitted calibrator as a classifier of log-masses with ``classes_``, so that
    scikit-learn scorers (``scorer(estimator, X, y)``) can score it."""

    def __init__(self, calibrator=None, classes=None):
        self.calibrator = calibrator
        self.classes = classes

    @property
    def classes_(self) -> np.ndarray:
        return self.classes

    def predict_proba(self, X):
        return self.calibrator.predict_proba(X)

    def predict(self, X):
        return self.classes[self.calibrator.predict(X)]


@register_calibrator
class AutoCalibrator(Calibrator):
    """``"auto"``: chooses the method and its penalty by repeated stratified
    K-fold cross-validation on the labelled samples, then refits the winner on all.

    The candidates are ``"none"`` and each method of ``methods`` with each
    penalty of ``alphas`` and with the default penalty ``alpha`` (strongest
    first). Every candidate is fitted on K-1 folds and scored on the held-out
    fold: by the mean log-loss (weighted by the sample and class weights) unless
    ``scoring`` says otherwise. The folds are drawn ``n_repeats`` times with
    different shuffles; the fits are small, so repeating them costs no request
    and little time. Samples of zero weight take no part in the folds.

    The winner is chosen in two steps (:func:`choose`). First the best mean
    score among the methods at the default penalty (and ``"none"``): the
    *default choice*. Another candidate replaces it only when it scores higher
    by more than ``switch_margin`` standard errors of their paired differences
    over the folds. Then the method of the largest such gain wins, with the
    strongest penalty among its candidates that gain that clearly: the smallest
    clear step away from the default. With a few dozen samples the
    best mean score is noisy enough to pick a clearly worse penalty: on 64
    labelled rows (five draws, zero- and 4-shot prompts) of SST-2 and AG News,
    taking the best mean lost 0.018-0.019 of held-out log-loss to the best
    single method at its default penalty; with this rule 0.005-0.013, while on
    TREC zero-shot, AG News zero-shot and Banking77 a weaker or stronger penalty
    still wins where the folds agree (docs/benchmarks.md).

    With few labelled samples the number of folds drops to the number of
    samples of the rarest class (present classes only). When a class has a
    single sample (many classes, few labels: 64 rows over 77 intents), the
    folds cannot be stratified, and they are drawn without stratification
    (``stratified_`` is False): a held-out sample's class may then be missing
    from the fold the candidates were fitted on, which is how the fitted
    calibrator will meet the classes it saw once or never. Only with a single
    labelled class, or fewer than 4 samples, is there no cross-validation:
    ``"bias"`` with the default penalty is fitted, with a warning, and
    ``cv_results_`` has that single row with NaN scores.

    Parameters
    ----------
    methods : sequence of str, default=("none", "bias", "affine", "vector")
        Registered methods that learn from labels alone (not ``"threshold"``,
        not the contextual ones), or ``"none"``.
    alphas : sequence of float, optional
        The penalties tried; ``DEFAULT_ALPHAS`` (``10 ** linspace(-3, 1, 9)``)
        by default.
    alpha : float, default=0.3
        The default penalty (the estimator's ``calibration_alpha``): it is always
        tried, and the default choice is made at it.
    switch_margin : float, default=2.0
        How many standard errors of the paired fold differences a candidate must
        gain over the default choice to replace it (``0``: any gain;
        ``numpy.inf``: never).
    cv : int, default=5
        The number of folds (at most).
    n_repeats : int, default=3
        How many times the folds are drawn (each time shuffled differently).
    scoring : None, str or callable, default=None
        ``None``: minus the held-out log-loss. A str: a scikit-learn scorer
        name (``"accuracy"``, ``"f1_macro"``, ``"neg_brier_score"``...). A
        callable: a scikit-learn scorer ``scoring(estimator, log_mass, y)``
        (e.g. from :func:`~sklearn.metrics.make_scorer`), where ``estimator``
        has ``classes_`` (``classes``, or the class indices), ``predict`` and
        ``predict_proba`` and ``y`` holds class labels. Scorers get
        ``sample_weight=`` when there are sample or class weights.
    class_weight : None, "balanced" or dict, default=None
    random_state : int, default=0
        Seeds the shuffling of the folds.
    classes : array-like of shape (n_classes,), optional

    Attributes
    ----------
    chosen_ : dict
        ``{"method": name, "alpha": float or None}`` of the winner.
    default_choice_ : dict
        The same for the best candidate at the default penalty (the winner unless
        another one gained more than ``switch_margin`` standard errors over it).
    best_calibrator_ : Calibrator
        The winner, refitted on all samples; it makes the probabilities.
    cv_results_ : dict of arrays
        As scikit-learn's search estimators: ``params``, ``param_method``,
        ``param_alpha`` (NaN for methods without one), ``split{j}_test_score``
        (``j`` over the ``n_splits_ * n_repeats`` held-out folds, repeat by
        repeat), ``mean_test_score``, ``std_test_score``, ``rank_test_score``.
    n_splits_ : int
        The number of folds of each repeat (0: no cross-validation).
    stratified_ : bool
        Whether the folds were stratified by class.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> z = rng.normal(0, 1, size=(200, 2))
    >>> y = (rng.random(200) < 1 / (1 + np.exp(3 * (z[:, 0] - z[:, 1])))).astype(int)
    >>> cal = AutoCalibrator().fit(z, y)          # the model is under-confident
    >>> cal.chosen_["method"] in ("affine", "vector"), cal.temperature_ < 0.5
    (True, True)
    """

    name = "auto"
    needs_labels = True

    def __init__(
        self,
        *,
        methods=DEFAULT_METHODS,
        alphas=None,
        alpha=_cal.DEFAULT_ALPHA,
        switch_margin=2.0,
        cv=5,
        n_repeats=3,
        scoring=None,
        class_weight=None,
        random_state=0,
        classes=None,
    ):
        self.methods = methods
        self.alphas = alphas
        self.alpha = alpha
        self.switch_margin = switch_margin
        self.cv = cv
        self.n_repeats = n_repeats
        self.scoring = scoring
        self.class_weight = class_weight
        self.random_state = random_state
        self.classes = classes

    def _candidates(self) -> list[tuple[str, float | None]]:
        alphas = DEFAULT_ALPHAS if self.alphas is None else self.alphas
        alphas = np.asarray(alphas, dtype=float)
        if alphas.ndim != 1 or not len(alphas) or not (np.isfinite(alphas) & (alphas >= 0)).all():
            raise ConfigurationError(
                "alphas must be a non-empty sequence of non-negative numbers, got "
                f"{self.alphas!r}."
            )
        for name, value in (("alpha", self.alpha), ("switch_margin", self.switch_margin)):
            if isinstance(value, bool) or not isinstance(value, Real) or not value >= 0:
                raise ConfigurationError(f"{name} must be a non-negative number, got {value!r}.")
        alphas = np.union1d(alphas, [float(self.alpha)])
        methods = [self.methods] if isinstance(self.methods, str) else list(self.methods)
        out: list[tuple[str, float | None]] = []
        for name in methods:
            cls = CALIBRATORS.get(name) if isinstance(name, str) else None
            if cls is None or name in _NOT_CHOOSABLE or cls.needs_content_free:
                raise ConfigurationError(
                    f"calibration='auto' cannot choose {name!r}; methods must be names of "
                    "methods that learn from labels alone or 'none', e.g. "
                    f"{list(DEFAULT_METHODS)}."
                )
            if "alpha" in cls.setting_names():
                out += [(name, float(a)) for a in sorted(alphas, reverse=True)]
            else:
                out.append((name, None))
        if not out:
            raise ConfigurationError("calibration='auto' needs at least one method.")
        return out

    def _make(self, candidate: tuple[str, float | None]) -> Calibrator:
        name, alpha = candidate
        settings = {} if alpha is None else {"alpha": alpha}
        return make_calibrator(name, classes=self.classes, **settings)

    def _fit(self, log_mass, y, sample_weight) -> None:
        candidates = self._candidates()
        if isinstance(self.cv, bool) or not isinstance(self.cv, int | np.integer) or self.cv < 2:
            raise ConfigurationError(f"cv must be an integer >= 2, got {self.cv!r}.")
        r = self.n_repeats
        if isinstance(r, bool) or not isinstance(r, int | np.integer) or r < 1:
            raise ConfigurationError(f"n_repeats must be an integer >= 1, got {r!r}.")
        self._warn_missing_classes(y, sample_weight)
        w = np.ones(len(y)) if sample_weight is None else sample_weight
        keep = w > 0
        self.n_splits_, self.stratified_ = _folds(self.cv, y[keep], self.n_classes_)
        if self.n_splits_ < 2:
            self.n_splits_, winner = 0, ("bias", float(self.alpha))
            self.default_choice_ = {"method": "bias", "alpha": float(self.alpha)}
            self.cv_results_ = _results([winner], np.full((1, 0), np.nan))
            warnings.warn(
                "calibration='auto': the labelled samples are too few for "
                "cross-validation (one class alone, or fewer than 4 samples); fitted "
                f"calibration='bias' with alpha={float(self.alpha)} instead.",
                UserWarning,
                stacklevel=outside_stacklevel(),
            )
        else:
            weighted = sample_weight is not None
            scores = self._cross_validate(candidates, log_mass[keep], y[keep], w[keep], weighted)
            self.cv_results_ = _results(candidates, scores)
            at_default = np.array([a is None or a == float(self.alpha) for _, a in candidates])
            method = np.array([m for m, _ in candidates])
            penalty = np.array([0.0 if a is None else a for _, a in candidates])
            margin = float(self.switch_margin)
            default, won = choose(scores, at_default, method, penalty, margin)
            winner = candidates[won]
            self.default_choice_ = dict(zip(("method", "alpha"), candidates[default], strict=True))
        best = self._make(winner)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # said above, as 'auto'
            self.best_calibrator_ = best.fit(log_mass, y, sample_weight)
        self.chosen_ = {"method": winner[0], "alpha": winner[1]}
        self.bias_, self.temperature_ = best.bias_, best.temperature_

    def _cross_validate(self, candidates, z, y, w, weighted: bool) -> np.ndarray:
        """Held-out scores, shape (n_candidates, n_splits * n_repeats)."""
        scorer = self._scorer()
        kind = RepeatedStratifiedKFold if self.stratified_ else RepeatedKFold
        folds = kind(
            n_splits=self.n_splits_, n_repeats=self.n_repeats, random_state=self.random_state
        )
        scores = np.empty((len(candidates), self.n_splits_ * self.n_repeats))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            for j, (train, test) in enumerate(folds.split(z, y)):
                for i, candidate in enumerate(candidates):
                    fitted = self._make(candidate).fit(z[train], y[train], w[train])
                    scores[i, j] = scorer(fitted, z[test], y[test], w[test] if weighted else None)
        return scores

    def _scorer(self):
        """``score(calibrator, log_mass, y_indices, weights) -> float``."""
        if self.scoring is None:
            return _neg_log_loss
        try:
            sk_scorer = get_scorer(self.scoring)
        except (ValueError, TypeError) as e:
            raise ConfigurationError(
                f"scoring={self.scoring!r} is neither None (log-loss), a scikit-learn "
                "scorer name (sklearn.metrics.get_scorer_names()) nor a callable "
                "scorer(estimator, X, y)."
            ) from e
        classes = np.arange(self.n_classes_) if self.classes is None else np.asarray(self.classes)

        def score(calibrator, z, y, w):
            kw = {} if w is None else {"sample_weight": w}
            return float(sk_scorer(_Scored(calibrator, classes), z, classes[y], **kw))

        return score

    def _proba(self, log_mass: np.ndarray) -> np.ndarray:
        return self.best_calibrator_._proba(log_mass)


def _folds(cv: int, y: np.ndarray, n_classes: int) -> tuple[int, bool]:
    """The number of folds for the labels ``y`` and whether they are stratified
    (``0``: no cross-validation).

    >>> _folds(5, np.array([0] * 30 + [1] * 3), 2)
    (3, True)
    >>> _folds(5, np.array([0] * 30 + [1, 2]), 3)
    (5, False)
    >>> _folds(5, np.array([0] * 30), 2)
    (0, True)
    """
    counts = np.bincount(y, minlength=n_classes)
    present = counts[counts > 0]
    if len(present) < 2 or len(y) < 4:
        return 0, True
    if present.min() >= 2:
        return int(min(cv, present.min())), True
    return int(min(cv, len(y) // 2)), False


def choose(
    scores: np.ndarray,
    at_default: np.ndarray,
    method: np.ndarray,
    penalty: np.ndarray,
    margin: float,
) -> tuple[int, int]:
    """The default choice and the winner among candidates with held-out ``scores``
    (one row per candidate, one column per fold; higher is better).

    The default choice is the best mean score among the candidates flagged
    ``at_default`` (all of them if none is; ties: the first). A candidate beats
    it clearly when its mean paired gain over it is positive and exceeds
    ``margin`` standard errors of that gain (the gain's standard deviation over
    the folds, divided by the square root of their number). When some do, the
    ``method`` of the largest clear gain wins, with the strongest ``penalty``
    among its candidates that beat the default clearly (ties: the larger gain,
    then the first): the smallest clear step away from the default.

    >>> scores = np.array([[-0.60, -0.50, -0.55], [-0.50, -0.52, -0.45]])
    >>> args = np.array([True, False]), np.array(["affine"] * 2), np.array([0.3, 0.01])
    >>> choose(scores, *args, 2.0)   # gains 0.1, -0.02, 0.1: 1.5 standard errors
    (0, 0)
    >>> choose(scores, *args, 1.0)
    (0, 1)
    """
    flagged = np.flatnonzero(at_default)
    if not len(flagged):
        flagged = np.arange(len(scores))
    mean = scores.mean(axis=1)
    default = int(flagged[np.argmax(mean[flagged])])
    gain = scores - scores[default]
    mean_gain = gain.mean(axis=1)
    if gain.shape[1] > 1:
        se = gain.std(axis=1, ddof=1) / np.sqrt(gain.shape[1])
    else:
        se = np.full(len(scores), np.inf)
    with np.errstate(invalid="ignore"):  # an infinite margin times a zero spread
        clear = (mean_gain > 0) & (mean_gain > margin * se)
    if not clear.any():
        return default, default
    top = int(np.flatnonzero(clear)[np.argmax(mean_gain[clear])])
    step = np.flatnonzero(clear & (method == method[top]))
    order = np.lexsort((-mean_gain[step], -penalty[step]))  # strongest, then larger gain
    return default, int(step[order[0]])


def _neg_log_loss(calibrator, z, y, w) -> float:
    """Minus the (weighted) mean held-out log-loss."""
    p = calibrator.predict_proba(z)[np.arange(len(y)), y]
    w = np.ones(len(y)) if w is None else w
    return float((w * np.log(np.maximum(p, 1e-300))).sum() / w.sum())


def _results(candidates, scores: np.ndarray) -> dict:
    """A ``cv_results_`` table of ``candidates`` and their fold ``scores``."""
    n_splits = scores.shape[1]
    if n_splits:
        mean, std = scores.mean(axis=1), scores.std(axis=1)
        rank = rankdata(-mean, method="min").astype(int)
    else:
        mean = std = np.full(len(candidates), np.nan)
        rank = np.ones(len(candidates), dtype=int)
    table = {
        "params": [{"method": m, "alpha": a} for m, a in candidates],
        "param_method": np.array([m for m, _ in candidates], dtype=object),
        "param_alpha": np.array([np.nan if a is None else a for _, a in candidates]),
    }
    table.update({f"split{j}_test_score": scores[:, j] for j in range(n_splits)})
    table.update(mean_test_score=mean, std_test_score=std, rank_test_score=rank)
    return table
