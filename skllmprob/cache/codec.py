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

import contextlib
import gc
import hashlib
import json
import struct
import zlib
from collections.abc import Iterable, Iterator
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
    filling ``__dict__`` directly is three times faster, which matters when 10,000
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
        d = c.__dict__
        d["tokens"], d["logprobs"], d["answer_logprobs"] = tokens, logprobs, answers
        d["prompt_tokens"], d["completion_tokens"], d["cached_tokens"] = pt, ct, cached
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


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector paused for the block (when it was running).

    Decoding a batch creates tens of thousands of objects that hold no reference
    cycles; in a process that has imported scikit-learn, the full collection they
    would trigger scans the whole heap and costs more than the decoding itself.
    Reference counting frees memory as usual meanwhile.
    """
    enabled = gc.isenabled()
    if enabled:
        gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _parse_tokens(raw: bytes) -> tuple[str, ...]:
    """The tokens of one ``tokens`` column (as bytes)."""
    tag = raw[:1]
    if tag == b"s":
        return tuple(raw[1:].decode("utf-8").split("\x00"))  # b"s": ("",)
    if tag == b"j":
        tokens = tuple(json.loads(raw[1:]))
        if not all(isinstance(t, str) for t in tokens):
            raise ValueError("tokens are not strings")
        return tokens
    raise ValueError(f"unknown token format {tag!r}")


def _checked(rows: Iterable[tuple], bad: list[bytes]) -> list[tuple]:
    """The rows whose layout and checksum hold, as ``(key, data, raw, header)``;
    the keys of the others go to ``bad``."""
    unpack, crc32 = _HEAD.unpack_from, zlib.crc32
    good = []
    for row in rows:
        try:
            key, data, raw = row
            if type(raw) is not bytes:
                raise TypeError("tokens are not bytes")
            head = unpack(data)
            fmt, n, m = head[0], head[1], head[2]
            if (
                len(data) != 24 + 8 * n + (0 if m == _NO_ANSWERS else 8 * m)
                or fmt > _FORMAT
                or fmt < _FORMAT_NO_CHECKSUM
                or (fmt == _FORMAT and crc32(data[24:], crc32(data[:20], crc32(raw))) != head[6])
            ):
                raise ValueError("damaged value")
            good.append((key, data, raw, head))
        except DECODE_ERRORS:
            bad.append(row[0])
    return good


class Decoder:
    """Decodes rows of the cache, checking each one.

    A row is refused (one of :data:`DECODE_ERRORS`) when its layout is inconsistent,
    its checksum (format 2) does not match, or its numbers are implausible: a
    log-probability above 0 or NaN, or top tokens whose probabilities sum to more
    than 1 (each within :data:`LOGPROB_TOLERANCE`). Token lists are interned: the
    same stored list gives the same tuple, so later stages can remember their work
    on it by identity.

    The numbers of a batch are read as one array (the completions hold views of
    it) and checked at once, with the cyclic garbage collector paused
    (:func:`gc_paused`).
    """

    def __init__(self) -> None:
        self._tokens: dict[bytes, tuple[str, ...]] = {}

    def tokens(self, raw: bytes) -> tuple[str, ...]:
        """The tokens of a ``tokens`` column (as bytes), interned."""
        found = self._tokens.get(raw)
        if found is None:
            found = _parse_tokens(raw)
            if len(self._tokens) >= _INTERN_MAX:
                self._tokens = {}
            self._tokens[raw] = found
        return found

    def _intern(self, items: list[tuple[bytes, tuple[str, ...]]]) -> None:
        if len(self._tokens) + len(items) > _INTERN_MAX:
            self._tokens = {}
        self._tokens.update(items[-_INTERN_MAX:])

    def many(self, rows: Iterable[tuple[bytes, bytes, bytes]]) -> tuple[dict, list[bytes]]:
        """Decode ``(key, data, tokens as bytes)`` rows: ``({key: completion}, bad
        keys)``."""
        bad: list[bytes] = []
        with gc_paused():
            checked = _checked(rows, bad)
            token_lists = self._token_lists(checked)
            good = []
            for row, tokens in zip(checked, token_lists, strict=True):
                if tokens is None:
                    bad.append(row[0])
                else:
                    good.append((*row, tokens))
            out = _build(good, bad) if good else {}
        return out, bad

    def _token_lists(self, good: list[tuple]) -> list[tuple[str, ...] | None]:
        """The tokens of each row (``None``: unreadable or not ``n`` of them)."""
        out: list = [None] * len(good)
        interned, tokens_of = self._tokens.get, self.tokens
        for i, (_, _, raw, head) in enumerate(good):
            n = head[1]
            try:
                found = interned(raw) or tokens_of(raw)
            except DECODE_ERRORS:
                continue
            if n == 0 and raw == b"s":  # no tokens, not one empty token
                found = ()
            if len(found) == n:
                out[i] = found
        return out


def _build(good: list[tuple], bad: list[bytes]) -> dict[bytes, Completion]:
    """Completions of checked ``(key, data, raw, header, tokens)`` rows; the keys of
    implausible ones go to ``bad``. Their numbers are views of one array."""
    sizes = np.fromiter((len(g[1]) // 8 for g in good), dtype=np.intp, count=len(good))
    flat = np.frombuffer(b"".join([g[1] for g in good]), "<f8")
    starts = np.cumsum(sizes) - sizes + 3  # after the 24-byte header
    n = np.fromiter((g[3][1] for g in good), dtype=np.intp, count=len(good))
    m = np.fromiter((g[3][2] for g in good), dtype=np.intp, count=len(good))
    m[m == _NO_ANSWERS] = 0
    wrong = _implausible_segments(flat, starts, n, mass=True)
    wrong |= _implausible_segments(flat, starts + n, m, mass=False)
    out: dict[bytes, Completion] = {}
    make = make_completion
    for (key, _, _, head, tokens), s, w in zip(good, starts.tolist(), wrong.tolist(), strict=True):
        if w:
            bad.append(key)
            continue
        e = s + head[1]
        answers = None if head[2] == _NO_ANSWERS else flat[e : e + head[2]]
        out[key] = make(tokens, flat[s:e], answers, head[3], head[4], head[5])
    return out


def _bad_segments(flat: np.ndarray, starts: np.ndarray, *, mass: bool) -> np.ndarray:
    """Per segment of ``flat`` (non-empty, beginning at ``starts``): a value above 0
    or NaN, or (``mass``) a total probability above 1, each within
    :data:`LOGPROB_TOLERANCE`."""
    with np.errstate(over="ignore", invalid="ignore"):
        ok = np.maximum.reduceat(flat, starts) <= LOGPROB_TOLERANCE
        if mass:
            ok &= np.add.reduceat(np.exp(np.minimum(flat, 1.0)), starts) <= 1 + LOGPROB_TOLERANCE
    return ~ok


def _implausible_segments(
    flat: np.ndarray, offsets: np.ndarray, counts: np.ndarray, *, mass: bool
) -> np.ndarray:
    """Per segment ``flat[offset : offset + count]``: implausible (see
    :func:`_bad_segments`; empty segments never are)."""
    wrong = np.zeros(len(counts), dtype=bool)
    keep = counts > 0
    if keep.any():
        offsets, counts = offsets[keep], counts[keep]
        starts = np.cumsum(counts) - counts
        idx = np.arange(int(counts.sum())) + np.repeat(offsets - starts, counts)
        wrong[keep] = _bad_segments(flat[idx], starts, mass=mass)
    return wrong


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
            flat = np.concatenate(arrays)
            starts = np.cumsum([0] + [len(a) for a in arrays[:-1]])
            wrong = _bad_segments(flat, starts, mass=mass)
            bad.update(k for k, b in zip(keys, wrong, strict=True) if b)
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
