"""The SQLite file of completions: :class:`CompletionCache`.

The store is one SQLite file in WAL mode, created readable by its owner only (its
folder too, when the cache creates it). It is safe for several threads and
processes at once: every result is committed as soon as it arrives (results that
arrive together are committed together by a writer thread, see
:mod:`skllmprob.cache.claims`), so a crash loses only requests in flight.

Reading never writes: a call whose every prompt is a hit leaves the file as it was.
The statistics of such calls wait in the process (:meth:`CompletionCache.info`
shows them) and reach the file with its next write transaction or at exit; in a
worker process (joblib's loky workers, :mod:`multiprocessing`, Dask) they are
written when each call's work is done, because the parent reads the totals while
its workers live on, and workers often leave without running exit hooks.

Reading many entries from the file pauses Python's cyclic garbage collector for
the read (:func:`~skllmprob.cache.codec.gc_paused`): the completions it creates hold
no reference cycles, and without the pause their number triggers dozens of
collections, often a full one of the whole process right after large imports.

A damaged entry (bad checksum, implausible numbers, undecodable text) is a miss,
counted in ``corrupt``, and requested again; a file of a newer schema is refused
with :class:`~skllmprob.exceptions.CacheError`; a read-only file serves its entries
and keeps new results in memory.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from ..backends.base import Completion
from ..exceptions import CacheError
from .claims import CLAIM_TIMEOUT, HOST, ClaimSession, NullSession, pid_alive
from .codec import Decoder, encode, gc_paused
from .files import (
    MOVE_ASIDE,
    WHERE,
    is_read_only_error,
    open_errors,
    prepare_file,
    read_only_uri,
    read_only_warning,
    warn,
)
from .memory import MemoryLayer, default_memory_bytes
from .schema import (
    BUSY_TIMEOUT,
    CACHE_SCHEMA_VERSION,
    CHUNK,
    check_or_create_schema,
    chunks,
    file_vocabulary,
    is_busy,
    read_version,
    retry,
    rows_of,
    scan_rows,
    token_ids,
    tokens_of_ids,
    write_transaction,
)
from .stats import CacheInfo, Counters, add_totals, in_worker

__all__ = ["CompletionCache"]

_INSTANCES: weakref.WeakSet = weakref.WeakSet()
#: Connections inherited through fork: kept referenced, never closed in the child.
_INHERITED: list = []


class CompletionCache:
    """A SQLite file of completions, safe for threads and processes.

    Parameters
    ----------
    path : str or path-like
        The file; its folder is created (owner-only) if missing.
    memory_mb : float, optional
        Budget of the in-process memory layer in MiB (default
        ``$SKLLMPROB_CACHE_MEMORY_MB`` or 64; 0 turns it off).
    claim_timeout : float, default=60.0
        Seconds without a heartbeat after which another process's claim on a
        prompt is taken over (claims of dead processes on this host are taken over
        at once).

    Attributes
    ----------
    read_only : bool
        The file cannot be written: it serves its entries, new results are kept in
        this process's memory.

    Notes
    -----
    Use :func:`open_cache` to share one instance per file in a process.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        memory_mb: float | None = None,
        claim_timeout: float = CLAIM_TIMEOUT,
    ) -> None:
        self.path = Path(path).expanduser()
        self.claim_timeout = float(claim_timeout)
        self.read_only = False
        self._memory_mb = memory_mb
        self._chunk = CHUNK
        max_bytes = default_memory_bytes() if memory_mb is None else int(memory_mb * 2**20)
        self._memory = MemoryLayer(max_bytes)
        self._decoder = Decoder()
        self._generation: str | None = None
        self._immutable = False
        self._unusable = False
        self._unsaved: dict[bytes, Completion] = {}  # results a read-only file cannot take
        self._reset_process_state()
        self._open()
        _INSTANCES.add(self)

    def _reset_process_state(self) -> None:
        self._pid = os.getpid()
        self._local = threading.local()
        self._counters = Counters()

    def _after_fork(self) -> None:
        # SQLite connections must not be used or closed in a forked child; the
        # parent's pending statistics are the parent's to write.
        _INHERITED.append(self._local)
        self._reset_process_state()
        self._memory.after_fork()

    # -- connections ---------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self.read_only:
            uri = read_only_uri(self.path, self._immutable)
            conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT, isolation_level=None)
        else:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
            conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
        getlimit = getattr(conn, "getlimit", None)  # Python 3.11+
        if getlimit is not None:  # SQLite builds before 3.32 allow 999 parameters
            self._chunk = max(1, min(CHUNK, getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) - 1))
        else:  # pragma: no cover - Python 3.10
            self._chunk = 998
        return conn

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection (one per thread and process)."""
        if self._pid != os.getpid():  # pragma: no cover - fork without the hook
            self._after_fork()
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    @contextlib.contextmanager
    def _write(self, conn: sqlite3.Connection | None = None) -> Iterator[sqlite3.Connection]:
        """A write transaction; this process's pending statistics go with it."""
        conn = self._conn() if conn is None else conn
        pending = self._counters.take_pending()
        try:
            with write_transaction(conn):
                yield conn
                add_totals(conn, pending)
        except BaseException:
            self._counters.add_pending(pending)
            raise

    # -- opening -------------------------------------------------------------------

    def _open(self) -> None:
        with open_errors(self.path):
            self.read_only = prepare_file(self.path)
            self._open_schema()
        if self.read_only:
            read_only_warning(self.path)

    def _open_schema(self) -> None:
        """Check the schema; create or upgrade it only when needed (no write for a
        file that is up to date)."""
        if self.read_only:
            self._open_read_only()
            return
        conn = self._conn()
        try:
            # Processes that open a new file at the same moment can find each
            # other's locks in a way SQLite answers at once, without waiting: look
            # again (another one may have set the file up meanwhile).
            mode = retry(lambda: self._set_up(conn))
        except sqlite3.OperationalError as e:
            version, _ = read_version(conn, self.path)
            if version is None or not is_read_only_error(e):
                raise
            self._local = threading.local()  # reopen read-only
            self.read_only = True
            self._open_read_only()
            return
        if mode is None:  # up to date
            return
        if str(mode).lower() != "wal":  # pragma: no cover - exotic file systems
            warn(
                f"the completion cache {self.path} cannot use WAL mode ({mode}); several "
                "processes using it at once may wait for each other."
            )

    def _set_up(self, conn: sqlite3.Connection) -> str | None:
        """One look at the file: ``None`` when its schema is current and in WAL mode,
        else the journal mode after switching to WAL and creating or upgrading it."""
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        version, _ = read_version(conn, self.path)
        if version == CACHE_SCHEMA_VERSION and str(mode).lower() == "wal":
            return None
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        with write_transaction(conn):
            check_or_create_schema(conn, self.path)
        return mode

    def _open_read_only(self) -> None:
        try:
            version, _ = read_version(self._conn(), self.path)
        except sqlite3.OperationalError:
            # A WAL file whose folder is read-only: no shared-memory file can be made.
            self._immutable = True
            self._local = threading.local()
            version, _ = read_version(self._conn(), self.path)
        if version is None or version < 2:
            raise CacheError(
                f"the completion cache {self.path} is read-only and "
                f"{'empty' if version is None else 'of an old layout'}: it cannot be "
                f"used. Point the cache at a writable file ({WHERE})."
            )

    # -- reading ---------------------------------------------------------------------

    def _sync_generation(self, conn: sqlite3.Connection) -> None:
        row = conn.execute("SELECT value FROM meta WHERE name = 'generation'").fetchone()
        generation = row[0] if row else None
        if generation != self._generation:
            if self._generation is not None:
                self._memory.clear()
            self._generation = generation

    def _vocabulary(self, conn: sqlite3.Connection):
        """The vocabulary of the file open on ``conn`` (read once per connection)."""
        local = self._local
        if getattr(local, "vocab_conn", None) is not conn:
            local.vocab, local.vocab_conn = file_vocabulary(conn, self.path), conn
        return local.vocab

    def _select(
        self, conn: sqlite3.Connection, keys: Sequence[bytes], *, report: bool = True
    ) -> dict[bytes, Completion]:
        """Read and check the rows of ``keys`` that exist; damaged ones are left out.

        ``report``: count and warn about damaged rows (a session's later lookups of
        the same keys do not count them again)."""
        out: dict[bytes, Completion] = {}
        bad: list[bytes] = []
        vocab = self._vocabulary(conn)
        load = lambda ids: tokens_of_ids(conn, ids)  # noqa: E731
        with gc_paused():  # many new objects, no cycles (see gc_paused)
            rows = scan_rows(conn, keys)
            if rows is not None:
                out, bad = self._decoder.many(rows, vocab, load)
                del rows  # the rows' tuples, before the collector sees them
            else:
                for chunk in chunks(keys, self._chunk):
                    found, damaged = self._decoder.many(rows_of(conn, chunk), vocab, load)
                    out.update(found)
                    bad.extend(damaged)
        self._memory.put_many(out)
        if bad and report:
            self._counters.found_damaged(bad)
            warn(
                f"{len(bad)} damaged entries in the completion cache {self.path} were "
                "treated as misses and are requested again."
            )
        return out

    def get_many(self, keys: Iterable[bytes]) -> dict[bytes, Completion]:
        """Look up many keys at once; missing or damaged entries are left out.

        Does not count hits or misses (see :meth:`record`) and never writes.
        """
        conn = self._conn()
        try:
            self._sync_generation(conn)
        except sqlite3.DatabaseError as e:
            self._unreadable(e)
            return {}
        keys = list(keys)
        found = list(map(self._memory.data.get, keys))
        if all(found):  # every one in memory
            return dict(zip(keys, found, strict=True))
        if not any(found) and not self._unsaved:
            out: dict[bytes, Completion] = {}  # none in memory: the usual first read
            rest = keys
        else:
            unsaved = self._unsaved.get
            out, rest = {}, []
            for k, c in zip(keys, found, strict=True):
                c = c or unsaved(k)
                if c is None:
                    rest.append(k)
                else:
                    out[k] = c
        if rest:
            try:
                out.update(self._select(conn, list(dict.fromkeys(rest))))
            except sqlite3.DatabaseError as e:
                self._unreadable(e)
        return out

    def _unreadable(self, e: sqlite3.DatabaseError) -> None:
        if isinstance(e, sqlite3.OperationalError) and is_busy(e):
            raise CacheError(
                f"the completion cache {self.path} stayed locked for {BUSY_TIMEOUT:.0f} s "
                f"({e}); another program holds it. Retry, or point the cache at another "
                f"file ({WHERE})."
            ) from e
        if not self._unusable:
            self._unusable = True
            warn(
                f"the completion cache {self.path} cannot be read ({e}): its prompts are "
                "requested again and new results are kept in memory only. The file looks "
                f"damaged. {MOVE_ASIDE}"
            )

    # -- writing ---------------------------------------------------------------------

    def _insert(self, conn: sqlite3.Connection, items: Sequence[tuple[bytes, Completion]]) -> None:
        """Write ``items`` (in a write transaction), tokens as ids into the vocabulary
        (a writable file always has one: it is upgraded when opened)."""
        now, ids = time.time(), token_ids(conn, {t for _, c in items for t in c.tokens})
        conn.executemany(
            "INSERT OR REPLACE INTO completions VALUES (?, ?, ?, ?)",
            [(k, *encode(c, ids), now) for k, c in items],
        )
        self._counters.rewritten(k for k, _ in items)

    def _keep(self, key: bytes, completion: Completion) -> None:
        """Keep a result the file cannot take (read-only or unusable file)."""
        self._unsaved[key] = completion
        self._memory.put(key, completion)

    def put(self, key: bytes, completion: Completion) -> None:
        """Store one completion (committed at once)."""
        self.put_many([(key, completion)])

    def put_many(self, items: Iterable[tuple[bytes, Completion]]) -> None:
        """Store completions in one transaction."""
        items = list(items)
        if not items:
            return
        if self.read_only or self._unusable:
            for key, c in items:
                self._keep(key, c)
            return
        with self._write() as conn:
            self._insert(conn, items)
        self._memory.put_many(items)
        self._counters.count(writes=len(items))

    def session(self) -> ClaimSession | NullSession:
        """A :class:`ClaimSession` to fetch missing completions in coordination with
        other threads and processes (without a file to write: a session keeping
        its results in memory)."""
        if self.read_only or self._unusable:
            return NullSession(keep=self._keep)
        return ClaimSession(self)

    # -- statistics --------------------------------------------------------------------

    def record(self, *, hits: int = 0, misses: int = 0, saved_tokens: int = 0, waited: int = 0):
        """Count one call's lookups, in this process and in the file's totals.

        The totals reach the file with this process's next write transaction: at
        once when the call had misses (its results were just written), else with a
        later write or at exit. A call answered from the cache writes nothing,
        except in a worker process (see :func:`~skllmprob.cache.stats.in_worker`):
        there every call's counts are written when its work is done.
        """
        self._counters.count(hits=hits, misses=misses, saved_tokens=saved_tokens, waited=waited)
        self._counters.add_pending({"hits": hits, "misses": misses, "saved_tokens": saved_tokens})
        if misses or ((hits or saved_tokens) and in_worker()):
            self.flush()

    def flush(self) -> None:
        """Write this process's pending statistics to the file (if any)."""
        if not self._counters.has_pending() or self.read_only or self._unusable:
            return
        if not self.path.exists():  # moved away: nothing to add the counts to
            return
        try:
            with self._write():
                pass
        except sqlite3.Error:  # statistics never break a prediction; kept for later
            pass

    def _file_counts(self) -> tuple[int, dict]:
        """Entries and statistics in the file (nothing for an unusable file)."""
        conn = self._conn()
        try:
            n = conn.execute("SELECT COUNT(*) FROM completions").fetchone()[0]
            totals = dict(conn.execute("SELECT name, value FROM stats").fetchall())
        except sqlite3.DatabaseError as e:
            if isinstance(e, sqlite3.OperationalError) and is_busy(e):
                raise CacheError(f"cannot read the completion cache {self.path}: {e}") from e
            self._unreadable(e)
            return 0, {}
        return int(n), totals

    def info(self) -> CacheInfo:
        """Entries in the file, this process's counts and the file's totals (with
        this process's counts not written yet)."""
        n, totals = self._file_counts()
        size = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                size += os.path.getsize(str(self.path) + suffix)
        stats, total, damaged = self._counters.snapshot(totals)
        return CacheInfo(
            path=str(self.path),
            entries=max(0, n - damaged),
            size_bytes=size,
            memory_entries=len(self._memory.data),
            total_hits=total["hits"],
            total_misses=total["misses"],
            total_saved_tokens=total["saved_tokens"],
            **stats,
        )

    def clear(self) -> None:
        """Delete every entry and the statistics (in every process using the file)."""
        self._memory.clear()
        self._unsaved.clear()
        self._counters.reset()
        if self.read_only:
            raise CacheError(
                f"the completion cache {self.path} is read-only: its entries cannot be "
                f"deleted. Make the file writable, or point the cache at another file "
                f"({WHERE})."
            )
        with self._write() as conn:
            conn.execute("DELETE FROM completions")
            conn.execute("DELETE FROM stats")
            self._drop_dead_claims(conn)
            conn.execute(
                "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE name = 'generation'"
            )
        with contextlib.suppress(sqlite3.OperationalError):  # others may be reading
            self._conn().execute("VACUUM")  # give the space back

    def _drop_dead_claims(self, conn: sqlite3.Connection) -> None:
        """Forget claims left by killed processes (they would be taken over anyway)."""
        now = time.time()
        dead = [
            (owner,)
            for owner, pid, host, heartbeat in conn.execute(
                "SELECT owner, MAX(pid), MAX(host), MAX(heartbeat) FROM claims GROUP BY owner"
            ).fetchall()
            if now - heartbeat > self.claim_timeout or (host == HOST and not pid_alive(pid))
        ]
        conn.executemany("DELETE FROM claims WHERE owner = ?", dead)

    def __repr__(self) -> str:
        return f"CompletionCache({str(self.path)!r})"

    def __reduce__(self):
        return (_reopen, (str(self.path), self._memory_mb, self.claim_timeout))


def _reopen(path: str, memory_mb: float | None, claim_timeout: float) -> CompletionCache:
    from . import open_cache

    cache = open_cache(path)
    if cache.claim_timeout != claim_timeout or cache._memory_mb != memory_mb:
        return CompletionCache(path, memory_mb=memory_mb, claim_timeout=claim_timeout)
    return cache


def flush_all() -> None:
    """Write the pending statistics of every cache of this process."""
    for cache in list(_INSTANCES):
        if cache._pid == os.getpid():
            with contextlib.suppress(Exception):
                cache.flush()


atexit.register(flush_all)
