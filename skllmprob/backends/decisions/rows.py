"""A rendered prompt split into what a decision endpoint takes: the template's
instruction part (the question's instructions), its few-shot examples (their
inputs and answers) and each row's input.

The prompt of a row is ``head + examples + row``: ``head`` is the template up to
its examples (or up to the line of the first row field), with the label list;
each example is rendered like a row and followed by its answer; ``row`` is the
row's part of the template (its line(s), delimiters and the final cue). Only
``row`` differs between prompts.

Rows of a 2-D table whose columns fill the template's fields (or, for a
``{text}`` template, a table without a ``text`` column) are sent as JSON objects
instead: ``{column: value}``, the columns the prompt uses, in their order.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["PromptParts", "json_cell", "json_rows", "split_prompt"]


class PromptParts:
    """The instruction part and the examples of a renderer's shared prefix.

    Attributes
    ----------
    head : str
        The instruction part (the template before the examples and the row).
    examples : tuple of (str, str)
        Each example's input (its rendered row part) and answer.
    shared : int
        The length of ``head`` plus the examples: a prompt's row input starts here.
    """

    def __init__(self, head: str, examples: tuple, shared: int) -> None:
        self.head = head
        self.examples = examples
        self.shared = shared

    def row_input(self, prompt: str, prefix: str) -> str:
        """The row part of one prompt (the prompt itself if it lacks the prefix)."""
        rest = prompt[self.shared :] if prompt.startswith(prefix) else prompt
        return rest if rest.strip() else prompt


def split_prompt(renderer: Any, examples: Sequence[tuple[Mapping, str]]) -> PromptParts:
    """Split ``renderer.prefix`` (a :class:`~skllmprob.prompts.PromptRenderer` built
    with ``examples``, as (row fields, answer) pairs) into its parts.

    When the prefix is not ``head + examples + the row's opening text`` (a renderer
    of another layout), the whole prefix is the head and there are no examples.

    >>> from skllmprob.prompts import PromptRenderer
    >>> ex = [({"text": "loved it"}, "pos")]
    >>> r = PromptRenderer("Labels: {labels}.\\n\\n{examples}Review: {text}\\nLabel:",
    ...                    labels=["pos", "neg"], examples=ex)
    >>> p = split_prompt(r, ex)
    >>> p.head, p.examples
    ('Labels: pos, neg.\\n\\n', (('Review: loved it\\nLabel:', 'pos'),))
    >>> p.row_input(r.render_one({"text": "a bore"}), r.prefix)
    'Review: a bore\\nLabel:'
    """
    prefix = renderer.prefix
    rows = getattr(renderer, "_row", None)
    opening = rows[0][0] if rows and isinstance(rows[0][0], str) else None
    separator = getattr(renderer, "answer_separator", " ")
    if opening is None or not prefix.endswith(opening):
        return PromptParts(prefix, (), len(prefix))
    parts = []
    for fields, answer in examples:
        body = opening + renderer.render_one(fields)[len(prefix) :]
        parts.append((body, body + separator + answer + "\n\n", answer))
    text = "".join(p[1] for p in parts)
    shared = len(prefix) - len(opening)
    head = prefix[: shared - len(text)]
    if prefix[len(head) : shared] != text:
        return PromptParts(prefix, (), len(prefix))
    return PromptParts(head, tuple((p[0], p[2]) for p in parts), shared)


def json_cell(value: Any) -> Any:
    """A table cell as a JSON value (numpy scalars as Python ones; NaN, NA: null).

    >>> json_cell(np.int64(3)), json_cell(float("nan")), json_cell("x")
    (3, None, 'x')
    """
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool | int | float | str):
        return value
    if type(value).__name__ in ("NAType", "NaTType"):
        return None
    return str(value)


def json_columns(fields: Sequence[str], columns: Sequence[str]) -> list[str] | None:
    """The columns a 2-D row sends as JSON, or ``None`` when the row is one text."""
    columns = [str(c) for c in columns]
    if tuple(fields) == ("text",) and len(columns) == 1:
        return None
    if all(f in columns for f in fields):
        return list(fields)
    return columns if tuple(fields) == ("text",) else None


def dumps(obj: Any) -> str:
    """Compact JSON, keys in their order (the request's text is stable)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def json_rows(table: Any, fields: Sequence[str]) -> list[str] | None:
    """The rows of a validated 2-D table as JSON objects (text), or ``None`` when
    they are sent as text (1-D input, one text column, fields the table lacks)."""
    if table is None or table.is_1d:
        return None
    columns = [str(c) for c in table.columns]
    use = json_columns(fields, columns)
    if use is None:
        return None
    idx = [columns.index(c) for c in use]
    return [
        dumps({c: json_cell(row[i]) for c, i in zip(use, idx, strict=True)}) for row in table.rows
    ]


def json_example(fields: Mapping, names: Sequence[str]) -> str:
    """An example's row fields as the JSON object of a row (its ``names``, when it
    has them all; else all its fields)."""
    use = list(names) if all(n in fields for n in names) else list(fields)
    return dumps({str(n): json_cell(fields[n]) for n in use})
