"""The ``POST /v1/decisions`` route of :class:`~skllmprob.testing.openai_stub.OpenAIStub`:
OpenAI's Decisions API in its JSON shapes (request validation, answers in question
order, refusals, usage with cached tokens).

The probability of each option comes from ``stub.decisions(text, values)`` when it
is set (a callable returning one non-negative weight per option), else from the
stub's token distribution: the mass of the tokens equal to the option (case and
surrounding spaces ignored), plus a small floor so that every option has some.

Only the models in ``stub.decision_models`` (default ``("gpt-6-luna",)``) are
decision models: another model gets a 400 saying it does not support the endpoint,
and a decision model sent to the chat or completions endpoint gets a 400 saying it
is a decisions model, as the real API answers.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["DECISION_MODELS", "decision_answer", "decision_problem", "decision_text"]

DECISION_MODELS = ("gpt-6-luna",)
_FLOOR = 1e-4


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = [
        json.dumps(p.get("data"), ensure_ascii=False, separators=(",", ":"))
        if p.get("type") == "input_json"
        else str(p.get("text", ""))
        for p in (content if isinstance(content, list) else [])
        if isinstance(p, dict)
    ]
    return "\n\n".join(parts)


def decision_text(body: dict) -> str:
    """The text a request asks about: its ``input`` string, or the content of the
    last user message (earlier messages, e.g. few-shot examples, are context;
    ``input_json`` parts as compact JSON)."""
    value = body.get("input")
    if isinstance(value, str):
        return value
    users = [
        m.get("content")
        for m in (value if isinstance(value, list) else [])
        if isinstance(m, dict) and m.get("role", "user") == "user"
    ]
    return _content_text(users[-1]) if users else ""


def _question_problem(i: int, q: Any) -> str | None:
    if not isinstance(q, dict) or q.get("type") not in ("choice", "predicate", "score"):
        return f"Invalid 'questions[{i}].type': expected 'choice', 'predicate' or 'score'."
    if not q.get("instructions"):
        return f"Missing required parameter: 'questions[{i}].instructions'."
    if q["type"] == "choice":
        values = [c.get("value") for c in q.get("choices") or [] if isinstance(c, dict)]
        if not 2 <= len(values) <= 255:
            return f"Invalid 'questions[{i}].choices': provide between 2 and 255 choices."
        if len(set(map(json.dumps, values))) != len(values):
            return f"Invalid 'questions[{i}].choices': each choice must be unique."
    if q["type"] == "score" and len(q.get("levels") or []) < 2:
        return f"Invalid 'questions[{i}].levels': provide at least 2 levels."
    return None


def decision_problem(body: dict, models) -> tuple[int, str, str | None] | None:
    """``(status, message, param)`` of an invalid decisions request, else ``None``."""
    model = body.get("model")
    if isinstance(model, str) and model not in models:
        return (
            400,
            f"The model `{model}` does not support the decisions endpoint: it is a chat "
            "model. Use a decision model such as gpt-6-luna.",
            "model",
        )
    if not isinstance(body.get("input"), str | list) or not decision_text(body):
        return 400, "Missing required parameter: 'input'.", "input"
    questions = body.get("questions")
    if not isinstance(questions, list) or not 1 <= len(questions) <= 400:
        return 400, "Invalid 'questions': ask between 1 and 400 questions.", "questions"
    for i, q in enumerate(questions):
        problem = _question_problem(i, q)
        if problem is not None:
            return 400, problem, f"questions[{i}]"
    return None


def chat_problem(body: dict, models) -> str | None:
    """The 400 message for a decision model sent to chat or completions."""
    model = body.get("model")
    if isinstance(model, str) and model in models:
        return (
            f"`{model}` is a decisions model: it does not support this endpoint. "
            "Use POST /v1/decisions."
        )
    return None


def _weights(stub: Any, text: str, values: list) -> list[float]:
    if getattr(stub, "decisions", None) is not None:
        return [max(0.0, float(w)) for w in stub.decisions(text, list(values))]
    mass: dict[str, float] = {}
    for token, lp in stub.distribution(text):
        key = str(token).strip().lower()
        mass[key] = mass.get(key, 0.0) + math.exp(lp)
    return [mass.get(str(v).strip().lower(), 0.0) + _FLOOR for v in values]


def _normalized(weights: list[float]) -> list[float]:
    total = sum(weights)
    if total <= 0:
        return [1.0 / len(weights)] * len(weights)
    return [round(w / total, 6) for w in weights]


def _answer(stub: Any, text: str, q: dict) -> dict:
    name = q.get("name")
    if q["type"] == "predicate":
        p = _normalized(_weights(stub, text, [False, True]))[1]
        return {"type": "predicate", "name": name, "probability": p}
    choice = q["type"] == "choice"
    keys = [c["value"] for c in q["choices"]] if choice else [lv["label"] for lv in q["levels"]]
    probs = _normalized(_weights(stub, text, keys))
    best = max(range(len(keys)), key=probs.__getitem__)
    out: dict[str, Any] = {"type": q["type"], "name": name, "confidence": probs[best]}
    if choice:
        out["choice"] = keys[best]
        out["probabilities"] = [
            {"value": v, "probability": p} for v, p in zip(keys, probs, strict=True)
        ]
    else:
        out["score"] = sum(i * p for i, p in enumerate(probs))
        out["probabilities"] = [
            {"label": lab, "value": i, "probability": p}
            for i, (lab, p) in enumerate(zip(keys, probs, strict=True))
        ]
    return out


def decision_answer(stub: Any, body: dict, text: str, cached: int, refuse: bool) -> dict:
    """The 200 body of a valid request (every answer a refusal when ``refuse``)."""
    answers = [
        {"type": "refusal", "name": q.get("name")} if refuse else _answer(stub, text, q)
        for q in body["questions"]
    ]
    n = max(1, len(text.split())) + sum(len(json.dumps(q).split()) for q in body["questions"])
    return {
        "object": "decision",
        "model": body.get("model"),
        "answers": answers,
        "usage": {
            "input_tokens": n,
            "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
            "output_tokens": 0,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": n,
        },
    }
