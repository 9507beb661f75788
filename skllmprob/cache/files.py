"""Preparing a cache file, and what the cache says when a file cannot be used.

Messages name both forms of the setting (``cache=`` in Python, ``--cache`` on the
command line) and never advise deleting a file that may hold paid-for results.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import warnings
from collections.abc import Iterator
from pathlib import Path

from ..exceptions import CacheError

__all__ = [
    "MOVE_ASIDE",
    "WHERE",
    "is_read_only_error",
    "open_errors",
    "prepare_file",
    "read_only_uri",
    "read_only_warning",
    "warn",
]

WHERE = "cache= in Python, --cache on the command line"
MOVE_ASIDE = (
    "To keep the results it holds, move the file aside (rename it) rather than "
    f"deleting it, or point the cache at another file ({WHERE})."
)


def warn(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def prepare_file(path: Path) -> bool:
    """Create the folder (owner-only) and the file if missing; whether an existing
    file must be opened read-only (it or its folder cannot be written)."""
    if path.exists():
        folder = path.parent
        writable = os.access(path, os.W_OK) and os.access(folder, os.W_OK | os.X_OK)
        return not writable and os.access(path, os.R_OK)
    folder = path.parent
    if not folder.exists():
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600))
    return False


def read_only_uri(path: Path, immutable: bool) -> str:
    """The URI that opens ``path`` read-only (``immutable``: without the
    shared-memory file, for a WAL file in a read-only folder)."""
    return path.resolve().as_uri() + "?mode=ro" + "&immutable=1" * immutable


def is_read_only_error(e: sqlite3.Error) -> bool:
    msg = str(e).lower()
    return "readonly" in msg or "read-only" in msg or "unable to open" in msg


@contextlib.contextmanager
def open_errors(path: Path) -> Iterator[None]:
    """Turn the errors of opening ``path`` into a :class:`CacheError` that says
    what to do."""
    try:
        yield
    except CacheError:
        raise
    except sqlite3.DatabaseError as e:
        raise CacheError(
            f"cannot open the completion cache {path}: {e}. It is not a readable SQLite "
            f"file. {MOVE_ASIDE}"
        ) from e
    except OSError as e:
        raise CacheError(
            f"cannot create the completion cache {path}: {e}. Point the cache at a "
            f"writable path ({WHERE}) or turn it off (cache=False, --no-cache)."
        ) from e


def read_only_warning(path: Path) -> None:
    warn(
        f"the completion cache {path} is read-only: its entries are used, but new "
        "results are kept in this process's memory only. Make the file and its folder "
        f"writable to store them, or point the cache at another file ({WHERE})."
    )
