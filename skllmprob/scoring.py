"""From next-token log-probabilities to class probabilities.

Pure functions: numpy in, numpy out. The classifier uses them in three steps:

1. :func:`skllmprob.labels.resolve_answers` decides what the model should answer for
   each class: the label itself (its *verbalizer*) or, when labels cannot be told
   apart by their first token, single-token option codes (``A``, ``B``, ...).
2. :class:`TokenMatcher` maps a returned token to the class whose answer it starts
   (up to case and surrounding whitespace), or to none ("other").
3. :func:`label_log_mass` sums, per sample, the probability of every token variant
   of each class (``" positive"``, ``"positive"``, ``"Positive"`` ...) into a
   class log-mass; :func:`normalize` turns log-masses into probabilities that sum
   to one over the classes, and :func:`coverage` reports how much of the model's
   probability fell on the labels at all.

Examples
--------
>>> import numpy as np
>>> m = TokenMatcher(["positive", "negative"])
>>> tokens = [(" positive", "Positive", " negative", "\\n")]
>>> logprobs = [np.log([0.30, 0.05, 0.25, 0.40])]
>>> mass, floored = label_log_mass(tokens, logprobs, m)
>>> np.round(np.exp(mass), 2)
array([[0.35, 0.25]])
>>> np.round(normalize(mass), 3)
array([[0.583, 0.417]])
>>> np.round(coverage(mass, floored), 2)
array([0.6])
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import chain
from operator import is_

import numpy as np

from ._token_memo import memo_for
from .backends.base import Backend, Completion, Query

# Re-exported: they lived here before skllmprob.labels.
from .labels import (
    first_word,
    labels_collide,
    normalize_token,
    option_codes,
    resolve_answers,
)
from .vocabulary import ids_of

__all__ = [
    "MIN_LOGPROB",
    "ExactScorer",
    "Scorer",
    "TokenMatcher",
    "TopKScorer",
    "coverage",
    "first_word",
    "label_log_mass",
    "labels_collide",
    "make_scorer",
    "normalize",
    "normalize_token",
    "option_codes",
    "other_token_mass",
    "resolve_answers",
]

#: Log-probabilities below this are treated as "not returned" (OpenAI sends -9999
#: for tokens whose probability underflows).
MIN_LOGPROB = -1000.0


class TokenMatcher:
    """Map returned tokens to classes.

    A token counts for a class when, after stripping whitespace and folding case, it
    is one of that class's first tokens. With ``first_tokens`` given (a backend that
    tokenizes), those are exact. Otherwise a token counts when it equals the answer,
    equals the answer's first word, or is a prefix of that first word at least three
    characters long that fits no other class (so ``" I"`` or ``" a"`` never count).

    Parameters
    ----------
    answers : sequence of str
    first_tokens : sequence of iterables of str, optional

    Examples
    --------
    >>> m = TokenMatcher(["World", "Sports", "Business", "Sci/Tech"])
    >>> [m(t) for t in [" Sci", "sports", " WORLD", " I", "\\n", " Bus"]]
    [3, 1, 0, -1, -1, 2]
    """

    def __init__(
        self,
        answers: Sequence[str],
        first_tokens: Sequence[Iterable[str]] | None = None,
    ) -> None:
        self.answers = list(answers)
        self.n_classes = len(self.answers)
        self._exact: dict[str, int] = {}
        words: list[str] = []
        if first_tokens is not None:
            for i, toks in enumerate(first_tokens):
                for t in toks:
                    self._exact.setdefault(normalize_token(t), i)
        else:
            for i, a in enumerate(self.answers):
                self._exact.setdefault(normalize_token(a), i)
                self._exact.setdefault(first_word(a), i)
            words = [first_word(a) for a in self.answers]
        # One look-up per token: the exact entries, else a prefix (3 characters or
        # more) of exactly one class's first word.
        self._table = {**_unique_prefixes(words), **self._exact}
        # Matchers with the same answers share their memo (a cache of a pure
        # function), so repeated predictions skip classifying tokens seen before.
        config = (tuple(self.answers), None if first_tokens is None else self._exact_key())
        self._memo = memo_for(config, self._table)

    def _exact_key(self) -> tuple:
        return tuple(sorted(self._exact.items()))

    def __call__(self, token: str) -> int:
        return self._memo[token]

    def id_classes(self, vocab, ids: np.ndarray) -> np.ndarray:
        """The classes of the tokens ``ids`` of ``vocab`` (a
        :class:`~skllmprob.vocabulary.Vocabulary` that has read each of them)."""
        return self._memo.id_classes(vocab, ids)

    def row_classes(self, rows: Sequence[Sequence[str]]) -> np.ndarray:
        """The classes of the tokens of every row, concatenated.

        The result of a row given as a tuple is remembered for as long as the tuple
        lives in the memo (keyed by the tuple's identity, which the memo keeps
        alive): completions served from the cache's memory layer are the same
        objects call after call, so their tokens are classified once. The rows
        not remembered are classified together, each distinct token once. Rows
        read from the file as ids into one vocabulary
        (:class:`~skllmprob.vocabulary.TokenIds`) are classified by id.

        >>> m = TokenMatcher(["yes", "no"])
        >>> m.row_classes([(" yes", "x"), ["No"]])
        array([ 0, -1,  1])
        """
        return self._row_classes(rows, ids_of(rows))

    def _row_classes(self, rows: Sequence[Sequence[str]], as_ids) -> np.ndarray:
        """:meth:`row_classes`, given :func:`~skllmprob.vocabulary.ids_of` ``rows``."""
        if not rows:
            return np.empty(0, dtype=np.intp)
        if as_ids is not None:
            return self.id_classes(as_ids[0], np.concatenate(as_ids[1]))
        memo = self._memo
        ids = list(map(id, rows))
        known = list(map(is_, map(memo.rows.get, ids), rows))
        if not any(known):  # a first read: every row new
            return self._classify_rows(list(rows))[0].copy()  # the memo keeps views
        parts = list(map(memo.row_classes.get, ids))
        at = [i for i, (k, p) in enumerate(zip(known, parts, strict=True)) if not k or p is None]
        if not at:  # every row remembered: the same completions as before
            return np.concatenate(parts)
        _, views = self._classify_rows([rows[i] for i in at])
        for i, view in zip(at, views, strict=True):
            parts[i] = view
        return np.concatenate(parts)

    def _classify_rows(self, rows: list) -> tuple[np.ndarray, list]:
        """Classify ``rows`` (one pass over all their tokens) and remember the tuples
        among them; returns the classes of all of them, concatenated, and a view
        of that array per row."""
        memo = self._memo
        lens = np.fromiter(map(len, rows), dtype=np.intp, count=len(rows))
        flat = memo.classify(list(chain.from_iterable(rows)))
        ends = np.cumsum(lens)
        views = list(map(flat.__getitem__, map(slice, (ends - lens).tolist(), ends.tolist())))
        memo.remember(rows, views)
        return flat, views


def _unique_prefixes(words: Sequence[str]) -> dict[str, int]:
    """Every prefix of at least three characters of the ``words`` (one per class)
    that starts the word of exactly one class, with that class.

    >>> _unique_prefixes(["sport", "spot"])
    {'spor': 0, 'sport': 0, 'spot': 1}
    """
    owners: dict[str, set[int]] = {}
    for i, w in enumerate(words):
        for end in range(3, len(w) + 1):
            owners.setdefault(w[:end], set()).add(i)
    return {p: next(iter(o)) for p, o in owners.items() if len(o) == 1}


def label_log_mass(
    tokens: Sequence[Sequence[str]],
    logprobs: Sequence[np.ndarray],
    matcher: TokenMatcher,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class log-probability mass from top-k next-token log-probabilities.

    Parameters
    ----------
    tokens : sequence of sequences of str
        The returned top tokens of each sample.
    logprobs : sequence of 1-D arrays
        Their log-probabilities.
    matcher : TokenMatcher

    Returns
    -------
    log_mass : ndarray of shape (n_samples, n_classes)
        ``log`` of the summed probability of each class's tokens. A class with no
        token in the list gets the smallest log-probability in the list: an upper
        bound on the probability of any token not listed.
    floored : ndarray of bool, shape (n_samples, n_classes)
        Where that bound stands in for a missing class.
    """
    n, k = len(tokens), matcher.n_classes
    if len(logprobs) != n:
        raise ValueError(f"{n} token lists but {len(logprobs)} log-probability arrays")
    as_ids = ids_of(tokens)  # rows read from the cache file: their lengths without a call
    lens = np.fromiter(map(len, tokens if as_ids is None else as_ids[1]), dtype=np.intp, count=n)
    arrays = [
        lp if type(lp) is np.ndarray and lp.ndim == 1 else np.asarray(lp, dtype=float).reshape(-1)
        for lp in logprobs
    ]
    if not np.array_equal(lens, np.fromiter(map(len, arrays), dtype=np.intp, count=n)):
        raise ValueError("a token list and its log-probabilities differ in length")
    lps = np.concatenate(arrays).astype(float, copy=False) if n else np.empty(0)
    classes = matcher._row_classes(tokens, as_ids)
    valid = lps > MIN_LOGPROB
    # Smallest valid log-probability of each row (empty segments contribute nothing
    # to reduceat when only the starts of non-empty rows are given).
    floor = np.full(n, MIN_LOGPROB)
    nonempty = lens > 0
    if nonempty.any():
        starts = (np.cumsum(lens) - lens)[nonempty]
        mins = np.minimum.reduceat(np.where(valid, lps, np.inf), starts)
        any_valid = np.add.reduceat(valid.astype(np.intp), starts) > 0
        floor[nonempty] = np.where(any_valid, mins, MIN_LOGPROB)
    rows = np.repeat(np.arange(n), lens)
    hit = valid & (classes >= 0)
    # bincount adds in input order: the same sums as a row-by-row loop.
    mass = np.bincount(
        rows[hit] * k + classes[hit], weights=np.exp(lps[hit]), minlength=n * k
    ).reshape(n, k)
    floored = mass <= 0.0
    with np.errstate(divide="ignore"):
        log_mass = np.log(mass)
    log_mass = np.where(floored, floor[:, None], log_mass)
    return log_mass, floored


def other_token_mass(
    tokens: Sequence[Sequence[str]],
    logprobs: Sequence[np.ndarray],
    matcher: TokenMatcher,
) -> Counter:
    """Summed probability of every non-label token over all samples.

    >>> m = TokenMatcher(["yes", "no"])
    >>> other_token_mass([["yes", "\\n"], [" maybe", "\\n"]],
    ...                  [np.log([0.5, 0.25]), np.log([0.5, 0.25])], m)
    Counter({'\\n': 0.5, ' maybe': 0.5})
    """
    out: Counter = Counter()
    for toks, lps in zip(tokens, logprobs, strict=True):
        for t, lp in zip(toks, np.asarray(lps, dtype=float), strict=True):
            if lp > MIN_LOGPROB and matcher(t) < 0:
                out[t] += float(np.exp(lp))
    return out


def normalize(log_mass: np.ndarray) -> np.ndarray:
    """Renormalize class log-masses into probabilities (a row-wise softmax).

    >>> normalize(np.log([[0.2, 0.6]]))
    array([[0.25, 0.75]])
    """
    z = np.asarray(log_mass, dtype=float)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def coverage(log_mass: np.ndarray, floored: np.ndarray | None = None) -> np.ndarray:
    """The probability the model put on any of the labels, per sample.

    Bounds that stand in for classes missing from a top-k list do not count.

    >>> coverage(np.log([[0.2, 0.3]]))
    array([0.5])
    """
    p = np.exp(np.asarray(log_mass, dtype=float))
    if floored is not None:
        p = np.where(floored, 0.0, p)
    return np.clip(p.sum(axis=1), 0.0, 1.0)


# ---------------------------------------------------------------------- scorers


class Scorer:
    """Completions to class log-masses, for one set of answers; chosen once in
    ``fit`` by :func:`make_scorer`.

    Top-k backends (:class:`TopKScorer`) return the most likely next tokens, summed
    per class here; exact backends (:class:`ExactScorer`) return each answer's
    log-probability themselves. Both match the top tokens to classes for the
    tokens that are no label (:meth:`other_tokens`). Picklable: the matcher is
    rebuilt after unpickling.

    Parameters
    ----------
    answers : sequence of str
        What the model answers for each class, in class order.
    first_tokens : sequence of lists of str, optional
        The exact first tokens of each answer (see :class:`TokenMatcher`).
    """

    #: Whether the backend scores whole answers (then they are sent with the query).
    exact: bool = False

    def __init__(self, answers: Sequence[str], first_tokens=None, send_answers=False) -> None:
        self.answers = tuple(answers)
        self.first_tokens = first_tokens
        self.send_answers = bool(send_answers)  # a top-k backend that asks for them
        self._matcher: TokenMatcher | None = None

    @property
    def matcher(self) -> TokenMatcher:
        if self._matcher is None:
            self._matcher = TokenMatcher(self.answers, self.first_tokens)
        return self._matcher

    def query(self, top_logprobs: int) -> Query:
        """What to ask the backend for each prompt."""
        send = self.exact or self.send_answers
        return Query(top_logprobs=int(top_logprobs), answers=self.answers if send else ())

    def score(self, completions: Sequence[Completion]) -> tuple[np.ndarray, np.ndarray]:
        """``(log_mass, floored)`` of shape (n_samples, n_classes), see
        :func:`label_log_mass`."""
        raise NotImplementedError

    def other_tokens(self, completions: Sequence[Completion]) -> Counter:
        """Summed probability of every non-label top token (:func:`other_token_mass`)."""
        return other_token_mass(
            [c.tokens for c in completions], [c.logprobs for c in completions], self.matcher
        )

    def __getstate__(self) -> dict:
        return {
            "answers": self.answers,
            "first_tokens": self.first_tokens,
            "send_answers": self.send_answers,
        }

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["answers"], state["first_tokens"], state.get("send_answers", False))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(answers={list(self.answers)!r})"


class TopKScorer(Scorer):
    """Class log-masses summed from the top-k next tokens.

    >>> from skllmprob.backends import Completion
    >>> s = TopKScorer(["yes", "no"])
    >>> mass, floored = s.score([Completion((" yes", "\\n"), np.log([0.5, 0.25]))])
    >>> np.exp(mass), floored
    (array([[0.5 , 0.25]]), array([[False,  True]]))
    """

    def score(self, completions):
        return label_log_mass(
            [c.tokens for c in completions], [c.logprobs for c in completions], self.matcher
        )


class ExactScorer(Scorer):
    """Class log-masses as the backend computed them (never floored)."""

    exact = True

    def score(self, completions):
        if not completions:
            empty = np.empty((0, len(self.answers)))
            return empty, empty.astype(bool)
        log_mass = np.vstack([c.answer_logprobs for c in completions])
        return log_mass, np.zeros(log_mass.shape, dtype=bool)


def make_scorer(backend: Backend, verbalizers: Sequence[str], option_codes_mode: str = "auto"):
    """The scorer for ``backend``, with the answers :func:`resolve_answers` picks.

    Reads ``backend.exact`` and asks the backend for the first tokens of the
    answers (once per set of answers).

    Returns
    -------
    scorer : Scorer
    uses_codes : bool
        Whether the answers are option codes.

    Examples
    --------
    >>> from skllmprob.backends import DeterministicBackend
    >>> scorer, codes = make_scorer(DeterministicBackend(), ["very good", "very bad"])
    >>> scorer, codes
    (TopKScorer(answers=['A', 'B']), True)
    """
    verbalizers = list(verbalizers)
    exact = bool(backend.exact)
    first = backend.first_tokens(verbalizers)
    answers, codes = resolve_answers(
        verbalizers,
        option_codes_mode=option_codes_mode,
        exact=exact,
        first_tokens=first,
        token_counts=getattr(backend, "count_tokens", None),
    )
    if answers != verbalizers:
        first = backend.first_tokens(answers)
    send = bool(getattr(backend, "wants_answers", False))
    return (ExactScorer if exact else TopKScorer)(answers, first, send), codes
