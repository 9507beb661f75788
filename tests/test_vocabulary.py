"""Tokens as ids into a vocabulary: the sequence type, the vocabulary, their use in
scoring (skllmprob.vocabulary, the format 3 values of the SQLite cache)."""

from __future__ import annotations

import pickle

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from skllmprob.scoring import TokenMatcher, label_log_mass
from skllmprob.vocabulary import MAX_ID, TokenIds, Vocabulary, distinct, ids_of

TOKENS = st.text(alphabet="ab YN\n\x00é", max_size=4)


def _vocab(tokens, order=None):
    v = Vocabulary()
    ids = list(range(len(tokens))) if order is None else order
    v.add(ids, [tokens[i] for i in ids])
    return v


@settings(max_examples=200)
@given(
    st.lists(st.integers(0, 70), max_size=40),
    st.lists(st.booleans(), max_size=80),
    st.lists(st.sampled_from([MAX_ID + 1, 2**31, 2**32 - 1]), max_size=3),
)
def test_distinct_is_the_sorted_set_of_allowed_ids(ids, exclude, huge):
    got = distinct(np.array(ids + huge, dtype=np.uint32), np.array(exclude, dtype=bool))
    want = sorted({i for i in ids if not (i < len(exclude) and exclude[i])})
    assert got.tolist() == want


@settings(max_examples=100)
@given(st.lists(TOKENS, min_size=1, max_size=12, unique=True), st.randoms())
def test_any_order_of_adding_gives_the_same_vocabulary(tokens, rnd):
    ids = list(range(len(tokens)))
    rnd.shuffle(ids)
    split = rnd.randrange(len(ids) + 1)
    v = Vocabulary()
    for part in (sorted(ids[:split]), ids[split:]):  # holes, then filled
        v.add(part, [tokens[i] for i in part])
    assert v.tokens == tokens == _vocab(tokens).tokens
    assert v.known(np.arange(len(tokens) + 3)).tolist() == [True] * len(tokens) + [False] * 3
    assert v.unknown(np.array([len(tokens) + 2, 0, len(tokens) + 2])).tolist() == [len(tokens) + 2]


def test_ids_out_of_range_are_never_learned():
    v = Vocabulary()
    v.add([3, MAX_ID + 1, -1], ["a", "b", "c"])
    assert v.tokens == [None, None, None, "a"]
    assert v.known(np.array([3, MAX_ID + 1, 2**32 - 1], dtype=np.uint32)).tolist() == [
        True,
        False,
        False,
    ]
    v.add([], [])
    assert len(v) == 4


@settings(max_examples=100)
@given(st.lists(TOKENS, min_size=1, max_size=8, unique=True), st.data())
def test_token_ids_behave_as_the_tuple_of_their_tokens(tokens, data):
    v = _vocab(tokens)
    ids = data.draw(st.lists(st.integers(0, len(tokens) - 1), max_size=6))
    t = TokenIds(v, np.array(ids, dtype="<u4"))
    want = tuple(tokens[i] for i in ids)
    assert len(t) == len(want) and tuple(t) == want and list(t) == list(want)
    assert t == want and want == t and t == list(want) and (t != want) is False
    assert t == TokenIds(v, np.array(ids, dtype="<u4"))
    assert t != (*want, "extra") and t != "".join(want)
    assert hash(t) == hash(want) and repr(t) == repr(want)
    for i in range(-len(want), len(want)):
        assert t[i] == want[i]
    assert t[1:] == want[1:] and type(t[::2]) is tuple
    back = pickle.loads(pickle.dumps(t))
    assert type(back) is tuple and back == want


def test_ids_of_needs_every_row_to_share_one_vocabulary():
    v, w = _vocab(["a", "b"]), _vocab(["a", "b"])
    a, b = TokenIds(v, np.array([0], "<u4")), TokenIds(w, np.array([1, 0], "<u4"))
    found, ids = ids_of([a, a])
    assert found is v and [i.tolist() for i in ids] == [[0], [0]]
    assert ids_of([a, b]) is None and ids_of([a, ("a",)]) is None
    assert ids_of([("a",), a]) is None and ids_of([]) is None


ANSWERS = st.lists(st.text(alphabet="abYN é", min_size=1, max_size=5), min_size=1, max_size=3)


@settings(max_examples=150, deadline=None)
@given(ANSWERS, st.lists(TOKENS, min_size=1, max_size=10, unique=True), st.data())
def test_rows_of_ids_score_as_rows_of_strings(answers, tokens, data):
    # Rows read as ids into a vocabulary give the log-masses of the same rows as
    # tuples; and the vocabulary may grow between calls (ids classified once).
    split = data.draw(st.integers(1, len(tokens)))
    v = _vocab(tokens[:split])
    rows_ids = data.draw(
        st.lists(st.lists(st.integers(0, len(tokens) - 1), max_size=5), min_size=1, max_size=6)
    )
    probs = [np.log(np.full(len(r), 1 / (len(r) + 1))) for r in rows_ids]
    m = TokenMatcher(answers)
    for grown in (False, True):
        if grown:
            v.add(range(split, len(tokens)), tokens[split:])
        keep = [r for r in rows_ids if all(i < len(v.tokens) for i in r)] or [[]]
        lps = [probs[rows_ids.index(r)] if r in rows_ids else np.empty(0) for r in keep]
        as_ids = [TokenIds(v, np.array(r, dtype="<u4")) for r in keep]
        as_strings = [tuple(tokens[i] for i in r) for r in keep]
        got = label_log_mass(as_ids, lps, m)
        want = label_log_mass(as_strings, lps, m)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(
            m.row_classes(as_ids), [m(tokens[i]) for r in keep for i in r]
        )
