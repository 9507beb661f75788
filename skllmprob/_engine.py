"""Fetching completions through the cache: one request per unique prompt."""

from __future__ import annotations

import sys
import threading
import warnings
from collections.abc import Sequence

from .backends.base import Backend, Completion, Query
from .cache import CompletionCache, KeyBuilder, NullCache
from .exceptions import PartialResultsError
from .usage import Usage

__all__ = ["fetch_completions"]


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
) -> tuple[list[Completion], Usage]:
    """One completion per prompt, from the cache where possible.

    Duplicated prompts are requested once. Each new completion is written to the
    cache as soon as the backend reports it, so an error or a crash loses only the
    requests in flight.

    Returns
    -------
    completions : list of Completion
        Aligned with ``prompts``.
    usage : Usage
    """
    backend.check_query(query)
    keyer = KeyBuilder(backend.identity(), backend.request_settings(query))
    unique = list(dict.fromkeys(prompts))
    key_of = {p: keyer(p) for p in unique}
    results = cache.get_many(key_of.values())
    usage = Usage(prompts=len(unique), cache_hits=len(results))
    usage.saved_tokens = sum(c.prompt_tokens + c.completion_tokens for c in results.values())
    missing = [p for p in unique if key_of[p] not in results]
    if missing:
        lock = threading.Lock()
        bar = _progress_bar(len(missing), progress)
        write_failed: list[BaseException] = []

        def on_result(i: int, completion: Completion) -> None:
            key = key_of[missing[i]]
            try:
                cache.put(key, completion)
            except Exception as e:  # a full disk must not lose the answer itself
                if not write_failed:
                    write_failed.append(e)
            with lock:
                results[key] = completion
                usage.requests += 1
                usage.prompt_tokens += completion.prompt_tokens
                usage.completion_tokens += completion.completion_tokens
                usage.cached_tokens += completion.cached_tokens
                if bar is not None:
                    bar.update(1)

        try:
            backend.complete(missing, query, on_result=on_result)
        except BaseException as e:
            usage.failed = sum(key_of[p] not in results for p in missing)
            if isinstance(e, PartialResultsError):
                e.n_completed = usage.requests
            e.usage = usage  # what was paid for before the failure
            raise
        finally:
            if bar is not None:
                bar.close()
            if write_failed:
                warnings.warn(
                    f"could not write to the completion cache ({write_failed[0]}); "
                    "results of this call are kept in memory only.",
                    RuntimeWarning,
                    stacklevel=3,
                )
        lost = [p for p in missing if key_of[p] not in results]
        if lost:
            raise PartialResultsError(
                f"the backend returned no result for {len(lost)} of {len(missing)} "
                "prompts without raising an error.",
                n_failed=len(lost),
                n_completed=usage.requests,
            )
    return [results[key_of[p]] for p in prompts], usage
