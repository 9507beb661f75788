"""The SQLite file of completions: :class:`CompletionCache`.

The store is one SQLite file in WAL mode, created readable by its owner only (its
folder too, when the cache creates it). It is safe for several threads and
processes at once: every result is committed as soon as it arrives (results that
arrive together are committed together by a writer thread, see
:mod:`skllmprob.cache.claims`), so a crash loses only requests in flight. An entry
that cannot be decoded is a miss (counted in ``corrupt``), not a crash; a file of a
newer schema is refused with :class:`~skllmprob.exceptions.CacheError`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
import warnings
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..backends.base import Completion
from ..exceptions import CacheError
from .claims import CLAIM_TIMEOUT, HOST, ClaimSession, pid_alive
from .codec import DECODE_ERRORS, decode, encode
from .memory import MemoryLayer, default_memory_bytes
from .schema import (
    BUSY_TIMEOUT,
    CHUNK,
    check_or_create_schema,
    chunks,
    is_busy,
    marks,
    retry,
    write_transaction,
)
from .stats import COUNTERS, CacheInfo

__all__ = ["CompletionCache"]

logger = logging.getLogger("skllmprob.cache")

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
        self._memory_mb = memory_mb
        self._chunk = 999 - 1
        max_bytes = default_memory_bytes() if memory_mb is None else int(memory_mb * 2**20)
        self._memory = MemoryLayer(max_bytes)
        self._generation: str | None = None
        self._reset_process_state()
        self._open()
        _INSTANCES.add(self)

    def _reset_process_state(self) -> None:
        self._pid = os.getpid()
        self._local = threading.local()
        self._lock = threading.Lock()
        self._stats = dict.fromkeys(COUNTERS, 0)

    def _after_fork(self) -> None:
        # SQLite connections must not be used or closed in a forked child.
        _INHERITED.append(self._local)
        self._reset_process_state()
        self._memory.after_fork()

    # -- connections ---------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
        conn.execute("PRAGMA synchronous = NORMAL")
        getlimit = getattr(conn, "getlimit", None)  # Python 3.11+
        if getlimit is not None:  # SQLite builds before 3.32 allow 999 parameters
            self._chunk = max(1, min(CHUNK, getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) - 1))
        return conn

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection (one per thread and process)."""
        if self._pid != os.getpid():  # pragma: no cover - fork without the hook
            self._after_fork()
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def _write(self, conn: sqlite3.Connection | None = None):
        """A write transaction on ``conn`` or this thread's connection."""
        return write_transaction(self._conn() if conn is None else conn)

    def _open(self) -> None:
        try:
            folder = self.path.parent
            if not folder.exists():
                folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not self.path.exists():
                try:
                    fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
                    os.close(fd)
                except FileExistsError:
                    pass
            conn = self._conn()
            mode = retry(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            if str(mode).lower() != "wal":  # pragma: no cover - exotic file systems
                warnings.warn(
                    f"the completion cache {self.path} cannot use WAL mode ({mode}); "
                    "several processes using it at once may wait for each other.",
                    RuntimeWarning,
                    stacklevel=3,
                )
            with self._write(conn):
                check_or_create_schema(conn, self.path)
        except CacheError:
            raise
        except sqlite3.DatabaseError as e:
            raise CacheError(
                f"cannot open the completion cache {self.path}: {e}. Delete the file or "
                "point cache= at another path."
            ) from e
        except OSError as e:
            raise CacheError(
                f"cannot create the completion cache {self.path}: {e}. Set cache= to a "
                "writable path or cache=False."
            ) from e

    # -- reading ---------------------------------------------------------------------

    def _sync_generation(self, conn: sqlite3.Connection) -> None:
        row = conn.execute("SELECT value FROM meta WHERE name = 'generation'").fetchone()
        generation = row[0] if row else None
        if generation != self._generation:
            if self._generation is not None:
                self._memory.clear()
            self._generation = generation

    def _select(
        self, conn: sqlite3.Connection, keys: Sequence[bytes], *, report: bool = True
    ) -> dict[bytes, Completion]:
        """Read and decode the rows of ``keys`` that exist and can be decoded.

        ``report``: count and log unreadable rows (a session's later lookups of the
        same keys do not count them again)."""
        out: dict[bytes, Completion] = {}
        corrupt = 0
        for chunk in chunks(sorted(keys), self._chunk):
            rows = conn.execute(
                f"SELECT key, data, tokens FROM completions WHERE key IN ({marks(len(chunk))})",
                chunk,
            ).fetchall()
            for key, data, text in rows:
                try:
                    c = decode(data, text)
                except DECODE_ERRORS:
                    corrupt += 1
                    continue
                out[key] = c
        self._memory.put_many(out.items())
        if corrupt and report:
            self._count(corrupt=corrupt)
            logger.warning(
                "%d unreadable entries in the completion cache %s were treated as misses",
                corrupt,
                self.path,
            )
        return out

    def get_many(self, keys: Iterable[bytes]) -> dict[bytes, Completion]:
        """Look up many keys at once; missing or unreadable entries are left out.

        Does not count hits or misses (see :meth:`record`).
        """
        conn = self._conn()
        try:
            self._sync_generation(conn)
        except sqlite3.DatabaseError as e:
            self._unreadable(e)
            return {}
        memget = self._memory.data.get
        out: dict[bytes, Completion] = {}
        rest = []
        for k in keys:
            c = memget(k)
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
                f"({e}); another program holds it. Retry, or use another cache path."
            ) from e
        logger.warning(
            "cannot read the completion cache %s (%s); treating as misses", self.path, e
        )

    # -- writing ---------------------------------------------------------------------

    def _insert(self, conn: sqlite3.Connection, items: Sequence[tuple[bytes, Completion]]) -> None:
        now = time.time()
        conn.executemany(
            "INSERT OR REPLACE INTO completions VALUES (?, ?, ?, ?)",
            [(k, *encode(c), now) for k, c in items],
        )

    def put(self, key: bytes, completion: Completion) -> None:
        """Store one completion (committed at once)."""
        self.put_many([(key, completion)])

    def put_many(self, items: Iterable[tuple[bytes, Completion]]) -> None:
        """Store completions in one transaction."""
        items = list(items)
        if not items:
            return
        with self._write() as conn:
            self._insert(conn, items)
        self._memory.put_many(items)
        self._count(writes=len(items))

    def session(self) -> ClaimSession:
        """A :class:`ClaimSession` to fetch missing completions in coordination with
        other threads and processes."""
        return ClaimSession(self)

    # -- statistics --------------------------------------------------------------------

    def _count(self, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                self._stats[name] += n

    def record(self, *, hits: int = 0, misses: int = 0, saved_tokens: int = 0, waited: int = 0):
        """Count lookups: in this process, and in the file's totals."""
        self._count(hits=hits, misses=misses, saved_tokens=saved_tokens, waited=waited)
        if not (hits or misses):
            return
        try:
            with self._write() as conn:
                self._add_totals(conn, hits=hits, misses=misses, saved_tokens=saved_tokens)
        except sqlite3.Error as e:  # statistics never break a prediction
            logger.debug("could not update the cache statistics: %s", e)

    @staticmethod
    def _add_totals(conn: sqlite3.Connection, **counts: int) -> None:
        conn.executemany(
            "INSERT INTO stats VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + ?",
            [(name, n, n) for name, n in counts.items() if n],
        )

    def info(self) -> CacheInfo:
        """Entries in the file, this process's counts and the file's totals."""
        conn = self._conn()
        try:
            n = conn.execute("SELECT COUNT(*) FROM completions").fetchone()[0]
            totals = dict(conn.execute("SELECT name, value FROM stats").fetchall())
        except sqlite3.DatabaseError as e:
            raise CacheError(f"cannot read the completion cache {self.path}: {e}") from e
        size = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                size += os.path.getsize(str(self.path) + suffix)
        with self._lock:
            stats = dict(self._stats)
        return CacheInfo(
            path=str(self.path),
            entries=int(n),
            size_bytes=size,
            memory_entries=len(self._memory.data),
            total_hits=int(totals.get("hits", 0)),
            total_misses=int(totals.get("misses", 0)),
            total_saved_tokens=int(totals.get("saved_tokens", 0)),
            **stats,
        )

    def clear(self) -> None:
        """Delete every entry and the statistics (in every process using the file)."""
        with self._write() as conn:
            conn.execute("DELETE FROM completions")
            conn.execute("DELETE FROM stats")
            self._drop_dead_claims(conn)
            conn.execute(
                "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE name = 'generation'"
            )
        self._memory.clear()
        with self._lock:
            self._stats = dict.fromkeys(COUNTERS, 0)
        try:  # give the space back when nobody else is reading
            self._conn().execute("VACUUM")
        except sqlite3.OperationalError as e:
            logger.debug("VACUUM after clear skipped: %s", e)

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
