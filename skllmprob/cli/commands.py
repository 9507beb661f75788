"""The subcommands ``classify``, ``fit`` and ``predict`` (``evaluate`` is in
:mod:`skllmprob.cli.evaluate`). Each takes a :class:`~skllmprob.cli.run.Run` and
returns the exit status."""

from __future__ import annotations

import numpy as np

from .csvio import CsvTable, check_writable, read_csv, write_csv
from .estimator import (
    Scored,
    build_classifier,
    check_output_columns,
    class_order,
    coverage_note,
    load_model,
    save_model,
    score,
    scored_table,
    use_loaded,
)
from .inputs import (
    UsageError,
    check_known,
    check_text_column,
    features,
    labelled,
    read_examples,
    read_input,
    resolve_labels,
)
from .parser import EXIT_OK
from .run import Run

__all__ = ["cmd_classify", "cmd_fit", "cmd_predict"]


def _write_scored(run: Run, table: CsvTable, clf, scored: Scored) -> None:
    order = class_order(clf.labels, clf.classes_)
    header, rows = scored_table(table, order, clf.classes_, scored)
    write_csv(run.args.output, header, rows, stdout=run.stdout)
    if run.args.output != "-":
        run.say(f"wrote {len(table)} rows to {run.args.output}")


def cmd_classify(run: Run) -> int:
    args = run.args
    prompt, fields, table, X = read_input(args, args.input, run.stdin)
    examples, labels = read_examples(args, fields, args.labels)
    if labels is None:
        raise UsageError("give the candidate labels with --labels (or few-shot --examples).")
    check_writable(args.output)
    check_output_columns(table, class_order(labels, sorted(labels)))  # before any request

    clf = build_classifier(
        run, labels=labels, prompt=prompt, examples=examples, calibration=args.calibration
    )
    clf.fit(None, None)
    scored = score(clf, X)
    _write_scored(run, table, clf, scored)
    coverage_note(run, float(np.mean(scored.coverage)))
    return EXIT_OK


def _fit_details(clf, calibration: str) -> str:
    """The learned correction, for the summary of ``fit``."""
    if calibration == "threshold":
        return f" (threshold {clf.threshold_:.3f} on P({clf.classes_[1]}))"
    if calibration == "none":
        return ""
    offsets = ", ".join(f"{c} {b:+.3f}" for c, b in zip(clf.classes_, clf.bias_, strict=True))
    temperature = f"; temperature {clf.temperature_:.3f}" if clf.temperature_ != 1.0 else ""
    return f" (offsets: {offsets}{temperature})"


def cmd_fit(run: Run) -> int:
    args = run.args
    prompt, fields, table, X = read_input(args, args.train, run.stdin)
    y = labelled(table, args.label_column, option="--label-column")
    labels, source = resolve_labels(args.labels, [(table, y)])
    check_known(table, y, labels, source)
    examples, _ = read_examples(args, fields, labels, source)
    check_writable(args.output)

    clf = build_classifier(
        run,
        labels=args.labels,
        prompt=prompt,
        examples=examples,
        calibration=args.calibration,
        scoring=args.scoring,
    )
    clf.fit(X, y)
    save_model(clf, run, args.output)
    run.say(
        f"fitted on {len(table)} rows of {table.name}: labels {', '.join(map(str, clf.classes_))};"
        f" calibration {args.calibration}{_fit_details(clf, args.calibration)}; mean label "
        f"coverage {clf.coverage_:.3f}; saved to {args.output}"
    )
    coverage_note(run, float(clf.coverage_), clf)
    return EXIT_OK


def cmd_predict(run: Run) -> int:
    args = run.args
    clf = load_model(args.model_file)
    fields = tuple(clf.prompt_renderer_.row_fields)
    check_text_column(fields, args.text_column)
    table = read_csv(args.input, stdin=run.stdin)
    X = features(table, fields, args.text_column)
    check_output_columns(table, class_order(clf.labels, clf.classes_))
    check_writable(args.output)
    use_loaded(run, clf)
    scored = score(clf, X)
    _write_scored(run, table, clf, scored)
    coverage_note(run, float(np.mean(scored.coverage)), clf)
    return EXIT_OK
