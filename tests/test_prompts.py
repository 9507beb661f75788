from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from skllmprob.exceptions import ConfigurationError
from skllmprob.prompts import DEFAULT_PROMPT, PromptRenderer, template_row_fields


def test_default_prompt_renders_labels_and_text():
    r = PromptRenderer(DEFAULT_PROMPT, labels=["positive", "negative"])
    out = r.render_texts(["nice"])[0]
    assert "positive, negative" in out
    assert out.endswith("Text: nice\nCategory:")


def test_examples_form_a_shared_prefix_before_the_text():
    r = PromptRenderer(
        DEFAULT_PROMPT,
        labels=["positive", "negative"],
        examples=[({"text": "great"}, "positive"), ({"text": "awful"}, "negative")],
    )
    a, b = r.render_texts(["first", "second"])
    assert a.startswith(r.prefix) and b.startswith(r.prefix)
    assert "Text: great\nCategory: positive\n\nText: awful\nCategory: negative\n\n" in r.prefix
    assert a[len(r.prefix) :] == "first\nCategory:"


def test_examples_field_placement_is_respected():
    r = PromptRenderer(
        "{examples}Labels: {labels}\nQ: {text}\nA:",
        labels=["x", "y"],
        examples=[({"text": "e"}, "x")],
    )
    # {examples} comes first: the row part is everything after it, label line
    # included, and each example repeats it with its answer.
    assert r.render_texts(["t"])[0] == "Labels: x, y\nQ: e\nA: x\n\nLabels: x, y\nQ: t\nA:"


def test_multi_field_template():
    r = PromptRenderer(
        "Title: {title}\nBody: {body}\nTopic ({labels}):",
        labels=["a", "b"],
        examples=[({"title": "T0", "body": "B0"}, "a")],
    )
    assert r.row_fields == ("title", "body")
    out = r.render_one({"title": "T", "body": "B"})
    assert out.endswith("Title: T\nBody: B\nTopic (a, b):")
    assert "Title: T0\nBody: B0\nTopic (a, b): a\n\n" in out


def test_answer_separator_follows_the_cue():
    r = PromptRenderer("Q: {text}\nA: ", labels=["x"], examples=[({"text": "e"}, "x")])
    assert "A: x\n\n" in r.prefix


@pytest.mark.parametrize(
    ("template", "match"),
    [
        ("no field at all", "no field for the text"),
        ("{text} {}", "positional"),
        ("{text} {0}", "positional"),
        ("{text.upper}", "plain name"),
        ("{text", "not a valid template"),
        ("{text}\n{examples}", "after a row field"),
        ("{examples}{text} {examples}", "after the text"),
    ],
)
def test_bad_templates_are_clear_errors(template, match):
    with pytest.raises(ConfigurationError, match=match):
        PromptRenderer(template, labels=["a", "b"])


def test_template_row_fields_order():
    assert template_row_fields("{labels}{b}{a}{b}") == ("b", "a")


@given(st.text(max_size=40))
def test_any_text_is_rendered_verbatim(text):
    r = PromptRenderer(DEFAULT_PROMPT, labels=["a", "b"])
    (out,) = r.render_texts([text])
    assert out == r.prefix + text + "\nCategory:"
    assert r.render_one({"text": text}) == out
