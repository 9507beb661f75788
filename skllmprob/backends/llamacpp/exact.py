"""Exact scores of the answers: which token sequences count for each class and the
log-softmax maths on a logits row (multi-token answers are teacher-forced as a
trie, :mod:`.trie`).

The functions take the loaded model (:class:`~.model.LoadedModel`) as ``llm`` and
use only its vocabulary (``pieces``, ``ids_by_norm``, ``tokenize``).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...exceptions import ConfigurationError

__all__ = [
    "MAX_OUTPUTS",
    "AnswerSpec",
    "build_spec",
    "class_log_mass",
    "lcp",
    "log_softmax_at",
    "logsumexp",
    "top_k",
    "variants",
]

#: The most logits rows one decode call returns for one sequence (and the size of
#: the context's output buffer beside the texts' rows).
MAX_OUTPUTS = 32


@dataclass
class AnswerSpec:
    """The token sequences that count for each class."""

    n_classes: int
    seqs: list[tuple[int, ...]]  # every counted sequence (single tokens included)
    owner: np.ndarray  # class of each sequence
    first_ids: np.ndarray  # first token of each sequence
    minext: list[list[int]]  # indices of the shortest listed extensions of each sequence
    max_extra: int  # the most label tokens evaluated after a prompt
    first_token_texts: list[list[str]] = field(default_factory=list)
    trie: Any = None  # the LabelTrie of seqs (built on first use, :mod:`.trie`)


def variants(answer: str) -> list[str]:
    """The answer as given, lower, upper, capitalized and title case, each with and
    without a leading space (each form once)."""
    a = answer.strip()
    forms = dict.fromkeys([a, a.lower(), a.upper(), a.capitalize(), a.title()])
    return [p + f for f in forms for p in ("", " ")]


def _owners(llm, answers: tuple[str, ...]) -> dict[tuple[int, ...], int]:
    """The class of every token sequence that counts for a class."""
    owner_of: dict[tuple[int, ...], int] = {}
    for c, answer in enumerate(answers):
        norm = answer.strip().casefold()
        seqs = [(i,) for i in llm.ids_by_norm().get(norm, ())]
        for v in variants(answer):
            toks = tuple(llm.tokenize(v, add_bos=False, special=False))
            if toks:
                seqs.append(toks)
        for s in seqs:
            prev = owner_of.setdefault(s, c)
            if prev != c:
                raise ConfigurationError(
                    f"answers {answers[prev]!r} and {answer!r} share the token sequence "
                    f"{s}; give the classes distinct labels."
                )
    return owner_of


def _shortest_extensions(seqs: list[tuple[int, ...]]) -> list[list[int]]:
    """For each of the sorted ``seqs``, the indices of the shortest listed sequences
    that extend it."""
    index = {s: k for k, s in enumerate(seqs)}
    minext: list[list[int]] = [[] for _ in seqs]
    for k, s in enumerate(seqs):
        # Listed sequences that extend s follow it in sorted order.
        j = bisect.bisect_right(seqs, s)
        ext = []
        while j < len(seqs) and seqs[j][: len(s)] == s:
            ext.append(seqs[j])
            j += 1
        ext_set = set(ext)
        for t in ext:
            if not any(t[:m] in ext_set for m in range(len(s) + 1, len(t))):
                minext[k].append(index[t])
    return minext


def build_spec(llm, answers: tuple[str, ...]) -> AnswerSpec:
    """The :class:`AnswerSpec` of ``answers`` in the vocabulary of ``llm``.

    Raises :class:`~skllmprob.exceptions.ConfigurationError` when two answers share
    a token sequence (they cannot be told apart).
    """
    owner_of = _owners(llm, answers)
    seqs = sorted(owner_of)
    texts: list[list[str]] = [[] for _ in answers]
    for s in seqs:
        t = llm.pieces[s[0]]
        if t not in texts[owner_of[s]]:
            texts[owner_of[s]].append(t)
    return AnswerSpec(
        n_classes=len(answers),
        seqs=seqs,
        owner=np.array([owner_of[s] for s in seqs], dtype=int),
        first_ids=np.array([s[0] for s in seqs], dtype=np.int64),
        minext=_shortest_extensions(seqs),
        max_extra=max((len(s) - 1 for s in seqs), default=0),
        first_token_texts=texts,
    )


def class_log_mass(spec: AnswerSpec, seq_logp: np.ndarray) -> np.ndarray:
    """Disjoint class masses from the log-probability of every listed sequence."""
    p = np.exp(seq_logp)
    excl = p.copy()
    for k, ext in enumerate(spec.minext):
        if ext:
            excl[k] = max(p[k] - p[ext].sum(), 0.0)
    mass = np.bincount(spec.owner, weights=excl, minlength=spec.n_classes)
    return np.log(np.maximum(mass, np.finfo(float).tiny))


def logsumexp(row: np.ndarray) -> float:
    """log(sum(exp(row))) of a float32 logits row (float64 accumulation)."""
    m = float(row.max())
    return m + float(np.log(np.exp(row - np.float32(m)).sum(dtype=np.float64)))


def log_softmax_at(row: np.ndarray, ids, lse: float | None = None) -> tuple[np.ndarray, float]:
    """The log-softmax of ``row`` at ``ids`` (float64), and the log-normalizer."""
    if lse is None:
        lse = logsumexp(row)
    return row[ids].astype(np.float64) - lse, lse


def top_k(row: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest logits, largest first."""
    # Almost always the top tokens lie within 30 logits of the best one: select
    # those first instead of partitioning the whole vocabulary.
    cand = np.flatnonzero(row >= row.max() - np.float32(30.0))
    if len(cand) < k:
        cand = np.argpartition(row, -k)[-k:]
    elif len(cand) > k:
        cand = cand[np.argpartition(row[cand], -k)[-k:]]
    return cand[np.argsort(-row[cand], kind="stable")]


def lcp(a: Sequence[int], b: Sequence[int]) -> int:
    """The length of the longest common prefix of ``a`` and ``b``."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
