"""LogprobClassifier on the deterministic backend: behaviour, errors, and life inside
scikit-learn's model-selection tools."""

from __future__ import annotations

import pickle

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV, calibration_curve
from sklearn.model_selection import (
    GridSearchCV,
    TunedThresholdClassifierCV,
    cross_val_score,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils import estimator_html_repr

from skllmprob import ConfigurationError, InputError, LogprobClassifier, TextScores
from skllmprob.backends import DeterministicBackend
from skllmprob.calibration import apply_offsets
from skllmprob.exceptions import PartialResultsError, SkllmprobError

KEY = "sk-test-SECRET-0123456789abcdef"


def make(**kw):
    kw.setdefault("backend", DeterministicBackend())
    return LogprobClassifier(**kw)


# ----------------------------------------------------------------------------- basics


def test_zero_shot_with_labels(reviews):
    texts, labels = reviews
    clf = make(labels=["positive", "negative"]).fit(None, None)
    assert list(clf.classes_) == ["negative", "positive"]
    proba = clf.predict_proba(texts)
    assert proba.shape == (10, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert (clf.predict(texts) == np.array(labels)).mean() == 1.0
    # fit([], []) is the same zero-shot call.
    np.testing.assert_allclose(
        make(labels=["positive", "negative"]).fit([], []).predict_proba(texts), proba
    )


def test_fit_on_labelled_samples_takes_classes_from_y(reviews):
    texts, labels = reviews
    clf = make().fit(texts, labels)
    assert list(clf.classes_) == ["negative", "positive"]
    assert 0 < clf.coverage_ <= 1
    assert clf.other_tokens_ and all(0 < v <= 1 for v in clf.other_tokens_.values())
    assert not any(t.strip().lower() in ("positive", "negative") for t in clf.other_tokens_)
    cov = clf.predict_coverage(texts)
    assert cov.shape == (10,) and np.all((cov > 0) & (cov <= 1))
    raw = clf.predict_label_logprobs(texts)
    assert raw.shape == (10, 2) and np.all(raw <= 0)


def test_columns_follow_classes_order_whatever_the_prompt_order(reviews):
    texts, _ = reviews
    a = make(labels=["positive", "negative"]).fit(None, None)
    b = make(labels=["negative", "positive"]).fit(None, None)
    assert list(a.classes_) == list(b.classes_)
    # The prompt lists labels in the given order ...
    assert "positive, negative" in a.render_prompts(["x"])[0]
    assert "negative, positive" in b.render_prompts(["x"])[0]
    # ... and the columns stay in classes_ order.
    pa, pb = a.predict_proba(texts), b.predict_proba(texts)
    assert (pa.argmax(1) == pb.argmax(1)).all()


def test_verbalizer_mapping_for_integer_labels(reviews):
    texts, labels = reviews
    y = [1 if v == "positive" else 0 for v in labels]
    clf = make(labels={1: "positive", 0: "negative"}).fit(texts, y)
    assert clf.classes_.tolist() == [0, 1]
    assert clf.answers_.tolist() == ["negative", "positive"]
    assert clf.predict(texts).tolist() == y


def test_option_codes_when_first_tokens_collide():
    clf = make(labels=["very good", "very bad"]).fit(None, None)
    assert clf.uses_option_codes_
    assert clf.answers_.tolist() == ["A", "B"]  # classes_ = ['very bad', 'very good']
    prompt = clf.render_prompts(["nice"])[0]
    assert "A (very good), B (very bad)" in prompt or "B (very good), A (very bad)" in prompt
    with pytest.raises(ConfigurationError, match="option_codes"):
        make(labels=["very good", "very bad"], option_codes="never").fit(None, None)


def test_exact_backend_needs_no_codes_for_multi_word_labels(reviews):
    texts, _ = reviews
    clf = make(labels=["very positive", "very negative"], backend=DeterministicBackend(exact=True))
    clf.fit(None, None)
    assert not clf.uses_option_codes_
    np.testing.assert_allclose(clf.predict_proba(texts).sum(1), 1)


def test_few_shot_examples_are_a_prefix(reviews):
    texts, _ = reviews
    clf = make(
        labels=["positive", "negative"],
        examples=[("a great ride", "positive"), ("dull", "negative")],
    ).fit(None, None)
    p = clf.render_prompts(texts[:2])
    common = clf.prompt_renderer_.prefix
    assert all(s.startswith(common) for s in p)
    assert "<text>a great ride</text>\nCategory: positive" in common


def test_dataframe_columns_fill_prompt_fields():
    df = pd.DataFrame(
        {"title": ["Great", "Awful"], "body": ["loved it", "hated it"], "id": [1, 2]}
    )
    clf = make(
        labels=["positive", "negative"],
        prompt="Title: {title}\nReview: {body}\nSentiment ({labels}):",
    ).fit(df.iloc[:0], [])
    prompts = clf.render_prompts(df)
    assert prompts[0].endswith("Title: Great\nReview: loved it\nSentiment (positive, negative):")
    assert clf.predict(df).tolist() == ["positive", "negative"]
    assert clf.feature_names_in_.tolist() == ["title", "body", "id"]


def test_numeric_table_is_serialized_into_text_field():
    X = np.array([[1.5, 2.0], [3.0, 4.25]])
    clf = make().fit(X, [0, 1])
    assert clf.render_prompts(X)[0].endswith("<text>x0: 1.5\nx1: 2.0</text>\nCategory:")


def test_series_and_arrays_of_text(reviews):
    texts, labels = reviews
    clf = make().fit(pd.Series(texts), pd.Series(labels))
    a = clf.predict_proba(np.array(texts))
    b = clf.predict_proba(pd.Series(texts))
    c = clf.predict_proba(np.array(texts, dtype=object).reshape(-1, 1))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("X", "match"),
    [
        (["ok", None], "missing values .* rows 1"),
        (["ok", float("nan")], "missing values"),
        (["ok", 3], "must hold texts .* int"),
        (["ok", b"bytes"], "Decode bytes"),
        ("a single string", "single str"),
        ([["a", "b"], ["c"]], "ragged"),
        (np.zeros((2, 2, 2)), "3 dimensions"),
        ([], "empty"),
    ],
)
def test_bad_X_is_a_clear_error(X, match, reviews):
    clf = make().fit(*reviews)
    with pytest.raises(InputError, match=match):
        clf.predict_proba(X)


def test_bad_y_and_labels_are_clear_errors(reviews):
    texts, labels = reviews
    with pytest.raises(InputError, match="one class"):
        make().fit(texts[:3], ["positive"] * 3)
    with pytest.raises(InputError, match="not in labels=: \\['negative'\\]"):
        make(labels=["positive", "neutral"]).fit(texts, labels)
    with pytest.raises(InputError, match="requires y"):
        make().fit(texts, None)
    with pytest.raises(InputError, match="zero-shot fit needs labels"):
        make().fit(None, None)
    with pytest.raises(ConfigurationError, match="duplicates"):
        make(labels=["a", "b", "a"]).fit(None, None)
    with pytest.raises(InputError, match="10 samples but y has 9"):
        make().fit(texts, labels[:9])
    with pytest.raises(InputError, match="missing labels"):
        make().fit(texts, [*labels[:9], None])
    with pytest.raises(InputError, match="learns from labelled samples"):
        make(labels=["a", "b"], calibration="bias").fit(None, None)
    with pytest.raises(ConfigurationError, match="binary"):
        make(labels=["a", "b", "c"], calibration="threshold").fit(None, None)
    with pytest.raises(ConfigurationError, match="example label 'maybe'"):
        make(labels=["a", "b"], examples=[("t", "maybe")]).fit(None, None)


def test_y_with_one_class_is_fine_when_labels_are_given(reviews):
    texts, labels = reviews
    clf = make(labels=["positive", "negative"]).fit(texts[:5], labels[:5])
    assert len(clf.classes_) == 2


def test_invalid_parameters_raise_in_fit_not_init():
    clf = make(calibration="magic")  # no error yet
    with pytest.raises(ValueError, match="calibration"):
        clf.fit(None, None)
    with pytest.raises(ValueError, match="top_logprobs"):
        make(labels=["a", "b"], top_logprobs=0).fit(None, None)


def test_backend_cap_on_top_logprobs(reviews):
    clf = make(labels=["positive", "negative"], top_logprobs=50).fit(None, None)
    with pytest.raises(ConfigurationError, match="top_logprobs <= 20"):
        clf.predict_proba(reviews[0])


def test_errors_share_a_base_class():
    assert issubclass(InputError, SkllmprobError) and issubclass(InputError, ValueError)


def test_predict_before_fit():
    from sklearn.exceptions import NotFittedError

    for method in ("predict", "predict_proba", "predict_log_proba", "predict_coverage"):
        with pytest.raises(NotFittedError):
            getattr(make(), method)(["x"])


# ------------------------------------------------------------------ scikit-learn tools


def test_clone_pickle_joblib_roundtrip(reviews, tmp_path):
    texts, labels = reviews
    clf = make(calibration="bias").fit(texts, labels)
    expected = clf.predict_proba(texts)
    for other in (
        pickle.loads(pickle.dumps(clf)),
        joblib.load(joblib.dump(clf, tmp_path / "m.joblib")[0]),
    ):
        np.testing.assert_allclose(other.predict_proba(texts), expected)
    c = clone(clf)
    assert not hasattr(c, "classes_")
    assert c.get_params()["calibration"] == "bias"


def test_api_key_never_in_pickle_repr_or_html():
    clf = LogprobClassifier("gpt-4o-mini", api_key=KEY, labels=["a", "b"])
    assert KEY not in repr(clf)
    assert KEY not in estimator_html_repr(clf)
    assert KEY not in repr(make_pipeline(FunctionTransformer(), clf))
    assert KEY not in estimator_html_repr(make_pipeline(FunctionTransformer(), clf))
    blob = pickle.dumps(clf)
    assert KEY.encode() not in blob
    assert KEY.encode() not in pickle.dumps(clone(clf))
    # The key still works in memory, through clone and set_params.
    assert clone(clf).api_key.reveal() == KEY
    assert clf.get_params()["api_key"] == KEY
    assert pickle.loads(blob).api_key is None
    grid = GridSearchCV(clf, {"calibration": ["none"]})
    assert KEY not in repr(grid)


def test_pipeline_grid_search_and_cross_validation_hit_the_cache(reviews):
    texts, labels = reviews
    texts, labels = texts * 3, labels * 3  # 30 samples, 10 unique texts
    before = DeterministicBackend.request_count()
    pipe = make_pipeline(FunctionTransformer(lambda x: [s.lower() for s in x]), make())
    grid = GridSearchCV(
        pipe,
        {"logprobclassifier__calibration": ["none", "bias", "affine", "threshold"]},
        cv=3,
    ).fit(texts, labels)
    assert grid.best_score_ >= 0.9
    scores = cross_val_score(make(calibration="bias"), texts, labels, cv=3)
    assert scores.mean() >= 0.9
    # One request per unique prompt, whatever the number of fits: the lower-cased
    # texts of the pipeline, and the originals that lower-casing changed.
    unique = {t.lower() for t in texts} | set(texts)
    assert DeterministicBackend.request_count() - before == len(unique) == 12


def test_calibrated_classifier_cv_and_calibration_curve(reviews):
    texts, labels = reviews
    texts, labels = texts * 2, labels * 2
    cal = CalibratedClassifierCV(make(), cv=2, method="sigmoid").fit(texts, labels)
    proba = cal.predict_proba(texts)
    assert proba.shape == (20, 2)
    y = (np.array(labels) == "positive").astype(int)
    frac, mean = calibration_curve(y, proba[:, 1], n_bins=3)
    assert len(frac) == len(mean) > 0


def test_tuned_threshold_classifier_cv(reviews):
    texts, labels = reviews
    texts, labels = texts * 2, labels * 2
    tuned = TunedThresholdClassifierCV(make(), cv=2, scoring="balanced_accuracy")
    tuned.fit(texts, labels)
    assert 0 <= tuned.best_threshold_ <= 1
    assert (tuned.predict(texts) == np.array(labels)).mean() >= 0.9


def test_html_repr_renders():
    html = estimator_html_repr(make(labels=["a", "b"]))
    assert "LogprobClassifier" in html


def test_usage_is_recorded(reviews):
    texts, labels = reviews
    clf = make(cache=False).fit(texts, labels)
    assert clf.usage_.last.requests == 10
    clf.predict_proba(texts + texts)  # duplicates are requested once
    assert clf.usage_.last.prompts == 10 and clf.usage_.last.requests == 10
    assert clf.usage_.total.requests == 20
    clf2 = make().fit(texts, labels)
    clf2.predict_proba(texts)
    assert clf2.usage_.last.cache_hits == 10 and clf2.usage_.last.requests == 0


class _FailsAfter(DeterministicBackend):
    """Answers the first ``n`` prompts of a batch, then fails."""

    def __init__(self, n=2, **kw):
        super().__init__(**kw)
        self.n = n

    def complete(self, prompts, query, *, on_result):
        def first(i, completion):
            if i < self.n:
                on_result(i, completion)

        super().complete(prompts, query, on_result=first)
        raise PartialResultsError("boom", n_failed=len(prompts) - self.n, n_completed=self.n)


def test_usage_of_a_failed_call_is_filled_in_place(reviews):
    from skllmprob._engine import fetch_completions
    from skllmprob.backends import Query
    from skllmprob.cache import NullCache
    from skllmprob.usage import Usage

    texts, _ = reviews
    usage = Usage()
    with pytest.raises(PartialResultsError) as info:
        fetch_completions(_FailsAfter(2), NullCache(), Query(5), texts[:5], usage=usage)
    assert (usage.prompts, usage.requests, usage.failed) == (5, 2, 3)
    assert info.value.n_completed == 2 and not hasattr(info.value, "usage")
    # The estimator's usage_ counts what the failed call paid for.
    clf = make(labels=["positive", "negative"], backend=_FailsAfter(3), cache=False)
    clf.fit(None, None)
    with pytest.raises(PartialResultsError):
        clf.predict_proba(texts)
    assert clf.usage_.last.requests == 3 and clf.usage_.last.failed == 7


@pytest.mark.parametrize("exact", [False, True])
def test_score_texts_is_the_one_pass_behind_every_predict_method(reviews, exact):
    texts, labels = reviews
    clf = make(backend=DeterministicBackend(exact=exact), calibration="bias", cache=False)
    clf.fit(texts, labels)
    scores = clf.score_texts(texts + texts[:2])
    assert isinstance(scores, TextScores) and len(scores) == 12
    assert scores.usage.prompts == 10 and scores.usage.requests == 10
    assert scores.log_mass.shape == scores.floored.shape == (12, 2)
    X = texts + texts[:2]
    np.testing.assert_array_equal(scores.log_mass, clf.predict_label_logprobs(X))
    np.testing.assert_array_equal(scores.coverage, clf.predict_coverage(X))
    proba = clf.calibrator_.predict_proba(scores.log_mass)
    np.testing.assert_array_equal(proba, clf.predict_proba(X))
    np.testing.assert_allclose(proba, apply_offsets(scores.log_mass, clf.bias_))
    pred = clf.classes_[clf.calibrator_.predict(scores.log_mass)]
    np.testing.assert_array_equal(pred, clf.predict(X))
    raw = clone(clf).set_params(calibration="none").fit(texts, labels).predict_proba(X)
    np.testing.assert_allclose(scores.raw_proba, raw)
    with pytest.raises(AttributeError):
        scores.log_mass = None  # frozen


def test_each_predict_method_makes_one_pass(reviews, monkeypatch):
    from skllmprob import _engine, _scoring_pass

    texts, labels = reviews
    clf = make(cache=False).fit(texts, labels)
    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        return _engine.fetch_completions(*args, **kwargs)

    monkeypatch.setattr(_scoring_pass, "fetch_completions", counting)
    for method in ("predict", "predict_proba", "predict_log_proba", "predict_coverage"):
        calls.clear()
        getattr(clf, method)(texts)
        assert len(calls) == 1, method


# ------------------------------------------------------------------ the backend


def test_make_backend_auto_rules():
    from skllmprob.backends import make_backend
    from skllmprob.backends.llamacpp import LlamaCppBackend
    from skllmprob.backends.openai import OpenAIBackend

    assert isinstance(make_backend(), LlamaCppBackend)
    assert isinstance(make_backend(model="models/x.GGUF"), LlamaCppBackend)
    assert isinstance(make_backend(model="gpt-4o-mini"), OpenAIBackend)
    assert isinstance(make_backend(base_url="http://localhost:1/v1", model="m"), OpenAIBackend)
    with pytest.raises(ConfigurationError, match="base_url is set"):
        make_backend(backend="llamacpp", base_url="http://localhost:1/v1")


@pytest.mark.parametrize(
    ("setting", "shown"),
    [
        ({"timeout": 5.0}, "timeout=5.0"),
        ({"max_retries": 0}, "max_retries=0"),
        ({"max_concurrency": 2}, "max_concurrency=2"),
        ({"endpoint": "chat"}, "endpoint='chat'"),
        ({"backend_options": {"seed": 3}}, "backend_options={'seed': 3}"),
        ({"api_key": KEY}, "api_key=..."),
    ],
)
def test_backend_instance_rejects_settings_it_would_ignore(setting, shown):
    clf = make(labels=["a", "b"], **setting)
    with pytest.raises(ConfigurationError, match="Backend instance") as info:
        clf.fit(None, None)
    assert shown in str(info.value) and KEY not in str(info.value)


def test_changing_a_backend_parameter_after_fit_needs_a_refit(reviews):
    from sklearn.exceptions import NotFittedError

    from skllmprob import RefitRequiredError

    texts, labels = reviews
    clf = LogprobClassifier("a", backend="deterministic", cache=False).fit(texts, labels)
    assert isinstance(clf.backend_, DeterministicBackend) and clf.backend_.name == "a"
    before = clf.predict_proba(texts)
    clf.set_params(timeout=5.0, max_retries=1, max_concurrency=2)  # runtime settings
    np.testing.assert_array_equal(clf.predict_proba(texts), before)
    clf.set_params(model="b")
    with pytest.raises(RefitRequiredError, match=r"\['model'\] changed since fit") as info:
        clf.predict(texts)
    assert isinstance(info.value, NotFittedError)
    assert "model: 'a' -> 'b'" in str(info.value) and "fit again" in str(info.value)
    clf.set_params(model="a")  # back to what was fitted
    np.testing.assert_array_equal(clf.predict_proba(texts), before)
    clf.set_params(model="b", backend_options={"seed": 1}).fit(texts, labels)
    assert clf.backend_.name == "b" and clf.predict(texts).shape == (10,)
    clf.set_params(backend_options={"seed": 2})
    with pytest.raises(RefitRequiredError, match="backend_options"):
        clf.predict_coverage(texts)


def test_calibration_attributes_are_read_only_views_of_the_calibrator(reviews):
    texts, labels = reviews
    clf = make(calibration="threshold", cache=False).fit(texts, labels)
    assert clf.threshold_ == clf.calibrator_.threshold_ and clf.pos_label_ == "positive"
    assert clf.temperature_ == 1.0 and clf.bias_ is clf.calibrator_.bias_
    for name in ("bias_", "temperature_", "threshold_", "pos_label_"):
        with pytest.raises(AttributeError):
            setattr(clf, name, None)
    assert make(cache=False).fit(texts, labels).pos_label_ is None


def test_another_backend_instance_of_the_same_model_needs_no_refit(reviews):
    from skllmprob import RefitRequiredError

    texts, labels = reviews
    clf = make(backend=DeterministicBackend(latency=0.0), cache=False).fit(texts, labels)
    clf.set_params(backend=DeterministicBackend(fail_on="never in a text"))
    assert clf.predict(texts).shape == (10,)
    clf.set_params(backend=DeterministicBackend(seed=1))  # another model
    with pytest.raises(RefitRequiredError, match=r"\['backend'\]"):
        clf.predict(texts)
