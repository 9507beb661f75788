"""Keys and values of the completion cache.

A key is the SHA-256 of the canonical JSON of ``[KEY_VERSION, identity, settings]``,
a newline and the prompt in UTF-8 (:class:`KeyBuilder`). A value is a completion
stored in two columns (:func:`encode` / :func:`decode`):

- ``data``: a 24-byte header (format, number of tokens, number of answers or 0xFFFF
  for none, prompt/completion/cached tokens, and from format 2 on a CRC-32 of the
  header, the ``tokens`` text and the rest), the log-probabilities and the answer
  log-probabilities as little-endian float64, and in format 3 the tokens as
  little-endian uint32 ids into the file's vocabulary
  (:mod:`skllmprob.vocabulary`). Format 1, written by schema 2 files, has no
  checksum and is checked for plausibility only;
- ``tokens``: in format 3 ``"v"``; else ``"s"`` + the tokens joined by NUL, or
  ``"j"`` + a JSON list when a token holds a NUL or cannot be written as UTF-8.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import struct
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import fields
from typing import Any

import numpy as np

from ..backends.base import Completion
from ..exceptions import CacheError
from ..vocabulary import TokenIds, Vocabulary

__all__ = [
    "DECODE_ERRORS",
    "KEY_VERSION",
    "LOGPROB_TOLERANCE",
    "Decoder",
    "KeyBuilder",
    "canonical",
    "decode",
    "encode",
    "gc_paused",
    "implausible",
]

#: Version of the key derivation: bump it when the meaning of a key changes.
KEY_VERSION = "skllmprob-key-2"

_HEAD = struct.Struct("<BxHHxxIIII")
#: Value formats: 1 (schema 2 files) has no checksum, 2 ends its header with one,
#: 3 also stores the tokens as ids into the file's vocabulary.
_FORMAT_NO_CHECKSUM, _FORMAT, _FORMAT_IDS = 1, 2, 3
_IDS_TEXT = "v"
_NO_ANSWERS = 0xFFFF
_MAX_COUNT = 0xFFFE
#: What :func:`decode` raises on a damaged value.
DECODE_ERRORS = (ValueError, TypeError, struct.error, AttributeError, IndexError, UnicodeError)
#: Slack of the plausibility check: a log-probability may exceed 0 and the total
#: probability 1 by this much (servers round their numbers).
LOGPROB_TOLERANCE = 1e-3
_INTERN_MAX = 16_384  # token lists kept for interning (a few MiB)
_INTERN_STRS_MAX = 262_144  # distinct tokens kept for interning (a vocabulary's worth)


_PAUSE_LOCK = threading.Lock()
_pause = {"depth": 0, "resume": False}


def _after_fork_in_child() -> None:
    """A fork while another thread had the collector paused: resume it here (that
    thread does not exist in the child)."""
    global _PAUSE_LOCK
    _PAUSE_LOCK = threading.Lock()
    if _pause["depth"] and _pause["resume"]:
        gc.enable()
    _pause.update(depth=0, resume=False)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while many entries are read.

    Reading 10,000 entries creates some 20,000 objects the collector tracks (each
    completion and its tuple of tokens), none of them in a reference cycle. With
    the collector running, they trigger dozens of collections, and in a process
    that has just imported large packages one of them is often a full collection
    of every object in the process (tens of milliseconds). Paused, the new objects
    are examined once, by the first collection after the read.

    The pause is process-wide, as ``gc.disable()`` is, and lasts only for the read
    (reference counting still frees memory meanwhile). The collector is enabled
    again when the outermost pause ends (also on an error), and only if it was
    enabled when the first one began; nested and concurrent pauses (threads) share
    one pause. A ``gc.disable()`` called by other code during a pause is undone at
    its end.

    >>> import gc
    >>> with gc_paused():
    ...     gc.isenabled()
    False
    >>> gc.isenabled()
    True
    """
    with _PAUSE_LOCK:
        if _pause["depth"] == 0:
            _pause["resume"] = gc.isenabled()
            gc.disable()
        _pause["depth"] += 1
    try:
        yield
    finally:
        with _PAUSE_LOCK:
            _pause["depth"] -= 1
            if _pause["depth"] == 0 and _pause["resume"]:
                gc.enable()


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

    The frozen dataclass ``__init__`` runs as Python code; setting the six fields
    with ``object.__setattr__`` directly is faster, and it keeps the instance's
    attributes in its own inline storage: unlike filling ``__dict__``, it creates
    no dictionary object, so a decoded entry costs the garbage collector one
    object, not two. Falls back to the normal constructor if ``Completion`` ever
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
    new, put = object.__new__, object.__setattr__

    def make(tokens, logprobs, answers, pt, ct, cached):
        c = new(Completion)
        put(c, "tokens", tokens)
        put(c, "logprobs", logprobs)
        put(c, "answer_logprobs", answers)
        put(c, "prompt_tokens", pt)
        put(c, "completion_tokens", ct)
        put(c, "cached_tokens", cached)
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


def _ids_of(tokens: tuple[str, ...], token_ids: Mapping[str, int] | None) -> bytes | None:
    """The tokens as uint32 ids (little-endian), or ``None`` when one has no id."""
    if token_ids is None:
        return None
    try:
        found = np.fromiter(map(token_ids.__getitem__, tokens), dtype="<u8", count=len(tokens))
    except KeyError:
        return None
    if found.size and int(found.max()) > 2**32 - 1:
        return None
    return found.astype("<u4").tobytes()


def encode(c: Completion, token_ids: Mapping[str, int] | None = None) -> tuple[bytes, str]:
    """A completion as ``(data, tokens)`` column values: format 3 (token ids) when
    ``token_ids`` holds the id of every token, else format 2 (token text); both
    with a checksum."""
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
    ids = _ids_of(tokens, token_ids)
    fmt = _FORMAT if ids is None else _FORMAT_IDS
    head = _HEAD.pack(fmt, lp.size, m, *(min(max(u, 0), 2**32 - 1) for u in usage), 0)
    text = _text_of(tokens) if ids is None else _IDS_TEXT
    payload = lp.tobytes() + answers + (b"" if ids is None else ids)
    crc = zlib.crc32(payload, zlib.crc32(head[:20], zlib.crc32(text.encode("utf-8"))))
    return head[:20] + crc.to_bytes(4, "little") + payload, text


class Decoder:
    """Decodes rows of the cache, checking each one.

    A row is refused (one of :data:`DECODE_ERRORS`) when its layout is inconsistent,
    its checksum (formats 2 and 3) does not match, a token id (format 3) is not in
    the file's vocabulary, or its numbers are implausible: a
    log-probability above 0 or NaN, or top tokens whose probabilities sum to more
    than 1 (each within :data:`LOGPROB_TOLERANCE`; format 1 only, as :func:`encode`
    writes no such numbers and a checksum proves a value unchanged).
    Token lists of formats 1 and 2 are interned: the same stored list gives the
    same tuple, so later stages can remember their work on it by identity, and
    the same token the same string (the tokens of many entries share a model's
    vocabulary: less memory, and faster look-ups later).
    """

    def __init__(self) -> None:
        self._tokens: dict[bytes, tuple[str, ...]] = {}
        self._strs: dict[str, str] = {}

    def _parse(self, raw: bytes) -> tuple[str, ...]:
        """The tokens of a ``tokens`` column (as bytes), parsed and interned."""
        if raw[:1] == b"s":
            parts = raw[1:].decode("utf-8").split("\x00")  # b"s": [""]
            found = tuple(map(self._strs.setdefault, parts, parts))
        elif raw[:1] == b"j":
            found = tuple(json.loads(raw[1:]))
            if not all(isinstance(t, str) for t in found):
                raise ValueError("tokens are not strings")
        else:
            raise ValueError(f"unknown token format {raw[:1]!r}")
        if len(self._tokens) >= _INTERN_MAX:
            self._tokens = {}
            if len(self._strs) >= _INTERN_STRS_MAX:
                self._strs = {}
        self._tokens[raw] = found
        return found

    def many(
        self,
        rows: Iterable[tuple[bytes, bytes, bytes]],
        vocab: Vocabulary | None = None,
        load: Callable[[np.ndarray], tuple[np.ndarray, list[str]]] | None = None,
    ) -> tuple[dict, list[bytes]]:
        """Decode ``(key, data, tokens as bytes)`` rows: ``({key: completion}, bad
        keys)``. The loop runs for every entry read: keep it lean.

        Format 3 rows need the file's ``vocab``; ids it has not read yet are read
        with ``load(ids)`` (the ids found and their tokens), once for all rows,
        and a row with an id that is not found is damaged. The plausibility of the numbers
        is checked afterwards, for all rows at once, and only for format 1:
        :func:`encode` refuses implausible numbers, and the checksum of a format 2
        or 3 value proves it unchanged since."""
        out: dict[bytes, Completion] = {}
        unchecked: dict[bytes, Completion] = {}  # format 1
        with_ids: list[bytes] = []  # format 3
        bad: list[bytes] = []
        unpack, crc32, frombuffer = _HEAD.unpack_from, zlib.crc32, np.frombuffer
        make, make_ids = make_completion, _token_ids_factory(vocab)
        interned, parse = self._tokens.get, self._parse
        for key, data, raw in rows:
            try:
                fmt, n, m, pt, ct, cached, crc = unpack(data)
                end = 24 + 8 * n
                stop = end if m == _NO_ANSWERS else end + 8 * m
                if fmt == _FORMAT_IDS:
                    if raw != b"v" or len(data) != stop + 4 * n or make_ids is None:
                        raise ValueError("damaged value")
                    tokens = make_ids(frombuffer(data, "<u4", n, stop))
                else:
                    tokens = interned(raw)
                    if tokens is None:
                        tokens = parse(raw)
                    if n == 0 and raw == b"s":  # no tokens, not one empty token
                        tokens = ()
                    if len(tokens) != n or len(data) != stop or fmt < _FORMAT_NO_CHECKSUM:
                        raise ValueError("damaged value")
                if fmt > _FORMAT_IDS or (
                    fmt != _FORMAT_NO_CHECKSUM
                    and crc32(data[24:], crc32(data[:20], crc32(raw))) != crc
                ):
                    raise ValueError("damaged value")
            except DECODE_ERRORS:
                bad.append(key)
                continue
            answers = None if m == _NO_ANSWERS else frombuffer(data, "<f8", m, end)
            out[key] = c = make(tokens, frombuffer(data, "<f8", n, 24), answers, pt, ct, cached)
            if fmt == _FORMAT_IDS:
                with_ids.append(key)
            elif fmt == _FORMAT_NO_CHECKSUM:
                unchecked[key] = c
        for key in implausible(unchecked):
            del out[key]
            bad.append(key)
        if with_ids:
            for key in _unknown_ids(out, with_ids, vocab, load):
                del out[key]
                bad.append(key)
        return out, bad


def _token_ids_factory(vocab: Vocabulary | None):
    """A fast constructor of :class:`~skllmprob.vocabulary.TokenIds` of ``vocab``
    (``None`` without one: format 3 rows cannot be read)."""
    if vocab is None:
        return None
    new, set_vocab, set_ids = object.__new__, TokenIds.vocab.__set__, TokenIds.ids.__set__

    def make(ids: np.ndarray) -> TokenIds:
        t = new(TokenIds)
        set_vocab(t, vocab)
        set_ids(t, ids)
        return t

    return make


def _unknown_ids(out: dict, keys: list[bytes], vocab, load) -> list[bytes]:
    """The ``keys`` (format 3 rows of ``out``) with a token id that ``vocab`` does
    not have, after reading the missing ids once with ``load``."""
    ids = [out[k].tokens.ids for k in keys]
    flat = np.concatenate(ids)
    known = vocab.known(flat)
    if load is not None and not known.all():
        vocab.add(*load(vocab.unknown(flat)))
        known = vocab.known(flat)
    if known.all():
        return []
    lens = np.fromiter(map(len, ids), dtype=np.intp, count=len(ids))
    unknown = (~known).astype(np.intp)
    nonempty = lens > 0
    per_row = np.zeros(len(keys), dtype=np.intp)
    per_row[nonempty] = np.add.reduceat(unknown, (np.cumsum(lens) - lens)[nonempty])
    return [keys[i] for i in np.flatnonzero(per_row)]


def _bad_rows(arrays: list, *, mass: bool) -> np.ndarray:
    """Per array: a value above 0 or NaN, or (``mass``) a total probability above
    1, each within :data:`LOGPROB_TOLERANCE` (an empty array is never bad)."""
    lens = np.fromiter(map(len, arrays), dtype=np.intp, count=len(arrays))
    bad = np.zeros(len(arrays), dtype=bool)
    nonempty = lens > 0
    if not nonempty.any():
        return bad
    flat = np.concatenate(arrays)
    # Empty arrays add no element, so the starts of the others delimit them.
    starts = (np.cumsum(lens) - lens)[nonempty]
    with np.errstate(over="ignore", invalid="ignore"):
        ok = np.maximum.reduceat(flat, starts) <= LOGPROB_TOLERANCE
        if mass:
            ok &= np.add.reduceat(np.exp(np.minimum(flat, 1.0)), starts) <= 1 + LOGPROB_TOLERANCE
    bad[nonempty] = ~ok
    return bad


def implausible(completions: dict[bytes, Completion]) -> list[bytes]:
    """Keys whose completion has a log-probability above 0 (or NaN), or top tokens
    whose probabilities sum to more than 1 (within :data:`LOGPROB_TOLERANCE`)."""
    if not completions:
        return []
    values = list(completions.values())
    bad = _bad_rows([c.logprobs for c in values], mass=True)
    answers = [c.answer_logprobs for c in values]
    given = [i for i, a in enumerate(answers) if a is not None]
    if given:
        bad[given] |= _bad_rows([answers[i] for i in given], mass=False)
    if not bad.any():
        return []
    keys = list(completions)
    return [keys[i] for i in np.flatnonzero(bad)]


_DECODER = Decoder()


def decode(data: bytes, text: str | bytes, vocab: Vocabulary | None = None) -> Completion:
    """Inverse of :func:`encode` (also reads format 1; format 3 with the ``vocab``
    that holds its ids); raises ``ValueError`` on a damaged or implausible value."""
    raw = text.encode("utf-8") if isinstance(text, str) else text
    out, _ = _DECODER.many([(b"", data, raw)], vocab)
    if not out:
        raise ValueError("damaged or implausible cache value")
    return out[b""]
