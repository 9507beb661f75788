"""Damaged, old, unusable and read-only cache files (issue 18, items 2-4)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import stat
import struct
import sys
import warnings

import numpy as np
import pytest
from cache_helpers import det_clf, make_texts, run_python, run_sql

from skllmprob._engine import fetch_completions
from skllmprob.backends import DeterministicBackend, Query
from skllmprob.cache import CACHE_SCHEMA_VERSION, CompletionCache, _encode, open_cache
from skllmprob.exceptions import CacheError

NAME = "damage"


def _filled(tmp_path, n=8, name=NAME):
    texts, _ = make_texts(n)
    path = tmp_path / "c.sqlite"
    clf = det_clf(backend=DeterministicBackend(name=name), cache=str(path)).fit(None, None)
    expected = clf.predict_proba(texts)
    return clf, texts, path, expected


def _requests(name=NAME) -> int:
    return DeterministicBackend.request_count(name)


# ------------------------------------------------------------- item 2: checksums


def test_two_swapped_logprobs_are_a_counted_miss_and_are_fetched_again(tmp_path):
    clf, texts, path, expected = _filled(tmp_path)
    (key, data), *_ = run_sql(path, "SELECT key, data FROM completions ORDER BY key LIMIT 1")
    a, b = data[24:32], data[32:40]
    assert a != b
    swapped = data[:24] + b + a + data[40:]
    run_sql(path, "UPDATE completions SET data = ? WHERE key = ?", swapped, key)
    assert run_sql(path, "PRAGMA integrity_check") == [("ok",)]  # SQLite sees nothing wrong
    cache = open_cache(str(path))
    cache._memory.clear()
    before = _requests()
    with pytest.warns(RuntimeWarning, match="1 damaged entries .* requested again"):
        proba = clf.predict_proba(texts)
    np.testing.assert_array_equal(proba, expected)
    assert _requests() - before == 1
    assert cache.info().corrupt == 1 and clf.usage_.last.requests == 1
    assert run_sql(path, "SELECT data FROM completions WHERE key = ?", key) == [(data,)]


def _old_value(tokens, logprobs, usage=(5, 1, 0)):
    """A value as schema 2 files store it (format 1: no checksum)."""
    head = struct.pack("<BxHHxxIIIxxxx", 1, len(tokens), 0xFFFF, *usage)
    return head + np.asarray(logprobs, "<f8").tobytes(), "s" + "\x00".join(tokens)


def _stored(path):
    """Every completion of the file at ``path``, as a new process reads it."""
    keys = [k for (k,) in run_sql(path, "SELECT key FROM completions")]
    found = CompletionCache(path, memory_mb=0).get_many(keys)
    assert len(found) == len(keys)
    return found


def _schema2_file(path, rows, version=2):
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("INSERT INTO meta VALUES ('schema_version', ?), ('generation', '0')", (version,))
    conn.execute(
        "CREATE TABLE completions (key BLOB PRIMARY KEY, data BLOB NOT NULL,"
        " tokens TEXT NOT NULL, created REAL NOT NULL) WITHOUT ROWID"
    )
    conn.execute(
        "CREATE TABLE claims (key BLOB PRIMARY KEY, owner TEXT NOT NULL,"
        " pid INTEGER NOT NULL, host TEXT NOT NULL, heartbeat REAL NOT NULL) WITHOUT ROWID"
    )
    conn.execute("CREATE TABLE stats (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
    conn.execute("INSERT INTO stats VALUES ('hits', 7)")
    conn.executemany("INSERT INTO completions VALUES (?, ?, ?, 0)", rows)
    conn.commit()
    conn.close()


def test_a_file_of_the_previous_schema_keeps_working(tmp_path):
    # Write the entries with today's classifier, then turn them into a schema 2 file
    # with format 1 values, as the previous release wrote them.
    clf, texts, path, expected = _filled(tmp_path, name="old-schema")
    rows = [(k, *_old_value(list(c.tokens), c.logprobs)) for k, c in _stored(path).items()]
    rows[0] = (rows[0][0], *_old_value(["x", "y"], [0.5, -1.0]))  # implausible: log p > 0
    old = tmp_path / "old.sqlite"
    _schema2_file(old, rows)
    before = _requests("old-schema")
    clf.set_params(cache=str(old))
    with pytest.warns(RuntimeWarning, match="1 damaged entries"):
        np.testing.assert_array_equal(clf.predict_proba(texts), expected)
    assert _requests("old-schema") - before == 1  # only the implausible one
    assert run_sql(old, "SELECT value FROM meta WHERE name = 'schema_version'") == [
        (str(CACHE_SCHEMA_VERSION),)
    ]
    info = clf.cache_info()
    assert (info.entries, info.corrupt, info.total_hits) == (len(texts), 1, 7 + len(texts) - 1)


def test_a_schema_3_file_is_read_and_then_gets_token_ids(tmp_path):
    # Today's entries as the previous release wrote them (format 2: token text,
    # checksum; no vocabulary table).
    clf, texts, path, expected = _filled(tmp_path, name="schema-3")
    rows = [(k, *_encode(c)) for k, c in _stored(path).items()]
    assert {t[0] for _, _, t in rows} == {"s"} and {d[0] for _, d, _ in rows} == {2}
    old = tmp_path / "schema3.sqlite"
    _schema2_file(old, rows[1:], version=3)
    before = _requests("schema-3")
    clf.set_params(cache=str(old))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no entry is damaged
        np.testing.assert_array_equal(clf.predict_proba(texts), expected)
    assert _requests("schema-3") - before == 1  # the one left out
    assert run_sql(old, "SELECT value FROM meta WHERE name = 'schema_version'") == [
        (str(CACHE_SCHEMA_VERSION),)
    ]
    formats = dict(run_sql(old, "SELECT key, tokens FROM completions"))
    assert formats[rows[0][0]] == "v"  # the new entry: ids into the vocabulary
    assert all(formats[k] == t for k, _, t in rows[1:])  # the old ones as they were
    assert len(_stored(old)) == len(texts)


# ----------------------------------------------------- item 3: one bad row, bad files


def test_one_row_with_invalid_utf8_misses_alone(tmp_path):
    clf, texts, path, expected = _filled(tmp_path, n=20)
    (key,), *_ = run_sql(path, "SELECT key FROM completions ORDER BY key LIMIT 1")
    run_sql(path, "UPDATE completions SET tokens = CAST(X'73FFFE00' AS TEXT) WHERE key = ?", key)
    cache = open_cache(str(path))
    cache._memory.clear()
    with pytest.warns(RuntimeWarning, match="1 damaged entries"):
        found = cache.get_many([k for (k,) in run_sql(path, "SELECT key FROM completions")])
    assert len(found) == 19 and key not in found
    assert cache.info().entries == 19  # what is really stored
    cache._memory.clear()
    before = _requests()
    with pytest.warns(RuntimeWarning, match="1 damaged entries"):
        np.testing.assert_array_equal(clf.predict_proba(texts), expected)
    assert _requests() - before == 1
    assert cache.info().entries == 20


def _wreck_completions(path):
    """Overwrite the root page of the completions table with garbage."""
    run_sql(path, "PRAGMA wal_checkpoint(TRUNCATE)")
    (root,), *_ = run_sql(path, "SELECT rootpage FROM sqlite_master WHERE name = 'completions'")
    page = run_sql(path, "PRAGMA page_size")[0][0]
    with open(path, "r+b") as f:
        f.seek((root - 1) * page)
        f.write(os.urandom(page))


def test_an_unusable_file_gives_one_warning_that_keeps_the_file(tmp_path):
    texts, _ = make_texts(30)
    path = tmp_path / "c.sqlite"
    backend, query = DeterministicBackend(name=NAME), Query(top_logprobs=5)
    fetch_completions(backend, CompletionCache(path), query, texts)
    _wreck_completions(path)
    cache = CompletionCache(path)  # a new process's view of the file
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out, usage = fetch_completions(backend, cache, query, texts)
        again, usage2 = fetch_completions(backend, cache, query, texts)
        info = cache.info()
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages
    assert "cannot be read" in messages[0] and "move the file aside" in messages[0]
    assert "cache= in Python, --cache on the command line" in messages[0]
    assert "delet" not in messages[0].replace("rather than deleting", "")
    assert usage.requests == 30 and usage2.requests == 0  # kept in memory
    assert again == out
    assert info.entries == 0  # nothing readable is stored
    assert path.exists()


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"this is not a database" * 100, "cannot open the completion cache"),
        (None, "not a skllmprob completion cache"),
    ],
    ids=["junk", "foreign"],
)
def test_open_errors_never_advise_deleting(tmp_path, content, match):
    path = tmp_path / "c.sqlite"
    if content is None:
        run_sql(path, "CREATE TABLE users (name TEXT)")
    else:
        path.write_bytes(content)
    with pytest.raises(CacheError, match=match) as e:
        CompletionCache(path)
    message = str(e.value)
    assert "cache= in Python, --cache on the command line" in message
    assert "delete" not in message.lower().replace("rather than deleting", "")


# -------------------------------------------------------------- item 4: read-only


def _unprivileged() -> tuple[str, ...]:
    """A prefix that runs a command without the right to ignore file modes."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:  # pragma: no cover
        pytest.skip("running as root without setpriv: file modes cannot be enforced")
    return (setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner", "--")


READ_ONLY_CHILD = """
    import json, sys, warnings
    from cache_helpers import det_clf, make_texts
    from skllmprob.backends import DeterministicBackend
    texts, _ = make_texts(12)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clf = det_clf(backend=DeterministicBackend(name="ro"), cache=sys.argv[1])
        clf.fit(None, None)
        clf.predict_proba(texts[:8])
        old = clf.usage_.last.requests
        clf.predict_proba(texts)
        new = clf.usage_.last.requests
        clf.predict_proba(texts)
        again = clf.usage_.last.requests
        entries = clf.cache_info().entries
    print(json.dumps({"requests": [old, new, again], "entries": entries,
                      "warnings": [str(w.message) for w in caught]}))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
@pytest.mark.parametrize("what", ["file", "folder"])
def test_a_read_only_cache_serves_reads_and_keeps_writes_in_memory(tmp_path, what):
    prefix = _unprivileged()
    folder = tmp_path / "ro"
    folder.mkdir()
    path = folder / "c.sqlite"
    texts, _ = make_texts(8)
    det_clf(backend=DeterministicBackend(name="ro"), cache=str(path)).fit(
        None, None
    ).predict_proba(texts)
    run_sql(path, "PRAGMA wal_checkpoint(TRUNCATE)")
    open_cache(str(path))._local.__dict__.pop("conn").close()  # last connection: WAL removed
    for p in folder.iterdir():
        p.chmod(0o444)
    if what == "folder":
        folder.chmod(0o555)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    try:
        r = run_python(READ_ONLY_CHILD, str(path), prefix=prefix)
    finally:
        folder.chmod(0o700)
        for p in folder.iterdir():
            p.chmod(0o600)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["requests"] == [0, 4, 0]  # hits from the file, new results kept in memory
    assert out["entries"] == 8
    assert len(out["warnings"]) == 1, out["warnings"]
    message = out["warnings"][0]
    assert "read-only" in message and "kept in this process's memory" in message
    assert "cache= in Python, --cache on the command line" in message
    assert "delete" not in message.lower()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
