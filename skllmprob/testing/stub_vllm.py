"""vLLM's request fields on :class:`~skllmprob.testing.openai_stub.OpenAIStub`
(``OpenAIStub(vllm=True)``), written from vLLM's documentation and pull requests:

- ``logprob_token_ids`` (vLLM PR #43463; chat and completions): a list of token ids.
  It needs ``logprobs`` (a 400 otherwise); when the list is not empty it replaces the
  natural top-k at each generated position: the answer lists the sampled token and
  then every requested id, with its log-probability, whatever ``top_logprobs`` says.
- ``prompt_logprobs`` (completions): an int ``n >= 0``; each choice carries
  ``"prompt_logprobs"``: ``null`` for the first prompt token, then for each further
  position a dict ``{"<id>": {"logprob", "rank", "decoded_token"}}`` holding the
  prompt's own token (and no others here). The prompt may be given as token ids;
  those ids are then the positions scored (as vLLM does), not the text's tokens.

The log-probability of a token is the stub model's (its ``distribution`` of the text
before it), ``-9999.0`` for a token outside it, as vLLM floors ``-inf``. A stub
without ``vllm=True`` answers requests with these fields a 400, as servers that do
not know them do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .openai_stub import OpenAIStub

__all__ = ["FIELDS", "apply", "problem"]

FIELDS = ("logprob_token_ids", "prompt_logprobs")
_FLOOR = -9999.0


def problem(stub: OpenAIStub, body: dict, endpoint: str) -> str | None:
    """Why a request's vLLM fields are refused (``None``: they are fine)."""
    present = [f for f in FIELDS if body.get(f) is not None]
    if not present:
        return None
    if stub.tokenizer is None:
        return f"Unrecognized request argument supplied: {present[0]}"
    ids = body.get("logprob_token_ids")
    if ids is not None:
        if not isinstance(ids, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids
        ):
            return "logprob_token_ids must be a list of non-negative token ids"
        asked = body.get("logprobs") if endpoint == "chat" else body.get("logprobs") is not None
        if ids and not asked:
            return "logprob_token_ids requires logprobs to be set"
    n = body.get("prompt_logprobs")
    if n is not None:
        if endpoint == "chat":
            return "prompt_logprobs is served on /v1/completions by this stub"
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            return "prompt_logprobs must be a non-negative integer"
    return None


def _logprob(stub: OpenAIStub, text: str, piece: str) -> float:
    for token, lp in stub.distribution(text):
        if token == piece:
            return float(lp)
    return _FLOOR


def _listed(stub: OpenAIStub, text: str, ids: list[int], sampled: str) -> list[tuple[str, float]]:
    """The listed tokens after the sampled one (listed once, as vLLM's dict of ids)."""
    pieces = dict.fromkeys(stub.tokenizer.piece(i) for i in ids)
    return [(p, _logprob(stub, text, p)) for p in pieces if p != sampled]


def prompt_text(stub: OpenAIStub, prompt: object) -> str | None:
    """A completions prompt given as token ids, as text (``None``: not ids)."""
    if stub.tokenizer is None or not isinstance(prompt, list) or not prompt:
        return None
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in prompt):
        return None
    return "".join(stub.tokenizer.piece(i) for i in prompt)


def apply(stub: OpenAIStub, endpoint: str, body: dict, text: str, payload: dict) -> dict:
    """The 200 answer with the vLLM fields of the request applied."""
    ids = body.get("logprob_token_ids") or []
    choice = payload["choices"][0]
    if ids and choice.get("logprobs"):
        if endpoint == "chat":
            first = choice["logprobs"]["content"][0]
            sampled = {k: first[k] for k in ("token", "logprob", "bytes")}
            listed = [
                {"token": t, "logprob": lp, "bytes": list(t.encode())}
                for t, lp in _listed(stub, text, ids, first["token"])
            ]
            first["top_logprobs"] = [sampled, *listed]
        else:
            lp = choice["logprobs"]
            top = {lp["tokens"][0]: lp["token_logprobs"][0]}
            top.update(_listed(stub, text, ids, lp["tokens"][0]))
            lp["top_logprobs"] = [top]
    if endpoint == "completions" and body.get("prompt_logprobs") is not None:
        choice["prompt_logprobs"] = _prompt_logprobs(stub, body.get("prompt"), text)
    return payload


def _prompt_logprobs(stub: OpenAIStub, prompt: object, text: str) -> list:
    tok = stub.tokenizer
    ids = prompt if prompt_text(stub, prompt) is not None else tok.encode(text)
    out: list = [None]
    before = tok.piece(ids[0]) if ids else ""
    for i in ids[1:]:
        piece = tok.piece(i)
        out.append(
            {str(i): {"logprob": _logprob(stub, before, piece), "rank": 1, "decoded_token": piece}}
        )
        before += piece
    return out
