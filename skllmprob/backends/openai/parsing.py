"""Parsing the servers' answers: only what is needed, from the raw JSON."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from ...scoring import MIN_LOGPROB
from ..base import Completion

__all__ = ["parse_chat_response", "parse_completions_response"]


class _Malformed(Exception):
    """The server answered 200 with something that is not a completion."""


class _NoLogprobs(Exception):
    """The server answered without log-probabilities."""


try:  # orjson parses a response ~3x faster than json; it is optional
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover - depends on the environment
    _fast_loads = json.loads


class _Pairs(dict):
    """A JSON object that had duplicate keys: keeps every (key, value) pair."""

    pairs: list


def _keep_duplicates(pairs: list) -> dict:
    d = dict(pairs)
    if len(d) != len(pairs):
        d = _Pairs(d)
        d.pairs = pairs
    return d


def _logaddexp(a: float, b: float) -> float:
    hi, lo = (a, b) if a >= b else (b, a)
    return hi + math.log1p(math.exp(lo - hi))


def _collect(pairs: Iterable[tuple[Any, Any]]) -> tuple[tuple[str, ...], np.ndarray]:
    """Clean top-token pairs: drop missing, non-finite and sentinel (``-9999``)
    log-probabilities, sum duplicate tokens, sort most likely first."""
    acc: dict[str, float] = {}
    for token, lp in pairs:
        if not isinstance(token, str):
            continue
        try:
            lp = float(lp)
        except (TypeError, ValueError):
            continue
        if not (MIN_LOGPROB < lp < math.inf):
            continue
        lp = min(lp, 0.0)
        prev = acc.get(token)
        acc[token] = lp if prev is None else _logaddexp(prev, lp)
    if not acc:
        return (), np.empty(0)
    items = sorted(acc.items(), key=lambda kv: -kv[1])
    return tuple(t for t, _ in items), np.fromiter((v for _, v in items), float, len(items))


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _usage(data: dict) -> tuple[int, int, int]:
    u = data.get("usage")
    if not isinstance(u, dict):
        return 0, 0, 0
    details = u.get("prompt_tokens_details")
    cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    return _int(u.get("prompt_tokens")), _int(u.get("completion_tokens")), cached


def _chat_token(entry: dict) -> str | None:
    token = entry.get("token")
    if token is None and isinstance(entry.get("bytes"), list):
        try:
            token = bytes(entry["bytes"]).decode("utf-8", "replace")
        except (TypeError, ValueError):
            return None
    return token


def _first_choice(data: Any) -> dict:
    try:
        choice = data["choices"][0]
    except (KeyError, IndexError, TypeError) as e:
        raise _Malformed("the response has no choices") from e
    if not isinstance(choice, dict):
        raise _Malformed("the response's choice is not an object")
    return choice


def _completion(data: dict, tokens: tuple[str, ...], logprobs: np.ndarray) -> Completion:
    pt, ct, cached = _usage(data)
    return Completion(
        tokens=tokens,
        logprobs=logprobs,
        prompt_tokens=pt,
        completion_tokens=ct,
        cached_tokens=cached,
    )


def _completions_top(lp: dict) -> Iterable[tuple[Any, Any]] | None:
    """Top pairs of the first position of a legacy-completions ``logprobs`` object."""
    tops = lp.get("top_logprobs")
    first = tops[0] if isinstance(tops, list) and tops else None
    if isinstance(first, _Pairs):
        return first.pairs
    if isinstance(first, dict) and first:
        return first.items()
    tokens, values = lp.get("tokens"), lp.get("token_logprobs")
    if isinstance(tokens, list) and tokens and isinstance(values, list) and values:
        return [(tokens[0], values[0])]  # no top list: the sampled token alone
    return None


def parse_chat_response(data: Any) -> Completion:
    """The first content token's top log-probabilities from a chat completion.

    Tolerates fewer top tokens than asked, ``-9999`` sentinels, ``bytes: null``,
    duplicate tokens (summed) and a missing top list (the sampled token alone). An
    empty answer gives a completion without tokens.

    Parameters
    ----------
    data : dict
        The decoded JSON body.

    Returns
    -------
    Completion

    Examples
    --------
    >>> c = parse_chat_response({"choices": [{"logprobs": {"content": [
    ...     {"token": "Yes", "logprob": -0.1, "top_logprobs": [
    ...         {"token": "Yes", "logprob": -0.1, "bytes": None},
    ...         {"token": " yes", "logprob": -2.5, "bytes": None},
    ...         {"token": "No", "logprob": -9999.0, "bytes": None}]}]}}],
    ...     "usage": {"prompt_tokens": 12, "completion_tokens": 1}})
    >>> c.tokens, c.logprobs.round(2).tolist(), c.prompt_tokens
    (('Yes', ' yes'), [-0.1, -2.5], 12)
    """
    choice = _first_choice(data)
    lp = choice.get("logprobs")
    if not isinstance(lp, dict):
        raise _NoLogprobs
    content = lp.get("content")
    if content is None:
        if "top_logprobs" in lp:  # a server that sends the completions shape in chat
            pairs = _completions_top(lp)
            if pairs is None:
                return _completion(data, (), np.empty(0))
            return _completion(data, *_collect(pairs))
        raise _NoLogprobs
    if not isinstance(content, list):
        raise _Malformed("logprobs.content is not a list")
    if not content:
        return _completion(data, (), np.empty(0))
    first = content[0]
    if not isinstance(first, dict):
        raise _Malformed("logprobs.content[0] is not an object")
    top = first.get("top_logprobs") or [first]
    pairs = ((_chat_token(e), e.get("logprob")) for e in top if isinstance(e, dict))
    return _completion(data, *_collect(pairs))


def parse_completions_response(data: Any) -> Completion:
    """The first position's top log-probabilities from a legacy completion.

    Parameters
    ----------
    data : dict
        The decoded JSON body (decode with ``object_pairs_hook`` keeping duplicate
        keys, as the backend does, for duplicate tokens to be summed).

    Returns
    -------
    Completion

    Examples
    --------
    >>> c = parse_completions_response({"choices": [{"text": " positive", "logprobs": {
    ...     "tokens": [" positive"], "token_logprobs": [-0.2],
    ...     "top_logprobs": [{" positive": -0.2, " negative": -1.9}]}}]})
    >>> c.tokens
    (' positive', ' negative')
    """
    choice = _first_choice(data)
    lp = choice.get("logprobs")
    if not isinstance(lp, dict):
        raise _NoLogprobs
    pairs = _completions_top(lp)
    if pairs is None:
        if lp.get("tokens") == [] or choice.get("text") == "":
            return _completion(data, (), np.empty(0))
        raise _NoLogprobs
    return _completion(data, *_collect(pairs))


def _loads_keeping_duplicates(data: bytes) -> Any:
    """Decode JSON keeping every (key, value) pair of objects with duplicate keys."""
    return json.loads(data, object_pairs_hook=_keep_duplicates)
