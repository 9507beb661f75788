"""Keys and values of the completion cache.

A key is the SHA-256 of the canonical JSON of ``[KEY_VERSION, identity, settings]``,
a newline and the prompt in UTF-8 (:class:`KeyBuilder`). A value is a completion
stored in two columns (:func:`encode` / :func:`decode`):

- ``data``: a 24-byte header (format, number of tokens, number of answers or 0xFFFF
  for none, prompt/completion/cached tokens, and in format 2 a CRC-32 of the header,
  the ``tokens`` text and the numbers), the log-probabilities and the answer
  log-probabilities as little-endian float64 (format 1, written by schema 2 files,
  has no checksum and is checked for plausibility only);
- ``tokens``: ``"s"`` + the tokens joined by NUL, or ``"j"`` + a JSON list when a
  token holds a NUL or cannot be written as UTF-8.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from collections.abc import Iterable
from dataclasses import fields
from typing import Any

import numpy as np

from ..backends.base import Completion
from ..exceptions import CacheError

__all__ = [
    "DECODE_ERRORS",
    "KEY_VERSION",
    "LOGPROB_TOLERANCE",
    "Decoder",
    "KeyBuilder",
    "canonical",
    "decode",
    "encode",
    "implausible",
]

#: Version of the key derivation: bump it when the meaning of a key changes.
KEY_VERSION = "skllmprob-key-2"

_HEAD = struct.Struct("<BxHHxxIIII")
#: Value formats: 1 (schema 2 files) has no checksum, 2 ends its header with one.
_FORMAT, _FORMAT_NO_CHECKSUM = 2, 1
_NO_ANSWERS = 0xFFFF
_MAX_COUNT = 0xFFFE
#: What :func:`decode` raises on a damaged value.
DECODE_ERRORS = (ValueError, TypeError, struct.error, AttributeError, IndexError, UnicodeError)
#: Slack of the plausibility check: a log-probability may exceed 0 and the total
#: probability 1 by this much (servers round their numbers).
LOGPROB_TOLERANCE = 1e-3
_INTERN_MAX = 16_384  # token lists kept for interning (a few MiB)


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
        c.__dict__.update(zip(names, (tokens, logprobs, answers, pt, ct, cached), strict=True))
        return c

    return make


make_completion = _completion_factory()


def _text_of(tokens: tuple[str, ...]) -> str:
    text = "s" + "\x00".join(tokens)
    try:
        if any("\x00" in t for t in tokens):
            raise UnicodeError
        text.encode("utf-8")
    except UnicodeError:  # NUL inside a token, or lone surrogates
        text = "j" + json.dumps(list(tokens), ensure_ascii=True)
    return text


def encode(c: Completion) -> tuple[bytes, str]:
    """A completion as ``(data, tokens)`` column values (format 2, with checksum)."""
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
    if implausible({b"": c}):
        raise ValueError(
            "implausible log-probabilities (above 0, NaN, or a total probability above 1)"
        )
    usage = (int(c.prompt_tokens), int(c.completion_tokens), int(c.cached_tokens))
    head = _HEAD.pack(_FORMAT, lp.size, m, *(min(max(u, 0), 2**32 - 1) for u in usage), 0)
    text = _text_of(tokens)
    payload = lp.tobytes() + answers
    crc = zlib.crc32(payload, zlib.crc32(head[:20], zlib.crc32(text.encode("utf-8"))))
    return head[:20] + crc.to_bytes(4, "little") + payload, text


class Decoder:
    """Decodes rows of the cache, checking each one.

    A row is refused (one of :data:`DECODE_ERRORS`) when its layout is inconsistent,
    its checksum (format 2) does not match, or its numbers are implausible: a
    log-probability above 0 or NaN, or top tokens whose probabilities sum to more
    than 1 (each within :data:`LOGPROB_TOLERANCE`). Token lists are interned: the
    same stored list gives the same tuple, so later stages can remember their work
    on it by identity.
    """

    def __init__(self) -> None:
        self._tokens: dict[bytes, tuple[tuple[str, ...], int]] = {}

    def tokens(self, raw: bytes) -> tuple[tuple[str, ...], int]:
        """The tokens of a ``tokens`` column (as bytes) and the checksum of its text."""
        found = self._tokens.get(raw)
        if found is not None:
            return found
        tag = raw[:1]
        if tag == b"s":
            tokens = tuple(raw[1:].decode("utf-8").split("\x00"))  # b"s": ("",) or ()
        elif tag == b"j":
            tokens = tuple(json.loads(raw[1:]))
            if not all(isinstance(t, str) for t in tokens):
                raise ValueError("tokens are not strings")
        else:
            raise ValueError(f"unknown token format {tag!r}")
        found = (tokens, zlib.crc32(raw))
        if len(self._tokens) >= _INTERN_MAX:
            self._tokens = {}
        self._tokens[raw] = found
        return found

    def many(self, rows: Iterable[tuple[bytes, bytes, bytes]]) -> tuple[dict, list[bytes]]:
        """Decode ``(key, data, tokens as bytes)`` rows: ``({key: completion}, bad
        keys)``. The loop runs for every entry read: keep it lean."""
        out: dict[bytes, Completion] = {}
        bad: list[bytes] = []
        unpack, crc32, frombuffer, make = (
            _HEAD.unpack_from,
            zlib.crc32,
            np.frombuffer,
            make_completion,
        )
        interned, tokens_of = self._tokens.get, self.tokens
        for key, data, raw in rows:
            try:
                fmt, n, m, pt, ct, cached, crc = unpack(data)
                found = interned(raw) or tokens_of(raw)
                if n == 0 and raw == b"s":  # no tokens, not one empty token
                    found = ((), found[1])
                end = 24 + 8 * n
                if (
                    len(found[0]) != n
                    or len(data) != end + (0 if m == _NO_ANSWERS else 8 * m)
                    or (fmt == _FORMAT and crc32(data[24:], crc32(data[:20], found[1])) != crc)
                    or fmt > _FORMAT
                    or fmt < _FORMAT_NO_CHECKSUM
                ):
                    raise ValueError("damaged value")
                answers = None if m == _NO_ANSWERS else frombuffer(data, "<f8", m, end)
                out[key] = make(found[0], frombuffer(data, "<f8", n, 24), answers, pt, ct, cached)
            except DECODE_ERRORS:
                bad.append(key)
        for key in implausible(out):
            del out[key]
            bad.append(key)
        return out, bad


def _bad_rows(arrays: list[np.ndarray], *, mass: bool) -> np.ndarray:
    """Per array (non-empty): a value above 0 or NaN, or (``mass``) a total
    probability above 1, each within :data:`LOGPROB_TOLERANCE`."""
    flat = np.concatenate(arrays)
    starts = np.cumsum([0] + [len(a) for a in arrays[:-1]])
    with np.errstate(over="ignore", invalid="ignore"):
        ok = np.maximum.reduceat(flat, starts) <= LOGPROB_TOLERANCE
        if mass:
            ok &= np.add.reduceat(np.exp(np.minimum(flat, 1.0)), starts) <= 1 + LOGPROB_TOLERANCE
    return ~ok


def implausible(completions: dict[bytes, Completion]) -> list[bytes]:
    """Keys whose completion has a log-probability above 0 (or NaN), or top tokens
    whose probabilities sum to more than 1 (within :data:`LOGPROB_TOLERANCE`)."""
    bad: set[bytes] = set()
    for field, mass in (("logprobs", True), ("answer_logprobs", False)):
        keys, arrays = [], []
        for k, c in completions.items():
            a = getattr(c, field)
            if a is not None and len(a):
                keys.append(k)
                arrays.append(a)
        if keys:
            bad.update(k for k, b in zip(keys, _bad_rows(arrays, mass=mass), strict=True) if b)
    return [k for k in completions if k in bad]


_DECODER = Decoder()


def decode(data: bytes, text: str | bytes) -> Completion:
    """Inverse of :func:`encode` (also reads format 1); raises ``ValueError`` on a
    damaged or implausible value."""
    raw = text.encode("utf-8") if isinstance(text, str) else text
    out, _ = _DECODER.many([(b"", data, raw)])
    if not out:
        raise ValueError("damaged or implausible cache value")
    return out[b""]
