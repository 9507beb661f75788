"""How :class:`~skllmprob.LogprobClassifier` talks to a decision backend: the
template's instruction part (with the label list) becomes the question's
instructions, its few-shot examples go where each API takes them (see
:mod:`~skllmprob.backends.decisions.rows`), each row becomes the input / state
(2-D rows as JSON); the estimator's ``descriptions`` become the options'
descriptions; refused rows are handled by the backend's ``on_refusal``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from ...exceptions import ConfigurationError, RefusalError
from .common import DecisionBackendBase
from .parsing import refused_rows
from .rows import json_columns, json_example, json_rows, split_prompt

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
            f"classes are {np.asarray(classes)[:10].tolist()}); "
            "fix the keys or the labels."
        )
    return out


def _examples(estimator) -> list:
    """The estimator's few-shot examples as (row fields, answer) pairs."""
    from ...labels import example_answers

    answer_of = dict(zip(estimator.classes_, estimator.answers_, strict=True))
    fields = estimator.prompt_renderer_.row_fields
    return example_answers(estimator.examples, answer_of, fields)


def _prompt_order(estimator) -> tuple[str, ...]:
    """The class answers in prompt order (the order of ``labels=``)."""
    from ...labels import label_spec

    order, _ = label_spec(estimator.labels, np.asarray(estimator.classes_, dtype=object))
    answer_of = dict(zip(estimator.classes_, estimator.answers_, strict=True))
    return tuple(str(answer_of[c]) for c in order)


def decision_call(estimator, backend, prompts: list[str], table=None):
    """``(backend, prompts)`` to send for ``estimator``'s rendered ``prompts``.

    For a decision backend: the backend with the template's instruction part as
    its instructions, the few-shot examples, the estimator's ``descriptions`` and
    the prompt's class order (each unless the backend has its own), and one input
    per row: its part of the prompt, or the JSON object of a 2-D ``table``'s row
    (then ``input_format="json"``). Other backends are returned unchanged
    (``descriptions`` is checked for them too).
    """
    descriptions = answer_descriptions(
        estimator.descriptions, estimator.classes_, estimator.answers_
    )  # checked for every backend
    if not isinstance(backend, DecisionBackendBase):
        return backend, prompts
    renderer = estimator.prompt_renderer_
    examples = _examples(estimator)
    parts = split_prompt(renderer, examples)
    rows = json_rows(table, renderer.row_fields)
    changes: dict = {} if backend.order is not None else {"order": _prompt_order(estimator)}
    if backend.instructions is None and parts.head.strip():
        changes["instructions"] = parts.head.strip()
    if descriptions and backend.descriptions is None:
        changes["descriptions"] = descriptions
    if rows is not None:
        changes["input_format"] = "json"
        names = json_columns(renderer.row_fields, table.columns) or renderer.row_fields
        shots = tuple((json_example(f, names), a) for f, a in examples)
    else:
        rows = [parts.row_input(p, renderer.prefix) for p in prompts]
        shots = parts.examples
    if shots and not backend.examples:
        changes["examples"] = shots
    return backend.with_settings(**changes), rows


def warn_refusals(completions: Sequence, backend=None, stacklevel: int = 3) -> list[int]:
    """Apply ``backend.on_refusal`` to the refused rows; returns their indices.

    ``"warn"`` (the default, also for ``backend=None``): one warning naming the
    rows, whose coverage is 0 and whose probabilities are the calibrator's for a
    row without scores. ``"raise"``: a :class:`~skllmprob.exceptions.RefusalError`
    naming them (after every answer was cached and counted in usage). A backend
    without ``on_refusal`` is no decision backend: its answers are never refusals.
    """
    if backend is not None and not hasattr(backend, "on_refusal"):
        return []
    refused = refused_rows(completions)
    if not refused:
        return refused
    shown = ", ".join(map(str, refused[:10])) + (", ..." if len(refused) > 10 else "")
    what = f"the decision model refused {len(refused)} of {len(completions)} rows (rows {shown})"
    if getattr(backend, "on_refusal", "warn") == "raise":
        raise RefusalError(
            f"{what}. Refusals are cached answers: asking again gets the same refusal. "
            "Drop or rephrase those rows, or pass backend_options={'on_refusal': "
            "'warn'} to score them as rows without scores (coverage 0).",
            rows=refused,
        )
    warnings.warn(
        f"{what}: their coverage is 0 and their probabilities are those of "
        "a row without scores (the calibrated prior). Refusals are cached; use "
        "predict_coverage to find them, or backend_options={'on_refusal': 'raise'} "
        "to stop instead.",
        UserWarning,
        stacklevel=stacklevel,
    )
    return refused
