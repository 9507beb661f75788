"""CSV files for the command line: read with clear errors, write atomically.

Only the standard :mod:`csv` module is used, so the command line needs no pandas.
Files are UTF-8 (a byte-order mark is accepted); ``"-"`` stands for standard input
or output.

Examples
--------
>>> import os, tempfile
>>> path = os.path.join(tempfile.mkdtemp(), "t.csv")
>>> write_csv(path, ["text", "label"], [["a fine film", "positive"]])
>>> table = read_csv(path)
>>> table.header, table.column("text")
(['text', 'label'], ['a fine film'])
>>> table.column("review", option="--text-column")
Traceback (most recent call last):
...
skllmprob.exceptions.InputError: ...t.csv has no column 'review' (its columns: text, label); \
choose one with --text-column.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import stat
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from ..exceptions import InputError

__all__ = [
    "CsvTable",
    "check_writable",
    "display_name",
    "read_csv",
    "read_text_file",
    "replace_keeping_mode",
    "write_csv",
]

STDIO = "-"
_MAX_FIELD = 2**31 - 1


def display_name(path: str | os.PathLike) -> str:
    """How a file is named in messages (``<stdin>`` for ``"-"``)."""
    return "<stdin>" if os.fspath(path) == STDIO else os.fspath(path)


@dataclass
class CsvTable:
    """A CSV file held in memory.

    Attributes
    ----------
    name : str
        The file's name, for messages.
    header : list of str
        The column names (first row).
    rows : list of list of str
        The data rows, each as long as the header.
    lines : list of int
        The line of the file on which each row ends (the header is line 1).
    """

    name: str
    header: list[str]
    rows: list[list[str]]
    lines: list[int]

    def __len__(self) -> int:
        return len(self.rows)

    def index(self, column: str, *, option: str | None = None) -> int:
        """Position of ``column``; a clear :class:`InputError` if it is missing or
        not unique."""
        found = [i for i, c in enumerate(self.header) if c == column]
        if not found:
            shown = ", ".join(self.header[:20]) + (", ..." if len(self.header) > 20 else "")
            hint = f"; choose one with {option}" if option else ""
            raise InputError(f"{self.name} has no column {column!r} (its columns: {shown}){hint}.")
        if len(found) > 1:
            raise InputError(
                f"{self.name} has {len(found)} columns named {column!r}; rename them so "
                "that each name appears once."
            )
        return found[0]

    def column(self, column: str, *, option: str | None = None) -> list[str]:
        """The values of one column."""
        j = self.index(column, option=option)
        return [row[j] for row in self.rows]


def read_text_file(
    path: str | os.PathLike,
    what: str,
    *,
    option: str | None = None,
    stdin: TextIO | None = None,
    stdio: bool = True,
) -> str:
    """The text of a file the command reads, decoded as UTF-8 (a byte-order mark
    dropped), or an :class:`~skllmprob.exceptions.InputError` naming the file.

    Parameters
    ----------
    path : str or path-like
        The file; with ``stdio``, ``"-"`` is standard input.
    what : str
        What the file should be, for the messages (``"a CSV file"``).
    option : str, optional
        The option that names the file, added to the messages (``"--prompt-file"``).
    stdin : text stream, optional
        Standard input to read for ``"-"`` (default: :data:`sys.stdin`).
    stdio : bool, default=True
        Whether ``"-"`` means standard input.

    Examples
    --------
    >>> read_text_file("nope.txt", "a prompt file", option="--prompt-file")
    Traceback (most recent call last):
    ...
    skllmprob.exceptions.InputError: nope.txt: no such file (--prompt-file).
    """
    path = os.fspath(path)
    fix = f" ({option})" if option else ""
    if stdio and path == STDIO:
        stream = sys.stdin if stdin is None else stdin
        buffer = getattr(stream, "buffer", None)
        data = buffer.read() if buffer is not None else stream.read().encode("utf-8")
    else:
        data = _read_bytes(path, what, fix)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise InputError(
            f"{display_name(path) if stdio else path} is not UTF-8 text (byte "
            f"{data[e.start]:#04x} on line {line}); save it as UTF-8{fix}."
        ) from e


def _read_bytes(path: str, what: str, fix: str) -> bytes:
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{path} is a folder, not {what}{fix}.")
    try:
        return p.read_bytes()
    except FileNotFoundError as e:
        raise InputError(f"{path}: no such file{fix}.") from e
    except PermissionError as e:
        raise InputError(f"{path}: permission denied{fix}.") from e
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}{fix}.") from e


@contextlib.contextmanager
def _large_fields():
    old = csv.field_size_limit()
    csv.field_size_limit(_MAX_FIELD)
    try:
        yield
    finally:
        csv.field_size_limit(old)


def read_csv(path: str | os.PathLike, *, stdin: TextIO | None = None) -> CsvTable:
    """Read a whole CSV file with a header row.

    Blank lines are skipped. A file without a header, without data rows, with rows
    whose number of fields differs from the header's, or that is not UTF-8 raises
    :class:`~skllmprob.exceptions.InputError` naming the file and the line.

    Parameters
    ----------
    path : str or path-like
        The file, or ``"-"`` for standard input.
    stdin : text stream, optional
        Standard input to read for ``"-"`` (default: :data:`sys.stdin`).

    Returns
    -------
    CsvTable
    """
    name = display_name(path)
    text = read_text_file(path, "a CSV file", stdin=stdin)
    if not text.strip():
        raise InputError(f"{name} is empty; it needs a header row and at least one row.")
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise InputError(f"{name} contains a NUL byte on line {line}; is it really a CSV file?")
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    rows: list[list[str]] = []
    lines: list[int] = []
    with _large_fields():
        try:
            for row in reader:
                if not row:
                    continue  # a blank line
                if header is None:
                    header = row
                    continue
                if len(row) != len(header):
                    raise InputError(
                        f"{name} line {reader.line_num} has {len(row)} fields but the "
                        f"header has {len(header)}; quote fields that contain commas."
                    )
                rows.append(row)
                lines.append(reader.line_num)
        except csv.Error as e:
            raise InputError(f"{name} line {reader.line_num} is not valid CSV: {e}.") from e
    if header is None:  # pragma: no cover - only blank lines, caught above
        raise InputError(f"{name} is empty; it needs a header row and at least one row.")
    if not rows:
        raise InputError(
            f"{name} has a header ({', '.join(header[:10])}) but no rows; nothing to do."
        )
    return CsvTable(name=name, header=header, rows=rows, lines=lines)


def check_writable(path: str | os.PathLike) -> None:
    """Fail early, before any request, if ``path`` cannot be written."""
    path = os.fspath(path)
    if path == STDIO:
        return
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{path} is a folder; give a file name to write to.")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"cannot write {path}: the folder {parent} does not exist.")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise InputError(f"cannot write {path}: permission denied.")


def write_csv(
    path: str | os.PathLike,
    header: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    stdout: TextIO | None = None,
) -> None:
    """Write a CSV file (``"-"``: standard output).

    A file is written to a temporary name in the same folder and then renamed, so
    an interrupted run never leaves half a file behind. A file that is replaced keeps
    its permissions; a new one gets 0644 less the umask.
    """
    path = os.fspath(path)
    if path == STDIO:
        out = sys.stdout if stdout is None else stdout
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        out.flush()
        return
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)
        replace_keeping_mode(tmp, target, 0o644 & ~_umask())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def replace_keeping_mode(tmp: str | os.PathLike, target: Path, new_mode: int | None) -> None:
    """Rename ``tmp`` to ``target``; the result keeps the permissions of the file it
    replaces (a 0600 file stays 0600), and a new file gets ``new_mode`` (``None``:
    those of ``tmp``)."""
    try:
        mode: int | None = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = new_mode
    if mode is not None:
        os.chmod(tmp, mode)
    os.replace(tmp, target)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
