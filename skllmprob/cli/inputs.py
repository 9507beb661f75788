"""What the commands read: the prompt file, the texts, the labels and the examples.

Every check names the file, the line and the option that fixes it, and runs before
the first request.

Examples
--------
>>> from skllmprob.cli.csvio import CsvTable
>>> table = CsvTable("train.csv", ["text", "label"], [["fine", "pos"], ["dull", "neg"]], [2, 3])
>>> y = labelled(table, "label", option="--label-column")
>>> resolve_labels(None, [(table, y)])
(['neg', 'pos'], 'the labels of train.csv')
>>> check_known(table, y, ["pos", "neutral"], "--labels")
Traceback (most recent call last):
...
skllmprob.exceptions.InputError: train.csv line 3: unknown label 'neg', not one of --labels \
(pos, neutral); fix the file or add the label.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from ..exceptions import InputError, SkllmprobError
from .csvio import CsvTable, read_csv, read_text_file

__all__ = [
    "UsageError",
    "check_known",
    "check_labels_option",
    "check_text_column",
    "features",
    "labelled",
    "read_descriptions",
    "read_examples",
    "read_input",
    "read_prompt",
    "resolve_labels",
    "row_fields",
]


class UsageError(SkllmprobError, ValueError):
    """Options that do not fit together."""


def read_prompt(path: str | None) -> str | None:
    """The template of ``--prompt-file`` (its final newline dropped), or ``None``."""
    if path is None:
        return None
    text = read_text_file(path, "a prompt file", option="--prompt-file", stdio=False)
    if text.endswith("\n"):
        text = text[:-1]
        if text.endswith("\r"):
            text = text[:-1]
    if not text.strip():
        raise InputError(f"{path} is empty (--prompt-file); write a template with {{text}}.")
    return text


def row_fields(prompt: str | None) -> tuple[str, ...]:
    """The columns a template reads (``("text",)`` for the default prompt)."""
    from ..prompts import DEFAULT_PROMPT, template_row_fields

    return template_row_fields(DEFAULT_PROMPT if prompt is None else prompt)


def check_text_column(fields: tuple[str, ...], text_column: str | None) -> None:
    if fields != ("text",) and text_column is not None:
        raise UsageError(
            f"the prompt reads the columns {', '.join(fields)} by name; --text-column is "
            "for prompts with a single {text} field."
        )


def _check_fields(table: CsvTable, fields: tuple[str, ...], *, listed: bool) -> None:
    for f in fields:
        if f not in table.header:
            columns = f" (its columns: {', '.join(table.header[:20])})" if listed else ""
            raise InputError(
                f"{table.name} has no column {f!r}, which the prompt uses as {{{f}}}{columns}."
            )


def features(table: CsvTable, fields: tuple[str, ...], text_column: str | None):
    """``X`` for the classifier: a list of texts, or a DataFrame of the prompt's
    fields."""
    if fields == ("text",):
        return table.column(text_column or "text", option="--text-column")
    _check_fields(table, fields, listed=True)
    pd = _pandas()
    return pd.DataFrame({f: table.column(f) for f in fields}, columns=list(fields))


def _pandas():
    try:
        import pandas as pd
    except ImportError as e:
        raise ImportError(
            "prompts with several column fields need pandas: pip install pandas."
        ) from e
    return pd


class Input(NamedTuple):
    """The input file of ``classify`` and ``fit`` and how the prompt reads it."""

    prompt: str | None
    fields: tuple[str, ...]
    table: CsvTable
    X: Any


def read_input(args, path: str, stdin) -> Input:
    """Check ``--labels``, read ``--prompt-file`` and the file ``path``, and take
    from it the columns the prompt reads."""
    check_labels_option(args.labels)
    prompt = read_prompt(args.prompt_file)
    fields = row_fields(prompt)
    check_text_column(fields, args.text_column)
    table = read_csv(path, stdin=stdin)
    return Input(prompt, fields, table, features(table, fields, args.text_column))


# ------------------------------------------------------------------------- labels


def check_labels_option(labels: list[str] | None) -> None:
    """``--labels``: at least two, each once."""
    if labels is None:
        return
    dup = sorted({v for v in labels if labels.count(v) > 1})
    if dup:
        raise UsageError(f"--labels lists {', '.join(dup)} more than once.")
    if len(labels) < 2:
        raise UsageError("--labels needs at least two labels.")


def labelled(table: CsvTable, column: str, *, option: str) -> list[str]:
    """The labels of a labelled file; an empty one is an error naming its line."""
    y = table.column(column, option=option)
    for v, line in zip(y, table.lines, strict=True):
        if v == "":
            raise InputError(
                f"{table.name} line {line}: the label ({column!r}) is empty; fill it or "
                "drop the row."
            )
    return y


def check_known(table: CsvTable, y: list[str], labels: Sequence[str], source: str) -> None:
    """Every label of ``y`` is one of ``labels`` (which came from ``source``)."""
    allowed = set(labels)
    for v, line in zip(y, table.lines, strict=True):
        if v not in allowed:
            shown = ", ".join(labels[:20]) + (", ..." if len(labels) > 20 else "")
            raise InputError(
                f"{table.name} line {line}: unknown label {v!r}, not one of {source} "
                f"({shown}); fix the file or add the label."
            )


def resolve_labels(
    given: list[str] | None, files: Sequence[tuple[CsvTable, list[str]]]
) -> tuple[list[str], str]:
    """The candidate labels and where they came from (for messages): ``given``
    (``--labels``), else those of the first labelled file, which needs two."""
    if given is not None:
        return list(given), "--labels"
    table, y = files[0]
    labels = sorted(set(y))
    if len(labels) < 2:
        raise InputError(
            f"{table.name} has only the label {y[0]!r}; give the candidate labels with "
            "--labels, or add samples of other labels."
        )
    return labels, f"the labels of {table.name}"


def read_examples(args, fields, labels: list[str] | None, source: str = "--labels"):
    """Few-shot examples from ``--examples``, and the labels they imply."""
    if not args.examples:
        return None, labels
    table = read_csv(args.examples, stdin=None)
    y = labelled(table, args.examples_label_column, option="--examples-label-column")
    if labels is not None:
        check_known(table, y, labels, source)
    if fields == ("text",):
        texts = table.column(args.text_column or "text", option="--text-column")
        examples = list(zip(texts, y, strict=True))
    else:
        _check_fields(table, fields, listed=False)
        columns = {f: table.column(f) for f in fields}
        examples = [({f: columns[f][i] for f in fields}, y[i]) for i in range(len(table))]
    if labels is None:
        labels = sorted(set(y))
    return examples, labels


def read_descriptions(path: str | None) -> dict[str, str] | None:
    """``--descriptions``: a CSV file of labels (column ``label``) and one line about
    each (column ``description``), or ``None``. Labels that are no class are
    rejected by the classifier's ``fit``, before any request."""
    if path is None:
        return None
    table = read_csv(path, stdin=None)
    lines = table.column("description")
    out: dict[str, str] = {}
    for label, line, n in zip(table.column("label"), lines, table.lines, strict=True):
        if label in out:
            raise InputError(
                f"{table.name} line {n}: the label {label!r} is described twice; keep one "
                "row per label (--descriptions)."
            )
        out[label] = line
    return out
