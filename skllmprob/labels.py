"""Labels: the classes, the word each answers with (its *verbalizer*) and, when
words cannot be told apart by their first token, single-token option codes.

:func:`label_spec` reads the ``labels`` parameter (or the classes of ``y``),
:func:`resolve_answers` decides what the model should answer for each class, and
:func:`example_answers` checks few-shot examples against the classes.

>>> resolve_answers(["very good", "very bad"])
(['A', 'B'], True)
"""

from __future__ import annotations

import numbers
import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from ._validation import is_missing
from .exceptions import ConfigurationError, InputError

__all__ = [
    "check_pos_label",
    "example_answers",
    "first_word",
    "label_spec",
    "labels_collide",
    "normalize_token",
    "normalize_tokens",
    "option_codes",
    "resolve_answers",
    "sorted_classes",
]

_WORD = re.compile(r"[^\W_]+|[^\w\s]|_", re.UNICODE)

_LETTERS = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_DIGITS = tuple("123456789")


def normalize_token(token: str) -> str:
    """Normalize a token or a label for matching: strip whitespace, fold case.

    >>> normalize_token("  Positive\\n")
    'positive'
    """
    return token.strip().casefold()


def normalize_tokens(tokens: Iterable[str]) -> Iterator[str]:
    """:func:`normalize_token` of each of ``tokens``, lazily, with its two steps
    mapped over all of them (no Python call per token: for bulk classification).

    >>> list(normalize_tokens([" Yes", "NO\\n", " "]))
    ['yes', 'no', '']
    """
    return map(str.casefold, map(str.strip, tokens))


def first_word(answer: str) -> str:
    """The normalized first word of an answer: what a tokenizer most likely emits
    first when no tokenizer is at hand.

    Letters and digits form words; ``_`` and punctuation split them.

    >>> first_word(" Sci/Tech")
    'sci'
    >>> first_word("card_arrival")
    'card'
    >>> first_word("?!")
    '?'
    """
    norm = normalize_token(answer)
    m = _WORD.search(norm)
    return m.group(0) if m else norm


def labels_collide(answers: Sequence[str], first_tokens: Sequence[Iterable[str]] | None = None):
    """Find two answers that a first-token reader cannot tell apart.

    Parameters
    ----------
    answers : sequence of str
        The answer of each class.
    first_tokens : sequence of iterables of str, optional
        The exact first tokens of each answer's variants, when the backend can
        tokenize. Without them, :func:`first_word` stands in, and a first word that
        is a prefix of another class's first word also counts as a collision.

    Returns
    -------
    tuple of (int, int) or None
        The indices of two colliding answers, or ``None``.

    Examples
    --------
    >>> labels_collide(["very good", "very bad"])
    (0, 1)
    >>> labels_collide(["World", "Sports", "Business", "Sci/Tech"]) is None
    True
    >>> labels_collide(["sport", "sports"])
    (0, 1)
    """
    norms = [normalize_token(a) for a in answers]
    seen: dict[str, int] = {}
    for i, n in enumerate(norms):
        if n in seen:
            return (seen[n], i)
        seen[n] = i
    if first_tokens is not None:
        owner: dict[str, int] = {}
        for i, toks in enumerate(first_tokens):
            for t in {normalize_token(t) for t in toks}:
                if t in owner and owner[t] != i:
                    return (owner[t], i)
                owner[t] = i
        return None
    words = [first_word(a) for a in answers]
    for i, wi in enumerate(words):
        for j, wj in enumerate(words):
            if i < j and (wi.startswith(wj) or wj.startswith(wi)):
                return (i, j)
    return None


#: Token counts of texts, as a server's tokenizer gives them, or ``None`` when the
#: backend cannot tokenize (see :func:`option_codes`).
TokenCounts = Callable[[Sequence[str]], Sequence[int] | None]

#: Consecutive multi-token candidates after which a pool of codes is given up.
_GIVE_UP = 16


def _code_pools(style: str) -> list[list[str]]:
    """The candidate codes of each pool, in the order they are tried."""
    numbers = [str(i) for i in range(1, 256)]
    pairs = [a + b for a in _LETTERS for b in _LETTERS]
    if style == "numbers":
        return [numbers]
    return [numbers, [*_LETTERS, *pairs]]


def _single_token_codes(candidates: list[str], n: int, token_counts: TokenCounts):
    """The first ``n`` candidates whose every variant (as given or lower case, with
    or without a leading space) is one token; fewer when the pool runs out; ``None``
    when the backend cannot tokenize."""
    out: list[str] = []
    misses = 0
    step = max(8, n)
    for start in range(0, len(candidates), step):
        chunk = candidates[start : start + step]
        forms = [[c, " " + c, c.lower(), " " + c.lower()] for c in chunk]
        counts = token_counts([f for fs in forms for f in fs])
        if counts is None:
            return None
        for j, code in enumerate(chunk):
            if all(k == 1 for k in counts[4 * j : 4 * j + 4]):
                out.append(code)
                misses = 0
                if len(out) == n:
                    return out
            else:
                misses += 1
        if misses >= _GIVE_UP:
            break
    return out


def option_codes(
    n_classes: int,
    style: str = "letters",
    *,
    token_counts: TokenCounts | None = None,
    exact: bool = False,
) -> list[str]:
    """Single-token answer codes for ``n_classes`` options.

    Up to 26 letters (or 9 digits) need no tokenizer. With ``token_counts`` (a
    server that tokenizes), more classes get codes that are checked to be single
    tokens for that model, in each of their forms: the numbers 1-255, else letters
    followed by two-letter codes (``AA``, ``AB``, ...).

    Parameters
    ----------
    n_classes : int
    style : {"letters", "numbers"}
    token_counts : callable, optional
        ``token_counts(texts) -> counts``: how many tokens the model's tokenizer
        makes of each text (``None``: the backend cannot tokenize).
    exact : bool
        Whether the backend scores whole labels exactly (only changes the advice of
        the error).

    Examples
    --------
    >>> option_codes(3)
    ['A', 'B', 'C']
    >>> option_codes(3, "numbers")
    ['1', '2', '3']
    >>> option_codes(30, token_counts=lambda texts: [len(t.split()) for t in texts])[-3:]
    ['28', '29', '30']
    """
    small = _LETTERS if style == "letters" else _DIGITS
    if n_classes <= len(small):
        return list(small[:n_classes])
    tokenized = False
    for candidates in _code_pools(style) if token_counts is not None else ():
        if len(candidates) < n_classes:
            continue
        codes = _single_token_codes(candidates, n_classes, token_counts)
        if codes is None:
            break
        tokenized = True
        if len(codes) == n_classes:
            return codes
    raise _too_many_classes(n_classes, style, len(small), tokenized, exact)


def _too_many_classes(n: int, style: str, n_small: int, tokenized: bool, exact: bool):
    head = f"{n} classes need option codes, but only "
    if tokenized:
        head += f"fewer single-token {style} codes exist for this model. "
    else:
        head += (
            f"{n_small} single-token {style} codes are known without the model's "
            "tokenizer (this backend cannot tokenize). "
        )
    if exact:
        advice = (
            "This backend scores whole labels exactly and needs no codes: use "
            "option_codes='auto', or fewer classes."
        )
    else:
        advice = (
            "Give the classes distinct first words (labels={label: word}), use fewer "
            "classes, a server that tokenizes (vLLM, llama.cpp's llama-server, "
            "llama-cpp-python's server), a decision backend with class descriptions "
            "(descriptions={label: text}), or the local backend (a .gguf model), "
            "which scores whole labels exactly."
        )
    return ConfigurationError(head + advice)


def resolve_answers(
    verbalizers: Sequence[str],
    *,
    option_codes_mode: str = "auto",
    exact: bool = False,
    first_tokens: Sequence[Iterable[str]] | None = None,
    token_counts: TokenCounts | None = None,
) -> tuple[list[str], bool]:
    """Decide what the model should answer for each class.

    Parameters
    ----------
    verbalizers : sequence of str
        The word for each class.
    option_codes_mode : {"auto", "never", "letters", "numbers"}
        ``"auto"`` switches to letter codes only when needed; ``"never"`` raises
        instead; ``"letters"`` and ``"numbers"`` always use codes.
    exact : bool
        Whether the backend scores whole answers exactly (then only answers equal up
        to case and whitespace collide).
    first_tokens : sequence of iterables of str, optional
        Exact first tokens per answer, see :func:`labels_collide`.
    token_counts : callable, optional
        The backend's tokenizer, to pick codes beyond 26 classes (see
        :func:`option_codes`).

    Returns
    -------
    answers : list of str
    uses_codes : bool

    Examples
    --------
    >>> resolve_answers(["positive", "negative"])
    (['positive', 'negative'], False)
    >>> resolve_answers(["very good", "very bad"])
    (['A', 'B'], True)
    >>> resolve_answers(["very good", "very bad"], exact=True)
    (['very good', 'very bad'], False)
    """
    verbalizers = list(verbalizers)
    for v in verbalizers:
        if not normalize_token(v):
            raise ConfigurationError(
                f"label {v!r} is empty or whitespace; the model cannot answer it. Give "
                "every class a non-empty word (labels={label: word})."
            )
    if option_codes_mode in ("letters", "numbers"):
        codes = option_codes(
            len(verbalizers), option_codes_mode, token_counts=token_counts, exact=exact
        )
        return codes, True
    if exact:
        norms = [normalize_token(v) for v in verbalizers]
        clash = next(
            ((norms.index(n), i) for i, n in enumerate(norms) if norms.index(n) != i), None
        )
    else:
        clash = labels_collide(verbalizers, first_tokens)
    if clash is None:
        return verbalizers, False
    a, b = verbalizers[clash[0]], verbalizers[clash[1]]
    if option_codes_mode == "never":
        raise ConfigurationError(
            f"labels {a!r} and {b!r} start with the same token after lower-casing and "
            "stripping, so their log-probabilities cannot be told apart. Give them "
            "distinct words (labels={label: word}) or allow option codes "
            "(option_codes='auto')."
        )
    return option_codes(len(verbalizers), token_counts=token_counts, exact=exact), True


# ----------------------------------------------------------------- the classes


def label_spec(labels, y: np.ndarray) -> tuple[list, dict]:
    """The classes in prompt order and the word of each.

    From ``labels`` (a list, or a dict of label to word) when given, else from the
    classes of ``y``.

    >>> label_spec({"b": "bad", "g": "good"}, np.array(["g"], dtype=object))
    (['b', 'g'], {'b': 'bad', 'g': 'good'})
    >>> label_spec({"a": "positive", "b": "Positive"}, np.array([]))
    Traceback (most recent call last):
    ...
    skllmprob.exceptions.ConfigurationError: labels maps the classes 'a' and 'b' to ...
    """
    if labels is None:
        order = list(np.unique(y))
        if len(order) < 2:
            raise InputError(
                f"y has one class ({order[0]!r}) and labels= is not set; a classifier "
                "needs at least 2 classes. Give the candidate labels with "
                "labels=[...], or pass samples of at least two classes."
            )
        words = {k: str(k) for k in order}
    else:
        order, words = _from_labels(labels)
        unknown = sorted({str(v) for v in y if v not in words})
        if unknown:
            raise InputError(
                f"y contains labels that are not in labels=: {unknown[:10]}; add "
                "them to labels or drop those samples."
            )
    if isinstance(labels, Mapping):
        _check_distinct_words(order, words)
    else:
        _warn_numeric(order)
    return order, words


def _from_labels(labels) -> tuple[list, dict]:
    if isinstance(labels, Mapping):
        order = list(labels.keys())
        words = dict(labels.items())
    else:
        order = list(np.asarray(labels, dtype=object).ravel())
        words = {k: str(k) for k in order}
    if not order:
        raise ConfigurationError("labels is empty; give at least two labels.")
    if any(is_missing(k) for k in order):
        raise ConfigurationError("labels contains None or NaN; remove it.")
    dup = [k for k, n in Counter(order).items() if n > 1]
    if dup:
        raise ConfigurationError(f"labels contains duplicates: {dup}; list every label once.")
    for k, w in words.items():
        if not isinstance(w, str):
            raise ConfigurationError(
                f"the verbalizer of label {k!r} is a {type(w).__name__}; map every "
                "label to the word (str) the model should answer with."
            )
    return order, words


def _check_distinct_words(order: list, words: dict) -> None:
    """Two classes given the same word could never be told apart (labels that
    differ only by case, without a dict, get option codes instead)."""
    owner: dict[str, object] = {}
    for k in order:
        norm = normalize_token(words[k])
        if norm and norm in owner:
            raise ConfigurationError(
                f"labels maps the classes {owner[norm]!r} and {k!r} to the same word "
                f"{norm!r} (up to case and spaces), so the model's answer cannot tell "
                "them apart; give each class its own word (labels={label: word})."
            )
        owner.setdefault(norm, k)


def _warn_numeric(order: list) -> None:
    if not all(isinstance(k, numbers.Integral) for k in order):  # bool is Integral
        return
    if all(isinstance(k, bool | np.bool_) for k in order):
        hint = "labels={True: 'positive', False: 'negative'}"
    else:
        hint = "labels={1: 'positive', 0: 'negative'}"
    warnings.warn(
        f"the labels {sorted(order)} are numbers or booleans without words, so the "
        f"model is asked to answer {', '.join(repr(str(k)) for k in order[:4])}; give "
        f"each class the word it stands for, e.g. {hint}.",
        UserWarning,
        stacklevel=5,  # the caller of fit
    )


def sorted_classes(order: list) -> np.ndarray:
    """``classes_``: the labels sorted, as a str array only when every label is a
    str that numpy keeps intact (else an object array)."""
    arr = np.asarray(order)
    if arr.dtype.kind in "OUS" and (
        not all(isinstance(v, str) for v in order)
        # numpy's fixed-width strings drop trailing NULs: keep the labels intact.
        or arr.tolist() != [str(v) for v in order]
    ):
        arr = np.asarray(order, dtype=object)
    try:
        classes = np.unique(arr)
    except TypeError as e:
        raise ConfigurationError(
            f"labels of mixed types cannot be sorted ({e}); use labels of one type."
        ) from e
    if len(classes) < 2:
        raise ConfigurationError("labels must name at least 2 classes.")
    return classes


def check_pos_label(pos_label, classes: np.ndarray):
    """``pos_label`` as a class (``classes[1]`` when ``None``), checked."""
    if pos_label is None:
        return classes[1] if len(classes) == 2 else None
    if pos_label not in set(classes.tolist()):
        raise ConfigurationError(
            f"pos_label={pos_label!r} is not a class; the classes are "
            f"{classes.tolist()}. Set pos_label to one of them."
        )
    if len(classes) != 2:
        raise ConfigurationError(
            f"pos_label is set but there are {len(classes)} classes; a "
            "positive class only makes sense for binary problems. Leave "
            "pos_label=None."
        )
    return classes[classes.tolist().index(pos_label)]


def example_answers(examples, answer_of: dict, fields: tuple[str, ...]) -> list:
    """Few-shot ``examples`` as (row fields, answer) pairs, checked against the
    classes and the prompt's fields."""
    out = []
    for item in examples or ():
        try:
            x, label = item
        except (TypeError, ValueError) as e:
            raise ConfigurationError(f"examples must be (text, label) pairs; got {item!r}.") from e
        if label not in answer_of:
            raise ConfigurationError(
                f"example label {label!r} is not a class ({list(answer_of)}); fix "
                "the example or add the label to labels=."
            )
        if isinstance(x, Mapping):
            missing = [f for f in fields if f not in x]
            if missing:
                raise ConfigurationError(f"example {x!r} lacks the prompt fields {missing}.")
            row = dict(x)
        elif isinstance(x, str):
            if fields != ("text",):
                raise ConfigurationError(
                    f"the prompt has fields {list(fields)}, so examples must be "
                    "mappings of those fields, not plain strings."
                )
            row = {"text": x}
        else:
            raise ConfigurationError(
                f"example text must be a str or a mapping, got {type(x).__name__}."
            )
        out.append((row, answer_of[label]))
    return out
