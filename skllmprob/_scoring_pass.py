"""One pass of a fitted estimator's prompts: fetched through the cache and the
backend (``_engine.fetch_completions``), then scored by ``scorer_`` into class
log-masses. ``fit`` and :meth:`~skllmprob.LogprobClassifier.score_texts` both
call :func:`score_prompts`."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ._engine import fetch_completions
from .backends.base import Backend
from .backends.decisions.estimator import decision_call, warn_refusals
from .cache import open_cache
from .exceptions import ContextOverflowError
from .usage import Usage

__all__ = ["ScoredPrompts", "score_prompts"]


class ScoredPrompts(NamedTuple):
    """What :func:`score_prompts` returns."""

    log_mass: np.ndarray
    floored: np.ndarray
    completions: list
    usage: Usage


def score_prompts(est, prompts: list[str], backend: Backend, table=None) -> ScoredPrompts:
    """Fetch the completions of ``prompts`` (through ``est``'s cache) and score
    them; ``est.usage_`` records what was paid for, also after a failure.
    ``table``: the rows of ``prompts`` (decision backends send 2-D rows as JSON)."""
    query = est.scorer_.query(est.top_logprobs)
    backend, prompts = decision_call(est, backend, prompts, table)
    usage = Usage()
    try:
        completions, _ = fetch_completions(
            backend, open_cache(est.cache), query, prompts, progress=est.progress, usage=usage
        )
    except ContextOverflowError as e:
        raise _in_terms_of_x(e, prompts) from e
    finally:
        est.usage_.record(usage)
    warn_refusals(completions, backend)
    log_mass, floored = est.scorer_.score(completions)
    return ScoredPrompts(log_mass, floored, completions, usage)


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
