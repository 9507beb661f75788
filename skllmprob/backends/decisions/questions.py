"""The question of each wire shape, built from the class answers, their optional
one-line descriptions and the instructions.

Two shapes ask the same thing:

- OpenAI's ``/v1/decisions``: a list of questions, ``{"type": "choice", "name",
  "instructions", "choices": [{"value", "description"?}]}``, ``{"type":
  "predicate", ...}`` or ``{"type": "score", "levels": [{"label",
  "description"?}]}``;
- System One's ``/v1/systemone``: a map ``{id: {"type": "choice" | "noul" |
  "score", "instructions", "criteria"}}``.

``kind`` chooses the question: ``"choice"`` (the default, any number of classes
from 2 up to the endpoint's limit), ``"predicate"`` (binary only: the probability
that the second class is the answer; a System One ``noul``) or ``"score"``
(ordered classes, lowest first).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ...exceptions import ConfigurationError

#: The name (OpenAI) and id (System One) of the one question of every request.
QUESTION_NAME = "label"
QUESTION_KINDS = ("choice", "predicate", "score")
DEFAULT_INSTRUCTIONS = "Which of the options best describes the input?"


def check_answers(
    answers: Sequence[str], kind: str, max_options: int, where: str
) -> tuple[str, ...]:
    """The answers as a tuple, or a ConfigurationError saying what does not fit.

    >>> check_answers(["a", "b"], "predicate", 255, "OpenAI's decisions endpoint")
    ('a', 'b')
    >>> check_answers(["a", "b", "c"], "predicate", 255, "here")
    Traceback (most recent call last):
    ...
    skllmprob.exceptions.ConfigurationError: question='predicate' needs exactly 2 ...
    """
    answers = tuple(str(a) for a in answers)
    if kind not in QUESTION_KINDS:
        raise ConfigurationError(
            f"question={kind!r}; use one of {', '.join(map(repr, QUESTION_KINDS))}."
        )
    if len(set(answers)) != len(answers):
        raise ConfigurationError(f"the class answers {list(answers)} are not all different.")
    if any(not a.strip() for a in answers):
        raise ConfigurationError("a class answer is blank; every option needs a name.")
    if kind == "predicate" and len(answers) != 2:
        raise ConfigurationError(
            f"question='predicate' needs exactly 2 classes, got {len(answers)}; use "
            "question='choice' for more."
        )
    if not 2 <= len(answers) <= max_options:
        raise ConfigurationError(
            f"{where} takes 2 to {max_options} options per question, got {len(answers)} "
            "classes; merge rare classes or use a log-probability backend."
        )
    return answers


def _instructions(instructions: str | None) -> str:
    text = (instructions or "").strip()
    return text or DEFAULT_INSTRUCTIONS


def with_examples(instructions: str | None, examples) -> str | None:
    """The instructions followed by the few-shot examples, for APIs that take no
    example messages (System One): identical for every row, so a shared prefix.

    >>> print(with_examples("Sentiment?", [("loved it", "positive")]))
    Sentiment?
    <BLANKLINE>
    Examples:
    Input: loved it
    Answer: positive
    """
    if not examples:
        return instructions
    shots = "\n\n".join(f"Input: {text.strip()}\nAnswer: {answer}" for text, answer in examples)
    return f"{_instructions(instructions)}\n\nExamples:\n{shots}"


def _predicate_text(instructions: str, answers: Sequence[str], descriptions) -> str:
    positive = answers[1]
    line = f"{instructions}\nStatement: the answer is {positive!r}."
    if descriptions.get(positive):
        line += f" ({positive}: {descriptions[positive]})"
    return line


def openai_question(
    answers: Sequence[str],
    descriptions: Mapping[str, str] | None,
    instructions: str | None,
    kind: str,
) -> dict[str, Any]:
    """The question of an OpenAI ``/v1/decisions`` request.

    >>> openai_question(["spam", "ham"], {"spam": "unsolicited ads"}, "Is it spam?",
    ...                 "choice")  # doctest: +NORMALIZE_WHITESPACE
    {'type': 'choice', 'name': 'label', 'instructions': 'Is it spam?',
     'choices': [{'value': 'spam', 'description': 'unsolicited ads'}, {'value': 'ham'}]}
    """
    descriptions = descriptions or {}
    text = _instructions(instructions)
    if kind == "predicate":
        text = _predicate_text(text, answers, descriptions)
        return {"type": "predicate", "name": QUESTION_NAME, "instructions": text}
    key, field = ("choices", "value") if kind == "choice" else ("levels", "label")
    items = []
    for a in answers:
        item = {field: a}
        if descriptions.get(a):
            item["description"] = descriptions[a]
        items.append(item)
    return {"type": kind, "name": QUESTION_NAME, "instructions": text, key: items}


def systemone_questions(
    answers: Sequence[str],
    descriptions: Mapping[str, str] | None,
    instructions: str | None,
    kind: str,
) -> dict[str, Any]:
    """The ``questions`` map of a System One request (one question).

    A choice option without a description is sent as ``null`` (the option's name
    describes itself); score levels are sent as their descriptions, or their names.

    >>> systemone_questions(["spam", "ham"], {"spam": "unsolicited ads"}, "Is it spam?",
    ...                     "choice")  # doctest: +NORMALIZE_WHITESPACE
    {'label': {'type': 'choice', 'instructions': 'Is it spam?',
     'criteria': {'spam': 'unsolicited ads', 'ham': None}}}
    """
    descriptions = descriptions or {}
    text = _instructions(instructions)
    if kind == "choice":
        criteria: Any = {a: descriptions.get(a) or None for a in answers}
        question = {"type": "choice", "instructions": text, "criteria": criteria}
    elif kind == "predicate":
        negative, positive = answers
        question = {
            "type": "noul",
            "instructions": _predicate_text(text, answers, descriptions),
            "criteria": {
                "true": descriptions.get(positive) or positive,
                "false": descriptions.get(negative) or negative,
            },
        }
    else:
        levels = [f"{a}: {descriptions[a]}" if descriptions.get(a) else a for a in answers]
        question = {"type": "score", "instructions": text, "criteria": levels}
    return {QUESTION_NAME: question}
