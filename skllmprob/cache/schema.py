"""The SQLite side of the cache: the file layout, transactions and busy retries."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
import uuid
import warnings
import zlib
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path

import numpy as np

from ..exceptions import CacheError
from ..vocabulary import MAX_ID, Vocabulary, vocabulary_for

__all__ = [
    "BUSY_TIMEOUT",
    "CACHE_SCHEMA_VERSION",
    "check_or_create_schema",
    "chunks",
    "file_vocabulary",
    "is_busy",
    "marks",
    "read_version",
    "retry",
    "rows_of",
    "scan_rows",
    "token_ids",
    "tokens_of_ids",
    "write_transaction",
]

#: Version of the file layout: a file with a higher version is refused. Schema 4
#: stores tokens as ids into a vocabulary table (value format 3); schema 3 stores
#: values with a checksum (format 2). The entries of older files stay readable
#: (those of schema 2, format 1, are checked for plausibility only).
CACHE_SCHEMA_VERSION = 4
#: Seconds SQLite waits for a lock held by another connection.
BUSY_TIMEOUT = 60.0
#: Keys per ``SELECT ... IN (...)`` at most.
CHUNK = 5000
#: Reads of at least this many keys scan the table when the file holds no more
#: than this many bytes per key (a few entries' worth of pages).
_SCAN_MIN, _SCAN_BYTES_PER_KEY = 1000, 1500

_TABLES = (
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS completions (key BLOB PRIMARY KEY, data BLOB NOT NULL,"
    " tokens TEXT NOT NULL, created REAL NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS claims (key BLOB PRIMARY KEY, owner TEXT NOT NULL,"
    " pid INTEGER NOT NULL, host TEXT NOT NULL, heartbeat REAL NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS stats (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    # Each distinct token once (UTF-8, with its CRC-32); ids are never reassigned.
    "CREATE TABLE IF NOT EXISTS vocab (id INTEGER PRIMARY KEY, token BLOB NOT NULL UNIQUE,"
    " crc INTEGER NOT NULL)",
)
#: Ids looked up one by one (``IN``) below this many; more are read in one scan.
_SCAN_IDS = 512


def is_busy(e: sqlite3.OperationalError) -> bool:
    msg = str(e).lower()
    return "locked" in msg or "busy" in msg


def retry(fn, *, deadline: float | None = None):
    """Run ``fn``, retrying while SQLite reports a busy or locked database.

    SQLite's busy handler waits for most locks; a few cases (a write lock wanted by
    a connection whose snapshot is stale, WAL recovery) return at once.
    """
    if deadline is None:
        deadline = time.monotonic() + BUSY_TIMEOUT
    delay = 0.005
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as e:
            if not is_busy(e) or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.25)


@contextlib.contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction (``BEGIN IMMEDIATE``: the write lock is taken first)."""
    retry(lambda: conn.execute("BEGIN IMMEDIATE"))
    try:
        yield conn
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    else:
        try:
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise


def chunks(seq: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(seq), size):
        yield seq[start : start + size]


def marks(n: int) -> str:
    return ",".join("?" * n)


def read_version(conn: sqlite3.Connection, path: Path) -> tuple[int | None, set[str]]:
    """The schema version of the file (``None``: a new, empty file) and its tables."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if tables and "meta" not in tables:
        raise CacheError(
            f"{path} is an SQLite file but not a skllmprob completion cache "
            f"(it has the tables {sorted(tables)}). Point the cache at another file "
            "(cache= in Python, --cache on the command line)."
        )
    if "meta" not in tables:
        return None, tables
    row = conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
    try:
        version = int(row[0])
    except (TypeError, ValueError) as e:
        raise CacheError(
            f"the completion cache {path} has no readable schema version; "
            "move the file aside (rename it) if it may hold results, or point the cache "
            "at another file (cache= in Python, --cache on the command line)."
        ) from e
    if version > CACHE_SCHEMA_VERSION:
        raise CacheError(
            f"the completion cache {path} was written by a newer skllmprob "
            f"(schema {version}, this version reads {CACHE_SCHEMA_VERSION}). "
            "Upgrade skllmprob or use another cache path."
        )
    return version, tables


def check_or_create_schema(conn: sqlite3.Connection, path: Path) -> int:
    """Create or upgrade the tables (inside a write transaction).

    Schema 2 files are upgraded in place: their entries stay as they are (read with
    the plausibility check only); new entries carry a checksum."""
    version, tables = read_version(conn, path)
    if version is not None and version < 2 and "completions" in tables:
        # Schema 1 (development builds) keyed entries differently: they cannot be
        # found any more, so they are dropped.
        warnings.warn(
            f"dropping the entries of an old cache layout in {path}", RuntimeWarning, stacklevel=2
        )
        conn.execute("DROP TABLE completions")
    conn.execute(_TABLES[0])
    conn.execute(
        "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(CACHE_SCHEMA_VERSION),)
    )
    conn.execute("INSERT OR IGNORE INTO meta VALUES ('generation', '0')")
    # The vocabulary's own id: processes key what they read of it by this id (and
    # the file's identity on disk), never by the path alone.
    conn.execute("INSERT OR IGNORE INTO meta VALUES ('vocabulary', ?)", (uuid.uuid4().hex,))
    for sql in _TABLES[1:]:
        conn.execute(sql)
    return CACHE_SCHEMA_VERSION


def file_vocabulary(conn: sqlite3.Connection, path: Path) -> Vocabulary | None:
    """This process's :class:`~skllmprob.vocabulary.Vocabulary` of the file open on
    ``conn`` (``None``: a file without one, schema 3 or older)."""
    row = conn.execute("SELECT value FROM meta WHERE name = 'vocabulary'").fetchone()
    if row is None:
        return None
    try:
        st = os.stat(path)
        where = (st.st_dev, st.st_ino)
    except OSError:
        where = (str(path),)
    return vocabulary_for((row[0], *where))


def token_ids(conn: sqlite3.Connection, tokens: Collection[str]) -> dict[str, int]:
    """The ids of ``tokens`` in the file's vocabulary, adding the new ones (inside a
    write transaction). Tokens that cannot be written as UTF-8, or whose id would
    not be read back (above :data:`~skllmprob.vocabulary.MAX_ID`), get none."""
    blobs: dict[bytes, str] = {}
    for t in tokens:
        with contextlib.suppress(UnicodeError):
            blobs[t.encode("utf-8")] = t
    if not blobs:
        return {}

    def select(wanted: list[bytes]) -> list:
        sql = "SELECT token, id FROM vocab WHERE token IN "
        found: list = []
        for chunk in chunks(wanted, 900):
            found += conn.execute(sql + f"({marks(len(chunk))})", chunk).fetchall()
        return found

    found = dict(select(list(blobs)))
    new = [b for b in blobs if b not in found]
    if new:
        conn.executemany(
            "INSERT OR IGNORE INTO vocab (token, crc) VALUES (?, ?)",
            [(b, zlib.crc32(b)) for b in new],
        )
        found.update(select(new))
    return {blobs[b]: i for b, i in found.items() if 0 <= i <= MAX_ID}


def tokens_of_ids(conn: sqlite3.Connection, ids: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """The vocabulary's ``ids`` (sorted) that it holds, and their tokens; entries
    whose CRC does not match or that are not UTF-8 are left out (rows that use
    them are then damaged). Many ids are read in one scan from the smallest."""
    sql = "SELECT id, token, crc FROM vocab WHERE id "
    if ids.size > _SCAN_IDS:
        rows = conn.execute(sql + ">= ?", (int(ids[0]),)).fetchall()
    else:
        rows = []
        for chunk in chunks(ids.tolist(), 900):
            rows += conn.execute(sql + f"IN ({marks(len(chunk))})", chunk).fetchall()
    if not rows:
        return np.empty(0, dtype=np.int64), []
    found, blobs, crcs = zip(*rows, strict=True)
    try:  # the whole vocabulary at C speed
        ok = np.fromiter(map(zlib.crc32, blobs), np.int64, len(blobs)) == np.array(crcs)
        tokens = list(map(bytes.decode, blobs))
    except (TypeError, UnicodeError, ValueError, OverflowError):  # a damaged entry
        ok, tokens = _check_one_by_one(blobs, crcs)
    found = np.asarray(found, dtype=np.int64)
    if not ok.all():
        found, tokens = found[ok], [t for t, good in zip(tokens, ok.tolist(), strict=True) if good]
    return found, tokens


def _check_one_by_one(blobs, crcs) -> tuple[np.ndarray, list[str]]:
    ok, tokens = [], []
    for blob, crc in zip(blobs, crcs, strict=True):
        try:
            good = type(blob) is bytes and zlib.crc32(blob) == crc
            tokens.append(blob.decode("utf-8") if good else "")
        except UnicodeError:
            good = False
            tokens.append("")
        ok.append(good)
    return np.array(ok, dtype=bool), tokens


def scan_rows(conn: sqlite3.Connection, keys: Sequence[bytes]) -> list | None:
    """The rows of ``keys`` from one scan of the table, when they are a large part
    of a small file (a scan reads rows three times faster than key look-ups);
    ``None`` when look-ups are better or the scan fails."""
    if len(keys) < _SCAN_MIN:
        return None
    try:
        pages, page_size = (
            conn.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_count", "page_size")
        )
        if pages * page_size > _SCAN_BYTES_PER_KEY * len(keys):
            return None
        rows = conn.execute("SELECT key, data, CAST(tokens AS BLOB) FROM completions")
        want = set(keys)
        return [r for r in rows.fetchall() if r[0] in want]
    except sqlite3.OperationalError as e:
        if is_busy(e):
            raise
    except sqlite3.DatabaseError:
        pass
    return None  # a damaged page: the look-ups skip only what it holds


def rows_of(conn: sqlite3.Connection, chunk: Sequence[bytes]) -> list:
    """The rows of ``chunk`` in one query, or key by key when the query fails
    (a damaged page then costs only the keys on it)."""
    sql = "SELECT key, data, CAST(tokens AS BLOB) FROM completions WHERE key "
    try:
        return conn.execute(sql + f"IN ({marks(len(chunk))})", chunk).fetchall()
    except sqlite3.OperationalError as e:
        if is_busy(e):
            raise
    except sqlite3.DatabaseError:
        pass
    rows, error = [], None
    for key in chunk:
        try:
            rows.extend(conn.execute(sql + "= ?", (key,)).fetchall())
        except sqlite3.DatabaseError as e:
            error = e
            rows.append((key, b"", b""))  # unreadable: a damaged entry
    if error is not None and len(rows) == len(chunk) and not any(r[1] for r in rows):
        raise error  # nothing of the chunk could be read: the file is unusable
    return rows
