"""Fetching completions through the cache: one request per unique prompt.

Within one call, duplicated prompts are requested once; across calls, threads and
processes, the cache answers what was requested before, and its claims make a
prompt that another process is requesting right now wait for that request instead
of being sent twice (see :mod:`skllmprob.cache`).
"""

from __future__ import annotations

import sys
import threading
import warnings
from collections.abc import Sequence
from operator import attrgetter

from .backends.base import Backend, Completion, Query
from .cache import CompletionCache, KeyBuilder, NullCache
from .exceptions import PartialResultsError
from .usage import Usage

__all__ = ["fetch_completions"]

_PROMPT_TOKENS = attrgetter("prompt_tokens")
_COMPLETION_TOKENS = attrgetter("completion_tokens")


def _progress_bar(total: int, progress: bool | str):
    if progress == "auto":
        progress = total >= 50 and sys.stderr.isatty()
    if not progress or total == 0:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is optional
        return None
    return tqdm(total=total, desc="skllmprob", unit="prompt", leave=False)


def fetch_completions(
    backend: Backend,
    cache: CompletionCache | NullCache,
    query: Query,
    prompts: Sequence[str],
    *,
    progress: bool | str = False,
    usage: Usage | None = None,
) -> tuple[list[Completion], Usage]:
    """One completion per prompt, from the cache where possible.

    Duplicated prompts are requested once. Each new completion is written to the
    cache as soon as the backend reports it, so an error or a crash loses only the
    requests in flight. Prompts another process is requesting at the same moment
    are waited for, not sent again.

    Parameters
    ----------
    backend : Backend
    cache : CompletionCache or NullCache
    query : Query
    prompts : sequence of str
    progress : bool or "auto", default=False
        A progress bar (tqdm) while requests run.
    usage : Usage, optional
        Filled in place as requests finish (counts are added), so that after an
        exception it holds what was paid for. ``None``: a new one.

    Returns
    -------
    completions : list of Completion
        Aligned with ``prompts``.
    usage : Usage
        ``usage`` itself when given.

    Examples
    --------
    >>> from skllmprob.backends import DeterministicBackend, Query
    >>> from skllmprob.cache import NullCache
    >>> out, usage = fetch_completions(DeterministicBackend(), NullCache(), Query(5),
    ...                                ["Text: a gem\\nAnswer:"] * 3)
    >>> len(out), usage.requests, out[0] is out[2]
    (3, 1, True)
    """
    backend.check_query(query)
    keyer = KeyBuilder(backend.identity(), backend.request_settings(query))
    # Duplicated prompts share a key: keys are cheaper to compare than long prompts.
    all_keys = keyer.many(prompts)
    key_prompts = dict(zip(all_keys, prompts, strict=True))
    keys = list(key_prompts)
    results = cache.get_many(keys)
    usage = Usage() if usage is None else usage
    usage.prompts += len(keys)
    sent: set[bytes] = set()
    waited = 0
    try:
        if len(results) < len(keys):
            prompt_of = {k: p for k, p in key_prompts.items() if k not in results}
            waited = _fetch_missing(
                backend, cache, query, prompt_of, results, sent, usage, progress
            )
    finally:
        if sent or len(results) < len(keys):
            hits = [results[k] for k in keys if k in results and k not in sent]
        else:  # every prompt answered by the cache
            hits = list(results.values())
        saved = sum(map(_PROMPT_TOKENS, hits)) + sum(map(_COMPLETION_TOKENS, hits))
        usage.cache_hits += len(hits)
        usage.saved_tokens += saved
        cache.record(hits=len(hits), misses=len(sent), saved_tokens=saved, waited=waited)
    return list(map(results.__getitem__, all_keys)), usage


def _fetch_missing(
    backend: Backend,
    cache: CompletionCache | NullCache,
    query: Query,
    prompt_of: dict[bytes, str],
    results: dict[bytes, Completion],
    sent: set[bytes],
    usage: Usage,
    progress: bool | str,
) -> int:
    """Claim, request and wait for the keys of ``prompt_of``; returns how many were
    answered by another session."""
    bar = _progress_bar(len(prompt_of), progress)
    lock = threading.Lock()
    session = cache.session()
    todo = list(prompt_of)
    try:
        while todo:
            found, mine, theirs = session.claim(todo)
            results.update(found)
            if bar is not None and found:
                bar.update(len(found))
            if mine:
                _send(backend, query, prompt_of, mine, results, sent, session, usage, bar, lock)
            if theirs:
                found = session.wait(theirs)
                results.update(found)
                if bar is not None and found:
                    bar.update(len(found))
            todo = [k for k in theirs if k not in results]
    finally:
        error = session.close()
        if bar is not None:
            bar.close()
        if error is not None:
            warnings.warn(
                f"could not write to the completion cache ({error}); results of this "
                "call are kept in memory only.",
                RuntimeWarning,
                stacklevel=4,
            )
    return session.waited


def _send(backend, query, prompt_of, mine, results, sent, session, usage, bar, lock) -> None:
    """Request the prompts of ``mine``; every result is queued for the cache at once."""

    def on_result(i: int, completion: Completion) -> None:
        key = mine[i]
        session.submit(key, completion)
        with lock:
            results[key] = completion
            sent.add(key)
            usage.requests += 1
            usage.prompt_tokens += completion.prompt_tokens
            usage.completion_tokens += completion.completion_tokens
            usage.cached_tokens += completion.cached_tokens
            if bar is not None:
                bar.update(1)

    try:
        backend.complete([prompt_of[k] for k in mine], query, on_result=on_result)
    except BaseException as e:
        usage.failed += sum(k not in results for k in mine)
        if isinstance(e, PartialResultsError):
            e.n_completed = len(sent)
        raise
    lost = [k for k in mine if k not in results]
    if lost:
        raise PartialResultsError(
            f"the backend returned no result for {len(lost)} of {len(mine)} "
            "prompts without raising an error.",
            n_failed=len(lost),
            n_completed=len(sent),
        )
