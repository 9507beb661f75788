"""The estimator: :class:`LogprobClassifier`.

It validates and delegates; one prediction goes input (``_validation``) -> prompts
(``prompts``) -> fetch and scores (``_scoring_pass``: the cache, the backend,
``scorer_``) -> ``calibrator_`` -> probabilities. ``fit`` settles each stage once
(``_fit_setup``, ``_fit_calibration``, ``_estimator_backend``); see
``docs/architecture.md``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context
from sklearn.utils.validation import check_is_fitted

from . import _estimator_backend as _backend
from . import _fit_calibration as _cal
from . import _fit_setup as _setup
from ._parameters import PARAMETER_CONSTRAINTS
from ._scoring_pass import score_prompts
from ._secrets import SecretParam, SecretURLParam
from ._validation import check_X, set_features
from .backends.base import Backend
from .cache import open_cache
from .calibration import DEFAULT_ALPHA
from .calibrators import CALIBRATORS
from .labels import label_spec, sorted_classes
from .prompts import render_table
from .scores import TextScores
from .scoring import make_scorer
from .usage import UsageTracker

__all__ = ["LogprobClassifier"]

#: The names of the built-in calibration methods (see :mod:`skllmprob.calibrators`).
CALIBRATIONS = tuple(CALIBRATORS)


def _calibrator_view(get, doc: str) -> property:
    """A read-only attribute of the estimator: the attribute ``get`` (a name) of
    ``calibrator_``, or ``get(calibrator_)``."""
    if isinstance(get, str):
        return property(lambda self: getattr(self.calibrator_, get), doc=doc)
    return property(lambda self: get(self.calibrator_), doc=doc)


class LogprobClassifier(ClassifierMixin, BaseEstimator):
    """A classifier whose probabilities are an LLM's log-probabilities of the labels.

    For each text, one request asks the model for a single answer token with its top
    log-probabilities; a class's probability is the summed probability of the tokens that start
    its answer, renormalized over the classes. The mass that fell on other tokens is the
    *coverage* (:meth:`predict_coverage`, ``coverage_``, ``other_tokens_``). ``fit`` learns
    from labelled samples how to correct the model's bias (``calibration``). Every completion
    is cached, so model selection pays for each unique prompt once.

    Parameters
    ----------
    model : str or path-like, default=None
        ``None``: the embedded local model (Gemma 3 270M, extra ``local``); a path to a
        ``.gguf`` file: that model, in-process with llama.cpp; another string: a model name on
        an OpenAI-compatible server (see ``base_url``).
    labels : list or dict, default=None
        The candidate labels, in prompt order; required for zero-shot use (``fit(None,
        None)``), else the classes of ``y``. A dict maps each label to its *verbalizer*, the
        word the model answers (``{1: "positive", 0: "negative"}``).
    prompt : str, default=None
        A :meth:`str.format` template with a ``{text}`` field (or fields named after the
        columns of a 2-D ``X``) and optional ``{labels}`` and ``{examples}`` fields; ``None``:
        :data:`skllmprob.prompts.DEFAULT_PROMPT` (the text between ``<text>`` tags, a closing
        tag inside it escaped). The text comes last, so that all prompts share one prefix.
    examples : list of (text, label) pairs, default=None
        Few-shot examples (``text`` a str or a mapping of column values), rendered with the row
        part of the template and their answer, before the text.
    calibration : {"none", "bias", "affine", "threshold", "contextual", "contextual-bias", \
            "vector", "batch", "auto"}, default="none"
        How ``fit`` corrects the label bias (see :mod:`skllmprob.calibrators`): ``"none"``:
        renormalized probabilities; ``"bias"``: per-class offsets (``bias_``) fitted by
        penalized log-loss on the labelled samples (a class without samples gets a neutral
        offset, with a warning); ``"affine"``: offsets and a shared temperature
        (``temperature_``); ``"vector"``: offsets and one temperature per class;
        ``"threshold"``: binary only, the threshold on the probability of ``pos_label`` that
        maximizes ``scoring`` (``threshold_``; only ``predict`` changes, see
        ``calibration_base``); ``"contextual"``: no labels needed, offsets that make the
        ``content_free`` inputs uniform; ``"contextual-bias"``: those offsets corrected like
        ``"bias"`` from the labelled samples; ``"batch"``: no labels needed, minus the mean
        class log-probabilities of the rows given to ``fit`` (Zhou et al., 2024); ``"auto"``:
        ``"none"``, ``"bias"``, ``"affine"`` or ``"vector"`` and a grid of penalties chosen by
        stratified K-fold cross-validation on the cached scores (``calibration_chosen_``,
        ``calibration_cv_results_``): the best method at ``calibration_alpha``, or another
        penalty only where it gains clearly
        (:class:`~skllmprob.calibrators.auto.AutoCalibrator`). The probabilities are
        ``softmax(log p / temperature_ + bias_)`` (:mod:`skllmprob.calibration`).
    scoring : str, callable or None, default=None
        The metric ``"threshold"`` maximizes (``None``: ``"accuracy"``) and ``"auto"`` selects
        by (``None``: held-out log-loss): ``"accuracy"``, ``"balanced_accuracy"``, ``"f1"``,
        ``"precision"``, ``"recall"``, ``"matthews_corrcoef"``, or a callable ``metric(y_true,
        y_pred)`` on labels (called with ``sample_weight=`` when ``fit`` gets weights). For
        ``"auto"`` a name is a scikit-learn scorer name (``"f1"`` needs labels 0/1).
    pos_label : label, default=None
        The positive class of ``"threshold"``; ``None``: ``classes_[1]``.
    calibration_alpha : float, default=0.3
        The L2 penalty on the offsets of ``"bias"``, ``"affine"``, ``"vector"`` and
        ``"contextual-bias"`` (three times that on the log-temperature), counted in samples: it
        steadies fits on 8 to 16 samples and fades with more; ``"auto"`` starts from it.
    class_weight : dict, "balanced" or None, default=None
        Class weights of every labelled calibration fit, as in
        :class:`~sklearn.linear_model.LogisticRegression`; multiplies ``sample_weight``.
    calibration_base : str or None, default=None
        With ``"threshold"`` only: the probability calibration (``"bias"``, ...) fitted first,
        whose probabilities the threshold is tuned on (and ``predict_proba`` returns);
        ``None``: the renormalized probabilities.
    content_free : tuple of str or dict, or "domain-context", default=("N/A", "", "[MASK]")
        The content-free inputs of the contextual methods: a str fills every field of the
        prompt, a dict gives each field's value. ``"domain-context"``: 20 texts of random words
        of the ``X`` given to ``fit`` (Fei et al., 2023).
    backend : {"auto", "llamacpp", "openai", "deterministic", "decisions", \
"systemone"} or Backend, default="auto"
        Where the scores come from. ``"auto"``: llama.cpp when ``model`` is ``None`` or a
        ``.gguf`` path, else the OpenAI client. ``"decisions"`` (OpenAI's ``/v1/decisions``)
        and ``"systemone"`` (``{base_url}/systemone``, TypeSafe by default, key
        ``$TYPESAFE_API_KEY``) ask a decision model for every class's probability
        (``docs/decisions.md``). A :class:`~skllmprob.backends.Backend` instance is used as is.
    base_url : str, default=None
        The OpenAI-compatible server (``None``: OpenAI, or ``$OPENAI_BASE_URL``).
    api_key : str, default=None
        The API key (``None``: ``$OPENAI_API_KEY``). Stored masked: never in a repr, a pickle,
        the cache or a log; an unpickled classifier reads the environment.
    endpoint : {"auto", "chat", "completions"}, default="auto"
        ``"chat"``: the prompt is a user message (locally: the chat template);
        ``"completions"``: plain text completion; ``"auto"``: the backend's default.
    top_logprobs : int, default=20
        How many top tokens to request (OpenAI caps it at 20); exact backends use it only for
        ``other_tokens_``.
    option_codes : {"auto", "never", "letters", "numbers"}, default="auto"
        ``"auto"``: answer with codes (A, B, ...) only when two labels share their first token;
        ``"never"`` raises instead.
    cache : bool or str, default=True
        ``True``: the default cache (``$SKLLMPROB_CACHE_DIR`` or the user's cache folder); a
        path: that SQLite file; ``False``: no cache.
    max_concurrency : int, default=8
        Requests in flight at once (server backends).
    timeout : float, default=60.0
        Seconds per request before it is retried (server backends).
    max_retries : int, default=5
        Retries per request on 429, 5xx and timeouts (server backends).
    backend_options : dict, default=None
        Further backend settings (``n_ctx`` for llama.cpp, ``requests_per_minute`` for
        servers).
    descriptions : dict, default=None
        Class -> one line describing it: written into the prompt's label list (``positive
        (likes the film)``, or ``- positive: likes the film`` when ``{labels}`` has a line of
        its own), and sent as the options' descriptions by the decision backends.
    progress : bool or "auto", default="auto"
        A progress bar (``"auto"``: on a terminal, 50 prompts or more).

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The class labels, sorted.
    answers_ : ndarray of str, shape (n_classes,)
        What the model answers for each class (a verbalizer or an option code).
    uses_option_codes_ : bool
        Whether the answers are option codes.
    scorer_ : skllmprob.scoring.Scorer
        Turns completions into class log-masses: exact (the backend scores whole answers) or
        top-k (summed from the top tokens).
    calibrator_ : skllmprob.calibrators.Calibrator
        The fitted calibration: ``predict_proba(log_mass)`` and ``predict(log_mass)`` (class
        indices) on the ``log_mass`` of :meth:`score_texts`; the next four are views of it.
    backend_ : Backend
        The backend ``fit`` used. After a change of ``backend``, ``model``, ``base_url``,
        ``endpoint``, ``backend_options`` or ``descriptions``, predictions raise
        :class:`~skllmprob.exceptions.RefitRequiredError` until ``fit`` runs again.
    bias_ : ndarray of shape (n_classes,)
        Offsets added to the normalized log-probabilities, of mean 0.
    temperature_ : float
        Divides the normalized log-probabilities before the offsets.
    threshold_ : float or None
        The threshold of ``"threshold"`` on the probability of ``pos_label_``.
    pos_label_ : label or None
        The positive class of ``"threshold"``.
    calibration_chosen_ : dict
        ``{"method", "alpha"}``: the choice of ``"auto"``, else ``calibration`` and its penalty
        (``None`` for methods without one).
    calibration_cv_results_ : dict of arrays
        ``"auto"`` only: the cross-validation table, as in scikit-learn's searches.
    coverage_ : float
        Mean label coverage of the samples seen by ``fit`` (NaN for zero-shot).
    other_tokens_ : dict of str to float
        The most frequent non-label tokens of those samples and their mean probability.
    usage_ : UsageTracker
        Requests, cache hits and tokens of the last call and in total.
    n_features_in_ : int
        Number of columns of ``X`` (1 for texts); not set by ``fit(None, None)``.
    feature_names_in_ : ndarray of str
        Column names, when ``X`` was a DataFrame with string column names.

    Examples
    --------
    The deterministic backend stands in for a real model (drop ``backend=``: the local one).

    >>> from skllmprob import LogprobClassifier
    >>> from skllmprob.backends import DeterministicBackend
    >>> clf = LogprobClassifier(labels=["positive", "negative"],
    ...                         backend=DeterministicBackend(), cache=False)
    >>> clf = clf.fit(None, None)          # zero-shot: no labelled data needed
    >>> clf.classes_
    array(['negative', 'positive'], dtype='<U8')
    >>> clf.predict(["what a great film", "a dull mess"])
    array(['positive', 'negative'], dtype='<U8')
    >>> clf.predict_proba(["what a great film"]).round(3)
    array([[0.01, 0.99]])
    """

    api_key = SecretParam()
    base_url = SecretURLParam()
    cache = SecretURLParam()

    _parameter_constraints: ClassVar[dict] = PARAMETER_CONSTRAINTS

    def __init__(
        self,
        model=None,
        *,
        labels=None,
        prompt=None,
        examples=None,
        calibration="none",
        scoring=None,
        pos_label=None,
        calibration_alpha=DEFAULT_ALPHA,
        class_weight=None,
        calibration_base=None,
        content_free=("N/A", "", "[MASK]"),
        backend="auto",
        base_url=None,
        api_key=None,
        endpoint="auto",
        top_logprobs=20,
        option_codes="auto",
        cache=True,
        max_concurrency=8,
        timeout=60.0,
        max_retries=5,
        backend_options=None,
        descriptions=None,
        progress="auto",
    ):
        self.model = model
        self.labels = labels
        self.prompt = prompt
        self.examples = examples
        self.calibration = calibration
        self.scoring = scoring
        self.pos_label = pos_label
        self.calibration_alpha = calibration_alpha
        self.class_weight = class_weight
        self.calibration_base = calibration_base
        self.content_free = content_free
        self.backend = backend
        self.base_url = base_url
        self.api_key = api_key
        self.endpoint = endpoint
        self.top_logprobs = top_logprobs
        self.option_codes = option_codes
        self.cache = cache
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.backend_options = backend_options
        self.descriptions = descriptions
        self.progress = progress

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True
        tags.input_tags.two_d_array = True
        tags.input_tags.allow_nan = False
        tags.classifier_tags.poor_score = True
        tags.target_tags.required = True
        return tags

    def __getstate__(self):
        return _backend.state_without_key(super().__getstate__())  # the key never enters a pickle

    def __setstate__(self, state):
        state, api_key = _backend.split_key(state)
        super().__setstate__(state)
        self.api_key = api_key

    def _make_backend(self) -> Backend:
        """The backend settings object for the current parameters (cheap)."""
        return _backend.backend_of(self)

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X=None, y=None, sample_weight=None):
        """Set up the classes and learn the calibration from labelled samples.

        Parameters
        ----------
        X : sequence of str, 2-D array-like or DataFrame, or None
            Texts (or rows whose columns fill the prompt's fields). ``None`` or an
            empty list for zero-shot use, which needs ``labels``.
        y : array-like of shape (n_samples,), or None
            Labels of ``X``.
        sample_weight : array-like of shape (n_samples,), default=None
            Weights for the calibration fit.

        Returns
        -------
        self : LogprobClassifier
        """
        _cal.check_calibration_name(self.calibration)
        zero_shot, table, y_arr = _cal.check_fit_rows(self, X, y)
        order, words = label_spec(self.labels, y_arr)
        self.classes_ = sorted_classes(order)
        self.backend_ = self._make_backend()
        self._answer_settings_ = _backend.answer_settings(self)
        answers = [words[c] for c in self.classes_]
        self.scorer_, self.uses_option_codes_ = make_scorer(
            self.backend_, answers, self.option_codes
        )
        self.answers_ = np.asarray(self.scorer_.answers, dtype=object)
        descriptions = _setup.check_descriptions(self.descriptions, self.classes_, self.answers_)
        set_features(self, X, table)
        self.prompt_renderer_ = _setup.build_renderer(self, order, words, descriptions)
        self.usage_ = UsageTracker()

        calibrator = _cal.estimator_calibrator(self, labelled=len(y_arr) > 0)
        scores = _setup.fit_scores(self, None if zero_shot else table, y_arr, sample_weight)
        self.coverage_, self.other_tokens_ = scores.coverage, scores.other_tokens
        if calibrator.needs_content_free:
            calibrator.set_params(content_free_log_mass=_setup.content_free_log_mass(self, table))
        self.calibrator_ = calibrator.fit(scores.log_mass, scores.y_idx, scores.sample_weight)
        return self

    bias_ = _calibrator_view("bias_", "The offsets of ``calibrator_``.")
    temperature_ = _calibrator_view("temperature_", "The temperature of ``calibrator_``.")
    threshold_ = _calibrator_view("threshold_", "The decision threshold of ``calibrator_``.")
    calibration_chosen_ = _calibrator_view(
        _cal.calibration_chosen, "The method in use and its penalty (``auto``: its choice)."
    )
    calibration_cv_results_ = _calibrator_view(
        _cal.calibration_cv_results, "The cross-validation table of ``calibration='auto'``."
    )

    @property
    def pos_label_(self):
        """The positive class of ``calibration="threshold"``, else ``None``."""
        pos = getattr(self.calibrator_, "pos_index", None)
        return None if pos is None else self.classes_[pos]

    def render_prompts(self, X) -> list[str]:
        """The prompts that would be sent for ``X`` (after ``fit``).

        Parameters
        ----------
        X : sequence of str, 2-D array-like or DataFrame

        Returns
        -------
        list of str
        """
        check_is_fitted(self)
        return render_table(self.prompt_renderer_, check_X(self, X))

    def score_texts(self, X) -> TextScores:
        """The model's raw class scores of ``X``, from one pass to the backend: every
        predict method is this pass followed by arithmetic.

        Parameters
        ----------
        X : sequence of str, 2-D array-like or DataFrame

        Returns
        -------
        TextScores
            ``log_mass``, ``floored``, ``coverage``, ``usage`` and ``raw_proba``;
            ``calibrator_.predict_proba(scores.log_mass)`` equals
            :meth:`predict_proba`.
        """
        check_is_fitted(self)
        table = check_X(self, X)
        prompts = render_table(self.prompt_renderer_, table)
        scored = score_prompts(self, prompts, _backend.fitted_backend(self), table)
        return TextScores.from_log_mass(scored.log_mass, scored.floored, replace(scored.usage))

    def cache_info(self):
        """Statistics of the completion cache that ``cache=`` points to (needs no ``fit``).

        Returns
        -------
        CacheInfo
            The counts of the process-wide cache object (shared by every estimator
            with the same ``cache``) and the file's totals over all processes (see
            :class:`skllmprob.cache.CacheInfo`).
        """
        return open_cache(self.cache).info()

    def clear_cache(self):
        """Delete every completion of the cache that ``cache=`` points to (all models
        sharing the file), for every process. Returns ``self``."""
        open_cache(self.cache).clear()
        return self

    def predict_proba(self, X):
        """Class probabilities, one request per unique text (cached).

        Parameters
        ----------
        X : sequence of str, 2-D array-like or DataFrame

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
            Columns in the order of ``classes_``; rows sum to 1.
        """
        check_is_fitted(self)
        return self.calibrator_.predict_proba(self.score_texts(X).log_mass)

    def predict_log_proba(self, X):
        """Logarithm of :meth:`predict_proba`."""
        check_is_fitted(self)
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X):
        """The most probable class (or the tuned threshold's decision).

        Parameters
        ----------
        X : sequence of str, 2-D array-like or DataFrame

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        check_is_fitted(self)
        return self.classes_[self.calibrator_.predict(self.score_texts(X).log_mass)]

    def predict_coverage(self, X):
        """The probability the model put on any label, per sample (before
        renormalization); low coverage: it mostly said something else (``other_tokens_``).

        Parameters
        ----------
        X : sequence of str, 2-D array-like or DataFrame

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        check_is_fitted(self)
        return self.score_texts(X).coverage

    def predict_label_logprobs(self, X):
        """Raw log-probability mass of each class, before renormalization and calibration.

        Parameters
        ----------
        X : sequence of str, 2-D array-like or DataFrame

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
            A class a top-k backend did not return gets the smallest returned
            log-probability (an upper bound).
        """
        check_is_fitted(self)
        return self.score_texts(X).log_mass
