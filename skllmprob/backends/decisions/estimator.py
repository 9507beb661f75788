"""How :class:`~skllmprob.LogprobClassifier` talks to a decision backend: the
prompt's shared prefix (instructions, label list, examples) becomes the question's
instructions and the rest of each prompt (the row and the cue) its input; the
estimator's ``descriptions`` become the options' descriptions; refused rows are
reported.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

from ...exceptions import ConfigurationError
from .common import DecisionBackendBase
from .parsing import is_refusal

__all__ = ["answer_descriptions", "decision_call", "warn_refusals"]


def answer_descriptions(
    descriptions: Mapping | None, classes: Sequence, answers: Sequence[str]
) -> dict[str, str] | None:
    """``descriptions`` (class -> one line) keyed by the classes' answers, checked.

    >>> answer_descriptions({1: "good"}, [0, 1], ["negative", "positive"])
    {'positive': 'good'}
    """
    if not descriptions:
        return None
    answer_of = {c: a for c, a in zip(classes, answers, strict=True)}
    by_str = {str(c): a for c, a in answer_of.items()}
    out: dict[str, str] = {}
    unknown = []
    for label, line in descriptions.items():
        answer = answer_of.get(label, by_str.get(str(label)))
        if answer is None:
            unknown.append(label)
        elif not isinstance(line, str):
            raise ConfigurationError(
                f"descriptions[{label!r}] is a {type(line).__name__}; give one line of text."
            )
        else:
            out[str(answer)] = line.strip()
    if unknown:
        raise ConfigurationError(
            f"descriptions has entries for {unknown[:5]}, which are not classes (the "
            f"classes are {list(classes)[:10]}); fix the keys or the labels."
        )
    return out


def decision_call(backend, prompts: list[str], prefix: str, descriptions):
    """``(backend, prompts)`` to send: for a decision backend, the prompts without
    their shared ``prefix`` and the backend with the prefix as instructions (unless
    it has its own) and ``descriptions``; other backends unchanged."""
    if not isinstance(backend, DecisionBackendBase):
        return backend, prompts
    changes = {}
    if backend.instructions is None and prefix.strip():
        changes["instructions"] = prefix.strip()
    if descriptions and backend.descriptions is None:
        changes["descriptions"] = descriptions
    if changes:
        backend = backend.with_settings(**changes)
    n = len(prefix)
    rows = [p[n:] if n and p.startswith(prefix) and p[n:].strip() else p for p in prompts]
    return backend, rows


def warn_refusals(completions: Sequence, stacklevel: int = 3) -> list[int]:
    """Warn about refused rows (their coverage is 0; their probabilities are the
    calibrator's for a row without scores); returns their indices."""
    refused = [i for i, c in enumerate(completions) if is_refusal(c)]
    if refused:
        shown = ", ".join(map(str, refused[:10])) + (", ..." if len(refused) > 10 else "")
        warnings.warn(
            f"the decision model refused {len(refused)} of {len(completions)} rows "
            f"(rows {shown}): their coverage is 0 and their probabilities are those of "
            "a row without scores (the calibrated prior). Refusals are cached; use "
            "predict_coverage to find them.",
            UserWarning,
            stacklevel=stacklevel,
        )
    return refused
