"""vLLM's ``logprob_token_ids`` for the labels' first tokens (``label_token_ids=True``).

vLLM (PR #43463, on ``/chat/completions`` and ``/completions``, with ``logprobs``
set) answers a request carrying ``logprob_token_ids: [id, ...]`` with the sampled
token followed by every listed id and its log-probability, in place of the natural
top-k. Listing the first token of every form of every label (see
:func:`~skllmprob.backends.openai.tokenizer.variants`) makes each class's
first-token log-probability come back exactly, however unlikely: no top-k floor.

Support is detected once per server, model and endpoint with one request of one
token that lists two ids and asks for one top log-probability: a server that
honours the field answers with at least two entries, one that rejects it answers a
400, one that ignores it answers one entry. The answer is remembered for the
process; without support the backend warns once and keeps asking for the top-k.
"""

from __future__ import annotations

import logging
import threading
import urllib.error
import warnings
from collections.abc import Sequence

from .tokenizer import ServerTokenizer, variants

__all__ = ["label_token_ids"]

log = logging.getLogger("skllmprob.openai")

_LOCK = threading.Lock()
_SUPPORT: dict[tuple[str, str, str], bool] = {}


def _probe_body(model: str, chat: bool, ids: list[int]) -> dict:
    body: dict = {"model": model, "max_tokens": 1, "temperature": 0.0, "logprob_token_ids": ids}
    if chat:
        body.update(messages=[{"role": "user", "content": "Hello"}], logprobs=True)
        body["top_logprobs"] = 1
    else:
        body.update(prompt="Hello", logprobs=1)
    return body


def _entries(out: dict, chat: bool) -> int:
    """How many top log-probabilities the first answer token carries."""
    lp = (out.get("choices") or [{}])[0].get("logprobs") or {}
    if chat:
        content = lp.get("content") or [{}]
        return len(content[0].get("top_logprobs") or [])
    tops = lp.get("top_logprobs") or [{}]
    return len(tops[0] or {})


def _probe(tok: ServerTokenizer, base_url: str, chat: bool, ids: list[int]) -> bool | None:
    """Whether the server honours the field (``None``: no answer, ask again later)."""
    path = "/chat/completions" if chat else "/completions"
    try:
        out = tok.post_json(base_url.rstrip("/") + path, _probe_body(tok.model, chat, ids[:2]))
    except urllib.error.HTTPError as e:
        return False if e.code in (400, 422) else None
    except (OSError, ValueError):
        return None
    return isinstance(out, dict) and _entries(out, chat) >= 2


def label_token_ids(backend, answers: Sequence[str]) -> list[int] | None:
    """The sorted first-token ids of every form of every answer, when the server
    tokenizes and honours ``logprob_token_ids``; ``None`` otherwise."""
    tok = backend._tokenizer()
    ids = None
    if tok is not None:
        try:
            seqs = tok.tokenize([v for a in answers for v in variants(a)])
        except (OSError, ValueError, KeyError):
            seqs = None
        ids = None if seqs is None else sorted({s[0] for s in seqs if s})
    chat = backend.resolved_endpoint() == "chat"
    key = (backend.resolved_base_url(), backend.model, backend.resolved_endpoint())
    with _LOCK:
        known = _SUPPORT.get(key)
    if known is None:
        known = None if not ids or len(ids) < 2 else _probe(tok, key[0], chat, ids)
        if known is None and ids:
            return None  # no answer now: top-k for this call, ask again next time
        with _LOCK:
            first = key not in _SUPPORT
            _SUPPORT[key] = bool(known)
        if first and not known:
            warnings.warn(
                f"{backend.shown_url()} does not "
                + ("tokenize" if not ids else "honour logprob_token_ids (vLLM)")
                + "; label_token_ids=True falls back to the top-k tokens (top_logprobs).",
                UserWarning,
                stacklevel=3,
            )
    return ids if known else None
