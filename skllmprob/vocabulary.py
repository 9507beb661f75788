"""Tokens stored as ids into a vocabulary.

The SQLite cache keeps each distinct token once, in a table of the file, and stores
a completion's tokens as ids into it (value format 3 of
:mod:`skllmprob.cache.codec`). Reading such a completion creates no string: its
``tokens`` are a :class:`TokenIds`, a read-only sequence of ``str`` that looks its
tokens up in the process's :class:`Vocabulary` of that file when they are used.
The scorer classifies the tokens of a vocabulary once and then reads the class of
each id from an array, instead of looking up every token of every row.

A vocabulary belongs to one file: :func:`vocabulary_for` is keyed by the file's
random vocabulary id and its identity on disk (so a copy of a file, whose ids
diverge from the original's as both grow, gets its own). Ids are only ever added
to a file, never reassigned, so what a process has read stays true.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from operator import attrgetter

import numpy as np

from ._forksafe import ForkSafeLock

__all__ = ["MAX_ID", "TokenIds", "Vocabulary", "distinct", "ids_of", "vocabulary_for"]

#: Ids above this are never loaded (a damaged table must not make the process
#: allocate for billions of ids); rows that use them are damaged.
MAX_ID = 2**24
_VOCABULARIES: dict = {}
_LOCK = ForkSafeLock()
_MAX_VOCABULARIES = 16


def vocabulary_for(key: Hashable) -> Vocabulary:
    """The process's vocabulary of a file (``key``: its vocabulary id and identity
    on disk), created empty on first use; at most a few are kept."""
    with _LOCK:
        vocab = _VOCABULARIES.get(key)
        if vocab is None:
            vocab = _VOCABULARIES[key] = Vocabulary()
            while len(_VOCABULARIES) > _MAX_VOCABULARIES:
                del _VOCABULARIES[next(iter(_VOCABULARIES))]
    return vocab


class Vocabulary:
    """The tokens of a file that this process has read, by id.

    ``tokens[i]`` is the token of id ``i`` (``None``: not read yet); the list only
    grows, in place, so :class:`TokenIds` can hold it.

    >>> v = Vocabulary()
    >>> v.add([0, 2], ["yes", " no"])
    >>> v.tokens
    ['yes', None, ' no']
    >>> v.unknown(np.array([2, 1, 5, 1], dtype=np.uint32)).tolist()
    [1, 5]
    """

    def __init__(self) -> None:
        self.tokens: list[str | None] = []
        self._known = np.zeros(0, dtype=bool)
        self._lock = ForkSafeLock()

    def __len__(self) -> int:
        return len(self.tokens)

    def add(self, ids: Sequence[int], tokens: Sequence[str]) -> None:
        """Learn the ``tokens`` of ``ids`` read from the file (ids above
        :data:`MAX_ID` are left out)."""
        ids = np.asarray(ids, dtype=np.int64)
        keep = (ids >= 0) & (ids <= MAX_ID)
        if not keep.all():
            ids, tokens = ids[keep], [t for t, k in zip(tokens, keep.tolist(), strict=True) if k]
        if not ids.size:
            return
        with self._lock:
            have, top = len(self.tokens), int(ids.max()) + 1
            if ids[0] == have and top - have == ids.size and np.all(np.diff(ids) == 1):
                self.tokens.extend(tokens)  # the usual case: the ids that follow
            else:
                if top > have:
                    self.tokens.extend([None] * (top - have))
                for i, t in zip(ids.tolist(), tokens, strict=True):
                    self.tokens[i] = t
            known = np.zeros(max(top, self._known.size), dtype=bool)
            known[: self._known.size] = self._known
            known[ids] = True
            self._known = known

    def known(self, ids: np.ndarray) -> np.ndarray:
        """Whether each of ``ids`` was read (a boolean array like ``ids``)."""
        known = self._known
        inside = ids < known.size
        if inside.all():
            return known[ids]
        out = np.zeros(ids.shape, dtype=bool)
        out[inside] = known[ids[inside]]
        return out

    def unknown(self, ids: np.ndarray) -> np.ndarray:
        """The distinct ids among ``ids`` not read yet (up to :data:`MAX_ID`),
        sorted."""
        return distinct(ids, self._known)


def distinct(ids: np.ndarray, exclude: np.ndarray) -> np.ndarray:
    """The distinct ``ids`` (non-negative integers up to :data:`MAX_ID`; larger ones
    are left out) where ``exclude`` (a boolean array by id, maybe shorter) is not
    set, sorted. One pass with a bitmap, no sort.

    >>> distinct(np.array([5, 1, 5, 3, 2**30]), np.array([False, False, False, True]))
    array([1, 5])
    """
    if not ids.size:
        return np.empty(0, dtype=np.int64)
    top = int(ids.max()) + 1
    if top > MAX_ID + 1:
        ids = ids[ids <= MAX_ID]
        top = int(ids.max()) + 1 if ids.size else 0
    seen = np.zeros(top, dtype=bool)
    seen[ids] = True
    n = min(top, exclude.size)
    seen[:n] &= ~exclude[:n]
    return np.flatnonzero(seen).astype(np.int64)


class TokenIds(Sequence):
    """The tokens of one completion, as ids into a :class:`Vocabulary`.

    A read-only sequence of ``str`` equal to the tuple of its tokens; it pickles
    as that tuple.

    >>> v = Vocabulary()
    >>> v.add([0, 1], [" yes", "\\n"])
    >>> t = TokenIds(v, np.array([1, 0], dtype="<u4"))
    >>> t
    ('\\n', ' yes')
    >>> t == ("\\n", " yes"), len(t), t[1], list(t)
    (True, 2, ' yes', ['\\n', ' yes'])
    """

    __slots__ = ("ids", "vocab")

    def __init__(self, vocab: Vocabulary, ids: np.ndarray) -> None:
        self.vocab = vocab
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[str]:
        return map(self.vocab.tokens.__getitem__, self.ids.tolist())

    def __getitem__(self, index):
        if isinstance(index, slice):
            return tuple(map(self.vocab.tokens.__getitem__, self.ids[index].tolist()))
        return self.vocab.tokens[self.ids[index]]

    def __eq__(self, other: object) -> bool:
        kind = type(other)
        if kind is TokenIds and other.vocab is self.vocab:
            return bool(np.array_equal(self.ids, other.ids))
        if kind is tuple or (isinstance(other, Sequence) and not isinstance(other, str | bytes)):
            return len(other) == len(self.ids) and tuple(self) == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return repr(tuple(self))

    def __reduce__(self):
        return (tuple, (tuple(self),))


_IDS, _VOCAB = attrgetter("ids"), attrgetter("vocab")


def ids_of(rows: Sequence) -> tuple[Vocabulary, list[np.ndarray]] | None:
    """``(vocabulary, ids of each row)`` when every row of ``rows`` is a
    :class:`TokenIds` of one vocabulary, else ``None`` (no Python call per row).

    >>> v = Vocabulary()
    >>> a = TokenIds(v, np.array([0, 1], dtype="<u4"))
    >>> ids_of([a, a])[0] is v, ids_of([a, ("x",)]), ids_of([])
    (True, None, None)
    """
    if not rows or set(map(type, rows)) != {TokenIds}:
        return None
    if len(set(map(id, map(_VOCAB, rows)))) != 1:
        return None
    return rows[0].vocab, list(map(_IDS, rows))
