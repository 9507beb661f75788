"""Decision responses -> :class:`~skllmprob.backends.base.Completion`.

The answer's distribution over the options becomes the exact class log-masses
(``answer_logprobs``, in the query's answer order), renormalized to sum to one; an
option the endpoint gave probability 0 gets :data:`~skllmprob.calibration.LOG_PROB_FLOOR`.
``tokens`` / ``logprobs`` hold the same classes, most likely first.

A refusal is an answer too (it is cached and counted in usage): ``tokens`` is
``(REFUSAL,)`` and every class log-mass is ``-inf``, so its coverage is 0 and its
renormalized probabilities are uniform until the estimator's refusal policy
replaces them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from operator import attrgetter
from typing import Any

import numpy as np

from ...calibration import LOG_PROB_FLOOR
from ..base import Completion
from ..openai.parsing import _Malformed
from .questions import QUESTION_NAME

#: The token of a refused answer.
REFUSAL = "<refusal>"


#: The tokens of a refused answer.
REFUSED = (REFUSAL,)
_TOKENS = attrgetter("tokens")


def is_refusal(completion: Completion) -> bool:
    """Whether ``completion`` is a refused answer."""
    return completion.tokens == REFUSED


def refused_rows(completions: Sequence[Completion]) -> list[int]:
    """The positions of the refused answers among ``completions`` (looked for in
    one C-level scan: usually there is none; tokens read from a cache file, a
    :class:`~skllmprob.vocabulary.TokenIds`, compare in Python)."""
    if REFUSED not in map(_TOKENS, completions):
        return []
    return [i for i, c in enumerate(completions) if is_refusal(c)]


def _loads(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError as e:
        raise _Malformed(f"the body is not JSON ({e})") from None


def _probability(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Malformed(f"{where} is not a number: {value!r}")
    p = float(value)
    if not (0.0 <= p <= 1.0 + 1e-6) or math.isnan(p):
        raise _Malformed(f"{where} is not a probability: {value!r}")
    return p


def distribution_completion(
    probs: Sequence[float], answers: Sequence[str], usage: tuple[int, int, int]
) -> Completion:
    """The completion of a distribution over ``answers`` (same order).

    >>> c = distribution_completion([0.75, 0.25, 0.0], ["a", "b", "c"], (10, 0, 0))
    >>> c.tokens, np.round(np.exp(c.answer_logprobs), 2).tolist()
    (('a', 'b', 'c'), [0.75, 0.25, 0.0])
    """
    p = np.asarray(probs, dtype=np.float64)
    total = p.sum()
    if not total > 0:
        raise _Malformed("every probability is 0")
    with np.errstate(divide="ignore"):
        lp = np.log(p / total)
    lp = np.maximum(lp, LOG_PROB_FLOOR)
    order = np.argsort(-lp, kind="stable")
    return Completion(
        tokens=tuple(answers[j] for j in order),
        logprobs=lp[order],
        answer_logprobs=lp,
        prompt_tokens=usage[0],
        completion_tokens=usage[1],
        cached_tokens=usage[2],
    )


def refusal_completion(n: int, usage: tuple[int, int, int]) -> Completion:
    """A refused answer over ``n`` classes."""
    return Completion(
        tokens=(REFUSAL,),
        logprobs=np.zeros(1),
        answer_logprobs=np.full(n, -np.inf),
        prompt_tokens=usage[0],
        completion_tokens=usage[1],
        cached_tokens=usage[2],
    )


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _by_key(items: Mapping[str, Any], answers: Sequence[str], where: str) -> list[float]:
    missing = [a for a in answers if a not in items]
    if missing:
        raise _Malformed(f"{where} has no probability for {missing[:5]}")
    return [_probability(items[a], f"{where}[{a!r}]") for a in answers]


# ---------------------------------------------------------------------------------------
# OpenAI /v1/decisions


def _openai_usage(data: dict) -> tuple[int, int, int]:
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    details = usage.get("input_tokens_details")
    cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    return _int(usage.get("input_tokens")), _int(usage.get("output_tokens")), cached


def _openai_list(entries: Any, field: str, where: str) -> dict[str, Any]:
    if not isinstance(entries, list):
        raise _Malformed(f"{where} is not a list")
    out: dict[str, Any] = {}
    for e in entries:
        if not isinstance(e, dict) or field not in e:
            raise _Malformed(f"{where} has an entry without {field!r}")
        out[str(e[field])] = e.get("probability")
    return out


def parse_decision(raw: bytes, answers: Sequence[str], kind: str) -> Completion:
    """A ``/v1/decisions`` response body (one question) as a completion."""
    data = _loads(raw)
    if not isinstance(data, dict) or not isinstance(data.get("answers"), list):
        raise _Malformed("no 'answers' list: not a decisions response")
    if len(data["answers"]) != 1 or not isinstance(data["answers"][0], dict):
        raise _Malformed(f"{len(data['answers'])} answers to 1 question")
    answer = data["answers"][0]
    usage = _openai_usage(data)
    got = answer.get("type")
    if got == "refusal":
        return refusal_completion(len(answers), usage)
    expected = kind
    if got != expected:
        raise _Malformed(f"a {got!r} answer to a {expected!r} question")
    if kind == "predicate":
        p = _probability(answer.get("probability"), "the predicate's probability")
        return distribution_completion([1.0 - p, p], answers, usage)
    field = "value" if kind == "choice" else "label"
    items = _openai_list(answer.get("probabilities"), field, "probabilities")
    return distribution_completion(_by_key(items, answers, "probabilities"), answers, usage)


# ---------------------------------------------------------------------------------------
# System One /v1/systemone


def parse_systemone(
    raw: bytes, answers: Sequence[str], kind: str, asked: Sequence[str] | None = None
) -> Completion:
    """A System One response body (one question) as a completion; ``asked``: the
    answers in the order they were sent (a score's levels are keyed by position)."""
    data = _loads(raw)
    if not isinstance(data, dict) or not isinstance(data.get("answers"), dict):
        raise _Malformed("no 'answers' map: not a System One response")
    answer = data["answers"].get(QUESTION_NAME)
    if not isinstance(answer, dict):
        raise _Malformed(f"no answer under the question id {QUESTION_NAME!r}")
    usage_data = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    usage = (_int(usage_data.get("input_tokens")), _int(usage_data.get("output_tokens")), 0)
    got = answer.get("type")
    if got == "refusal":
        return refusal_completion(len(answers), usage)
    expected = "noul" if kind == "predicate" else kind
    if got != expected:
        raise _Malformed(f"a {got!r} answer to a {expected!r} question")
    if kind == "predicate":
        p = _probability(answer.get("noul"), "the noul")
        return distribution_completion([1.0 - p, p], answers, usage)
    probs = answer.get("probabilities")
    if not isinstance(probs, dict):
        raise _Malformed("'probabilities' is not a map")
    asked = list(answers if asked is None else asked)
    keys = answers if kind == "choice" else [str(asked.index(a)) for a in answers]
    return distribution_completion(_by_key(probs, keys, "probabilities"), answers, usage)
