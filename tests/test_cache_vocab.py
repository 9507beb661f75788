"""Schema 4 files: tokens stored as ids into the file's vocabulary (value format 3),
checked, shared by processes, never mixed between files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
from cache_helpers import ROOT, completion, make_texts, run_python, run_sql

import skllmprob.cache.schema as schema_mod
import skllmprob.vocabulary as vocabulary_mod
from skllmprob._engine import fetch_completions
from skllmprob.backends import Completion, DeterministicBackend, Query
from skllmprob.cache import CompletionCache, KeyBuilder
from skllmprob.cache.codec import decode, encode
from skllmprob.vocabulary import TokenIds, Vocabulary

QUERY = Query(top_logprobs=5)


@pytest.fixture
def new_process(monkeypatch):
    """Forget the vocabularies this process has read, as a new process would."""

    def forget():
        monkeypatch.setattr(vocabulary_mod, "_VOCABULARIES", {})

    return forget


def _filled(path, texts, name="vocab"):
    backend = DeterministicBackend(name=name)
    expected, _ = fetch_completions(backend, CompletionCache(path), QUERY, texts)
    keys = KeyBuilder(backend.identity(), backend.request_settings(QUERY)).many(texts)
    return backend, keys, expected


def _read(path, keys):
    """The entries of ``keys`` read from the file (no memory layer)."""
    found = CompletionCache(path, memory_mb=0).get_many(keys)
    return [found.get(k) for k in keys]


def test_format_3_round_trip_and_checks():
    v = Vocabulary()
    v.add([0, 7], ["yes", " no"])
    c = completion(tokens=(" no", "yes", " no"), probs=(0.5, 0.2, 0.1), prompt_tokens=4)
    data, text = encode(c, {"yes": 0, " no": 7})
    assert (data[0], text) == (3, "v")
    got = decode(data, text, v)
    assert got == c and type(got.tokens) is TokenIds and got.tokens.vocab is v
    # A token without an id keeps the text format.
    data2, text2 = encode(completion(tokens=("yes", "maybe")), {"yes": 0})
    assert (data2[0], text2[0]) == (2, "s")
    # Without the vocabulary, with one that lacks an id, or with any byte of the
    # ids changed, the value is damaged.
    for args in ((data, text), (data, text, Vocabulary())):
        with pytest.raises(ValueError):
            decode(*args)
    for i in range(len(data) - 12, len(data)):
        with pytest.raises(ValueError):
            decode(data[:i] + bytes([data[i] ^ 1]) + data[i + 1 :], text, v)
    with pytest.raises(ValueError):
        decode(data, "s", v)


def test_entries_read_by_a_new_process_are_ids_into_one_vocabulary(tmp_path, new_process):
    path = tmp_path / "c.sqlite"
    texts, _ = make_texts(40)
    _, keys, expected = _filled(path, texts)
    assert {t for (t,) in run_sql(path, "SELECT tokens FROM completions")} == {"v"}
    n_tokens = len({t for c in expected for t in c.tokens})
    assert run_sql(path, "SELECT COUNT(*) FROM vocab") == [(n_tokens,)]  # each token once
    new_process()
    got = _read(path, keys)
    assert got == expected
    assert len({id(c.tokens.vocab) for c in got}) == 1


@pytest.mark.parametrize("damage", ["changed", "deleted"])
def test_a_damaged_vocabulary_entry_costs_only_the_rows_that_use_it(tmp_path, new_process, damage):
    path = tmp_path / "c.sqlite"
    texts, _ = make_texts(30)
    backend, keys, expected = _filled(path, texts)
    counts: dict = {}
    for c in expected:
        for t in set(c.tokens):
            counts[t] = counts.get(t, 0) + 1
    token = next(t for t, n in sorted(counts.items()) if n < len(texts))  # not in every row
    users = {i for i, c in enumerate(expected) if token in c.tokens}
    blob = token.encode("utf-8")
    if damage == "changed":  # the CRC no longer matches
        run_sql(path, "UPDATE vocab SET token = ? WHERE token = ?", b"\xffgarbage", blob)
    else:
        run_sql(path, "DELETE FROM vocab WHERE token = ?", blob)
    new_process()
    with pytest.warns(RuntimeWarning, match=f"{len(users)} damaged entries"):
        got = _read(path, keys)
    assert [i for i, c in enumerate(got) if c is None] == sorted(users)
    assert all(got[i] == expected[i] for i in range(len(texts)) if i not in users)
    before = DeterministicBackend.request_count("vocab")
    with pytest.warns(RuntimeWarning, match=f"{len(users)} damaged entries"):  # seen again
        again, usage = fetch_completions(backend, CompletionCache(path, memory_mb=0), QUERY, texts)
    assert usage.requests == len(users) == DeterministicBackend.request_count("vocab") - before
    assert again == expected
    new_process()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _read(path, keys) == expected  # the token has a new, sound id


def test_tokens_that_are_not_utf8_keep_the_text_format(tmp_path, new_process):
    path = tmp_path / "c.sqlite"
    cache = CompletionCache(path)
    items = {
        b"a" * 32: completion(tokens=(" yes", "no")),
        b"n" * 32: completion(tokens=("a\x00b", " yes")),  # NUL: fine as an id
        b"s" * 32: completion(tokens=("\ud800", " yes")),  # a lone surrogate: text
        b"e" * 32: Completion((), np.empty(0)),
    }
    cache.put_many(items.items())
    formats = dict(run_sql(path, "SELECT key, substr(tokens, 1, 1) FROM completions"))
    assert formats == {b"a" * 32: "v", b"n" * 32: "v", b"s" * 32: "j", b"e" * 32: "v"}
    new_process()
    assert _read(path, list(items)) == list(items.values())


def test_a_copy_of_a_file_grows_its_own_vocabulary(tmp_path, new_process):
    # A copy starts with the same vocabulary id; as both files grow, the same new
    # ids stand for other tokens in each. A process that reads both keeps them apart.
    a, b = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    first = {bytes([i]) * 32: completion(tokens=(f"t{i}", " yes")) for i in range(3)}
    CompletionCache(a).put_many(first.items())
    run_sql(a, "PRAGMA wal_checkpoint(TRUNCATE)")
    shutil.copy(a, b)
    vocab_id = "SELECT value FROM meta WHERE name = 'vocabulary'"
    assert run_sql(a, vocab_id) == run_sql(b, vocab_id)
    new_process()
    assert _read(a, list(first)) == _read(b, list(first)) == list(first.values())
    only_a = {b"a" * 32: completion(tokens=(" alpha", " yes"))}
    only_b = {b"b" * 32: completion(tokens=(" beta", "t0"))}
    CompletionCache(a).put_many(only_a.items())
    CompletionCache(b).put_many(only_b.items())
    same_id = "SELECT id FROM vocab WHERE token = ?"
    assert run_sql(a, same_id, b" alpha") == run_sql(b, same_id, b" beta")
    for _ in range(2):  # with what this process read, then as a new process
        assert _read(a, list(only_a)) == list(only_a.values())
        assert _read(b, list(only_b)) == list(only_b.values())
        new_process()


def test_processes_writing_new_tokens_at_once_agree_on_their_ids(tmp_path):
    # Two processes write overlapping sets of entries (the same new tokens) at the
    # same time (500 tokens each, 200 in both), in many small transactions; a third
    # reads every entry back as the backend answers it.
    path = str(tmp_path / "c.sqlite")
    writer = """
        import sys
        from cache_helpers import make_texts
        from skllmprob._engine import fetch_completions
        from skllmprob.backends import DeterministicBackend, Query
        from skllmprob.cache import CompletionCache
        texts, _ = make_texts(400)
        start, cache = int(sys.argv[2]), CompletionCache(sys.argv[1])
        backend, query = DeterministicBackend(), Query(top_logprobs=20)
        for i in range(start, start + 240, 8):
            fetch_completions(backend, cache, query, texts[i:i + 8])
    """
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(writer), path, str(start)], env=env
        )
        for start in (0, 160)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    reader = """
        import json, sys
        from cache_helpers import make_texts
        from skllmprob.backends import DeterministicBackend, Query
        from skllmprob.cache import CompletionCache, KeyBuilder
        texts, _ = make_texts(400)
        b, q = DeterministicBackend(), Query(top_logprobs=20)
        keys = KeyBuilder(b.identity(), b.request_settings(q)).many(texts)
        found = CompletionCache(sys.argv[1], memory_mb=0).get_many(keys)
        print(json.dumps([list(found[k].tokens) if k in found else None for k in keys]))
    """
    r = run_python(reader, path)
    assert r.returncode == 0, r.stderr
    texts, _ = make_texts(400)
    want: dict = {}
    DeterministicBackend().complete(texts, Query(top_logprobs=20), on_result=want.__setitem__)
    assert json.loads(r.stdout) == [list(want[i].tokens) for i in range(400)]


@pytest.mark.parametrize("scan_above", [0, 10**9], ids=["scan", "look-ups"])
def test_the_vocabulary_is_read_by_scan_or_by_look_ups(
    tmp_path, monkeypatch, new_process, scan_above
):
    path = tmp_path / "c.sqlite"
    toks = [(f" w{i}", f"w{i + 1}", "\n") for i in range(60)]
    items = {
        bytes([i]) * 32: completion(tokens=t, probs=(0.5, 0.2, 0.1)) for i, t in enumerate(toks)
    }
    CompletionCache(path).put_many(items.items())
    monkeypatch.setattr(schema_mod, "_SCAN_IDS", scan_above)
    new_process()
    wanted = list(items)[10:40]  # some of the ids, from the middle
    assert _read(path, wanted) == [items[k] for k in wanted]
    assert _read(path, list(items)) == list(items.values())  # then the others too
