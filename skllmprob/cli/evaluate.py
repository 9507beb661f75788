"""The ``evaluate`` subcommand: metrics of the classifier, of its answers before
calibration and of a TF-IDF + logistic regression baseline, and the report."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from .._secrets import mask_url
from ..exceptions import InputError
from . import inputs
from .csvio import CsvTable, read_csv, write_csv
from .estimator import (
    backend_name,
    build_classifier,
    class_order,
    load_model,
    model_name,
    score,
    scored_table,
    use_loaded,
)
from .inputs import UsageError
from .parser import EXIT_OK, PROG, ZERO_SHOT_CALIBRATIONS
from .run import Run

__all__ = ["cmd_evaluate"]


@dataclass
class _Data:
    """The labelled files of an evaluation."""

    fields: tuple[str, ...]
    test: CsvTable
    X_test: object
    y_test: list[str]
    train: CsvTable | None = None
    X_train: object = None
    y_train: list[str] | None = None


def _check_options(args) -> None:
    inputs.check_labels_option(args.labels)
    if args.load:
        given = [
            o
            for o, v in (
                ("--model", args.model),
                ("--prompt-file", args.prompt_file),
                ("--examples", args.examples),
                ("--calibration", args.calibration),
                ("--labels", args.labels),
            )
            if v
        ]
        if given:
            raise UsageError(
                f"--load evaluates a saved classifier with its own settings; drop "
                f"{', '.join(given)}."
            )
    if args.report:
        from ..report import require_matplotlib

        require_matplotlib()  # before any request
        if Path(args.report).exists() and not Path(args.report).is_dir():
            raise InputError(f"--report {args.report} is a file; give a folder.")


def _read_data(run: Run, fields: tuple[str, ...]) -> _Data:
    args = run.args
    inputs.check_text_column(fields, args.text_column)
    test = read_csv(args.test, stdin=run.stdin)
    data = _Data(
        fields,
        test,
        inputs.features(test, fields, args.text_column),
        inputs.labelled(test, args.label_column, option="--label-column"),
    )
    if args.train:
        data.train = read_csv(args.train, stdin=run.stdin)
        data.X_train = inputs.features(data.train, fields, args.text_column)
        data.y_train = inputs.labelled(data.train, args.label_column, option="--label-column")
    return data


def _labels(run: Run, clf, data: _Data) -> tuple[list[str], str]:
    """The candidate labels, checked against every labelled file."""
    if clf is not None:
        labels, source = [str(c) for c in clf.classes_], f"the classes of {run.args.load}"
    else:
        files = [(data.test, data.y_test)]
        if data.train is not None:
            files.insert(0, (data.train, data.y_train))
        labels, source = inputs.resolve_labels(run.args.labels, files)
    if data.train is not None:
        inputs.check_known(data.train, data.y_train, labels, source)
    inputs.check_known(data.test, data.y_test, labels, source)
    return labels, source


def _new_classifier(run: Run, prompt, data: _Data, labels, source):
    args = run.args
    calibration = args.calibration or ("bias" if data.train is not None else "none")
    if calibration not in ZERO_SHOT_CALIBRATIONS and data.train is None:
        raise UsageError(
            f"--calibration {calibration} learns from labelled samples; give --train."
        )
    examples, _ = inputs.read_examples(args, data.fields, labels, source)
    clf = build_classifier(
        run,
        labels=labels,
        prompt=prompt,
        examples=examples,
        calibration=calibration,
        scoring=args.scoring,
    )
    if calibration in ZERO_SHOT_CALIBRATIONS:
        clf.fit(None, None)
    else:
        clf.fit(data.X_train, data.y_train)
    return clf


def _how_trained(run: Run, clf, data: _Data) -> str:
    calibration = clf.calibration
    if run.args.load:
        return f"loaded from {run.args.load}"
    if calibration not in ZERO_SHOT_CALIBRATIONS:
        return f"calibration learned on {data.train.name if data.train else 'its training set'}"
    if calibration.startswith("contextual"):
        return "zero-shot, calibrated on content-free inputs"
    return "zero-shot"


def _results(run: Run, clf, data: _Data):
    """The classifier's results, and those of its answers before calibration."""
    from ..report import Evaluated

    calibration = clf.calibration
    scored = score(clf, data.X_test, raw=calibration != "none")
    name = model_name(clf)
    results = [
        Evaluated(
            f"{name}, calibration={calibration}",
            scored.proba,
            scored.pred,
            scored.coverage,
            note=_how_trained(run, clf, data),
        )
    ]
    if scored.raw is not None:
        results.append(
            Evaluated(
                f"{name}, calibration=none",
                scored.raw,
                clf.classes_[scored.raw.argmax(axis=1)],
                scored.coverage,
                note="the same answers before calibration",
            )
        )
    return results, scored


def cmd_evaluate(run: Run) -> int:
    args = run.args
    _check_options(args)
    clf = load_model(args.load) if args.load else None
    prompt = None if clf is not None else inputs.read_prompt(args.prompt_file)
    fields = (
        tuple(clf.prompt_renderer_.row_fields) if clf is not None else inputs.row_fields(prompt)
    )
    data = _read_data(run, fields)
    labels, source = _labels(run, clf, data)
    if clf is None:
        clf = _new_classifier(run, prompt, data, labels, source)
    else:
        use_loaded(run, clf)

    results, scored = _results(run, clf, data)
    baseline_note = ""
    if not args.no_baseline:
        baseline, baseline_note = _baseline(data, clf.classes_)
        if baseline is not None:
            results.append(baseline)
        elif baseline_note:
            run.warn(baseline_note)

    _print_evaluation(run, data, results, clf.classes_)
    if args.report:
        written = _write_report(run, Path(args.report), data, results, clf, scored, baseline_note)
        run.say(f"report written to {written}")
    return EXIT_OK


# ----------------------------------------------------------------------- baseline


def _texts(X, fields) -> list[str]:
    if fields == ("text",):
        return list(X)
    return ["\n".join(str(X[f].iloc[i]) for f in fields) for i in range(len(X))]


def _baseline(data: _Data, classes):
    """TF-IDF + logistic regression: trained on the training file, or cross-validated
    on the test file."""
    from ..report import Evaluated, tfidf_baseline

    test_texts = _texts(data.X_test, data.fields)
    if data.train is not None:
        train_texts = _texts(data.X_train, data.fields)
        proba, note = tfidf_baseline(train_texts, data.y_train, test_texts, classes)
        note = note and f"{note} on {data.train.name} ({len(data.train)} rows)"
    else:
        proba, note = tfidf_baseline(None, None, test_texts, classes, test_y=data.y_test)
        note = note and f"{note} on {data.test.name} (no --train given)"
    if proba is None:
        return None, note
    return Evaluated(
        "TF-IDF + logistic regression", proba, classes[proba.argmax(axis=1)], note=note
    ), ""


# ------------------------------------------------------------------------ output


def _print_evaluation(run: Run, data: _Data, results, classes) -> None:
    from ..report import summary_text

    run.stdout.write(
        f"{data.test.name}: {len(data.y_test)} rows, {len(classes)} labels "
        f"({', '.join(map(str, classes))})\n\n"
    )
    run.stdout.write(summary_text(results, data.y_test, classes, n_bins=run.args.bins))
    run.stdout.flush()


def _about(run: Run, clf) -> list[str]:
    """How the results were made, for the report."""
    u = run.usage
    command = " ".join([PROG, *map(shlex.quote, run.argv)])
    return [
        f"model: {model_name(clf)}; backend: {backend_name(clf)}",
        f"calibration: {clf.calibration}; prompt: "
        + ("default" if clf.prompt is None else "custom (--prompt-file)")
        + f"; few-shot examples: {len(clf.examples or ())}",
        f"requests: {u.requests} sent, {u.cache_hits} answered by the cache; "
        f"{u.prompt_tokens} prompt and {u.completion_tokens} completion tokens",
        "predictions: `predictions.csv`",
        f"skllmprob {__version__}; command: `{mask_url(command)}`",
    ]


def _write_report(run: Run, folder: Path, data: _Data, results, clf, scored, baseline_note):
    from ..report import write_report

    folder.mkdir(parents=True, exist_ok=True)
    order = class_order(clf.labels, clf.classes_)
    header, rows = scored_table(data.test, order, clf.classes_, scored)
    write_csv(folder / "predictions.csv", header, rows)
    train = data.train
    described = f"Test set: `{data.test.name}`, {len(data.y_test)} rows; " + (
        f"training set: `{train.name}`, {len(train)} rows." if train else "no training set."
    )
    return write_report(
        folder,
        results,
        data.y_test,
        clf.classes_,
        n_bins=run.args.bins,
        data=described,
        notes=[baseline_note] if baseline_note else [],
        about=_about(run, clf),
    )
