"""TokenMatcher's table and row memo: the same classes as the rule they replace."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from skllmprob.labels import first_word, normalize_token, normalize_tokens
from skllmprob.scoring import TokenMatcher

WORDS = st.text(alphabet="abcdeSPOT ß/-", min_size=1, max_size=9)


def _rule(answers, token):
    """The matching rule without a tokenizer, written out token by token."""
    exact = {}
    for i, a in enumerate(answers):
        exact.setdefault(normalize_token(a), i)
        exact.setdefault(first_word(a), i)
    words = [first_word(a) for a in answers]
    norm = normalize_token(token)
    idx = exact.get(norm, -1) if norm else -1
    if idx < 0 and len(norm) >= 3:
        owners = [i for i, w in enumerate(words) if w.startswith(norm)]
        if len(owners) == 1:
            idx = owners[0]
    return idx


@settings(max_examples=200)
@given(st.lists(WORDS, min_size=1, max_size=5), st.lists(WORDS, min_size=1, max_size=12))
def test_the_table_classifies_as_the_rule(answers, tokens):
    tokens = tokens + [a[:k] for a in answers for k in range(1, len(a) + 1)]
    m = TokenMatcher(answers)
    assert [m(t) for t in tokens] == [_rule(answers, t) for t in tokens]


def test_remembered_rows_new_rows_and_lists_mix():
    m = TokenMatcher(["alpha", "beta"])
    a, b = (" alpha", "x"), ("Beta", " alp", "y")
    first = m.row_classes([a])
    np.testing.assert_array_equal(first, [0, -1])
    first[:] = 7  # the caller's copy: the memo keeps its own
    rows = [b, a, [" beta"], (), a]
    want = np.array([1, 0, -1, 0, -1, 1, 0, -1])
    for _ in range(2):  # new rows, then every tuple remembered
        np.testing.assert_array_equal(m.row_classes(rows), want)
    assert id(a) in m._memo.rows and id(b) in m._memo.rows
    assert all(m._memo.rows[k] is not rows[2] for k in m._memo.rows)  # lists are not kept
    assert m.row_classes([]).shape == (0,)


def test_the_row_memo_stays_bounded(monkeypatch):
    import skllmprob._token_memo as token_memo

    monkeypatch.setattr(token_memo, "_MAX_ROWS", 10)
    m = TokenMatcher(["gamma", "delta"])
    rows = [(f"t{i}", " gamma") for i in range(25)]
    np.testing.assert_array_equal(m.row_classes(rows), np.tile([-1, 0], 25))
    memo = m._memo
    assert len(memo.rows) == len(memo.row_classes) == 10
    assert all(memo.rows[id(r)] is r for r in rows[-10:])
    np.testing.assert_array_equal(m.row_classes(rows[:3]), np.tile([-1, 0], 3))


@settings(max_examples=200)
@given(st.lists(st.text(max_size=6), max_size=30))
def test_normalize_tokens_is_normalize_token_of_each(tokens):
    assert list(normalize_tokens(tokens)) == [normalize_token(t) for t in tokens]


TOKENS = st.text(alphabet="abcdeSPOT ß/-\n", max_size=7)


@settings(max_examples=200)
@given(
    st.lists(WORDS, min_size=1, max_size=5),
    st.lists(st.lists(TOKENS, max_size=6).map(tuple), min_size=1, max_size=8),
)
def test_classifying_new_rows_together_gives_the_rule(answers, rows):
    m = TokenMatcher(answers)
    m._memo.clear()  # shared with earlier examples: classify every token anew
    want = [_rule(answers, t) for row in rows for t in row]
    assert m.row_classes(rows).tolist() == want
    assert [m(t) for row in rows for t in row] == want  # what the memo kept


def test_tokens_that_normalize_to_nothing_have_no_class():
    # A tokenizer may list a bare space among a class's first tokens: it counts
    # for no class, one token at a time or in bulk.
    m = TokenMatcher(["yes", "no"], first_tokens=[[" ", "yes"], ["no"]])
    m._memo.clear()
    assert m.row_classes([(" ", "\n", "Yes", " no")]).tolist() == [-1, -1, 0, 1]
    m._memo.clear()
    assert [m(t) for t in (" ", "\n", "Yes", " no")] == [-1, -1, 0, 1]


def test_the_token_memo_stays_bounded(monkeypatch):
    import skllmprob._token_memo as token_memo

    monkeypatch.setattr(token_memo, "_MAX_TOKENS", 5)
    m = TokenMatcher(["kappa", "omega"])
    m._memo.clear()
    rows = [(f"u{i}", " kappa", "Omega") for i in range(4)]
    assert m.row_classes(rows).tolist() == [-1, 0, 1] * 4  # 6 new tokens: too many
    assert len(m._memo) <= 5
    assert m.row_classes([("u9", "KAPPA")]).tolist() == [-1, 0]
    assert len(m._memo) <= 5
