"""Exact scores of whole labels from vLLM's ``prompt_logprobs``
(``label_scores="prompt_logprobs"``).

vLLM's ``/v1/completions`` takes the prompt as token ids and, with
``prompt_logprobs: n``, answers with each choice's ``"prompt_logprobs"``: ``null``
for the first prompt token, then for every further position a dict ``{"<id>":
{"logprob", "rank", "decoded_token"}}`` that holds the prompt's own token (and the
``n`` most likely others; ``0`` here, the prompt's tokens only). So the
log-probability of a label after a prompt is the sum of its tokens' entries when
the request's prompt is the prompt's ids followed by the label's.

For each prompt the backend sends, one after the other (``max_concurrency``
prompts at a time, through the runner and the SDK's retries):

1. ``POST /tokenize`` (``add_special_tokens: true``): the prompt's ids, as vLLM
   tokenizes a text prompt;
2. one completion of one token with the top log-probabilities (``logprobs: k``):
   the completion's top next tokens, as without the option;
3. one completion per token sequence of every answer's forms (the local
   backend's forms: :func:`~skllmprob.backends.llamacpp.exact.variants`, tokenized
   by the server once per process), with ``prompt_logprobs: 0``.

The class log-masses are the local backend's
(:func:`~skllmprob.backends.llamacpp.exact.class_log_mass`): the probabilities of
a class's sequences summed, a sequence that extends another listed one counted
once. vLLM V1 does not use its prefix cache for a request with
``prompt_logprobs`` (it computes the whole prompt again), so each prompt costs one
prefill per sequence.

Support is detected once per server and model (per backend identity) in a
process, with one request of the text ``"Hello, world"`` and ``prompt_logprobs:
0``: a server that rejects the field answers a 400 (or 422), one that ignores it
answers without ``prompt_logprobs``. Without support, or without vLLM's
``/tokenize``, the backend warns once and reads the top-k tokens as usual (it is
then not exact, and its cache keys are the top-k ones).
"""

from __future__ import annotations

import dataclasses
import json
import urllib.error
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from ...exceptions import BackendUnavailableError
from ..base import Completion, Query, shared_resource
from ..llamacpp.exact import AnswerSpec, build_spec, class_log_mass, variants
from .parsing import (
    _fast_loads,
    _first_choice,
    _loads_keeping_duplicates,
    _Malformed,
    _usage,
    parse_completions_response,
)
from .runner import _Plan, post_raw
from .tokenizer import ServerTokenizer, server_root

__all__ = ["sequence_plan", "serves_prompt_logprobs"]

_PROBE_TEXT = "Hello, world"
_REJECTED = (400, 422)


# -- support --------------------------------------------------------------------------


def serves_prompt_logprobs(backend) -> bool:
    """Whether ``backend``'s server scores prompts with ``prompt_logprobs`` and
    tokenizes as vLLM does; asked once per backend identity in a process."""
    key = ("openai-prompt-logprobs", json.dumps(backend.identity(), sort_keys=True))
    return shared_resource(key, lambda: _detect(backend))


def _detect(backend) -> bool:
    tok = backend._tokenizer()
    served = tok is not None and _probe(tok, backend)
    tokenizes = served and tok.route() == "vllm"
    if not tokenizes:
        why = "does not tokenize as vLLM does" if served else "does not serve prompt_logprobs"
        warnings.warn(
            f"{backend.shown_url()} {why}; label_scores='prompt_logprobs' falls back to "
            "the top-k tokens (top_logprobs).",
            UserWarning,
            stacklevel=2,
        )
    return tokenizes


def _probe(tok: ServerTokenizer, backend) -> bool:
    """Whether the server answers ``prompt_logprobs``; a server that cannot be asked
    raises :class:`~skllmprob.exceptions.BackendUnavailableError` (not remembered)."""
    body = {"model": backend.model, "prompt": _PROBE_TEXT, "max_tokens": 1}
    body.update(temperature=0.0, prompt_logprobs=0)
    url = backend.resolved_base_url() + "/completions"
    try:
        out = tok.post_json(url, body)
    except urllib.error.HTTPError as e:
        if e.code in _REJECTED:
            return False
        detail = f"HTTP {e.code}"
    except (OSError, ValueError) as e:
        detail = type(e).__name__
    else:
        choices = out.get("choices") if isinstance(out, dict) else None
        first = choices[0] if isinstance(choices, list) and choices else None
        return isinstance(first, dict) and isinstance(first.get("prompt_logprobs"), list)
    raise BackendUnavailableError(
        f"{backend.shown_url()} could not be asked whether it serves prompt_logprobs "
        f"({detail}); label_scores='prompt_logprobs' needs to know before fitting. "
        "Check that the server is up and serves the model."
    )


# -- the answers' token sequences -------------------------------------------------------


class _ServerVocab:
    """What :func:`~skllmprob.backends.llamacpp.exact.build_spec` reads of a
    vocabulary, from the server's tokenizer: the ids of the answers' forms and the
    text of their first tokens (tokens spelling an answer otherwise are not listed:
    a server's vocabulary cannot be enumerated)."""

    def __init__(self, tok: ServerTokenizer, answers: Sequence[str]) -> None:
        forms = list(dict.fromkeys(v for a in answers for v in variants(a)))
        try:
            ids = tok.tokenize(forms)
            if ids is None:
                raise OSError("the tokenizer route is gone")
            firsts = sorted({s[0] for s in ids if s})
            self.pieces = dict(zip(firsts, tok.pieces(firsts), strict=True))
        except (OSError, ValueError, KeyError) as e:
            raise BackendUnavailableError(
                f"{tok.root} could not tokenize the answers ({type(e).__name__}); "
                "check that the server is up."
            ) from e
        self._ids = dict(zip(forms, ids, strict=True))

    def ids_by_norm(self) -> dict:
        return {}

    def tokenize(self, text: str, add_bos: bool = False, special: bool = False) -> list[int]:
        return list(self._ids[text])


def answer_spec(backend, answers: Sequence[str]) -> AnswerSpec:
    """The token sequences that count for each answer, in the server's vocabulary."""
    tok = backend._tokenizer()
    return build_spec(_ServerVocab(tok, answers), tuple(answers))


# -- the requests -----------------------------------------------------------------------


async def _post(client: Any, plan: _Plan, path: str, body: dict, keep_duplicates=False):
    response = await post_raw(client, path, body, plan.response_type)
    return (_loads_keeping_duplicates if keep_duplicates else _fast_loads)(response.content)


def _token_ids(data: Any) -> list[int]:
    """The ids of a ``/tokenize`` answer."""
    ids = data.get("tokens") if isinstance(data, dict) else None
    if not isinstance(ids, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in ids
    ):
        raise _Malformed("the /tokenize answer has no list of token ids")
    return ids


def continuation_logprob(data: Any, start: int, seq: Sequence[int]) -> float:
    """The summed ``prompt_logprobs`` of the tokens ``seq`` at positions ``start`` on.

    >>> data = {"choices": [{"prompt_logprobs": [None, {"7": {"logprob": -0.5}},
    ...                                          {"9": {"logprob": -1.25}}]}]}
    >>> continuation_logprob(data, 1, [7, 9])
    -1.75
    """
    plp = _first_choice(data).get("prompt_logprobs")
    if not isinstance(plp, list) or len(plp) < start + len(seq):
        raise _Malformed("the answer has no prompt_logprobs for the label's tokens")
    total = 0.0
    for entry, token in zip(plp[start : start + len(seq)], seq, strict=True):
        item = entry.get(str(token)) if isinstance(entry, dict) else None
        lp = item.get("logprob") if isinstance(item, dict) else None
        if not isinstance(lp, int | float) or isinstance(lp, bool):
            raise _Malformed(f"prompt_logprobs has no log-probability for token {token}")
        total += float(lp)
    return total


def sequence_plan(backend, plan: _Plan, query: Query) -> _Plan:
    """``plan`` with each prompt scored by the requests of the module documentation."""
    spec = answer_spec(backend, query.answers)
    root = server_root(backend.resolved_base_url())
    scoring = {k: v for k, v in plan.body.items() if k != "logprobs"}
    scoring["prompt_logprobs"] = 0

    async def request(client: Any, prompt: str) -> Completion:
        body = {"model": backend.model, "prompt": prompt, "add_special_tokens": True}
        ids = _token_ids(await _post(client, plan, root + "/tokenize", body))
        data = await _post(client, plan, "/completions", {**plan.body, "prompt": ids}, True)
        top = parse_completions_response(data)
        usage = np.array(_usage(data))
        seq_logp = np.empty(len(spec.seqs))
        for k, seq in enumerate(spec.seqs):
            data = await _post(client, plan, "/completions", {**scoring, "prompt": [*ids, *seq]})
            seq_logp[k] = continuation_logprob(data, len(ids), seq)
            usage += _usage(data)
        pt, ct, cached = (int(x) for x in usage)
        return Completion(top.tokens, top.logprobs, class_log_mass(spec, seq_logp), pt, ct, cached)

    return dataclasses.replace(plan, request=request, requests_per_item=1 + len(spec.seqs))
