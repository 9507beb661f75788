"""TokenMatcher's table and row memo: the same classes as the rule they replace."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from skllmprob.labels import first_word, normalize_token
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
    import skllmprob.scoring as scoring

    monkeypatch.setattr(scoring, "_MAX_ROWS", 10)
    m = TokenMatcher(["gamma", "delta"])
    rows = [(f"t{i}", " gamma") for i in range(25)]
    np.testing.assert_array_equal(m.row_classes(rows), np.tile([-1, 0], 25))
    memo = m._memo
    assert len(memo.rows) == len(memo.row_classes) == 10
    assert all(memo.rows[id(r)] is r for r in rows[-10:])
    np.testing.assert_array_equal(m.row_classes(rows[:3]), np.tile([-1, 0], 3))
