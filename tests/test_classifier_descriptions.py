"""``descriptions=``: one line per class, written into the label list of the
log-probability prompts (and so into their cache keys), checked in ``fit``."""

from __future__ import annotations

import numpy as np
import pytest

from skllmprob import ConfigurationError, LogprobClassifier
from skllmprob.backends import DeterministicBackend
from skllmprob.exceptions import RefitRequiredError

DESCRIPTIONS = {"positive": "the review likes the film", "negative": "the review does not"}


def make(**kw):
    kw.setdefault("backend", DeterministicBackend())
    kw.setdefault("labels", ["positive", "negative"])
    return LogprobClassifier(**kw)


def test_descriptions_are_written_into_the_default_label_list():
    clf = make(descriptions=DESCRIPTIONS, cache=False).fit(None, None)
    (prompt,) = clf.render_prompts(["a gem"])
    assert prompt.startswith(
        "Categories: positive (the review likes the film), negative (the review does not)."
        " The text is between <text> and </text>.\n\n<text>a gem</text>"
    )
    # without descriptions the prompt is the one it always was
    (plain,) = make(cache=False).fit(None, None).render_prompts(["a gem"])
    assert plain.startswith("Categories: positive, negative. The text")


def test_a_label_list_on_its_own_line_gets_one_line_per_class():
    prompt = "Classify the review.\nLabels:\n{labels}\n\nReview: {text}\nLabel:"
    clf = make(prompt=prompt, descriptions={"negative": "dislikes it"}, cache=False)
    (rendered,) = clf.fit(None, None).render_prompts(["dull"])
    assert rendered == (
        "Classify the review.\nLabels:\n- positive\n- negative: dislikes it\n\n"
        "Review: dull\nLabel:"
    )


def test_descriptions_beside_option_codes():
    clf = make(
        labels={1: "very good", 0: "very bad"},
        option_codes="letters",
        descriptions={1: "loves it", 0: "hates it"},
        cache=False,
    ).fit(None, None)
    assert clf.uses_option_codes_
    (prompt,) = clf.render_prompts(["fine"])
    assert "B (very good: loves it), A (very bad: hates it)" in prompt


def test_keys_may_be_the_labels_string_form():
    clf = make(labels={1: "positive", 0: "negative"}, descriptions={"1": "likes it"}, cache=False)
    (prompt,) = clf.fit(None, None).render_prompts(["x"])
    assert "positive (likes it), negative." in prompt


def test_end_to_end_a_new_prompt_so_a_new_cache_entry(tmp_path, reviews):
    texts, labels = reviews
    name = f"desc-{tmp_path.name}"
    cache = str(tmp_path / "c.sqlite")

    def fitted(**kw):
        return make(backend=DeterministicBackend(name=name), cache=cache, **kw).fit(texts, labels)

    start = DeterministicBackend.request_count(name)
    plain = fitted()
    assert DeterministicBackend.request_count(name) - start == len(texts)
    described = fitted(descriptions=DESCRIPTIONS)
    # the descriptions change every prompt, so every prompt is requested again ...
    assert DeterministicBackend.request_count(name) - start == 2 * len(texts)
    # ... and once only: a second estimator with the same descriptions is all hits
    again = fitted(descriptions=DESCRIPTIONS)
    assert DeterministicBackend.request_count(name) - start == 2 * len(texts)
    proba = described.predict_proba(texts)
    np.testing.assert_allclose(again.predict_proba(texts), proba)
    # the model read other prompts: other scores, still the right answers
    assert not np.allclose(proba, plain.predict_proba(texts))
    assert (described.predict(texts) == np.array(labels)).all()


def test_changing_descriptions_after_fit_needs_a_refit(reviews):
    texts, labels = reviews
    clf = make(descriptions=DESCRIPTIONS, cache=False).fit(texts, labels)
    clf.set_params(descriptions={"positive": "other"})
    with pytest.raises(RefitRequiredError, match="descriptions"):
        clf.predict(texts)
    assert "(other)" in clf.fit(texts, labels).render_prompts(texts[:1])[0]


@pytest.mark.parametrize(
    ("descriptions", "match"),
    [
        ({"neutral": "neither"}, r"entries for \['neutral'\], which are not classes"),
        ({"positive": 3}, r"descriptions\['positive'\] is a int; give one line of text"),
        ({"positive": ["likes"]}, r"is a list; give one line of text"),
        ({"positive": "likes it\nvery much"}, r"has several lines; give one line"),
    ],
)
def test_bad_descriptions_are_clear_errors_in_fit(descriptions, match):
    # zero-shot: nothing is scored in fit, and still the check runs there
    with pytest.raises(ConfigurationError, match=match):
        make(descriptions=descriptions, cache=False).fit(None, None)


def test_descriptions_must_be_a_dict():
    with pytest.raises(ValueError, match="descriptions"):
        make(descriptions=["likes it"], cache=False).fit(None, None)
