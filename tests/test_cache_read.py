"""The read path of the cache: interning, the paused collector, checks in bulk."""

from __future__ import annotations

import gc
import threading

import numpy as np
import pytest
from cache_helpers import completion

from skllmprob.backends import Completion
from skllmprob.cache import CompletionCache, KeyBuilder
from skllmprob.cache.codec import Decoder, encode, gc_paused, implausible


def _row(key, c):
    data, text = encode(c)
    return key, data, text.encode("utf-8")


def test_decoded_entries_share_their_token_strings():
    a = completion(tokens=(" yes", " no", "\n"), probs=(0.5, 0.2, 0.1))
    b = completion(tokens=(" no", " yes", "x"), probs=(0.5, 0.2, 0.1))
    out, bad = Decoder().many([_row(b"a", a), _row(b"b", b)])
    assert not bad and out[b"a"] == a and out[b"b"] == b
    assert out[b"a"].tokens[0] is out[b"b"].tokens[1]
    assert out[b"a"].tokens[1] is out[b"b"].tokens[0]
    assert vars(out[b"a"])["tokens"] == a.tokens  # a plain dataclass instance all the same


def test_implausible_rows_are_found_among_many():
    good = [completion(tokens=("a", "b")) for _ in range(5)]
    empty = Completion((), np.array([]), np.array([-1.0]))
    above = Completion(("a",), np.array([-1.0]), np.array([0.5]))  # an answer above 0
    mass = Completion(("a", "b"), np.log([0.7, 0.6]))  # probabilities sum above 1
    items = {
        b"0": good[0],
        b"e": empty,
        b"1": good[1],
        b"x": above,
        b"m": mass,
        b"2": good[2],
    }
    assert implausible(items) == [b"x", b"m"]
    assert implausible({b"e": empty}) == [] and implausible({}) == []


def test_bad_rows_are_refused_and_the_rest_decoded():
    rows = [_row(bytes([i]), completion(tokens=(f"t{i}", "u"))) for i in range(6)]
    key, data, raw = rows[2]
    rows[2] = (key, data[:-1], raw)  # truncated
    key, data, raw = rows[4]
    rows[4] = (key, data[:30] + bytes([data[30] ^ 1]) + data[31:], raw)  # checksum
    out, bad = Decoder().many(rows)
    assert sorted(bad) == [bytes([2]), bytes([4])]
    assert sorted(out) == [bytes([i]) for i in (0, 1, 3, 5)]


def test_gc_paused_restores_the_collector():
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer pause still holds
    assert gc.isenabled()
    with pytest.raises(KeyError), gc_paused():
        raise KeyError("x")
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # left disabled: it was disabled before
    finally:
        gc.enable()


def test_gc_paused_across_threads():
    inside, leave = threading.Event(), threading.Event()

    def hold():
        with gc_paused():
            inside.set()
            leave.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    inside.wait(10)
    with gc_paused():
        pass
    assert not gc.isenabled()  # the other thread's pause goes on
    leave.set()
    t.join(10)
    assert gc.isenabled()


def test_a_read_leaves_the_collector_enabled(tmp_path):
    cache = CompletionCache(tmp_path / "c.sqlite")
    keys = KeyBuilder({}, {}).many([f"p{i}" for i in range(1200)])
    cache.put_many([(k, completion(tokens=(" a", f"t{i}"))) for i, k in enumerate(keys)])
    cache._memory.clear()
    got = cache.get_many(keys)
    assert len(got) == 1200 and gc.isenabled()
    assert got[keys[5]].tokens == (" a", "t5")
