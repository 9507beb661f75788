"""Keys and values of the completion cache.

A key is the SHA-256 of the canonical JSON of ``[KEY_VERSION, identity, settings]``,
a newline and the prompt in UTF-8 (:class:`KeyBuilder`). A value is a completion
stored in two columns (:func:`encode` / :func:`decode`):

- ``data``: a 24-byte header (format, number of tokens, number of answers or 0xFFFF
  for none, prompt/completion/cached tokens), the log-probabilities and the answer
  log-probabilities as little-endian float64;
- ``tokens``: ``"s"`` + the tokens joined by NUL, or ``"j"`` + a JSON list when a
  token holds a NUL or cannot be written as UTF-8.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable
from dataclasses import fields
from typing import Any

import numpy as np

from ..backends.base import Completion
from ..exceptions import CacheError

__all__ = ["DECODE_ERRORS", "KEY_VERSION", "KeyBuilder", "canonical", "decode", "encode"]

#: Version of the key derivation: bump it when the meaning of a key changes.
KEY_VERSION = "skllmprob-key-2"

_HEAD = struct.Struct("<BxHHxxIIIxxxx")
_FORMAT = 1
_NO_ANSWERS = 0xFFFF
_MAX_COUNT = 0xFFFE
#: What :func:`decode` raises on a damaged value.
DECODE_ERRORS = (ValueError, TypeError, struct.error, AttributeError, IndexError)


def canonical(obj: Any) -> str:
    """``obj`` as canonical JSON (sorted keys, no spaces, no NaN)."""
    try:
        return json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as e:
        raise CacheError(
            f"a backend's identity and request settings must be plain JSON values "
            f"(str, int, finite float, bool, None, lists, dicts): {e}"
        ) from e


class KeyBuilder:
    """Cache keys for one backend identity and request settings.

    The key of a prompt is the SHA-256 digest (32 bytes) of the canonical JSON of
    ``[KEY_VERSION, identity, settings]``, a newline, and the prompt in UTF-8. The
    JSON document is self-delimiting, so no two (head, prompt) pairs share a key
    text; the head is serialized once.

    >>> kb = KeyBuilder({"model": "m"}, {"top_logprobs": 5})
    >>> len(kb("hello")), kb("hello") == kb("hello"), kb("hello") == kb("hello!")
    (32, True, False)
    >>> kb.many(["a", "b"]) == [kb("a"), kb("b")]
    True
    """

    def __init__(self, identity: dict[str, Any], settings: dict[str, Any]) -> None:
        self.head = canonical([KEY_VERSION, identity, settings])
        self._head = self.head.encode("utf-8") + b"\n"

    def __call__(self, prompt: str) -> bytes:
        return hashlib.sha256(self._head + prompt.encode("utf-8", "surrogatepass")).digest()

    def many(self, prompts: Iterable[str]) -> list[bytes]:
        """The keys of many prompts."""
        head, sha = self._head, hashlib.sha256
        return [sha(head + p.encode("utf-8", "surrogatepass")).digest() for p in prompts]


def _completion_factory():
    """A fast constructor for decoded completions.

    The frozen dataclass ``__init__`` sets each field through ``object.__setattr__``;
    filling ``__dict__`` at once is three times faster, which matters when 10,000
    entries are read. Falls back to the normal constructor if ``Completion`` ever
    gains slots or a ``__post_init__``.
    """
    names = [f.name for f in fields(Completion)]
    expected = [
        "tokens",
        "logprobs",
        "answer_logprobs",
        "prompt_tokens",
        "completion_tokens",
        "cached_tokens",
    ]
    if (
        names != expected
        or hasattr(Completion, "__slots__")
        or hasattr(Completion, "__post_init__")
    ):  # pragma: no cover - depends on base.py
        return Completion
    new = object.__new__

    def make(tokens, logprobs, answers, pt, ct, cached):
        c = new(Completion)
        c.__dict__.update(
            tokens=tokens,
            logprobs=logprobs,
            answer_logprobs=answers,
            prompt_tokens=pt,
            completion_tokens=ct,
            cached_tokens=cached,
        )
        return c

    return make


make_completion = _completion_factory()


def encode(c: Completion) -> tuple[bytes, str]:
    """A completion as ``(data, tokens)`` column values."""
    lp = np.ascontiguousarray(c.logprobs, dtype="<f8").ravel()
    tokens = tuple(c.tokens)
    if len(tokens) != lp.size:
        raise ValueError(f"{len(tokens)} tokens but {lp.size} log-probabilities")
    if lp.size > _MAX_COUNT:
        raise ValueError(f"too many tokens to store ({lp.size})")
    if c.answer_logprobs is None:
        m, answers = _NO_ANSWERS, b""
    else:
        a = np.ascontiguousarray(c.answer_logprobs, dtype="<f8").ravel()
        if a.size > _MAX_COUNT:
            raise ValueError(f"too many answers to store ({a.size})")
        m, answers = a.size, a.tobytes()
    usage = (int(c.prompt_tokens), int(c.completion_tokens), int(c.cached_tokens))
    data = _HEAD.pack(_FORMAT, lp.size, m, *(min(max(u, 0), 2**32 - 1) for u in usage))
    text = "s" + "\x00".join(tokens)
    try:
        if any("\x00" in t for t in tokens):
            raise UnicodeError
        text.encode("utf-8")
    except UnicodeError:  # NUL inside a token, or lone surrogates
        text = "j" + json.dumps(list(tokens), ensure_ascii=True)
    return data + lp.tobytes() + answers, text


def decode(data: bytes, text: str) -> Completion:
    """Inverse of :func:`encode`; raises one of :data:`DECODE_ERRORS` on anything
    inconsistent."""
    fmt, n, m, pt, ct, cached = _HEAD.unpack_from(data)
    if fmt != _FORMAT:
        raise ValueError(f"unknown value format {fmt}")
    end = _HEAD.size + 8 * n
    if len(data) != end + (0 if m == _NO_ANSWERS else 8 * m):
        raise ValueError("value has the wrong length")
    logprobs = np.frombuffer(data, "<f8", n, _HEAD.size)
    answers = None if m == _NO_ANSWERS else np.frombuffer(data, "<f8", m, end)
    tag = text[0]
    if tag == "s":
        tokens = tuple(text[1:].split("\x00")) if n else ()
    elif tag == "j":
        tokens = tuple(json.loads(text[1:]))
        if not all(isinstance(t, str) for t in tokens):
            raise ValueError("tokens are not strings")
    else:
        raise ValueError(f"unknown token format {tag!r}")
    if len(tokens) != n:
        raise ValueError("tokens and log-probabilities differ in length")
    return make_completion(tokens, logprobs, answers, pt, ct, cached)
