"""Evaluating a call's prompts on the loaded model: the shared prefix kept in sequence
0, one text at a time (``n_parallel=1``) or several per decode call, and the
:class:`~skllmprob.backends.base.Completion` of each prompt."""

from __future__ import annotations

import numpy as np

from ...exceptions import ContextOverflowError, InputError
from ..base import Completion, OnResult
from .exact import AnswerSpec, lcp, log_softmax_at, logsumexp, top_k
from .model import MIN_DECODE_TOKENS, LoadedModel
from .trie import answer_log_mass

__all__ = ["complete"]


def complete(
    llm: LoadedModel,
    prompts: list[str],
    chat_parts,
    spec: AnswerSpec | None,
    k: int,
    on_result: OnResult,
    *,
    reuse_prefix: bool,
    label_prune: float = 0.0,
) -> None:
    """Score ``prompts``: the top ``k`` tokens and, with ``spec``, the exact class
    log-masses; ``on_result(i, completion)`` as each prompt is done.

    Every prompt is tokenized and checked to fit in the context before anything
    is evaluated.
    """
    toks = [llm.prompt_tokens(p, chat_parts) for p in prompts]
    _check_fits(llm, prompts, toks, spec.max_extra if spec is not None else 0)
    scorer = _Scorer(llm, spec, k, label_prune)
    with llm.lock:
        if not reuse_prefix:
            llm.set_resident([])
            for i, t in enumerate(toks):
                on_result(i, scorer.one(t, 0))
            return
        llm.set_resident(_shared_prefix(toks))
        p = len(llm.resident)
        if llm.n_parallel == 1:
            for i, t in enumerate(toks):
                on_result(i, scorer.one(t, p))
        else:
            scorer.parallel(toks, p, on_result)


def _check_fits(llm: LoadedModel, prompts: list[str], toks: list[list[int]], extra: int) -> None:
    for i, t in enumerate(toks):
        if not t:
            raise InputError(f"prompt {i} is empty: there is nothing to score.")
        need = len(t) + extra + MIN_DECODE_TOKENS
        if need > llm.n_ctx:
            raise _overflow(llm, prompts[i], len(t), extra, need)


def _overflow(llm: LoadedModel, prompt: str, n: int, extra: int, need: int):
    """The error for a prompt of ``n`` tokens (plus ``extra`` label tokens) that
    does not fit; its default fix names this backend's own setting."""
    size = _next_pow2(need)
    return ContextOverflowError(
        f"a prompt is {n} tokens long (plus {extra} label tokens), more than the "
        f"context of n_ctx={llm.n_ctx} tokens holds; it ends with {prompt[-80:]!r}. "
        "Nothing was evaluated.",
        f"Pass a larger context, e.g. LlamaCppBackend(n_ctx={size}) (the model was "
        f"trained on up to {llm.n_ctx_train}), or shorten the text.",
        prompt=prompt,
        n_tokens=n,
        n_ctx=llm.n_ctx,
        n_needed=need,
        suggested_n_ctx=size,
        n_ctx_train=llm.n_ctx_train,
    )


def _shared_prefix(toks: list[list[int]]) -> list[int]:
    """The longest common token prefix of the prompts, short of each one's last
    token (whose logits are needed)."""
    if len(toks) == 1:
        return toks[0][:-1]
    target = toks[0]
    for t in toks[1:]:
        target = target[: lcp(target, t)]
    return target[: min(len(t) for t in toks) - 1]


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


class _Scorer:
    """Scores prompts of one call whose shared prefix is resident in sequence 0."""

    def __init__(self, llm: LoadedModel, spec: AnswerSpec | None, k: int, label_prune: float):
        self.llm = llm
        self.spec = spec
        self.k = k
        self.label_prune = label_prune

    def one(self, t: list[int], p: int) -> Completion:
        """Score one prompt whose first ``p`` tokens are resident in sequence 0;
        sequence 0 holds those ``p`` tokens again afterwards."""
        llm = self.llm
        try:
            llm.extend_seq0(t[p:], p, last_logits=True)
            row = llm.logits(-1)  # a view: read it before label chains are decoded
            return self.finish(row, len(t), 0, p, len(t))
        finally:
            llm.seq_rm(0, p)

    def finish(self, row: np.ndarray, n: int, seq: int, cached: int, used: int) -> Completion:
        """The completion of a prompt of ``n`` tokens in sequence ``seq`` whose last
        token's logits are ``row`` (``used``: the cache cells the prompts take)."""
        lse = logsumexp(row)
        if self.k > 0:
            top = top_k(row, min(self.k, self.llm.n_vocab))
            lp, _ = log_softmax_at(row, top, lse)
            pieces = self.llm.pieces
            tokens = tuple(pieces[i] for i in top.tolist())
        else:
            tokens, lp = (), np.empty(0)
        answers, extra = None, 0
        if self.spec is not None:
            free = self.llm.n_ctx - used - 2 * MIN_DECODE_TOKENS
            answers, extra, _ = answer_log_mass(
                self.llm, row, n, seq, self.spec, lse, self.label_prune, free
            )
        return Completion(
            tokens=tokens,
            logprobs=lp,
            answer_logprobs=answers,
            prompt_tokens=n,
            completion_tokens=extra,
            cached_tokens=cached,
        )

    def parallel(self, toks: list[list[int]], p: int, on_result: OnResult) -> None:
        """Several texts per decode call, one sequence each, sharing the prefix."""
        pos = 0
        while pos < len(toks):
            group = self._group(toks, pos, p)
            if not group:  # a text longer than one decode call: evaluate it alone
                on_result(pos, self.one(toks[pos], p))
                pos += 1
                continue
            pos += len(group)
            for i, comp in self._decode_group(toks, group, p):
                on_result(i, comp)

    def _group(self, toks: list[list[int]], pos: int, p: int) -> list[int]:
        """The prompts from ``pos`` on that fit together in one decode call."""
        llm = self.llm
        extra = self.spec.max_extra if self.spec is not None else 0
        limit = llm.n_batch - MIN_DECODE_TOKENS
        group: list[int] = []
        n_tokens = 0
        cells = p
        while pos < len(toks) and len(group) < llm.n_parallel:
            n = len(toks[pos]) - p
            if group and (
                n_tokens + n > limit or cells + n + extra + 2 * MIN_DECODE_TOKENS > llm.n_ctx
            ):
                break
            if n > limit:
                break
            group.append(pos)
            n_tokens += n
            cells += n
            pos += 1
        return group

    def _decode_group(
        self, toks: list[list[int]], group: list[int], p: int
    ) -> list[tuple[int, Completion]]:
        llm = self.llm
        items = []
        last_index = []
        used = p + sum(len(toks[i]) - p for i in group)
        for s, i in enumerate(group, start=1):
            t = toks[i]
            llm.seq_cp(0, s, p)
            items.extend((tok, p + k, s, k == len(t) - p - 1) for k, tok in enumerate(t[p:]))
            last_index.append(len(items) - 1)
        try:
            llm.decode(items)
            rows = [np.array(llm.logits(j)) for j in last_index]
            return [
                (i, self.finish(row, len(toks[i]), s, p, used))
                for s, (i, row) in enumerate(zip(group, rows, strict=True), start=1)
            ]
        finally:
            for s in range(1, len(group) + 1):
                llm.seq_rm(s)
