"""The cache's reads and writes: a cached call writes nothing, statistics are
counted once and reach the file later, reads are batched."""

from __future__ import annotations

import os
import sqlite3
import sys

import pytest
from cache_helpers import det_clf, make_texts, run_python

import skllmprob.cache.schema as schema_mod
from skllmprob._engine import fetch_completions
from skllmprob.backends import DeterministicBackend, Query
from skllmprob.cache import CompletionCache, KeyBuilder, open_cache
from skllmprob.vocabulary import TokenIds


class FileWatcher:
    """A second connection to the file: ``PRAGMA data_version`` changes whenever
    another connection commits a change."""

    def __init__(self, path) -> None:
        self.conn = sqlite3.connect(path)
        self.start = self.version()

    def version(self) -> int:
        return self.conn.execute("PRAGMA data_version").fetchone()[0]

    def changed(self) -> bool:
        return self.version() != self.start

    def total(self, name: str) -> int:
        row = self.conn.execute("SELECT value FROM stats WHERE name = ?", (name,)).fetchone()
        return 0 if row is None else row[0]


def test_a_fully_cached_call_writes_nothing_to_the_file(tmp_path):
    texts, _ = make_texts(30)
    path = tmp_path / "c.sqlite"
    clf = det_clf(cache=str(path)).fit(None, None)
    clf.predict_proba(texts)  # fills the cache: 30 misses, written
    watcher = FileWatcher(path)
    hits_on_disk = watcher.total("hits")
    cache = open_cache(str(path))
    clf.predict_proba(texts)  # from the memory layer
    keys = list(cache._memory.data)
    cache._memory.clear()
    clf.predict_proba(texts)  # from the file
    assert clf.usage_.last.cache_hits == 30 and clf.usage_.last.requests == 0
    # A new cache object on the file, as a new process opens it, reads without writing.
    assert len(CompletionCache(path).get_many(keys)) == 30
    assert not watcher.changed()
    assert watcher.total("hits") == hits_on_disk
    # info() shows the file's totals plus this process's pending counts.
    info = cache.info()
    assert (info.hits, info.misses) == (60, 30)
    assert (info.total_hits, info.total_misses) == (60, 30)
    # The next call that writes takes the pending counts along, in its transaction.
    clf.predict_proba(["a text nobody asked for"])
    assert watcher.changed()
    assert (watcher.total("hits"), watcher.total("misses")) == (60, 31)
    assert cache.info().total_hits == 60


def test_pending_statistics_reach_the_file_at_exit(tmp_path):
    texts, _ = make_texts(12)
    path = tmp_path / "c.sqlite"
    det_clf(cache=str(path)).fit(None, None).predict_proba(texts)
    code = """
        import sys
        from cache_helpers import det_clf, make_texts
        clf = det_clf(cache=sys.argv[1]).fit(None, None)
        clf.predict_proba(make_texts(12)[0])
        assert clf.usage_.last.cache_hits == 12
        """
    watcher = FileWatcher(path)
    for _ in range(2):
        r = run_python(code, str(path))
        assert r.returncode == 0, r.stderr
    assert watcher.total("hits") == 24
    assert open_cache(str(path)).info().total_hits == 24


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_write_its_parents_pending_counts(tmp_path):
    texts, _ = make_texts(10)
    path = tmp_path / "c.sqlite"
    clf = det_clf(cache=str(path)).fit(None, None)
    clf.predict_proba(texts)
    clf.predict_proba(texts)  # 10 hits pending in this process
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            clf.predict_proba(["only the child asks this"])  # writes: 1 miss
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    watcher = FileWatcher(path)
    assert (watcher.total("hits"), watcher.total("misses")) == (0, 11)
    open_cache(str(path)).flush()
    assert (watcher.total("hits"), watcher.total("misses")) == (10, 11)


def test_statistics_are_counted_once_per_call(tmp_path):
    texts, _ = make_texts(8)
    path = str(tmp_path / "c.sqlite")
    clf = det_clf(cache=path).fit(None, None)
    clf.predict_proba(texts[:5])
    clf.predict_proba(texts)  # 5 hits, 3 misses
    clf.predict_proba(texts)  # 8 hits
    info, total = clf.cache_info(), clf.usage_.total
    assert (info.hits, info.misses) == (total.cache_hits, total.requests) == (13, 8)
    assert info.saved_tokens == total.saved_tokens
    assert (info.total_hits, info.total_misses) == (13, 8)
    open_cache(path).flush()
    open_cache(path).flush()  # nothing pending: nothing added twice
    assert FileWatcher(path).total("hits") == 13


def _statements(cache: CompletionCache) -> list[str]:
    seen: list[str] = []
    cache._conn().set_trace_callback(seen.append)
    return seen


@pytest.mark.parametrize("scan", [True, False], ids=["table-scan", "key-lookups"])
def test_reads_are_batched_and_only_read(tmp_path, monkeypatch, scan):
    if not scan:
        monkeypatch.setattr(schema_mod, "_SCAN_MIN", 10**9)
    texts, _ = make_texts(3000)
    path = tmp_path / "c.sqlite"
    backend, query = DeterministicBackend(), Query(top_logprobs=5)
    expected, _ = fetch_completions(backend, open_cache(str(path)), query, texts)
    cache = CompletionCache(path)
    seen = _statements(cache)
    got, usage = fetch_completions(backend, cache, query, texts)
    assert usage.cache_hits == 3000 and usage.requests == 0
    assert got == expected
    reads = [s for s in seen if "FROM completions" in s]
    assert len(reads) == (1 if scan else -(-3000 // cache._chunk))
    assert not [s for s in seen if s.split()[0].upper() not in ("SELECT", "PRAGMA")]
    # The tokens are ids into one vocabulary, read once: the same token is the same
    # string object in every entry (later stages classify a vocabulary's ids once).
    assert {type(c.tokens) for c in got} == {TokenIds}
    assert len({id(c.tokens.vocab) for c in got}) == 1
    strings: dict = {}
    assert all(strings.setdefault(t, t) is t for c in got for t in c.tokens)
    assert len([s for s in seen if "FROM vocab" in s]) == 1


def test_scan_skips_the_keys_not_asked_for(tmp_path):
    texts, _ = make_texts(2500)
    path = tmp_path / "c.sqlite"
    backend, query = DeterministicBackend(), Query(top_logprobs=5)
    expected, _ = fetch_completions(backend, open_cache(str(path)), query, texts)
    cache = CompletionCache(path)
    keys = KeyBuilder(backend.identity(), backend.request_settings(query)).many(texts)
    got = cache.get_many([*keys[::2], b"\x00" * 32])
    assert set(got) == set(keys[::2])
    assert [got[k] for k in keys[::2]] == expected[::2]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX")
def test_opening_an_up_to_date_file_writes_nothing(tmp_path):
    path = tmp_path / "c.sqlite"
    CompletionCache(path)
    watcher = FileWatcher(path)
    CompletionCache(path).info()
    assert not watcher.changed()


def test_worker_processes_hits_reach_the_files_totals(tmp_path):
    """Hits counted in loky workers (n_jobs=2) are in the file's totals when the
    parallel call returns, as with n_jobs=1; the parent's cached calls still write
    nothing."""
    from sklearn.model_selection import cross_val_score

    texts, labels = make_texts(40)
    totals = {}
    for jobs in (1, 2):
        path = tmp_path / f"jobs{jobs}.sqlite"
        clf = det_clf(cache=str(path))
        clf.fit(texts, labels)  # fills the cache: every later lookup is a hit
        before, file_before = clf.cache_info().total_hits, FileWatcher(path).total("hits")
        cross_val_score(clf, texts, labels, cv=4, n_jobs=jobs)
        # total_hits: the file's totals and this (parent) process's pending counts
        totals[jobs] = clf.cache_info().total_hits - before
        if jobs == 1:
            assert FileWatcher(path).total("hits") == file_before  # pending, not written
    assert totals[2] == totals[1] > len(texts)


class _LockedOnce:
    """A connection whose first switch to WAL fails as when processes open a new
    file at the same moment (SQLite answers "database is locked" at once)."""

    def __init__(self, conn, failures) -> None:
        self._conn, self._failures = conn, failures

    def execute(self, sql, *args):
        if sql.startswith("PRAGMA journal_mode = WAL") and self._failures:
            self._failures.pop()
            raise sqlite3.OperationalError("database is locked")
        return self._conn.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._conn, name)


def test_a_new_file_locked_by_another_opener_is_opened_on_a_second_look(tmp_path, monkeypatch):
    failures = [1, 1]
    real = CompletionCache._conn
    monkeypatch.setattr(CompletionCache, "_conn", lambda self: _LockedOnce(real(self), failures))
    path = tmp_path / "c.sqlite"
    cache = CompletionCache(path)
    assert failures == []  # both refusals were met, and then the file was set up
    assert not cache.read_only
    monkeypatch.undo()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    CompletionCache(path).info()  # and it opens as an up-to-date cache
