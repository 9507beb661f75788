"""Cross-process coordination: a fetch claims the prompts it is about to send.

A process *claims* the prompts it is about to send, in the same transaction that
finds them missing; another process that needs them at the same time waits for
their rows instead of sending them again. A claim whose owner died (same host) or
stopped refreshing it for ``claim_timeout`` seconds is taken over.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..backends.base import Completion
from .schema import chunks, marks

if TYPE_CHECKING:  # pragma: no cover
    from .store import CompletionCache

__all__ = ["CLAIM_TIMEOUT", "HEARTBEAT", "HOST", "ClaimSession", "NullSession", "pid_alive"]

#: Seconds a claim may go without a heartbeat before others take it over.
CLAIM_TIMEOUT = 60.0
#: Seconds between heartbeats of a session's claims.
HEARTBEAT = 5.0

HOST = socket.gethostname()


def pid_alive(pid: int) -> bool:
    """Whether a process of this host with this id still runs (not a zombie)."""
    if sys.platform == "win32":  # pragma: no cover - os.kill would terminate it
        return True
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:  # pragma: no cover
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):
        return True


def _warn(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)


class ClaimSession:
    """One fetch's coordination with other threads and processes.

    :meth:`claim` finds which missing keys this session should request and which
    another live session is already requesting; :meth:`submit` queues a result for
    the writer thread, which commits whatever has arrived in one transaction and
    drops the matching claims; :meth:`wait` polls for keys claimed by others;
    :meth:`close` flushes the writer and releases the claims left (failed requests),
    so that others take them over at once.

    A session whose process was killed leaves its claims: on the same host they are
    taken over as soon as the owner's pid is gone, elsewhere after
    ``cache.claim_timeout`` seconds without heartbeat.
    """

    def __init__(self, cache: CompletionCache) -> None:
        self.cache = cache
        self.pid = os.getpid()
        self.owner = f"{HOST}:{self.pid}:{uuid.uuid4().hex[:16]}"
        self.waited = 0
        self.corrupt = 0
        self.error: BaseException | None = None
        self._cond = threading.Condition()
        self._queue: list[tuple[bytes, Completion]] = []
        self._closing = False
        self._holding = False
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ClaimSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- claiming ----------------------------------------------------------------------

    def _stale(self, pid: int, host: str, heartbeat: float, now: float, alive: dict) -> bool:
        if now - heartbeat > self.cache.claim_timeout:
            return True
        if host != HOST:
            return False
        if pid not in alive:
            alive[pid] = pid_alive(pid)
        return not alive[pid]

    def claim(self, keys: Sequence[bytes]) -> tuple[dict[bytes, Completion], list, list]:
        """Claim the keys nobody requests yet, in one transaction with the lookup.

        Returns
        -------
        found : dict
            Keys whose entry exists by now.
        mine : list
            Keys this session must request.
        theirs : list
            Keys a live session elsewhere is requesting.
        """
        cache = self.cache
        conn = cache._conn()
        now = time.time()
        alive: dict[int, bool] = {}
        theirs: set[bytes] = set()
        try:
            with cache._write(conn):
                found = cache._select(conn, keys, report=False)
                rest = [k for k in keys if k not in found]
                conn.executemany(
                    "INSERT OR IGNORE INTO claims VALUES (?, ?, ?, ?, ?)",
                    [(k, self.owner, self.pid, HOST, now) for k in rest],
                )
                takeover = []
                for chunk in chunks(rest, cache._chunk):
                    rows = conn.execute(
                        "SELECT key, owner, pid, host, heartbeat FROM claims"
                        f" WHERE key IN ({marks(len(chunk))}) AND owner != ?",
                        [*chunk, self.owner],
                    ).fetchall()
                    for key, owner, pid, host, heartbeat in rows:
                        if self._stale(pid, host, heartbeat, now, alive):
                            takeover.append((self.owner, self.pid, HOST, now, key, owner))
                        else:
                            theirs.add(key)
                conn.executemany(
                    "UPDATE claims SET owner = ?, pid = ?, host = ?, heartbeat = ?"
                    " WHERE key = ? AND owner = ?",
                    takeover,
                )
        except sqlite3.DatabaseError as e:
            # Without coordination every missing key is ours: correct, maybe paid twice.
            _warn(
                f"cannot claim prompts in the completion cache {cache.path} ({e}); they are "
                "requested without coordination with other processes."
            )
            return {}, list(keys), []
        mine = [k for k in rest if k not in theirs]
        if mine:
            self._holding = True
            self._start_writer()
        return found, mine, [k for k in rest if k in theirs]

    def wait(self, keys: Sequence[bytes], *, poll: float = 0.005) -> dict[bytes, Completion]:
        """Wait until every key is written or one is no longer claimed by a live
        session (then :meth:`claim` it again). Returns the entries found."""
        cache = self.cache
        conn = cache._conn()
        pending = list(keys)
        found: dict[bytes, Completion] = {}
        delay = poll
        while pending:
            alive: dict[int, bool] = {}
            try:
                new = cache._select(conn, pending, report=False)
                found.update(new)
                pending = [k for k in pending if k not in new]
                if not pending:
                    break
                now = time.time()
                claimed = 0
                for chunk in chunks(pending, cache._chunk):
                    rows = conn.execute(
                        "SELECT pid, host, heartbeat FROM claims"
                        f" WHERE key IN ({marks(len(chunk))})",
                        chunk,
                    ).fetchall()
                    for pid, host, heartbeat in rows:
                        if not self._stale(pid, host, heartbeat, now, alive):
                            claimed += 1
                if claimed < len(pending):
                    break  # released or stale: the caller claims them again
            except sqlite3.DatabaseError as e:
                _warn(f"cannot read claims in the completion cache {cache.path} ({e}).")
                break
            time.sleep(delay)
            delay = min(delay * 1.5, 0.2)
        self.waited += len(found)
        return found

    # -- writing ------------------------------------------------------------------------

    def submit(self, key: bytes, completion: Completion) -> None:
        """Queue a result for the writer thread (thread-safe, returns at once)."""
        self.cache._memory.put(key, completion)
        with self._cond:
            self._queue.append((key, completion))
            self._cond.notify()
        if self._thread is None:
            self._start_writer()

    def _start_writer(self) -> None:
        with self._cond:
            if self._thread is not None or self._closing:
                return
            self._thread = threading.Thread(
                target=self._writer, name="skllmprob-cache-writer", daemon=True
            )
            self._thread.start()

    def _writer(self) -> None:
        cache = self.cache
        last_beat = time.monotonic()
        try:
            conn = cache._conn()
        except BaseException as e:  # pragma: no cover - the file vanished
            self.error = e
            conn = None
        while True:
            with self._cond:
                if not self._queue and not self._closing:
                    self._cond.wait(timeout=HEARTBEAT)
                batch, self._queue = self._queue, []
                closing = self._closing
            beat = self._holding and time.monotonic() - last_beat >= HEARTBEAT / 2
            if conn is not None and (batch or beat):
                try:
                    self._flush(conn, batch, beat)
                    last_beat = time.monotonic() if beat else last_beat
                except Exception as e:  # a full disk must not lose the answers themselves
                    if self.error is None:  # returned by close(): the caller warns once
                        self.error = e
            if closing and not batch:
                with self._cond:
                    if not self._queue:
                        return

    def _flush(self, conn: sqlite3.Connection, batch: list, beat: bool) -> None:
        cache = self.cache
        with cache._write(conn):
            if batch:
                cache._insert(conn, batch)
                conn.executemany(
                    "DELETE FROM claims WHERE key = ? AND owner = ?",
                    [(k, self.owner) for k, _ in batch],
                )
            if beat:
                conn.execute(
                    "UPDATE claims SET heartbeat = ? WHERE owner = ?", (time.time(), self.owner)
                )
        cache._counters.count(writes=len(batch))

    def close(self) -> BaseException | None:
        """Flush queued results, release claims left; returns the first write error."""
        with self._cond:
            self._closing = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join()
        if self._holding:
            try:
                with self.cache._write() as conn:
                    conn.execute("DELETE FROM claims WHERE owner = ?", (self.owner,))
            except sqlite3.Error as e:
                _warn(
                    f"could not release claims in the completion cache {self.cache.path} ({e}); "
                    "other processes take them over after claim_timeout seconds."
                )
            self._holding = False
        return self.error


class NullSession:
    """A session without a file: every key is ours; results go to ``keep`` (the
    memory of a read-only cache) or nowhere (:class:`NullCache`)."""

    waited = 0
    error = None

    def __init__(self, keep=None) -> None:
        self._keep = keep

    def __enter__(self) -> NullSession:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def claim(self, keys):
        return {}, list(keys), []

    def wait(self, keys, **kwargs):  # pragma: no cover - claim never returns theirs
        return {}

    def submit(self, key, completion) -> None:
        if self._keep is not None:
            self._keep(key, completion)

    def close(self) -> None:
        return None
