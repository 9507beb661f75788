"""The shared memo of :class:`~skllmprob.scoring.TokenMatcher`: token -> class,
and the classes of the token tuples it has seen.

A memo is a cache of a pure function of the token and the matcher's table, so
matchers with the same answers share one (:func:`memo_for`), and repeated
predictions skip classifying tokens seen before. New tokens are classified in
bulk (:meth:`Memo.classify`): the first prediction of a process meets tens of
thousands of them.
"""

from __future__ import annotations

import weakref
from collections.abc import Hashable, Sequence
from itertools import filterfalse, islice, repeat

import numpy as np

from ._forksafe import ForkSafeLock
from .labels import normalize_token, normalize_tokens
from .vocabulary import Vocabulary, distinct

__all__ = ["Memo", "memo_for"]

_MEMOS: dict = {}
_MEMOS_LOCK = ForkSafeLock()
_MAX_MEMOS = 8
#: Tuples of tokens remembered per memo, and tokens classified per memo.
_MAX_ROWS = 32_768
_MAX_TOKENS = 100_000


def memo_for(config: Hashable, table: dict[str, int]) -> Memo:
    """The process's memo for a matcher's ``config`` (answers and exact tokens),
    created on first use; at most :data:`_MAX_MEMOS` are kept."""
    with _MEMOS_LOCK:
        memo = _MEMOS.get(config)
        if memo is None:
            memo = _MEMOS[config] = Memo(table)
            while len(_MEMOS) > _MAX_MEMOS:
                del _MEMOS[next(iter(_MEMOS))]
    return memo


class Memo(dict):
    """Token -> class (-1: none) that computes missing entries (bounded in size),
    and the remembered rows: ``rows`` maps id(tuple of tokens) to the tuple (kept
    alive, so that its id is not reused), ``row_classes`` the same id to its
    classes; and per :class:`~skllmprob.vocabulary.Vocabulary`, the classes of
    its ids (:meth:`id_classes`).

    ``table`` maps normalized tokens (:func:`~skllmprob.labels.normalize_token`) to
    classes; a token that normalizes to ``""`` has none.

    >>> memo = Memo({"yes": 0, "no": 1})
    >>> memo.classify([" Yes", "maybe", "NO", " yes"]).tolist()
    [0, -1, 1, 0]
    >>> memo[" "]
    -1
    """

    def __init__(self, table: dict[str, int]) -> None:
        super().__init__()
        self._get = {k: v for k, v in table.items() if k}.get
        self.rows: dict[int, tuple] = {}
        self.row_classes: dict[int, np.ndarray] = {}
        self._rows_lock = ForkSafeLock()
        self._vocabs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._vocab_lock = ForkSafeLock()

    def __missing__(self, token: str) -> int:
        idx = self._get(normalize_token(token), -1)
        if len(self) < _MAX_TOKENS:
            self[token] = idx
        return idx

    def classify(self, tokens: Sequence[str]) -> np.ndarray:
        """The classes of ``tokens``; the new distinct ones are classified together
        (without a Python call per token) and remembered while there is room."""
        new = list(filterfalse(self.__contains__, set(tokens)))
        if new and len(self) + len(new) <= _MAX_TOKENS:
            self.update(zip(new, map(self._get, normalize_tokens(new), repeat(-1)), strict=False))
        return np.fromiter(map(self.__getitem__, tokens), dtype=np.intp, count=len(tokens))

    def id_classes(self, vocab: Vocabulary, ids: np.ndarray) -> np.ndarray:
        """The classes of the tokens ``ids`` of ``vocab`` (every one of them read).

        Each id is classified once per vocabulary (the new ones together), then
        read from an array.

        >>> from skllmprob.vocabulary import Vocabulary
        >>> v = Vocabulary()
        >>> v.add([0, 1, 2], [" Yes", "maybe", "NO"])
        >>> Memo({"yes": 0, "no": 1}).id_classes(v, np.array([2, 0, 1, 0])).tolist()
        [1, 0, -1, 0]
        """
        with self._vocab_lock:
            classes, done = self._vocabs.get(vocab, (np.empty(0, np.intp), np.empty(0, bool)))
            size = len(vocab.tokens)
            if classes.size < size:
                classes = np.concatenate([classes, np.full(size - classes.size, -1, np.intp)])
                done = np.concatenate([done, np.zeros(size - done.size, bool)])
                self._vocabs[vocab] = classes, done
            need = distinct(ids, done).tolist()
            if need:
                tokens = list(map(vocab.tokens.__getitem__, need))
                found = map(self._get, normalize_tokens(tokens), repeat(-1))
                classes[need] = np.fromiter(found, dtype=np.intp, count=len(need))
                done[need] = True
            return classes[ids]

    def remember(self, rows: list, classes: list) -> None:
        """Remember the classes of the rows that are tuples."""
        if not all(type(toks) is tuple for toks in rows):
            keep = [i for i, toks in enumerate(rows) if type(toks) is tuple]
            rows, classes = [rows[i] for i in keep], [classes[i] for i in keep]
        ids = list(map(id, rows))
        with self._rows_lock:
            self.row_classes.update(zip(ids, classes, strict=True))  # readers check rows first
            self.rows.update(zip(ids, rows, strict=True))
            excess = len(self.rows) - _MAX_ROWS
            if excess > 0:
                for key in list(islice(self.rows, excess)):
                    del self.rows[key]
                    self.row_classes.pop(key, None)
