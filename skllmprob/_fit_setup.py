"""The steps of ``fit`` between the classes and the calibrator: the checked
``descriptions``, the prompt renderer (label list, descriptions, few-shot
examples), and the scores of the rows given to ``fit`` (``coverage_``,
``other_tokens_``) and of the content-free inputs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from ._fit_calibration import content_free_items
from ._scoring_pass import score_prompts
from ._validation import check_sample_weight
from .backends.decisions.common import DecisionBackendBase
from .backends.decisions.estimator import answer_descriptions
from .exceptions import ConfigurationError
from .labels import example_answers
from .prompts import (
    DEFAULT_PROMPT,
    PromptRenderer,
    content_free_prompts,
    render_table,
    template_row_fields,
)
from .scoring import coverage

__all__ = [
    "FitScores",
    "build_renderer",
    "check_descriptions",
    "content_free_log_mass",
    "fit_scores",
]

#: How many of the most frequent non-label tokens ``other_tokens_`` keeps.
N_OTHER_TOKENS = 20


def check_descriptions(descriptions: Mapping | None, classes, answers) -> dict[str, str] | None:
    """``descriptions`` (class -> one line) keyed by the answers, checked: every key
    a class, every value one line of text.

    >>> check_descriptions({"pos": "likes it"}, ["neg", "pos"], ["negative", "positive"])
    {'positive': 'likes it'}
    >>> check_descriptions({"pos": "likes it\\nreally"}, ["neg", "pos"], ["n", "p"])
    Traceback (most recent call last):
    ...
    skllmprob.exceptions.ConfigurationError: descriptions['pos'] has several lines; ...
    """
    for label, line in (descriptions or {}).items():
        if isinstance(line, str) and len(line.strip().splitlines()) > 1:
            raise ConfigurationError(
                f"descriptions[{label!r}] has several lines; give one line of text per "
                "class (it is written into the prompt's label list)."
            )
    return answer_descriptions(descriptions, classes, answers)


def build_renderer(est, order: list, words: dict, descriptions) -> PromptRenderer:
    """The prompt renderer of ``est`` fitted with these classes and answers: the
    labels listed in ``order``, with their ``descriptions`` on the log-probability
    backends (a decision backend sends them as the options' descriptions)."""
    template = DEFAULT_PROMPT if est.prompt is None else est.prompt
    answer_of = dict(zip(est.classes_, est.answers_, strict=True))
    listed = [answer_of[c] for c in order]
    names = [words[c] for c in order] if est.uses_option_codes_ else None
    examples = example_answers(est.examples, answer_of, template_row_fields(template))
    in_list = None
    if descriptions and not isinstance(est.backend_, DecisionBackendBase):
        in_list = [descriptions.get(str(a)) for a in listed]
    return PromptRenderer(
        template, labels=listed, label_names=names, examples=examples, descriptions=in_list
    )


class FitScores(NamedTuple):
    """What :func:`fit_scores` returns (``None`` and NaN for zero-shot use)."""

    log_mass: np.ndarray | None
    y_idx: np.ndarray | None
    sample_weight: np.ndarray | None
    coverage: float
    other_tokens: dict


def fit_scores(est, table, y, sample_weight) -> FitScores:
    """Score the rows given to ``fit`` (``table``; ``None`` for zero-shot use), with
    ``y``'s class indices (``y`` may be empty: unlabelled rows) and the checked
    ``sample_weight``."""
    if table is None:
        return FitScores(None, None, None, float("nan"), {})
    labelled = len(y) > 0
    sw = check_sample_weight(sample_weight, len(y)) if labelled else None
    scored = score_prompts(est, render_table(est.prompt_renderer_, table), est.backend_, table)
    n = len(scored.completions)
    other = est.scorer_.other_tokens(scored.completions).most_common(N_OTHER_TOKENS)
    y_idx = None
    if labelled:
        index = {c: i for i, c in enumerate(est.classes_)}
        y_idx = np.array([index[v] for v in y], dtype=int)
    mean_coverage = float(coverage(scored.log_mass, scored.floored).mean())
    return FitScores(scored.log_mass, y_idx, sw, mean_coverage, {t: m / n for t, m in other})


def content_free_log_mass(est, table=None) -> np.ndarray:
    """Score the content-free inputs (through the cache); ``table``: the fit rows,
    for ``content_free="domain-context"``."""
    items = content_free_items(est.content_free, table)
    prompts = content_free_prompts(est.prompt_renderer_, items)
    return score_prompts(est, prompts, est.backend_).log_mass
