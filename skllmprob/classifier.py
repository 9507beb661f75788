"""The estimator: :class:`LogprobClassifier`."""

from __future__ import annotations

import copy
import numbers
import os
from dataclasses import replace
from typing import ClassVar

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from . import calibration as _cal
from ._engine import fetch_completions
from ._fit_calibration import (
    DOMAIN_CONTEXT,
    calibration_chosen,
    check_fit_rows,
    content_free_items,
    estimator_calibrator,
)
from ._secrets import SecretKey, SecretParam, SecretURL, SecretURLParam, reveal
from ._validation import check_sample_weight, check_X, set_features
from .backends.base import Backend
from .backends.decisions.estimator import decision_call, warn_refusals
from .backends.factory import ANSWER_SETTINGS, DECISION_BACKENDS, check_unchanged, make_backend
from .cache import open_cache
from .calibrators import CALIBRATORS, Calibrator
from .exceptions import ConfigurationError, ContextOverflowError
from .labels import example_answers, label_spec, sorted_classes
from .prompts import (
    DEFAULT_PROMPT,
    PromptRenderer,
    content_free_prompts,
    render_table,
    template_row_fields,
)
from .scores import TextScores
from .scoring import coverage, make_scorer
from .usage import Usage, UsageTracker

__all__ = ["LogprobClassifier"]

#: The names of the built-in calibration methods (see :mod:`skllmprob.calibrators`).
CALIBRATIONS = tuple(CALIBRATORS)
# The methods that need training rows (labelled, or unlabelled for "batch").
_LABELLED_CALIBRATIONS = tuple(
    n for n, c in CALIBRATORS.items() if c.needs_labels or getattr(c, "learns_from_rows", False)
)
_N_OTHER_TOKENS = 20
_DECISIONS = tuple(DECISION_BACKENDS)
# The parameters make_backend takes.
_BACKEND_PARAMS = (
    "backend",
    "model",
    "base_url",
    "api_key",
    "endpoint",
    "timeout",
    "max_retries",
    "max_concurrency",
    "backend_options",
)


class LogprobClassifier(ClassifierMixin, BaseEstimator):
    """A classifier whose probabilities are an LLM's log-probabilities of the labels.

    For each text, one request asks the model for a single answer token with its top
    log-probabilities; the probability of each class is the summed probability of
    the tokens that start its answer (case and leading-space variants summed), and
    rows are renormalized over the classes. The probability that fell on other
    tokens is reported as *coverage* (:meth:`predict_coverage`, ``coverage_``,
    ``other_tokens_``). ``fit`` learns, from labelled samples, how to correct the
    model's bias (see ``calibration``). Every completion is cached, so model
    selection pays for each unique prompt once.

    Parameters
    ----------
    model : str or path-like, default=None
        ``None``: the embedded local model (Gemma 3 270M, extra ``local``). A path to
        a ``.gguf`` file: that model, in-process with llama.cpp. Any other string: a
        model name on an OpenAI-compatible server (see ``base_url``).
    labels : list or dict, default=None
        The candidate labels. Required for zero-shot use (``fit(None, None)``);
        otherwise the classes of ``y``. A dict maps each label to its *verbalizer*,
        the word the model should answer with (``{1: "positive", 0: "negative"}``).
        The prompt lists labels in this order.
    prompt : str, default=None
        A :meth:`str.format` template with a ``{text}`` field (or fields named after
        the columns of a 2-D ``X``), an optional ``{labels}`` field for the list of
        answers and an optional ``{examples}`` field. ``None`` uses
        :data:`skllmprob.prompts.DEFAULT_PROMPT` (the text between ``<text>`` tags;
        a closing tag inside a text is escaped). The text must come last, after
        instructions and examples, so that all prompts share one prefix.
    examples : list of (text, label) pairs, default=None
        Few-shot examples, rendered with the row part of the template and their
        answer, before the text. ``text`` is a str or a mapping of column values.
    calibration : {"none", "bias", "affine", "threshold", "contextual", "contextual-bias", \
            "vector", "batch", "auto"}, default="none"
        How ``fit`` corrects the model's label bias:

        - ``"none"``: renormalized label probabilities.
        - ``"bias"``: per-class additive offsets on the normalized
          log-probabilities (``bias_``), fitted by minimizing the log-loss on the
          labelled samples with an L2 penalty (``calibration_alpha``). Classes with
          no labelled sample get a neutral offset, with a warning.
        - ``"affine"``: offsets and a shared temperature (``temperature_``) that
          sharpens or flattens every row.
        - ``"threshold"``: binary only; the decision threshold on the probability of
          ``pos_label`` that maximizes ``scoring`` on the labelled samples
          (``threshold_``). ``predict_proba`` is unchanged (renormalized), only
          ``predict`` uses the threshold. For several classes use ``"bias"``, which
          shifts every class's decision boundary; ``"threshold"`` raises there.
          ``calibration_base`` names a probability calibration to tune the
          threshold on instead (``predict_proba`` then returns its probabilities).
        - ``"contextual"``: no labels needed; offsets that make the content-free
          inputs (``content_free``) come out uniform on average. Labels passed to
          ``fit`` are not used (only their classes).
        - ``"contextual-bias"``: the contextual offsets, then corrected from the
          labelled samples: like ``"bias"``, with the penalty pulling towards the
          contextual offsets instead of zero.
        - ``"vector"``: offsets and one temperature per class (vector scaling;
          ``temperature_`` is their geometric mean).
        - ``"batch"``: no labels needed; offsets from the rows given to ``fit``
          (``fit(X, None)`` with ``labels``, or labelled rows whose labels are not
          used): minus the mean of their class log-probabilities (batch
          calibration, Zhou et al., 2024). Predictions are per row, as always.
        - ``"auto"``: chooses among ``"none"``, ``"bias"``, ``"affine"`` and
          ``"vector"`` and a log-scale grid of penalties by stratified K-fold
          cross-validation on the labelled samples (held-out log-loss, or
          ``scoring``), then refits the winner on all of them; the cached
          completions serve every fit, so it costs no extra request. See
          ``calibration_chosen_`` and ``calibration_cv_results_``.

        The calibrated probabilities are ``softmax(log p / temperature_ + bias_)``
        with ``log p`` the model's renormalized label log-probabilities; see
        :mod:`skllmprob.calibration` for the maths.
    scoring : str, callable or None, default=None
        The metric ``calibration="threshold"`` maximizes (``None``:
        ``"accuracy"``) and ``calibration="auto"`` selects by (``None``: the
        held-out log-loss): ``"accuracy"``,
        ``"balanced_accuracy"``, ``"f1"``, ``"precision"``, ``"recall"``,
        ``"matthews_corrcoef"`` (``pos_label`` is the positive class), or a callable
        ``metric(y_true, y_pred)`` on class labels (e.g.
        ``functools.partial(fbeta_score, beta=2, pos_label="spam")``), called with
        ``sample_weight=`` when ``fit`` gets sample weights. For ``"auto"`` a name
        is a scikit-learn scorer name (``"f1"`` and the like need labels 0/1).
    pos_label : label, default=None
        The positive class of ``calibration="threshold"``: the threshold applies to
        its probability. ``None``: ``classes_[1]``, the greater label (as in
        scikit-learn).
    calibration_alpha : float, default=0.3
        Strength of the L2 penalty on the offsets of ``"bias"``, ``"affine"`` and
        ``"contextual-bias"`` (three times that on the log-temperature of
        ``"affine"``), counted in samples: it weighs like the log-loss of a fixed
        number of samples, so it steadies fits on 8 to 16 samples and fades with
        more. Raise it when the model is known to be nearly unbiased, lower it when
        its bias is large.
    class_weight : dict, "balanced" or None, default=None
        Weights of the classes in every labelled calibration fit, as in
        :class:`~sklearn.linear_model.LogisticRegression`: a dict maps labels to
        weights (absent classes weigh 1); ``"balanced"`` weighs each class by the
        inverse of its (weighted) frequency. Multiplies ``sample_weight``.
    calibration_base : str or None, default=None
        With ``calibration="threshold"`` only: the probability calibration
        (``"bias"``, ``"affine"``, ``"vector"``, ...) fitted first, whose
        probabilities the threshold is tuned on; ``None``: the renormalized
        probabilities.
    content_free : tuple of str or dict, or "domain-context", default=("N/A", "", "[MASK]")
        Content-free inputs for ``"contextual"`` and ``"contextual-bias"``. A str
        fills every field of the prompt (the text, or every column); a dict gives
        the value of each field. Their prompts go through the cache like any other.
        ``"domain-context"``: 20 texts of random words drawn from the texts given
        to ``fit`` (as long as they are on average; Fei et al., 2023), instead of
        fixed inputs; needs ``X`` in ``fit``.
    backend : {"auto", "llamacpp", "openai", "deterministic", "decisions", \
"systemone"} or Backend, default="auto"
        Where log-probabilities come from. ``"auto"``: the local llama.cpp backend
        when ``model`` is ``None`` or a ``.gguf`` path, else the OpenAI client. A
        :class:`~skllmprob.backends.Backend` instance (a cheap settings object) is
        used as is. ``"decisions"`` (OpenAI's ``/v1/decisions``, e.g.
        ``model="gpt-6-luna"``) and ``"systemone"`` (``{base_url}/systemone``,
        TypeSafe by default, key ``$TYPESAFE_API_KEY``) ask a decision model for the
        probability of every class (see ``docs/decisions.md``).
    base_url : str, default=None
        The OpenAI-compatible server (``None``: OpenAI, or ``$OPENAI_BASE_URL``).
    api_key : str, default=None
        The API key; ``None`` reads ``$OPENAI_API_KEY`` when needed. Stored masked:
        it never appears in a repr, a pickle, the cache or a log. A pickled
        classifier reads the key from the environment again.
    endpoint : {"auto", "chat", "completions"}, default="auto"
        ``"chat"``: the prompt is a user message (chat endpoint; locally the model's
        chat template). ``"completions"``: plain text completion. ``"auto"``: the
        backend's default.
    top_logprobs : int, default=20
        How many top tokens to request (servers cap it; OpenAI at 20). Exact
        backends use it only for ``other_tokens_``.
    option_codes : {"auto", "never", "letters", "numbers"}, default="auto"
        ``"auto"`` answers with letter codes (A, B, ...) only when two labels cannot
        be told apart by their first token; ``"never"`` raises instead.
    cache : bool or str, default=True
        ``True``: the persistent default cache (``$SKLLMPROB_CACHE_DIR`` or the
        user's cache folder); a path: that SQLite file; ``False``: no cache.
    max_concurrency : int, default=8
        Requests in flight at once (server backends).
    timeout : float, default=60.0
        Seconds per request before it is retried (server backends).
    max_retries : int, default=5
        Retries per request on 429, 5xx and timeouts (server backends).
    backend_options : dict, default=None
        Further settings passed to the backend (e.g. ``n_ctx`` for llama.cpp,
        ``requests_per_minute`` for servers).
    descriptions : dict, default=None
        Class -> one line describing it; sent as the options' descriptions by the
        decision backends.
    progress : bool or "auto", default="auto"
        A progress bar for long runs (``"auto"``: on a terminal, 50 prompts or more).

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The class labels, sorted.
    answers_ : ndarray of str, shape (n_classes,)
        What the model is asked to answer for each class (a verbalizer or an option
        code).
    uses_option_codes_ : bool
        Whether labels were replaced by option codes.
    scorer_ : skllmprob.scoring.Scorer
        Turns the backend's completions into class log-masses: exact (the backend
        scores whole answers) or top-k (summed from the top tokens), chosen in
        ``fit`` with the first tokens of the answers.
    calibrator_ : skllmprob.calibrators.Calibrator
        The fitted calibration method: ``calibrator_.predict_proba(log_mass)`` and
        ``calibrator_.predict(log_mass)`` (class indices) on the ``log_mass`` of
        :meth:`score_texts`. The four attributes below are read-only views of it.
    backend_ : Backend
        The backend ``fit`` used. Changing a parameter that changes the answers
        (``backend``, ``model``, ``base_url``, ``endpoint``, ``backend_options``)
        after ``fit`` makes predictions raise
        :class:`~skllmprob.exceptions.RefitRequiredError` until ``fit`` runs again.
    bias_ : ndarray of shape (n_classes,)
        Offsets added to the normalized log-probabilities, centered to a mean of 0
        (zeros for ``"none"`` and ``"threshold"``).
    temperature_ : float
        Divides the normalized log-probabilities before the offsets (1.0 unless
        ``"affine"``).
    threshold_ : float or None
        The tuned threshold of ``"threshold"`` on the probability of
        ``pos_label_``, else ``None``.
    pos_label_ : label or None
        The positive class of ``"threshold"``, else ``None``.
    calibration_chosen_ : dict
        ``{"method": ..., "alpha": ...}``: the method ``"auto"`` chose and its
        penalty, else ``calibration`` and ``calibration_alpha`` (``None`` for
        methods without a penalty).
    calibration_cv_results_ : dict of arrays
        ``"auto"`` only: the cross-validation table (``params``,
        ``mean_test_score``, ``std_test_score``, ``rank_test_score``, one
        ``split{j}_test_score`` per fold), as in scikit-learn's searches.
    coverage_ : float
        Mean label coverage over the samples seen by ``fit`` (NaN for zero-shot).
    other_tokens_ : dict of str to float
        The most frequent non-label tokens over the samples seen by ``fit``, with
        their mean probability: what the model says instead of a label.
    usage_ : UsageTracker
        Requests, cache hits and tokens of the last call and in total.
    n_features_in_ : int
        Number of columns of ``X`` (1 for 1-D text input); not set by a zero-shot
        ``fit(None, None)``, after which any input whose columns fill the prompt is
        accepted.
    feature_names_in_ : ndarray of str
        Column names, when ``X`` was a DataFrame with string column names.

    See Also
    --------
    skllmprob.backends.DeterministicBackend : the offline backend used below.

    Examples
    --------
    The deterministic backend stands in for a real model here; drop ``backend=`` to
    use the embedded local model.

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

    _parameter_constraints: ClassVar[dict] = {
        "model": [str, os.PathLike, None],
        "labels": [list, tuple, np.ndarray, dict, None],
        "prompt": [str, None],
        "examples": [list, tuple, None],
        "calibration": [str],  # a name of CALIBRATORS, checked in fit
        "scoring": [StrOptions(set(_cal.THRESHOLD_METRICS)), callable, None],
        "pos_label": [numbers.Real, str, "boolean", None],
        "calibration_alpha": [Interval(numbers.Real, 0, None, closed="left")],
        "class_weight": [dict, StrOptions({"balanced"}), None],
        "calibration_base": [str, None],
        "content_free": [list, tuple, StrOptions({DOMAIN_CONTEXT})],
        "backend": [
            StrOptions({"auto", "llamacpp", "openai", "deterministic", *_DECISIONS}),
            Backend,
        ],
        "base_url": [str, SecretURL, None],
        "api_key": [SecretKey, None],
        "endpoint": [StrOptions({"auto", "chat", "completions"})],
        "top_logprobs": [Interval(numbers.Integral, 1, None, closed="left")],
        "option_codes": [StrOptions({"auto", "never", "letters", "numbers"})],
        "cache": ["boolean", str, os.PathLike, SecretURL],
        "max_concurrency": [Interval(numbers.Integral, 1, None, closed="left")],
        "timeout": [Interval(numbers.Real, 0, None, closed="neither")],
        "max_retries": [Interval(numbers.Integral, 0, None, closed="left")],
        "backend_options": [dict, None],
        "descriptions": [dict, None],
        "progress": ["boolean", StrOptions({"auto"})],
    }

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
        calibration_alpha=_cal.DEFAULT_ALPHA,
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

    # ------------------------------------------------------------------ plumbing

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True
        tags.input_tags.two_d_array = True
        tags.input_tags.allow_nan = False
        tags.classifier_tags.poor_score = True
        tags.target_tags.required = True
        return tags

    def __getstate__(self):
        state = super().__getstate__()
        state = dict(state)
        # The key never enters a pickle; only the fact that there was one, so that a
        # request without a key can say why (see _make_backend).
        if state.pop("api_key", None) is not None:
            state["_api_key_dropped"] = True
        return state

    def __setstate__(self, state):
        state = dict(state)
        state.setdefault("api_key", None)
        api_key = state.pop("api_key")
        super().__setstate__(state)
        self.api_key = api_key

    def _make_backend(self) -> Backend:
        """The backend settings object for the current parameters (cheap)."""
        settings = {name: getattr(self, name) for name in _BACKEND_PARAMS}
        settings["base_url"] = reveal(settings["base_url"])  # a password arrives wrapped
        if self.api_key is None and getattr(self, "_api_key_dropped", False):
            settings["api_key"] = SecretKey(None, dropped=True)  # unpickled: key dropped
        return make_backend(**settings)

    def _fitted_backend(self) -> Backend:
        """The backend for predictions, with the current runtime settings (timeout,
        retries, concurrency, key); an error if a parameter that changes the
        answers was changed since ``fit``."""
        fitted = getattr(self, "_answer_settings_", None)
        if fitted is not None:
            check_unchanged(fitted, {n: getattr(self, n) for n in fitted})
        return self._make_backend()

    # ----------------------------------------------------------------------- fit

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
        if self.calibration not in CALIBRATORS:  # registered after import, too
            raise ConfigurationError(
                "The 'calibration' parameter of LogprobClassifier must be one of "
                f"{list(CALIBRATORS)}; got {self.calibration!r}."
            )
        zero_shot, table, y_arr = check_fit_rows(self, X, y)
        order, words = label_spec(self.labels, y_arr)
        self.classes_ = sorted_classes(order)

        backend = self._make_backend()
        self.backend_ = backend
        self._answer_settings_ = {n: copy.deepcopy(getattr(self, n)) for n in ANSWER_SETTINGS}
        self.scorer_, self.uses_option_codes_ = make_scorer(
            backend, [words[c] for c in self.classes_], self.option_codes
        )
        self.answers_ = np.asarray(self.scorer_.answers, dtype=object)
        set_features(self, X, table)
        self.prompt_renderer_ = self._build_renderer(order, words)
        self.usage_ = UsageTracker()

        labelled = len(y_arr) > 0
        calibrator = self._make_calibrator(labelled=labelled)
        self.coverage_ = float("nan")
        self.other_tokens_ = {}
        log_mass, y_idx, sw = None, None, None
        if not zero_shot:
            sw = check_sample_weight(sample_weight, len(y_arr)) if labelled else None
            prompts = render_table(self.prompt_renderer_, table)
            log_mass, floored, completions, _ = self._score_prompts(prompts, backend, table)
            self.coverage_ = float(coverage(log_mass, floored).mean())
            other = self.scorer_.other_tokens(completions)
            self.other_tokens_ = {
                t: m / len(completions) for t, m in other.most_common(_N_OTHER_TOKENS)
            }
            index = {c: i for i, c in enumerate(self.classes_)}
            y_idx = np.array([index[v] for v in y_arr], dtype=int) if labelled else None
        if calibrator.needs_content_free:
            calibrator.set_params(content_free_log_mass=self._content_free_log_mass(table))
        self.calibrator_ = calibrator.fit(log_mass, y_idx, sw)
        return self

    def _build_renderer(self, order: list, words: dict) -> PromptRenderer:
        template = DEFAULT_PROMPT if self.prompt is None else self.prompt
        fields = template_row_fields(template)
        answer_of = dict(zip(self.classes_, self.answers_, strict=True))
        if self.uses_option_codes_:
            listed, names = [answer_of[c] for c in order], [words[c] for c in order]
        else:
            listed, names = [answer_of[c] for c in order], None
        examples = example_answers(self.examples, answer_of, fields)
        return PromptRenderer(template, labels=listed, label_names=names, examples=examples)

    def _make_calibrator(self, *, labelled: bool) -> Calibrator:
        """The unfitted calibrator of ``calibration``, checked for the task."""
        return estimator_calibrator(self, labelled=labelled)

    def _content_free_log_mass(self, table=None) -> np.ndarray:
        """Score the content-free inputs (through the cache); ``table``: the fit
        rows, for ``content_free="domain-context"``."""
        items = content_free_items(self.content_free, table)
        prompts = content_free_prompts(self.prompt_renderer_, items)
        return self._score_prompts(prompts, self.backend_)[0]

    # ------------------------------------------------- views of the calibrator

    @property
    def bias_(self) -> np.ndarray:
        """The offsets of ``calibrator_`` (read-only)."""
        return self.calibrator_.bias_

    @property
    def temperature_(self) -> float:
        """The temperature of ``calibrator_`` (read-only)."""
        return self.calibrator_.temperature_

    @property
    def threshold_(self) -> float | None:
        """The decision threshold of ``calibrator_`` (read-only)."""
        return self.calibrator_.threshold_

    @property
    def calibration_chosen_(self) -> dict:
        """The calibration method in use and its penalty (``"auto"``: its choice)."""
        return calibration_chosen(self.calibrator_)

    @property
    def calibration_cv_results_(self) -> dict:
        """The cross-validation table of ``calibration="auto"``."""
        results = getattr(self.calibrator_, "cv_results_", None)
        if results is None:
            raise AttributeError(
                "calibration_cv_results_ exists only after fit with calibration='auto'."
            )
        return results

    @property
    def pos_label_(self):
        """The positive class of ``calibration="threshold"``, else ``None``."""
        pos = getattr(self.calibrator_, "pos_index", None)
        return None if pos is None else self.classes_[pos]

    # ------------------------------------------------------------------- scoring

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
        """The model's raw class scores of ``X``, from one pass to the backend.

        Every predict method is this pass followed by arithmetic; call it once to
        get probabilities, decisions, coverage and usage without asking twice.

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
        log_mass, floored, _, usage = self._score_prompts(prompts, self._fitted_backend(), table)
        return TextScores.from_log_mass(log_mass, floored, replace(usage))

    def _score_prompts(self, prompts: list[str], backend: Backend, table=None):
        """Fetch (through the cache) and score: ``(log_mass, floored, completions,
        usage)``; ``table``: the rows of ``prompts`` (decision backends send 2-D rows
        as JSON)."""
        query = self.scorer_.query(self.top_logprobs)
        backend, prompts = decision_call(self, backend, prompts, table)
        usage = Usage()
        try:  # also after a failure, usage_ counts what was paid for
            completions, _ = fetch_completions(
                backend,
                open_cache(self.cache),
                query,
                prompts,
                progress=self.progress,
                usage=usage,
            )
        except ContextOverflowError as e:
            raise _in_terms_of_x(e, prompts) from e
        finally:
            self.usage_.record(usage)
        warn_refusals(completions, backend)
        log_mass, floored = self.scorer_.score(completions)
        return log_mass, floored, completions, usage

    # --------------------------------------------------------------------- cache

    def cache_info(self):
        """Statistics of the completion cache that ``cache=`` points to.

        The counts are those of the process-wide cache object (shared by clones and
        every estimator with the same ``cache``), plus the file's totals over all
        processes. Needs no ``fit``.

        Returns
        -------
        CacheInfo
            ``entries``, ``hits``, ``misses``, ``saved_tokens``, ``waited``,
            ``corrupt``, ``total_hits``, ... (see :class:`skllmprob.cache.CacheInfo`).
        """
        return open_cache(self.cache).info()

    def clear_cache(self):
        """Delete every completion in the cache that ``cache=`` points to (all models
        that share the file), in this and every other process.

        Returns
        -------
        self : LogprobClassifier
        """
        open_cache(self.cache).clear()
        return self

    # ------------------------------------------------------------------- predict

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
        renormalization).

        Low coverage means the model mostly wanted to say something else (see
        ``other_tokens_``): its label probabilities rest on little mass.

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
        """Raw log-probability mass of each class, before renormalization and
        calibration.

        Parameters
        ----------
        X : sequence of str, 2-D array-like or DataFrame

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
            Where a top-k backend did not return a class at all, the smallest
            returned log-probability stands in (an upper bound).
        """
        check_is_fitted(self)
        return self.score_texts(X).log_mass


def _in_terms_of_x(e: ContextOverflowError, prompts: list[str]) -> ContextOverflowError:
    """The backend's context error, with the row of X and the estimator's setting."""
    row = prompts.index(e.prompt) if e.prompt in prompts else None
    where = f"It is the prompt of row {row} of X (from 0). " if row is not None else ""
    size = e.suggested_n_ctx or 2 * e.n_ctx
    trained = f" (the model was trained on up to {e.n_ctx_train})" if e.n_ctx_train else ""
    return e.with_fix(
        f"{where}Pass a larger context, e.g. backend_options={{'n_ctx': {size}}}"
        f"{trained}, or shorten the text.",
        row=row,
    )
