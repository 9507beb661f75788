"""Reading and writing the command line's CSV files."""

from __future__ import annotations

import io
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skllmprob import InputError
from skllmprob.cli.csvio import check_writable, read_csv, write_csv

cells = st.text(
    alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\x00\r"),
    max_size=20,
)


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(cells, cells), min_size=1, max_size=8))
def test_write_then_read_gives_the_same_cells(tmp_path, rows):
    path = tmp_path / "t.csv"
    write_csv(path, ["text", "label"], rows)
    table = read_csv(path)
    # A row of two empty cells is written as ',' (not a blank line): nothing is lost.
    assert table.header == ["text", "label"]
    assert [tuple(r) for r in table.rows] == [tuple(r) for r in rows]


def test_byte_order_mark_blank_lines_and_quoted_newlines(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes('\ufefftext,label\n\n"two\nlines",a\n\nplain,b\n'.encode())
    table = read_csv(path)
    assert table.header == ["text", "label"]
    assert table.column("text") == ["two\nlines", "plain"]
    assert table.lines == [4, 6]


def test_stdin_and_stdout():
    table = read_csv("-", stdin=io.StringIO("text\nhello\n"))
    assert table.name == "<stdin>" and table.column("text") == ["hello"]
    out = io.StringIO()
    write_csv("-", ["a", "b"], [["1", "x,y"]], stdout=out)
    assert out.getvalue() == 'a,b\n1,"x,y"\n'


def test_errors(tmp_path):
    (tmp_path / "dup.csv").write_text("text,text\na,b\n")
    with pytest.raises(InputError, match="2 columns named 'text'"):
        read_csv(tmp_path / "dup.csv").column("text")
    (tmp_path / "nul.csv").write_bytes(b"text\na\x00b\n")
    with pytest.raises(InputError, match="NUL byte on line 2"):
        read_csv(tmp_path / "nul.csv")
    with pytest.raises(InputError, match="is a folder"):
        read_csv(tmp_path)
    (tmp_path / "blank.csv").write_text("\n\n  \n")
    with pytest.raises(InputError, match="is empty"):
        read_csv(tmp_path / "blank.csv")


def test_long_fields_are_read(tmp_path):
    path = tmp_path / "long.csv"
    write_csv(path, ["text"], [["x" * 300_000]])
    assert len(read_csv(path).column("text")[0]) == 300_000


def test_check_writable_and_atomic_write(tmp_path):
    check_writable(tmp_path / "new.csv")
    with pytest.raises(InputError, match="does not exist"):
        check_writable(tmp_path / "missing" / "x.csv")
    with pytest.raises(InputError, match="is a folder"):
        check_writable(tmp_path)
    write_csv(tmp_path / "out.csv", ["a"], [["1"]])
    assert sorted(os.listdir(tmp_path)) == ["out.csv"]  # no temporary file left
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "out.csv").stat().st_mode & 0o777 == 0o644 & ~umask


def test_the_prompt_file_and_the_csv_files_share_one_reader(tmp_path, monkeypatch):
    from skllmprob.cli.csvio import read_text_file
    from skllmprob.cli.inputs import read_prompt

    with pytest.raises(InputError, match=r"^nope\.txt: no such file \(--prompt-file\)\.$"):
        read_prompt("nope.txt")
    with pytest.raises(InputError, match=r"is a folder, not a prompt file \(--prompt-file\)\.$"):
        read_prompt(str(tmp_path))
    with pytest.raises(InputError, match=r"is a folder, not a CSV file\.$"):
        read_csv(tmp_path)
    latin = tmp_path / "p.txt"
    latin.write_bytes(b"Labels: {labels}\ncaf\xe9 {text}\n")
    with pytest.raises(
        InputError,
        match=r"p\.txt is not UTF-8 text \(byte 0xe9 on line 2\); save it as UTF-8 "
        r"\(--prompt-file\)\.$",
    ):
        read_prompt(str(latin))
    good = tmp_path / "good.txt"
    good.write_bytes(b"\xef\xbb\xbfLabels: {labels}\n{text}\n")
    assert read_prompt(str(good)) == "Labels: {labels}\n{text}"  # BOM and final newline dropped
    # "-" is standard input for the CSV files only
    assert read_text_file("-", "a CSV file", stdin=io.StringIO("a,b\n")) == "a,b\n"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=r"^-: no such file \(--prompt-file\)\.$"):
        read_prompt("-")
