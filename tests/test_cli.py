"""The ``skllmprob`` command line.

Most tests run the installed console script (or ``python -m skllmprob``) in a
subprocess on small CSV files written in ``tmp_path``, on the deterministic backend;
the error matrix runs :func:`skllmprob.cli.main` in-process (the same code the
script runs), which is much faster. Tests marked ``local`` run the embedded model.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import joblib
import numpy as np
import pytest

from skllmprob import InputError, LogprobClassifier, LogprobsUnsupportedError
from skllmprob.backends import DeterministicBackend
from skllmprob.cli import main
from skllmprob.demo import REVIEWS

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).parent / "skllmprob"
DET = ["--backend", "deterministic"]

TRAIN = REVIEWS[1::2]  # 20 reviews, both labels
TEST = REVIEWS[::4]  # 10 reviews, disjoint from TRAIN


def write_csv(path: Path, header, rows) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def read_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def script_command(module: bool = False) -> list[str]:
    if module or not SCRIPT.exists():
        return [sys.executable, "-m", "skllmprob"]
    return [str(SCRIPT)]


def run_script(args, *, cwd, input=None, module=False, timeout=180):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run(
        [*script_command(module), *map(str, args)],
        cwd=cwd,
        input=input,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def run_main(*args, stdin: str = ""):
    out, err = io.StringIO(), io.StringIO()
    code = main([str(a) for a in args], stdin=io.StringIO(stdin), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def error_line(err: str) -> str:
    """The stderr of a failed run must be exactly one line of the expected form."""
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1, err
    assert lines[0].startswith("skllmprob"), err
    assert ": error: " in lines[0], err
    return lines[0]


@pytest.fixture
def files(tmp_path):
    """reviews.csv (text, label), train.csv, test.csv in tmp_path."""
    write_csv(tmp_path / "train.csv", ["text", "label"], TRAIN)
    write_csv(tmp_path / "test.csv", ["text", "label"], TEST)
    write_csv(tmp_path / "reviews.csv", ["id", "text"], [(i, t) for i, (t, _) in enumerate(TEST)])
    return tmp_path


# ------------------------------------------------------------ the script, end to end


def test_classify_file_to_stdout(files):
    r = run_script(
        ["classify", "reviews.csv", "--labels", "positive", "negative", *DET], cwd=files
    )
    assert r.returncode == 0, r.stderr
    rows = read_rows(r.stdout)
    assert len(rows) == len(TEST)
    assert list(rows[0]) == [
        "id",
        "text",
        "proba_positive",
        "proba_negative",
        "predicted",
        "coverage",
    ]
    assert [row["text"] for row in rows] == [t for t, _ in TEST]
    for row in rows:
        p = np.array([float(row["proba_positive"]), float(row["proba_negative"])])
        assert abs(p.sum() - 1) < 1e-5
        if p[0] != p[1]:
            assert row["predicted"] == ("positive" if p[0] > p[1] else "negative")
        assert 0 <= float(row["coverage"]) <= 1
    # Same numbers as the library gives in-process.
    clf = LogprobClassifier(
        labels=["positive", "negative"], backend="deterministic", cache=False
    ).fit(None, None)
    expected = clf.predict_proba([t for t, _ in TEST])
    got = np.array([[float(r["proba_negative"]), float(r["proba_positive"])] for r in rows])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # Statistics on stderr: every prompt sent once, nothing from the cache yet.
    assert f"{len(TEST)} prompts: {len(TEST)} sent, 0 from the cache" in r.stderr
    assert "completions.sqlite" in r.stderr


def test_stdin_to_stdout_with_dash_and_python_dash_m(files):
    data = (files / "reviews.csv").read_text()
    r = run_script(
        ["classify", "-", "--labels", "positive", "negative", "--output", "-", *DET, "-q"],
        cwd=files,
        input=data,
        module=True,
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # --quiet: nothing but the CSV
    rows = read_rows(r.stdout)
    assert len(rows) == len(TEST) and "predicted" in rows[0]


def test_output_file_second_run_is_answered_by_the_cache(files):
    args = ["classify", "reviews.csv", "--labels", "positive", "negative", "-o", "out.csv"]
    first = run_script([*args, *DET], cwd=files)
    assert first.returncode == 0, first.stderr
    assert first.stdout == ""
    assert f"wrote {len(TEST)} rows to out.csv" in first.stderr
    second = run_script([*args, *DET], cwd=files)
    assert second.returncode == 0, second.stderr
    assert f"{len(TEST)} prompts: 0 sent, {len(TEST)} from the cache" in second.stderr
    assert read_rows((files / "out.csv").read_text())[0]["id"] == "0"


def test_fit_then_predict_roundtrip_with_joblib(files):
    fit = run_script(
        ["fit", "train.csv", "--output", "model.joblib", "--calibration", "bias", *DET],
        cwd=files,
    )
    assert fit.returncode == 0, fit.stderr
    assert "calibration bias" in fit.stderr and "saved to model.joblib" in fit.stderr
    clf = joblib.load(files / "model.joblib")
    assert isinstance(clf, LogprobClassifier)
    assert list(clf.classes_) == ["negative", "positive"]
    assert clf.calibration == "bias" and np.any(clf.bias_ != 0)

    pred = run_script(["predict", "model.joblib", "reviews.csv"], cwd=files)
    assert pred.returncode == 0, pred.stderr
    rows = read_rows(pred.stdout)
    got = np.array([[float(r["proba_negative"]), float(r["proba_positive"])] for r in rows])
    np.testing.assert_allclose(got, clf.predict_proba([t for t, _ in TEST]), atol=1e-5)
    assert [r["predicted"] for r in rows] == list(clf.predict([t for t, _ in TEST]))
    # The saved model keeps its cache: predicting the training texts costs nothing.
    again = run_script(["predict", "model.joblib", "train.csv", "-o", "p.csv"], cwd=files)
    assert again.returncode == 0, again.stderr
    assert f"{len(TRAIN)} prompts: 0 sent, {len(TRAIN)} from the cache" in again.stderr


def test_evaluate_writes_report_and_plots(files):
    r = run_script(
        ["evaluate", "test.csv", "--train", "train.csv", "--report", "rep", *DET], cwd=files
    )
    assert r.returncode == 0, r.stderr
    for heading in ("accuracy", "macro F1", "log loss", "Brier", "ECE", "coverage"):
        assert heading in r.stdout
    assert "TF-IDF + logistic regression" in r.stdout
    assert "deterministic, calibration=bias" in r.stdout
    assert "confusion matrix" in r.stdout
    rep = files / "rep"
    for name in ("report.md", "reliability.png", "confusion.png", "predictions.csv"):
        assert (rep / name).is_file(), name
    for png in ("reliability.png", "confusion.png"):
        data = (rep / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    md = (rep / "report.md").read_text()
    assert "![Reliability diagram](reliability.png)" in md
    # The accuracy in the report is the accuracy of predictions.csv.
    preds = read_rows((rep / "predictions.csv").read_text())
    acc = np.mean([p["predicted"] == p["label"] for p in preds])
    row = next(line for line in md.splitlines() if "calibration=bias |" in line)
    assert row.split("|")[2].strip() == f"{acc:.3f}"


def test_failure_loses_nothing_and_the_rerun_resumes(files):
    # The 4th review makes the backend fail: the first three answers are cached.
    failing = TEST[3][0]
    args = ["classify", "reviews.csv", "--labels", "positive", "negative", *DET]
    r = run_script([*args, "--backend-option", f"fail_on={failing}"], cwd=files)
    assert r.returncode == 1
    line = error_line(r.stderr)
    assert "told to fail" in line
    assert line.endswith(
        "The 3 answers received before the error are in the cache; running the same "
        "command again sends only the rest."
    )
    assert r.stdout == ""
    again = run_script(args, cwd=files)
    assert again.returncode == 0, again.stderr
    assert f"{len(TEST)} prompts: {len(TEST) - 3} sent, 3 from the cache" in again.stderr


def stop_after_two_answers(files, args, cache: Path, sig) -> tuple[int, str]:
    """Run the script with slow answers, send ``sig`` once two answers are in the
    cache; its exit status and standard error."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [*script_command(), *args, "--backend-option", "latency=0.2"],
        cwd=files,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 60
    done = 0
    while done < 2 and time.monotonic() < deadline:  # wait for two answers
        time.sleep(0.1)
        if cache.exists():
            with (
                contextlib.closing(sqlite3.connect(cache)) as db,
                contextlib.suppress(sqlite3.OperationalError),
            ):
                done = db.execute("SELECT COUNT(*) FROM completions").fetchone()[0]
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def test_interrupt_keeps_the_answers_received(files):
    cache = Path(os.environ["SKLLMPROB_CACHE_DIR"]) / "completions.sqlite"
    args = ["classify", "test.csv", "--labels", "positive", "negative", *DET, "-o", "o.csv"]
    code, err = stop_after_two_answers(files, args, cache, signal.SIGINT)
    assert code == 130, err
    m = re.fullmatch(
        r"skllmprob: interrupted\. The (\d+) answers received before the interruption are "
        r"in the cache; running the same command again sends only the rest\.\n",
        err,
    )
    assert m, err
    assert not (files / "o.csv").exists()
    again = run_script(args, cwd=files)
    assert again.returncode == 0, again.stderr
    hits = int(re.search(r"(\d+) from the cache", again.stderr)[1])
    assert hits == int(m[1]) and 2 <= hits < len(TEST)


def test_errors_are_one_line_with_exit_status(files):
    missing = run_script(["classify", "nope.csv", "--labels", "a", "b", *DET], cwd=files)
    assert missing.returncode == 1
    assert error_line(missing.stderr) == "skllmprob: error: nope.csv: no such file."
    usage = run_script(["classify", "--labels", "a", "b", "reviews.csv"], cwd=files)
    assert usage.returncode == 2
    assert "must come after the file names" in error_line(usage.stderr)
    assert usage.stdout == ""


def test_progress_bar_can_be_forced(files):
    r = run_script(
        ["classify", "reviews.csv", "--labels", "positive", "negative", "--progress", *DET],
        cwd=files,
    )
    assert r.returncode == 0, r.stderr
    assert f"skllmprob:   0%|          | 0/{len(TEST)} [" in r.stderr  # tqdm's bar


def test_help_version_and_demo(files):
    r = run_script(["--help"], cwd=files)
    assert r.returncode == 0
    for command in ("classify", "fit", "predict", "evaluate", "demo"):
        assert command in r.stdout
    demo = run_script(["demo", "--backend", "deterministic", "--quiet"], cwd=files)
    assert demo.returncode == 0, demo.stderr
    assert demo.stdout.startswith("accuracy ") and "on 40 reviews" in demo.stdout


# ------------------------------------------------------------ over HTTP, to the stub


@pytest.fixture
def stub():
    from skllmprob.testing.openai_stub import OpenAIStub

    with OpenAIStub() as server:
        yield server


def test_classify_over_http_and_errors_of_the_server(files, stub):
    args = ["classify", "reviews.csv", "--labels", "positive", "negative"]
    server = ["--model", "stub-model", "--base-url", stub.base_url]
    ok = run_script([*args, *server], cwd=files)
    assert ok.returncode == 0, ok.stderr
    assert stub.requests == len(TEST)
    assert len(read_rows(ok.stdout)) == len(TEST)

    # A model that answers without log-probabilities: one line, exit status 1.
    stub.add_fault("no_logprobs", times=None)
    r = run_script([*args, "--model", "reasoner", "--base-url", stub.base_url], cwd=files)
    assert r.returncode == 1 and r.stdout == ""
    line = error_line(r.stderr)
    assert "(model 'reasoner') answered without log-probabilities" in line

    # A server that is not there.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends
    code, _, err = run_main(
        "classify", files / "reviews.csv", "--labels", "positive", "negative",
        "--model", "m", "--base-url", f"http://127.0.0.1:{port}/v1",
        "--max-retries", "0", "--timeout", "5",
    )  # fmt: skip
    assert code == 1
    line = error_line(err)
    assert f"cannot reach http://127.0.0.1:{port}/v1" in line
    assert line.endswith("Is the server running, and is base_url right?")


# ------------------------------------------------------------ in-process: errors


def test_missing_and_empty_files(files):
    (files / "empty.csv").write_text("")
    (files / "header.csv").write_text("text,label\n")
    cases = {
        "nope.csv": "nope.csv: no such file.",
        "empty.csv": "empty.csv is empty; it needs a header row and at least one row.",
        "header.csv": "header.csv has a header (text, label) but no rows; nothing to do.",
    }
    for name, message in cases.items():
        code, out, err = run_main("classify", files / name, "--labels", "a", "b", *DET)
        assert code == 1 and out == ""
        assert error_line(err) == f"skllmprob: error: {files / message}"


def test_missing_column(files):
    code, _, err = run_main(
        "classify", files / "reviews.csv", "--labels", "a", "b", "--text-column", "review", *DET
    )
    assert code == 1
    assert error_line(err).endswith(
        "reviews.csv has no column 'review' (its columns: id, text); choose one with "
        "--text-column."
    )
    code, _, err = run_main("fit", files / "reviews.csv", "-o", files / "m.joblib", *DET)
    assert code == 1
    assert "has no column 'label'" in error_line(err) and "--label-column" in err
    assert not (files / "m.joblib").exists()


def test_unknown_and_empty_labels_in_labelled_files(files):
    rows = [*TRAIN[:3], ("a so-so film", "neutral")]
    write_csv(files / "bad.csv", ["text", "label"], rows)
    code, _, err = run_main(
        "fit",
        files / "bad.csv",
        "-o",
        files / "m.joblib",
        "--labels",
        "positive",
        "negative",
        *DET,
    )
    assert code == 1
    assert error_line(err).endswith(
        "bad.csv line 5: unknown label 'neutral', not one of --labels (positive, negative); "
        "fix the file or add the label."
    )
    # evaluate: a test label that the training file does not have.
    code, _, err = run_main("evaluate", files / "bad.csv", "--train", files / "train.csv", *DET)
    assert code == 1
    assert "bad.csv line 5: unknown label 'neutral', not one of the labels of" in error_line(err)
    write_csv(files / "blank.csv", ["text", "label"], [*TRAIN[:3], ("no label here", "")])
    code, _, err = run_main("fit", files / "blank.csv", "-o", files / "m.joblib", *DET)
    assert code == 1
    assert "blank.csv line 5: the label ('label') is empty" in error_line(err)


def test_malformed_csv(files):
    (files / "ragged.csv").write_text("text,label\nfine,positive\ntoo,many,fields\n")
    code, _, err = run_main("fit", files / "ragged.csv", "-o", files / "m.joblib", *DET)
    assert code == 1
    assert "ragged.csv line 3 has 3 fields but the header has 2" in error_line(err)
    (files / "latin1.csv").write_bytes("text\ncaf\xe9\n".encode("latin-1"))
    code, _, err = run_main("classify", files / "latin1.csv", "--labels", "a", "b", *DET)
    assert code == 1
    assert "latin1.csv is not UTF-8 text (byte 0xe9 on line 2); save it as UTF-8." in err


def test_model_without_logprobs_is_one_line(files, monkeypatch):
    def no_logprobs(self, prompts, query, *, on_result):
        raise LogprobsUnsupportedError(
            "model 'reasoner' returned no log-probabilities; use a model that returns them."
        )

    monkeypatch.setattr(DeterministicBackend, "complete", no_logprobs)
    code, out, err = run_main("classify", files / "reviews.csv", "--labels", "a", "b", *DET)
    assert code == 1 and out == ""
    # Nothing was answered, so there is nothing to resume.
    assert error_line(err) == (
        "skllmprob: error: model 'reasoner' returned no log-probabilities; use a model that "
        "returns them."
    )


def test_bad_options(files):
    reviews = files / "reviews.csv"
    cases = [
        (["classify", reviews, "--labels", "a", "a", *DET], "--labels lists a more than once"),
        (["classify", reviews, "--labels", "a", *DET], "--labels needs at least two labels"),
        (["classify", reviews, *DET], "give the candidate labels with --labels"),
        (
            ["classify", reviews, "--labels", "a", "b", "--cache", files / "c", "--no-cache"],
            "--cache and --no-cache contradict each other",
        ),
        (
            ["classify", reviews, "--labels", "a", "b", "--api-key-env", "NO_SUCH_VAR_XYZ"],
            "the environment variable NO_SUCH_VAR_XYZ is not set",
        ),
        (
            ["evaluate", files / "test.csv", "--calibration", "bias", *DET],
            "--calibration bias learns from labelled samples; give --train",
        ),
        (
            ["evaluate", files / "test.csv", "--load", files / "m.joblib", "--model", "x"],
            "--load evaluates a saved classifier with its own settings; drop --model",
        ),
        (
            ["classify", reviews, "--labels", "a", "b", "-o", files / "no" / "out.csv", *DET],
            "the folder",
        ),
    ]
    for args, message in cases:
        code, out, err = run_main(*args)
        assert code == 1, (args, err)
        assert message in error_line(err), (args, err)
        assert out == ""
    code, _, err = run_main("classify", reviews, "--labels", "a", "b", "--top-logprobs", "0")
    assert code == 2 and "must be at least 1" in error_line(err)
    code, _, err = run_main("frobnicate")
    assert code == 2 and "invalid choice: 'frobnicate'" in error_line(err)


def test_output_columns_clash(files):
    write_csv(files / "scored.csv", ["text", "predicted"], [("a fine film", "x")])
    code, _, err = run_main(
        "classify", files / "scored.csv", "--labels", "positive", "negative", *DET
    )
    assert code == 1
    assert "already has the column(s) predicted, which the output adds" in error_line(err)


def test_predict_needs_a_saved_model(files):
    joblib.dump({"not": "a model"}, files / "dict.joblib")
    (files / "junk.joblib").write_text("not a pickle")
    cases = {
        "none.joblib": "none.joblib: no such file",
        "dict.joblib": "holds a dict, not a LogprobClassifier",
        "junk.joblib": "junk.joblib is not a model saved by 'skllmprob fit'",
    }
    for name, message in cases.items():
        code, _, err = run_main("predict", files / name, files / "reviews.csv")
        assert code == 1 and message in error_line(err), err


def test_prompt_file_examples_and_no_cache(files):
    # A prompt with its own wording; few-shot examples from a CSV; --no-cache sends
    # each prompt once within the run and leaves nothing in the cache folder.
    (files / "prompt.txt").write_text(
        "Is this review positive or negative? Answer {labels}.\n\n{examples}Review: {text}\n"
        "Answer:\n"
    )
    write_csv(files / "shots.csv", ["text", "label"], TRAIN[:2])
    before = DeterministicBackend.request_count()
    code, out, err = run_main(
        "classify", files / "reviews.csv", "--labels", "positive", "negative",
        "--prompt-file", files / "prompt.txt", "--examples", files / "shots.csv",
        "--no-cache", *DET,
    )  # fmt: skip
    assert code == 0, err
    assert DeterministicBackend.request_count() - before == len(TEST)
    assert "cache off" in err
    assert not (Path(os.environ["SKLLMPROB_CACHE_DIR"]) / "completions.sqlite").exists()
    assert len(read_rows(out)) == len(TEST)
    # The examples' labels must be among --labels.
    write_csv(files / "odd.csv", ["text", "label"], [("meh", "neutral")])
    code, _, err = run_main(
        "classify", files / "reviews.csv", "--labels", "positive", "negative",
        "--examples", files / "odd.csv", *DET,
    )  # fmt: skip
    assert code == 1 and "odd.csv line 2: unknown label 'neutral'" in error_line(err)


def test_multi_column_prompt(files):
    pytest.importorskip("pandas")
    write_csv(
        files / "news.csv",
        ["title", "body", "label"],
        [("Great match", "A wonderful, fun final.", "positive"),
         ("Dull budget", "A boring and tedious debate.", "negative")],
    )  # fmt: skip
    (files / "p.txt").write_text("Labels: {labels}.\n\nTitle: {title}\nBody: {body}\nAnswer:")
    code, out, err = run_main(
        "fit", files / "news.csv", "-o", files / "m.joblib", "--prompt-file", files / "p.txt",
        "--calibration", "none", *DET,
    )  # fmt: skip
    assert code == 0, err
    code, out, err = run_main("predict", files / "m.joblib", files / "news.csv")
    assert code == 0, err
    assert [r["predicted"] for r in read_rows(out)] == ["positive", "negative"]
    code, _, err = run_main("predict", files / "m.joblib", files / "reviews.csv")
    assert code == 1
    assert "has no column 'title', which the prompt uses as {title}" in error_line(err)
    code, _, err = run_main(
        "predict", files / "m.joblib", files / "news.csv", "--text-column", "body"
    )
    assert code == 1 and "--text-column is for prompts with a single {text}" in err


def test_evaluate_without_train_cross_validates_the_baseline(files):
    code, out, err = run_main("evaluate", files / "test.csv", *DET)
    assert code == 0, err
    assert "deterministic, calibration=none" in out
    assert "cross-validation on" in out and "(no --train given)" in out
    code, out, err = run_main("evaluate", files / "test.csv", "--no-baseline", *DET)
    assert code == 0 and "TF-IDF" not in out


def test_evaluate_loaded_model_and_threshold(files):
    code, _, err = run_main(
        "fit", files / "train.csv", "-o", files / "t.joblib", "--calibration", "threshold",
        "--scoring", "balanced_accuracy", *DET,
    )  # fmt: skip
    assert code == 0, err
    assert "threshold" in err and "on P(positive)" in err
    code, out, err = run_main(
        "evaluate", files / "test.csv", "--load", files / "t.joblib", "--train",
        files / "train.csv",
    )  # fmt: skip
    assert code == 0, err
    assert "calibration=threshold" in out and f"loaded from {files / 't.joblib'}" in out
    # One request per test text; the uncalibrated twin is answered by the cache.
    assert f"{len(TEST)} prompts: {len(TEST)} sent, 0 from the cache" in err


def test_warnings_are_single_lines(files):
    # Only positive samples with --labels: the negative offset stays neutral, and the
    # library warns about it; the command shows it as one line.
    write_csv(files / "pos.csv", ["text", "label"], [r for r in TRAIN if r[1] == "positive"])
    code, _, err = run_main(
        "fit", files / "pos.csv", "-o", files / "m.joblib", "--labels", "positive", "negative",
        *DET,
    )  # fmt: skip
    assert code == 0, err
    warning = [line for line in err.splitlines() if ": warning: " in line]
    assert any("negative" in w and "have no labelled sample" in w for w in warning), err


def test_quiet_prints_nothing_on_success(files):
    code, out, err = run_main(
        "fit", files / "train.csv", "-o", files / "m.joblib", "--quiet", *DET
    )
    assert code == 0 and out == "" and err == ""


# ------------------------------------------------------------ the embedded model


@pytest.mark.local
@pytest.mark.slow
def test_local_classify_fit_predict(files):
    """The real embedded model, through the console script, on a handful of rows."""
    obvious = [
        ("A wonderful, moving film; I loved every minute.", "positive"),
        ("Brilliant acting and a beautiful story.", "positive"),
        ("Awful, boring and far too long. I hated it.", "negative"),
        ("The worst film of the year, a terrible mess.", "negative"),
    ]
    write_csv(files / "obvious.csv", ["text", "label"], obvious)
    r = run_script(["classify", "obvious.csv", "--labels", "positive", "negative"], cwd=files)
    assert r.returncode == 0, r.stderr
    rows = read_rows(r.stdout)
    assert len(rows) == 4
    for row in rows:
        p = float(row["proba_positive"]) + float(row["proba_negative"])
        assert abs(p - 1) < 1e-5 and 0 < float(row["coverage"]) <= 1
    correct = sum(row["predicted"] == row["label"] for row in rows)
    assert correct >= 3, rows

    fit = run_script(["fit", "obvious.csv", "-o", "m.joblib", "--calibration", "bias"], cwd=files)
    assert fit.returncode == 0, fit.stderr
    clf = joblib.load(files / "m.joblib")
    pred = run_script(["predict", "m.joblib", "obvious.csv"], cwd=files)
    assert pred.returncode == 0, pred.stderr
    assert "4 prompts: 0 sent, 4 from the cache" in pred.stderr
    got = np.array(
        [[float(r["proba_negative"]), float(r["proba_positive"])] for r in read_rows(pred.stdout)]
    )
    np.testing.assert_allclose(got, clf.predict_proba([t for t, _ in obvious]), atol=1e-5)
    # evaluate (with its report) runs on the embedded model in docs/cli.md.


# ------------------------------------------------------------ issue 18: what a user sees


def test_cache_errors_name_the_options(files):
    # An SQLite file that is not a completion cache: the advice names --cache, the
    # option of the command line, not the estimator's cache= parameter.
    with contextlib.closing(sqlite3.connect(files / "other.sqlite")) as db:
        db.execute("CREATE TABLE notes (body TEXT)")
        db.commit()
    code, out, err = run_main(
        "classify", files / "reviews.csv", "--labels", "positive", "negative",
        "--cache", files / "other.sqlite", *DET,
    )  # fmt: skip
    assert code == 1 and out == ""
    line = error_line(err)
    assert "other.sqlite" in line and "--cache" in line
    assert "cache=" not in line


def test_log_records_of_the_library_are_prefixed_warnings(files):
    # Damaged entries in the cache are reported by the cache's logger; on the command
    # line that is a warning like any other, never a raw log line.
    args = ["classify", "reviews.csv", "--labels", "positive", "negative", "-o", "o.csv"]
    args += ["--cache", "c.sqlite", *DET]
    assert run_script(args, cwd=files).returncode == 0
    with contextlib.closing(sqlite3.connect(files / "c.sqlite")) as db:
        db.execute("UPDATE completions SET data = X'00'")
        db.commit()
    r = run_script(args, cwd=files)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert all(line.startswith("skllmprob: ") for line in lines), r.stderr
    assert any(line.startswith("skllmprob: warning: ") for line in lines), r.stderr
    assert f"{len(TEST)} prompts: {len(TEST)} sent, 0 from the cache" in r.stderr


def test_summary_reports_answers_the_cache_did_not_store(files):
    cache = files / "c.sqlite"
    code, _, err = run_main(
        "classify", files / "train.csv", "--labels", "positive", "negative",
        "--cache", cache, "-o", files / "t.csv", *DET,
    )  # fmt: skip
    assert code == 0, err
    assert f"({len(TRAIN)} entries)" in err and "not stored" not in err
    # From now on the file refuses every new entry (reads still work).
    with contextlib.closing(sqlite3.connect(cache)) as db:
        db.execute(
            "CREATE TRIGGER no_writes BEFORE INSERT ON completions "
            "BEGIN SELECT RAISE(ABORT, 'the test forbids writes'); END"
        )
        db.commit()
    code, _, err = run_main(
        "classify", files / "reviews.csv", "--labels", "positive", "negative",
        "--cache", cache, "-o", files / "r.csv", *DET,
    )  # fmt: skip
    assert code == 0, err
    summary = err.strip().splitlines()[-1]
    assert summary.startswith(f"skllmprob: {len(TEST)} prompts: {len(TEST)} sent"), err
    assert summary.endswith(
        f"({len(TRAIN)} entries; {len(TEST)} of the {len(TEST)} answers received were not stored)"
    ), err
    assert all(line.startswith("skllmprob: ") for line in err.splitlines()), err


def test_output_keeps_the_mode_of_the_file_it_replaces(files):
    classify = ["classify", files / "reviews.csv", "--labels", "positive", "negative", *DET]
    for mode in (0o600, 0o640):
        out = files / f"out{mode:o}.csv"
        out.write_text("old\n")
        out.chmod(mode)
        code, _, err = run_main(*classify, "-o", out)
        assert code == 0, err
        assert out.stat().st_mode & 0o777 == mode
        assert read_rows(out.read_text())[0]["id"] == "0"
    # A new file: 0644 less the umask, as before.
    umask = os.umask(0)
    os.umask(umask)
    code, _, err = run_main(*classify, "-o", files / "new.csv")
    assert code == 0, err
    assert (files / "new.csv").stat().st_mode & 0o777 == 0o644 & ~umask
    # The model file of fit as well.
    model = files / "m.joblib"
    model.write_bytes(b"")
    model.chmod(0o640)
    code, _, err = run_main("fit", files / "train.csv", "-o", model, *DET)
    assert code == 0, err
    assert model.stat().st_mode & 0o777 == 0o640
    assert isinstance(joblib.load(model), LogprobClassifier)


def test_sigterm_is_handled_like_sigint(files):
    cache = files / "c.sqlite"
    args = ["classify", "test.csv", "--labels", "positive", "negative", *DET, "-o", "o.csv"]
    args += ["--cache", str(cache)]
    code, err = stop_after_two_answers(files, args, cache, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, err
    m = re.fullmatch(
        r"skllmprob: terminated\. The (\d+) answers received before the interruption are "
        r"in the cache; running the same command again sends only the rest\.\n",
        err,
    )
    assert m, err
    assert not (files / "o.csv").exists()
    # The usage statistics of the run reached the file: its requests count as misses.
    n = int(m[1])
    assert LogprobClassifier(cache=str(cache)).cache_info().total_misses == n
    again = run_script(args, cwd=files)
    assert again.returncode == 0, again.stderr
    assert f"{len(TEST)} prompts: {len(TEST) - n} sent, {n} from the cache" in again.stderr


def test_a_password_in_base_url_is_never_shown(files, stub):
    # A server that is not there: the error names the URL without its password.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [
        "classify", files / "reviews.csv", "--labels", "positive", "negative", "--model", "m",
        "--base-url", f"http://bob:S3cret-Pw@127.0.0.1:{port}/v1", "--max-retries", "0",
    ]  # fmt: skip
    code, _, err = run_main(*args)
    assert code == 1
    line = error_line(err)
    assert f"http://bob:***@127.0.0.1:{port}/v1" in line
    assert "s3cret" not in line.lower()
    code, _, err = run_main(*args, "--traceback")
    assert code == 1 and "s3cret" not in err.lower() and "Traceback" in err
    # report.md shows the command, and with it the URL: without the password.
    url = stub.base_url.replace("http://", "http://bob:S3cret-Pw@")
    code, out, err = run_main(
        "evaluate", files / "test.csv", "--model", "stub-model", "--base-url", url,
        "--no-baseline", "--report", files / "rep",
    )  # fmt: skip
    assert code == 0, err
    md = (files / "rep" / "report.md").read_text()
    assert "bob:***@127.0.0.1" in md
    assert "s3cret" not in (md + out + err).lower()


def test_one_pass_per_output(files):
    # evaluate with a learned calibration: one lookup of each training text (fit) and
    # one of each test text, whose answers give the calibrated and the uncalibrated
    # probabilities, the predictions and the coverage; no second pass answered by
    # the cache, no clone fitted again.
    cache = files / "c.sqlite"
    code, out, err = run_main(
        "evaluate", files / "test.csv", "--train", files / "train.csv", "--cache", cache,
        "--no-baseline", *DET,
    )  # fmt: skip
    assert code == 0, err
    assert "deterministic, calibration=bias" in out and "calibration=none" in out
    info = LogprobClassifier(cache=str(cache)).cache_info()
    assert (info.misses, info.hits) == (len(TRAIN) + len(TEST), 0)
    # classify, with the prompt evaluate used (its labels in sorted order): one pass,
    # answered by the cache.
    code, out, err = run_main(
        "classify", files / "reviews.csv", "--labels", "negative", "positive",
        "--cache", cache, *DET,
    )  # fmt: skip
    assert code == 0, err
    info = LogprobClassifier(cache=str(cache)).cache_info()
    assert (info.misses, info.hits) == (len(TRAIN) + len(TEST), len(TEST))


def test_context_overflow_names_the_data_row_and_the_option(files, monkeypatch):
    # A backend's ContextOverflowError: the estimator finds the row of X, the command
    # line names it as a data row of the input and gives the option's CLI form.
    from skllmprob.exceptions import ContextOverflowError

    def too_long(self, prompts, query, *, on_result):
        raise ContextOverflowError(
            "a prompt is 5000 tokens long, more than the context of n_ctx=4096 tokens "
            "holds. Nothing was evaluated.",
            "Pass a larger context, e.g. DeterministicBackend(n_ctx=8192).",
            prompt=prompts[2],
            n_tokens=5000,
            n_ctx=4096,
            suggested_n_ctx=8192,
        )

    monkeypatch.setattr(DeterministicBackend, "complete", too_long)
    code, out, err = run_main("classify", files / "reviews.csv", "--labels", "a", "b", *DET)
    assert code == 1 and out == ""
    line = error_line(err)
    assert "data row 3 of the input" in line
    assert "--backend-option n_ctx=8192" in line
    assert "backend_options" not in line and "DeterministicBackend(" not in line


def test_context_overflow_advice_names_the_option(files, monkeypatch):
    # The advice of a backend whose context is too small, as the command line takes it.
    def too_long(self, prompts, query, *, on_result):
        raise InputError(
            "a prompt is 5000 tokens long (plus 1 label tokens), more than the context of "
            "n_ctx=4096 tokens holds; it ends with 'Answer:'. Pass a larger context, e.g. "
            "backend_options={'n_ctx': 8192} (the model was trained on up to 32768), or "
            "shorten the text. Nothing was evaluated."
        )

    monkeypatch.setattr(DeterministicBackend, "complete", too_long)
    code, out, err = run_main("classify", files / "reviews.csv", "--labels", "a", "b", *DET)
    assert code == 1 and out == ""
    line = error_line(err)
    assert "Pass a larger context, e.g. --backend-option n_ctx=8192 (the model" in line
    assert "backend_options" not in line


def test_descriptions_file_reaches_the_prompt_and_the_saved_model(files):
    write_csv(
        files / "desc.csv",
        ["label", "description"],
        [("positive", "the reviewer liked it"), ("negative", "the reviewer did not")],
    )
    model = files / "m.joblib"
    code, _, err = run_main(
        "fit", files / "train.csv", "-o", model, "--descriptions", files / "desc.csv", *DET
    )
    assert code == 0, err
    clf = joblib.load(model)
    assert clf.descriptions == {
        "positive": "the reviewer liked it",
        "negative": "the reviewer did not",
    }
    (prompt,) = clf.render_prompts(["fine"])
    assert "negative (the reviewer did not), positive (the reviewer liked it)" in prompt
    code, out, err = run_main(
        "classify", files / "reviews.csv", "--labels", "positive", "negative",
        "--descriptions", files / "desc.csv", "--no-cache", *DET,
    )  # fmt: skip
    assert code == 0, err
    got = [[float(r["proba_negative"]), float(r["proba_positive"])] for r in read_rows(out)]
    same = LogprobClassifier(
        labels=["positive", "negative"],
        descriptions=clf.descriptions,
        backend="deterministic",
        cache=False,
    ).fit(None, None)
    np.testing.assert_allclose(got, same.predict_proba([t for t, _ in TEST]), atol=1e-5)
    plain = same.set_params(descriptions=None).fit(None, None)
    assert not np.allclose(got, plain.predict_proba([t for t, _ in TEST]), atol=1e-5)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([("neutral", "neither")], "descriptions has entries for ['neutral'], which are not"),
        ([("positive", "a"), ("positive", "b")], "line 3: the label 'positive' is described"),
    ],
)
def test_bad_descriptions_file_is_one_error_line_before_any_request(files, rows, message):
    write_csv(files / "desc.csv", ["label", "description"], rows)
    code, _, err = run_main(
        "classify", files / "reviews.csv", "--labels", "positive", "negative",
        "--descriptions", files / "desc.csv", "--backend", "openai", "--model", "m",
        "--base-url", "http://127.0.0.1:9/v1",
    )  # fmt: skip
    assert code != 0
    assert message in error_line(err)
