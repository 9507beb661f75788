"""The answers of :class:`~skllmprob.testing.openai_stub.OpenAIStub`: the default
"model" and the JSON bodies of the chat and completions endpoints."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .openai_stub import OpenAIStub

__all__ = ["Distribution", "answer", "default_distribution", "empty_answer"]

Distribution = Callable[[str], Sequence[tuple[str, float]]]


def default_distribution(seed: int) -> Distribution:
    """The deterministic backend's model as a distribution."""
    from ..backends.base import Query
    from ..backends.deterministic import DeterministicBackend

    backend = DeterministicBackend(seed=seed, name="openai-stub", max_top_logprobs=None)
    query = Query(top_logprobs=10_000)

    def distribution(prompt: str) -> list[tuple[str, float]]:
        out: dict = {}
        backend.complete([prompt], query, on_result=out.__setitem__)
        c = out[0]
        return list(zip(c.tokens, (float(x) for x in c.logprobs), strict=True))

    return distribution


def answer(stub: OpenAIStub, endpoint: str, body: dict, text: str, k: int | None) -> dict:
    """The 200 answer of a completion endpoint (``k``: top log-probabilities asked)."""
    dist = list(stub.distribution(text))
    n_prompt = max(1, len(text.split()))
    usage = {
        "prompt_tokens": n_prompt,
        "completion_tokens": 1,
        "total_tokens": n_prompt + 1,
        "prompt_tokens_details": {"cached_tokens": stub._cached_tokens(text)},
    }
    top = dist[: k or 0] if k else []
    first, first_lp = dist[0] if dist else ("", 0.0)
    model = body.get("model")
    if endpoint == "chat":
        logprobs = None
        if body.get("logprobs"):
            logprobs = {
                "content": [
                    {
                        "token": first,
                        "logprob": first_lp,
                        "bytes": _bytes(stub, first),
                        "top_logprobs": [
                            {"token": t, "logprob": lp, "bytes": _bytes(stub, t)} for t, lp in top
                        ],
                    }
                ],
                "refusal": None,
            }
        return {
            "id": "chatcmpl-stub",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": first, "refusal": None},
                    "logprobs": logprobs,
                    "finish_reason": "length",
                }
            ],
            "usage": usage,
        }
    logprobs = None
    if k is not None:
        logprobs = {
            "tokens": [first],
            "token_logprobs": [first_lp],
            "top_logprobs": [dict(top)],
            "text_offset": [len(text)],
        }
    return {
        "id": "cmpl-stub",
        "object": "text_completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "text": first, "logprobs": logprobs, "finish_reason": "length"}],
        "usage": usage,
    }


def _bytes(stub: OpenAIStub, token: str) -> list[int] | None:
    return list(token.encode("utf-8")) if stub.token_bytes else None


def empty_answer(endpoint: str, body: dict) -> dict:
    """A 200 answer without a token (the model ended its turn at once)."""
    if endpoint == "chat":
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": ""},
            "logprobs": {"content": [], "refusal": None},
            "finish_reason": "stop",
        }
    else:
        choice = {
            "index": 0,
            "text": "",
            "logprobs": {"tokens": [], "token_logprobs": [], "top_logprobs": []},
            "finish_reason": "stop",
        }
    return {
        "id": "stub-empty",
        "object": "chat.completion" if endpoint == "chat" else "text_completion",
        "created": 0,
        "model": body.get("model"),
        "choices": [choice],
        "usage": {"prompt_tokens": 1, "completion_tokens": 0, "total_tokens": 1},
    }
