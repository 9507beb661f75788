"""The ``skllmprob`` command: classify, fit, predict and evaluate CSV files.

::

    skllmprob classify reviews.csv --labels positive negative > scored.csv
    skllmprob fit train.csv --output model.joblib --calibration bias
    skllmprob predict model.joblib reviews.csv --output scored.csv
    skllmprob evaluate test.csv --train train.csv --report report/
    skllmprob demo

Every subcommand builds a :class:`~skllmprob.LogprobClassifier` from its options and
uses only its public methods. Errors are reported as one line on standard error,
``skllmprob: error: ...``, with exit status 1 (2 for a malformed command line, 130
when interrupted); completions received before an error stay in the cache, so the
same command run again only sends what is missing. Cache statistics and messages go
to standard error, CSV output to a file or standard output (``-``).

Examples
--------
>>> import io
>>> out = io.StringIO()
>>> main(["--version"], stdout=out)
0
>>> out.getvalue().startswith("skllmprob ")
True
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from . import __version__
from . import calibration as _calibration
from . import classifier as _classifier
from ._csvio import CsvTable, check_writable, read_csv, write_csv
from .exceptions import (
    BackendError,
    BackendUnavailableError,
    ConfigurationError,
    InputError,
    PartialResultsError,
    SkllmprobError,
)
from .usage import Usage

__all__ = ["main"]

PROG = "skllmprob"
# The choices follow the estimator, so that a new calibration is a new option value.
CALIBRATIONS = tuple(_classifier.CALIBRATIONS)
_LABELLED = getattr(_classifier, "_LABELLED_CALIBRATIONS", ("bias", "affine", "threshold"))
ZERO_SHOT_CALIBRATIONS = tuple(c for c in CALIBRATIONS if c not in _LABELLED)
THRESHOLD_METRICS = tuple(
    getattr(_calibration, "THRESHOLD_METRICS", None) or _classifier._THRESHOLD_METRICS
)
LOW_COVERAGE = 0.5
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(SkllmprobError, ValueError):
    """Options that do not fit together."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, like every other error."""

    def error(self, message: str):  # type: ignore[override]
        hint = ""
        if "required: INPUT" in message or "required: TRAIN" in message:
            hint = (
                " (options that take several values, such as --labels, must come after "
                "the file names)"
            )
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}{hint}; see '{self.prog} --help'.\n")


# ---------------------------------------------------------------------------- parser


def _number_type(convert, kind: str, valid, requirement: str):
    """An argparse ``type=``: ``convert(text)``, then ``valid(value)``, each failure
    one message ("'x' is not a whole number", "0 must be at least 1")."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind}") from None
        if not valid(value):
            raise argparse.ArgumentTypeError(f"{text} {requirement}")
        return value

    return parse


_positive_int = _number_type(int, "a whole number", lambda v: v >= 1, "must be at least 1")
_non_negative_int = _number_type(int, "a whole number", lambda v: v >= 0, "must be 0 or more")
_positive_float = _number_type(
    float, "a number", lambda v: v > 0 and math.isfinite(v), "must be a positive number"
)


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"{text!r} is not of the form KEY=VALUE")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, value


def _common_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("output and messages")
    g.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bar, summary or statistics"
    )
    g.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar (default: on a terminal, for 50 prompts or more; "
        "needs tqdm, extra 'progress')",
    )
    g.add_argument("--traceback", action="store_true", help="on an error, show the full traceback")
    return p


def _runtime_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("cache and server")
    g.add_argument(
        "--cache",
        metavar="PATH",
        help="SQLite file of the completion cache (default: $SKLLMPROB_CACHE_DIR or the "
        "user cache folder)",
    )
    g.add_argument(
        "--no-cache",
        action="store_true",
        help="keep no completions after the run (nothing is read from or written to "
        "the persistent cache)",
    )
    g.add_argument(
        "--base-url",
        metavar="URL",
        help="an OpenAI-compatible server, e.g. http://localhost:8000/v1 (default: OpenAI, "
        "or $OPENAI_BASE_URL)",
    )
    g.add_argument(
        "--api-key-env",
        metavar="NAME",
        help="read the API key from this environment variable (default: OPENAI_API_KEY); "
        "keys are never taken on the command line",
    )
    g.add_argument(
        "--max-concurrency",
        type=_positive_int,
        metavar="N",
        help="requests in flight at once (server backends; default 8)",
    )
    g.add_argument(
        "--timeout",
        type=_positive_float,
        metavar="SECONDS",
        help="seconds per request before it is retried (default 60)",
    )
    g.add_argument(
        "--max-retries",
        type=_non_negative_int,
        metavar="N",
        help="retries per request on 429, 5xx and timeouts (default 5)",
    )
    return p


def _model_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        metavar="MODEL",
        help="a model name on an OpenAI-compatible server (e.g. gpt-4o-mini) or a .gguf "
        "file (default: the embedded Gemma 3 270M, extra 'local')",
    )
    g.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "llamacpp", "openai", "deterministic"],
        help="where log-probabilities come from (default: auto, from --model and "
        "--base-url); 'deterministic' is an offline stand-in for tests",
    )
    g.add_argument(
        "--endpoint",
        default="auto",
        choices=["auto", "chat", "completions"],
        help="chat messages or plain text completion (default: the backend's choice)",
    )
    g.add_argument(
        "--top-logprobs",
        type=_positive_int,
        default=20,
        metavar="K",
        help="top tokens to request per text (default 20; OpenAI allows at most 20)",
    )
    g.add_argument(
        "--option-codes",
        default="auto",
        choices=["auto", "never", "letters", "numbers"],
        help="answer with letter codes when labels share a first token (default auto)",
    )
    g.add_argument(
        "--backend-option",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a further backend setting, e.g. n_ctx=8192 (VALUE read as JSON when it "
        "parses); may be repeated",
    )
    return p


def _prompt_options(*, label_column: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("labels and prompt")
    g.add_argument(
        "--labels",
        nargs="+",
        metavar="LABEL",
        help="the candidate labels, in the order the prompt lists them",
    )
    g.add_argument(
        "--text-column",
        metavar="NAME",
        help="the column holding the text (default: text)",
    )
    if label_column:
        g.add_argument(
            "--label-column",
            default="label",
            metavar="NAME",
            help="the column holding the true label (default: label)",
        )
    g.add_argument(
        "--prompt-file",
        metavar="FILE",
        help="a prompt template: a text file with {text} (or {column} fields) and "
        "optionally {labels} and {examples}; a final newline is dropped",
    )
    g.add_argument(
        "--examples",
        metavar="CSV",
        help="few-shot examples: a CSV file with the text column and a 'label' column "
        "(see --examples-label-column)",
    )
    g.add_argument(
        "--examples-label-column",
        default="label",
        metavar="NAME",
        help="the label column of --examples (default: label)",
    )
    return p


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``skllmprob`` command."""
    parser = _Parser(
        prog=PROG,
        description="Classify text with any LLM that exposes token log-probabilities.",
        epilog="Run 'skllmprob COMMAND --help' for the options of a command. Exit status: "
        "0 success, 1 error, 2 bad command line, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    common, runtime, model = _common_options(), _runtime_options(), _model_options()

    p = sub.add_parser(
        "classify",
        parents=[_prompt_options(label_column=False), model, runtime, common],
        help="add label probabilities, the predicted label and the label coverage to a CSV",
        description="Classify every row of INPUT (zero-shot, or with few-shot --examples) "
        "and write it back with one column proba_<label> per label, 'predicted' and "
        "'coverage' (the probability the model put on any label).",
    )
    p.add_argument("input", metavar="INPUT", help="CSV file with a header ('-': stdin)")
    p.add_argument(
        "-o",
        "--output",
        default="-",
        metavar="FILE",
        help="where to write ('-', the default: stdout)",
    )
    p.add_argument(
        "--calibration",
        default="none",
        choices=ZERO_SHOT_CALIBRATIONS,
        help="'contextual' corrects the label bias with content-free inputs (no labels "
        "needed); learned calibrations are for 'skllmprob fit'",
    )
    p.set_defaults(run=_cmd_classify)

    p = sub.add_parser(
        "fit",
        parents=[_prompt_options(label_column=True), model, runtime, common],
        help="learn the calibration from labelled samples and save the classifier",
        description="Fit a classifier on TRAIN (text and label columns): the labels, the "
        "prompt and the calibration learned from the samples; save it with joblib for "
        "'skllmprob predict'.",
    )
    p.add_argument("train", metavar="TRAIN", help="labelled CSV file ('-': stdin)")
    p.add_argument(
        "-o", "--output", required=True, metavar="FILE", help="where to save the model (.joblib)"
    )
    p.add_argument(
        "--calibration",
        default="bias",
        choices=CALIBRATIONS,
        help="how to correct the model's label bias (default: bias)",
    )
    p.add_argument(
        "--scoring",
        default="accuracy",
        choices=THRESHOLD_METRICS,
        help="the metric --calibration threshold maximizes (default: accuracy)",
    )
    p.set_defaults(run=_cmd_fit)

    p = sub.add_parser(
        "predict",
        parents=[runtime, common],
        help="classify a CSV with a classifier saved by 'skllmprob fit'",
        description="Load MODEL (saved by 'skllmprob fit') and classify INPUT like "
        "'skllmprob classify'. Only load model files you trust: they are pickles.",
    )
    p.add_argument("model_file", metavar="MODEL", help="a .joblib file from 'skllmprob fit'")
    p.add_argument("input", metavar="INPUT", help="CSV file with a header ('-': stdin)")
    p.add_argument(
        "-o",
        "--output",
        default="-",
        metavar="FILE",
        help="where to write ('-', the default: stdout)",
    )
    p.add_argument(
        "--text-column", metavar="NAME", help="the column holding the text (default: text)"
    )
    p.set_defaults(run=_cmd_predict)

    p = sub.add_parser(
        "evaluate",
        parents=[_prompt_options(label_column=True), model, runtime, common],
        help="metrics, plots and a report against a TF-IDF baseline",
        description="Score the classifier on TEST (text and label columns): accuracy, "
        "macro F1, log loss, Brier score, expected calibration error and a confusion "
        "matrix, next to a TF-IDF + logistic regression baseline. With --train, the "
        "calibration is learned on TRAIN and the baseline trained on it; without, the "
        "classifier is zero-shot and the baseline is cross-validated on TEST.",
    )
    p.add_argument("test", metavar="TEST", help="labelled CSV file ('-': stdin)")
    p.add_argument("--train", metavar="TRAIN", help="labelled CSV file to learn from")
    p.add_argument(
        "--calibration",
        default=None,
        choices=CALIBRATIONS,
        help="(default: bias with --train, none without)",
    )
    p.add_argument(
        "--scoring",
        default="accuracy",
        choices=THRESHOLD_METRICS,
        help="the metric --calibration threshold maximizes (default: accuracy)",
    )
    p.add_argument(
        "--load",
        metavar="MODEL",
        help="evaluate a classifier saved by 'skllmprob fit' instead of building one",
    )
    p.add_argument(
        "--report",
        metavar="DIR",
        help="write report.md, reliability.png, confusion.png and predictions.csv here "
        "(plots need matplotlib, extra 'plot')",
    )
    p.add_argument(
        "--no-baseline", action="store_true", help="skip the TF-IDF + logistic regression model"
    )
    p.add_argument(
        "--bins", type=_positive_int, default=10, metavar="N", help="bins of the ECE (default 10)"
    )
    p.set_defaults(run=_cmd_evaluate)

    sub.add_parser(
        "demo",
        add_help=False,
        help="the demo: 40 movie reviews on the embedded model (see 'skllmprob demo --help')",
    )
    return parser


# --------------------------------------------------------------------------- running


class _Run:
    """Streams, options and the bookkeeping of one command."""

    def __init__(self, args, argv, stdin, stdout, stderr) -> None:
        self.args = args
        self.argv = list(argv)
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.usage = Usage()
        self.cache_setting: bool | str = True
        self.cache_is_temporary = False
        self.stack = contextlib.ExitStack()
        self.classifier = None

    @property
    def quiet(self) -> bool:
        return bool(getattr(self.args, "quiet", False))

    def say(self, message: str) -> None:
        if not self.quiet:
            self.stderr.write(f"{PROG}: {message}\n")
            self.stderr.flush()

    def warn(self, message: str) -> None:
        if not self.quiet:
            self.stderr.write(f"{PROG}: warning: {_one_line(message)}\n")
            self.stderr.flush()

    def progress(self):
        if self.quiet:
            return False
        value = getattr(self.args, "progress", None)
        return "auto" if value is None else bool(value)

    def setup_cache(self) -> None:
        args = self.args
        if getattr(args, "no_cache", False):
            if getattr(args, "cache", None):
                raise UsageError("--cache and --no-cache contradict each other; give one.")
            folder = self.stack.enter_context(
                tempfile.TemporaryDirectory(prefix="skllmprob-", ignore_cleanup_errors=True)
            )
            # A throw-away file: within the run, each prompt is still sent only once.
            self.cache_setting = os.path.join(folder, "run.sqlite")
            self.cache_is_temporary = True
        elif getattr(args, "cache", None):
            self.cache_setting = args.cache
        else:
            self.cache_setting = True

    def record(self, clf, before: Usage | None) -> None:
        """Add what ``clf`` did since ``before`` (a copy of ``usage_.total``)."""
        after = clf.usage_.total
        delta = Usage()
        for name in delta.as_dict():
            setattr(delta, name, getattr(after, name) - (getattr(before, name) if before else 0))
        self.usage.add(delta)

    def cache_description(self) -> str:
        if self.cache_is_temporary or self.cache_setting is False:
            return "cache off"
        from .cache import open_cache

        try:
            info = open_cache(self.cache_setting).info()
        except Exception:  # statistics must never turn success into failure
            return "cache unavailable"

        def get(name):
            return info.get(name) if isinstance(info, dict) else getattr(info, name, None)

        return f"cache {get('path')} ({get('entries') or 0} entries)"

    def report_usage(self) -> None:
        u = self.usage
        if self.quiet or u.prompts == 0:
            return
        self.say(
            f"{u.prompts} prompts: {u.requests} sent, {u.cache_hits} from the cache"
            + (f", {u.failed} failed" if u.failed else "")
            + f"; {u.prompt_tokens} prompt + {u.completion_tokens} completion tokens"
            + (
                f" ({u.cached_tokens} of them from the model's prefix cache)"
                if u.cached_tokens
                else ""
            )
            + (f", {u.saved_tokens} tokens saved by the cache" if u.saved_tokens else "")
            + f"; {self.cache_description()}"
        )


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _usage_copy(clf) -> Usage:
    tracker = getattr(clf, "usage_", None)
    copy = Usage()
    if tracker is not None:
        copy.add(tracker.total)
    return copy


def main(
    argv: Sequence[str] | None = None,
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run the ``skllmprob`` command line.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments (default: ``sys.argv[1:]``).
    stdin, stdout, stderr : text streams, optional
        Default to the process's standard streams.

    Returns
    -------
    int
        The exit status: 0 on success, 1 on an error, 2 for a malformed command
        line, 130 when interrupted.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    stdin = sys.stdin if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr

    if argv and argv[0] == "demo":
        from .demo import main as demo_main

        try:
            with contextlib.redirect_stderr(stderr):
                return int(demo_main(argv[1:], out=stdout) or 0)
        except SystemExit as e:
            return _exit_code(e)
        except (SkllmprobError, ImportError) as e:
            stderr.write(f"{PROG}: error: {_one_line(e)}\n")
            return EXIT_ERROR

    parser = build_parser()
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            args = parser.parse_args(argv)
    except SystemExit as e:
        return _exit_code(e)

    run = _Run(args, argv, stdin, stdout, stderr)
    with warnings.catch_warnings():
        seen: set[str] = set()

        def show(message, category, filename, lineno, file=None, line=None):
            text = _one_line(message)
            if text not in seen:
                seen.add(text)
                run.warn(text)

        warnings.showwarning = show
        try:
            with run.stack:
                run.setup_cache()
                code = args.run(run)
            run.report_usage()
            return code
        except KeyboardInterrupt as e:
            stderr.write(f"{PROG}: interrupted.{_resume_hint(run, e, interrupted=True)}\n")
            return EXIT_INTERRUPTED
        except BrokenPipeError:
            with contextlib.suppress(OSError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, stdout.fileno())
            return EXIT_ERROR
        except Exception as e:
            if args.traceback:
                traceback.print_exc(file=stderr)
            hint = _resume_hint(run, e)
            message = _sentence(_describe(e)) if hint else _describe(e)
            stderr.write(f"{PROG}: error: {message}{hint}\n")
            stderr.flush()
            return EXIT_ERROR


def _exit_code(e: SystemExit) -> int:
    if e.code is None:
        return EXIT_OK
    return e.code if isinstance(e.code, int) else EXIT_ERROR


def _describe(e: BaseException) -> str:
    if isinstance(e, SkllmprobError | ImportError):
        return _one_line(e)
    if isinstance(e, ValueError) and type(e).__name__ == "InvalidParameterError":
        return _one_line(e)
    if isinstance(e, OSError) and e.filename:
        return _one_line(f"{e.filename}: {e.strerror or e}")
    return _one_line(f"{type(e).__name__}: {e} (run with --traceback for the details)")


def _resume_hint(run: _Run, e: BaseException, *, interrupted: bool = False) -> str:
    """What survives a failed run, for failures of the model and interruptions."""
    if not interrupted and (
        not isinstance(e, BackendError) or isinstance(e, BackendUnavailableError)
    ):
        return ""  # not a failure of the model, or nothing could be sent at all
    if run.classifier is None:
        return ""
    usage = getattr(getattr(run.classifier, "usage_", None), "last", None)  # this call
    n = usage.requests if usage is not None else None
    if isinstance(e, PartialResultsError):
        n = e.n_completed
    if n == 0:
        return ""
    if run.cache_is_temporary or run.cache_setting is False:
        return " The answers received so far are not kept (no cache)."
    if n is None:
        kept = "The answers received so far are"
    else:
        event = "interruption" if interrupted else "error"
        noun, verb = ("answer", "is") if n == 1 else ("answers", "are")
        kept = f"The {n} {noun} received before the {event} {verb}"
    return f" {kept} in the cache; running the same command again sends only the rest."


def _sentence(text: str) -> str:
    text = text.rstrip()
    return text if text.endswith((".", "!", "?")) else text + "."


# ------------------------------------------------------------------------ helpers


def _read_prompt(path: str | None) -> str | None:
    if path is None:
        return None
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise InputError(f"{path}: no such file (--prompt-file).") from e
    except UnicodeDecodeError as e:
        raise InputError(f"{path} is not UTF-8 text (--prompt-file).") from e
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e} (--prompt-file).") from e
    if text.endswith("\n"):
        text = text[:-1]
        if text.endswith("\r"):
            text = text[:-1]
    if not text.strip():
        raise InputError(f"{path} is empty (--prompt-file); write a template with {{text}}.")
    return text


def _row_fields(prompt: str | None) -> tuple[str, ...]:
    from .prompts import DEFAULT_PROMPT, template_row_fields

    return template_row_fields(DEFAULT_PROMPT if prompt is None else prompt)


def _check_text_column(fields: tuple[str, ...], text_column: str | None) -> None:
    if fields != ("text",) and text_column is not None:
        raise UsageError(
            f"the prompt reads the columns {', '.join(fields)} by name; --text-column is "
            "for prompts with a single {text} field."
        )


def _features(table: CsvTable, fields: tuple[str, ...], text_column: str | None):
    """``X`` for the classifier: a list of texts, or a DataFrame of the prompt's
    fields."""
    if fields == ("text",):
        return table.column(text_column or "text", option="--text-column")
    for f in fields:
        if f not in table.header:
            raise InputError(
                f"{table.name} has no column {f!r}, which the prompt uses as {{{f}}} (its "
                f"columns: {', '.join(table.header[:20])})."
            )
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


def _labels_of(table: CsvTable, column: str, *, option: str) -> list[str]:
    y = table.column(column, option=option)
    for v, line in zip(y, table.lines, strict=True):
        if v == "":
            raise InputError(
                f"{table.name} line {line}: the label ({column!r}) is empty; fill it or "
                "drop the row."
            )
    return y


def _check_known(table: CsvTable, y: list[str], labels: Sequence[str], source: str) -> None:
    allowed = set(labels)
    for v, line in zip(y, table.lines, strict=True):
        if v not in allowed:
            shown = ", ".join(labels[:20]) + (", ..." if len(labels) > 20 else "")
            raise InputError(
                f"{table.name} line {line}: unknown label {v!r}, not one of {source} "
                f"({shown}); fix the file or add the label."
            )


def _read_examples(args, fields, labels: list[str] | None, source: str = "--labels"):
    """Few-shot examples from --examples, and the labels they imply."""
    if not args.examples:
        return None, labels
    table = read_csv(args.examples, stdin=None)
    y = _labels_of(table, args.examples_label_column, option="--examples-label-column")
    if labels is not None:
        _check_known(table, y, labels, source)
    if fields == ("text",):
        texts = table.column(args.text_column or "text", option="--text-column")
        examples = list(zip(texts, y, strict=True))
    else:
        for f in fields:
            if f not in table.header:
                raise InputError(
                    f"{table.name} has no column {f!r}, which the prompt uses as {{{f}}}."
                )
        columns = {f: table.column(f) for f in fields}
        examples = [({f: columns[f][i] for f in fields}, y[i]) for i in range(len(table))]
    if labels is None:
        labels = sorted(set(y))
    return examples, labels


def _check_labels_arg(labels: list[str] | None) -> None:
    if labels is None:
        return
    dup = sorted({v for v in labels if labels.count(v) > 1})
    if dup:
        raise UsageError(f"--labels lists {', '.join(dup)} more than once.")
    if len(labels) < 2:
        raise UsageError("--labels needs at least two labels.")


def _api_key(args) -> str | None:
    name = getattr(args, "api_key_env", None)
    if not name:
        return None
    value = os.environ.get(name)
    if not value:
        raise UsageError(f"--api-key-env {name}: the environment variable {name} is not set.")
    return value


def _runtime_params(run: _Run) -> dict[str, Any]:
    args = run.args
    params: dict[str, Any] = {"cache": run.cache_setting, "progress": run.progress()}
    for option, name in (
        ("base_url", "base_url"),
        ("max_concurrency", "max_concurrency"),
        ("timeout", "timeout"),
        ("max_retries", "max_retries"),
    ):
        value = getattr(args, option, None)
        if value is not None:
            params[name] = value
    key = _api_key(args)
    if key is not None:
        params["api_key"] = key
    return params


def _build_classifier(run: _Run, *, labels, prompt, examples, calibration, scoring=None):
    from .classifier import LogprobClassifier

    args = run.args
    params: dict[str, Any] = {
        "model": args.model,
        "labels": labels,
        "prompt": prompt,
        "examples": examples,
        "calibration": calibration,
        "backend": args.backend,
        "endpoint": args.endpoint,
        "top_logprobs": args.top_logprobs,
        "option_codes": args.option_codes,
        "backend_options": dict(args.backend_option) or None,
    }
    if scoring is not None:
        params["scoring"] = scoring
    params.update(_runtime_params(run))
    clf = LogprobClassifier(**params)
    run.classifier = clf
    return clf


def _class_order(clf) -> list:
    """The classes in the order of the labels given, else of ``classes_``."""
    classes = list(clf.classes_)
    labels = clf.labels
    if isinstance(labels, dict):
        labels = list(labels)
    if labels is not None:
        order = [c for c in np.asarray(labels, dtype=object).ravel().tolist() if c in classes]
        if sorted(map(str, order)) == sorted(map(str, classes)):
            return order
    return classes


def _scored(run: _Run, clf, X):
    """Probabilities, predictions and coverage: one pass to the backend, then two
    cheap passes answered by the cache."""
    before = _usage_copy(clf)
    proba = clf.predict_proba(X)
    run.record(clf, before)
    pred = clf.predict(X)
    coverage = clf.predict_coverage(X)
    return proba, pred, coverage


def _output_columns(table: CsvTable, clf) -> tuple[list[str], list]:
    order = _class_order(clf)
    names = [f"proba_{c}" for c in order] + ["predicted", "coverage"]
    clash = [n for n in names if n in table.header]
    if clash:
        raise InputError(
            f"{table.name} already has the column(s) {', '.join(clash)}, which the output "
            "adds; rename them first (or classify the original file)."
        )
    return names, order


def _write_scored(run: _Run, table: CsvTable, clf, proba, pred, coverage, dest: str) -> None:
    names, order = _output_columns(table, clf)
    position = {c: i for i, c in enumerate(clf.classes_.tolist())}
    cols = [position[c] for c in order]
    rows = (
        [*row, *(f"{p:.6g}" for p in proba[i, cols]), str(pred[i]), f"{coverage[i]:.6g}"]
        for i, row in enumerate(table.rows)
    )
    write_csv(dest, [*table.header, *names], rows, stdout=run.stdout)


def _coverage_note(run: _Run, coverage: float, clf=None) -> None:
    if math.isnan(coverage) or coverage >= LOW_COVERAGE:
        return
    other = ""
    tokens = getattr(clf, "other_tokens_", None) if clf is not None else None
    if tokens:
        top = sorted(tokens.items(), key=lambda kv: -kv[1])[:5]
        other = "; it answered instead: " + ", ".join(f"{t!r} ({m:.2f})" for t, m in top)
    run.warn(
        f"the model put only {coverage:.0%} of its probability on the labels on average"
        f"{other}. Check the prompt (--prompt-file) and the labels, or give --examples."
    )


def _load_model(path: str):
    from .classifier import LogprobClassifier

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{path}: no such file (the model saved by 'skllmprob fit').")
    import joblib

    try:
        clf = joblib.load(p)
    except Exception as e:
        raise InputError(
            f"{path} is not a model saved by 'skllmprob fit' ({type(e).__name__}: {e})."
        ) from e
    if not isinstance(clf, LogprobClassifier):
        raise InputError(
            f"{path} holds a {type(clf).__name__}, not a LogprobClassifier saved by "
            "'skllmprob fit'."
        )
    if not hasattr(clf, "classes_"):
        raise InputError(f"{path} holds a LogprobClassifier that was never fitted.")
    return clf


def _save_model(clf, path: str) -> None:
    import joblib

    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        joblib.dump(clf, tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _storable(clf, run: _Run):
    """The classifier as it should be saved: no throw-away cache, default progress."""
    params: dict[str, Any] = {"progress": "auto"}
    if run.cache_is_temporary:
        params["cache"] = False
    # set_params on a fitted estimator keeps its fitted attributes.
    return clf.set_params(**params)


# ------------------------------------------------------------------------ commands


def _cmd_classify(run: _Run) -> int:
    args = run.args
    _check_labels_arg(args.labels)
    prompt = _read_prompt(args.prompt_file)
    fields = _row_fields(prompt)
    _check_text_column(fields, args.text_column)
    table = read_csv(args.input, stdin=run.stdin)
    X = _features(table, fields, args.text_column)
    examples, labels = _read_examples(args, fields, args.labels)
    if labels is None:
        raise UsageError("give the candidate labels with --labels (or few-shot --examples).")
    check_writable(args.output)

    clf = _build_classifier(
        run, labels=labels, prompt=prompt, examples=examples, calibration=args.calibration
    )
    _output_columns(table, _Preview(labels))  # a clash is found before any request
    clf.fit(None, None)
    run.record(clf, None)
    proba, pred, coverage = _scored(run, clf, X)
    _write_scored(run, table, clf, proba, pred, coverage, args.output)
    if args.output != "-":
        run.say(f"wrote {len(table)} rows to {args.output}")
    _coverage_note(run, float(np.mean(coverage)))
    return EXIT_OK


class _Preview:
    """Stands in for a fitted classifier when naming the output columns."""

    def __init__(self, labels) -> None:
        self.labels = list(labels)
        self.classes_ = np.array(sorted(self.labels), dtype=object)


def _cmd_fit(run: _Run) -> int:
    args = run.args
    _check_labels_arg(args.labels)
    prompt = _read_prompt(args.prompt_file)
    fields = _row_fields(prompt)
    _check_text_column(fields, args.text_column)
    table = read_csv(args.train, stdin=run.stdin)
    X = _features(table, fields, args.text_column)
    y = _labels_of(table, args.label_column, option="--label-column")
    if args.labels is not None:
        _check_known(table, y, args.labels, "--labels")
    elif len(set(y)) < 2:
        raise InputError(
            f"{table.name} has only the label {y[0]!r}; give the candidate labels with "
            "--labels, or add samples of other labels."
        )
    source = "--labels" if args.labels else f"the labels of {table.name}"
    examples, _ = _read_examples(args, fields, args.labels or sorted(set(y)), source)
    check_writable(args.output)

    clf = _build_classifier(
        run,
        labels=args.labels,
        prompt=prompt,
        examples=examples,
        calibration=args.calibration,
        scoring=args.scoring,
    )
    clf.fit(X, y)
    run.record(clf, None)
    _save_model(_storable(clf, run), args.output)
    details = ""
    if args.calibration not in ("none", "threshold"):
        offsets = ", ".join(f"{c} {b:+.3f}" for c, b in zip(clf.classes_, clf.bias_, strict=True))
        details = f" (offsets: {offsets}"
        if getattr(clf, "temperature_", 1.0) != 1.0:
            details += f"; temperature {clf.temperature_:.3f}"
        details += ")"
    elif args.calibration == "threshold":
        details = f" (threshold {clf.threshold_:.3f} on P({clf.classes_[1]}))"
    run.say(
        f"fitted on {len(table)} rows of {table.name}: labels {', '.join(map(str, clf.classes_))};"
        f" calibration {args.calibration}{details}; mean label coverage {clf.coverage_:.3f}; "
        f"saved to {args.output}"
    )
    _coverage_note(run, float(clf.coverage_), clf)
    return EXIT_OK


def _cmd_predict(run: _Run) -> int:
    args = run.args
    clf = _load_model(args.model_file)
    fields = tuple(clf.prompt_renderer_.row_fields)
    _check_text_column(fields, args.text_column)
    table = read_csv(args.input, stdin=run.stdin)
    X = _features(table, fields, args.text_column)
    _output_columns(table, clf)
    check_writable(args.output)
    runtime = _runtime_params(run)
    if not args.cache and not args.no_cache:
        runtime.pop("cache")  # keep the cache the model was fitted with
        run.cache_setting = clf.cache
    clf.set_params(**runtime)
    run.classifier = clf
    proba, pred, coverage = _scored(run, clf, X)
    _write_scored(run, table, clf, proba, pred, coverage, args.output)
    if args.output != "-":
        run.say(f"wrote {len(table)} rows to {args.output}")
    _coverage_note(run, float(np.mean(coverage)), clf)
    return EXIT_OK


def _cmd_evaluate(run: _Run) -> int:
    from .report import Evaluated

    args = run.args
    _check_labels_arg(args.labels)
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
        from .report import require_matplotlib

        require_matplotlib()  # before any request
        report_dir = Path(args.report)
        if report_dir.exists() and not report_dir.is_dir():
            raise InputError(f"--report {args.report} is a file; give a folder.")

    clf = _load_model(args.load) if args.load else None
    prompt = None if clf is not None else _read_prompt(args.prompt_file)
    fields = tuple(clf.prompt_renderer_.row_fields) if clf is not None else _row_fields(prompt)
    _check_text_column(fields, args.text_column)
    test = read_csv(args.test, stdin=run.stdin)
    X_test = _features(test, fields, args.text_column)
    y_test = _labels_of(test, args.label_column, option="--label-column")
    train = X_train = y_train = None
    if args.train:
        train = read_csv(args.train, stdin=run.stdin)
        X_train = _features(train, fields, args.text_column)
        y_train = _labels_of(train, args.label_column, option="--label-column")

    if clf is not None:
        labels = [str(c) for c in clf.classes_]
        source = f"the classes of {args.load}"
    elif args.labels is not None:
        labels, source = list(args.labels), "--labels"
    elif y_train is not None:
        labels, source = sorted(set(y_train)), f"the labels of {train.name}"
    else:
        labels, source = sorted(set(y_test)), f"the labels of {test.name}"
    if len(labels) < 2:
        raise InputError(
            f"there is only one label ({labels[0]!r}); give the candidate labels with --labels."
        )
    if train is not None:
        _check_known(train, y_train, labels, source)
    _check_known(test, y_test, labels, source)

    if clf is None:
        calibration = args.calibration or ("bias" if train is not None else "none")
        if calibration not in ZERO_SHOT_CALIBRATIONS and train is None:
            raise UsageError(
                f"--calibration {calibration} learns from labelled samples; give --train."
            )
        examples, _ = _read_examples(args, fields, labels, source)
        clf = _build_classifier(
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
            clf.fit(X_train, y_train)
        run.record(clf, None)
    else:
        runtime = _runtime_params(run)
        if not args.cache and not args.no_cache:
            runtime.pop("cache")
            run.cache_setting = clf.cache
        clf.set_params(**runtime)
        run.classifier = clf
        calibration = clf.calibration

    classes = clf.classes_
    proba, pred, coverage = _scored(run, clf, X_test)
    model_name = _model_name(clf)
    if calibration not in ZERO_SHOT_CALIBRATIONS:
        trained = f"calibration learned on {train.name if train else 'its training set'}"
    elif calibration.startswith("contextual"):
        trained = "zero-shot, calibrated on content-free inputs"
    else:
        trained = "zero-shot"
    if args.load:
        trained = f"loaded from {args.load}"
    results = [
        Evaluated(f"{model_name}, calibration={calibration}", proba, pred, coverage, note=trained)
    ]
    if calibration != "none":
        raw = _uncalibrated(run, clf, X_test)
        results.append(
            Evaluated(
                f"{model_name}, calibration=none",
                raw,
                classes[raw.argmax(axis=1)],
                coverage,
                note="the same answers before calibration",
            )
        )
    baseline_note = ""
    if not args.no_baseline:
        baseline, baseline_note = _baseline(
            test, X_test, y_test, train, X_train, y_train, classes, fields
        )
        if baseline is not None:
            results.append(baseline)
        elif baseline_note:
            run.warn(baseline_note)

    _print_evaluation(run, test, results, y_test, classes, args.bins)
    if args.report:
        written = _write_report(
            run, Path(args.report), test, train, results, y_test, classes, clf, baseline_note
        )
        run.say(f"report written to {written}")
    return EXIT_OK


def _model_name(clf) -> str:
    if clf.model is not None:
        name = os.fspath(clf.model)
        return os.path.basename(name) if name.lower().endswith(".gguf") else name
    backend = clf.backend if isinstance(clf.backend, str) else type(clf.backend).__name__
    return "deterministic" if backend == "deterministic" else "Gemma 3 270M"


def _backend_name(clf) -> str:
    return clf.backend if isinstance(clf.backend, str) else type(clf.backend).__name__


def _uncalibrated(run: _Run, clf, X):
    """The same answers without calibration (answered by the cache)."""
    from sklearn.base import clone

    # Without labels=, fit took the classes from y in sorted order: the same prompts.
    labels = clf.labels if clf.labels is not None else clf.classes_.tolist()
    raw = clone(clf).set_params(calibration="none", labels=labels).fit(None, None)
    proba = raw.predict_proba(X)
    if list(raw.classes_) != list(clf.classes_):  # pragma: no cover - defensive
        raise ConfigurationError("internal error: classes differ after re-fitting.")
    return proba


def _texts_for_baseline(X, fields) -> list[str]:
    if fields == ("text",):
        return list(X)
    return ["\n".join(str(X[f].iloc[i]) for f in fields) for i in range(len(X))]


def _baseline(test, X_test, y_test, train, X_train, y_train, classes, fields):
    from .report import Evaluated, tfidf_baseline

    if train is not None:
        proba, note = tfidf_baseline(
            _texts_for_baseline(X_train, fields),
            y_train,
            _texts_for_baseline(X_test, fields),
            classes,
        )
        note = note and f"{note} on {train.name} ({len(train)} rows)"
    else:
        proba, note = tfidf_baseline(
            None, None, _texts_for_baseline(X_test, fields), classes, test_y=y_test
        )
        note = note and f"{note} on {test.name} (no --train given)"
    if proba is None:
        return None, note
    return Evaluated(
        "TF-IDF + logistic regression", proba, classes[proba.argmax(axis=1)], note=note
    ), ""


def _print_evaluation(run: _Run, test, results, y_test, classes, bins) -> None:
    from .report import summary_text

    run.stdout.write(
        f"{test.name}: {len(y_test)} rows, {len(classes)} labels "
        f"({', '.join(map(str, classes))})\n\n"
    )
    run.stdout.write(summary_text(results, y_test, classes, n_bins=bins))
    run.stdout.flush()


def _write_report(run, folder: Path, test, train, results, y_test, classes, clf, baseline_note):
    from .report import write_report

    folder.mkdir(parents=True, exist_ok=True)
    primary = results[0]
    order = _class_order(clf)
    position = {c: i for i, c in enumerate(classes.tolist())}
    header = [*test.header, *(f"proba_{c}" for c in order), "predicted", "coverage"]
    rows = [
        [
            *test.rows[i],
            *(f"{primary.proba[i, position[c]]:.6g}" for c in order),
            str(primary.pred[i]),
            f"{primary.coverage[i]:.6g}",
        ]
        for i in range(len(test))
    ]
    write_csv(folder / "predictions.csv", header, rows)
    u = run.usage
    about = [
        f"model: {_model_name(clf)}; backend: {_backend_name(clf)}",
        f"calibration: {clf.calibration}; prompt: "
        + ("default" if clf.prompt is None else "custom (--prompt-file)")
        + f"; few-shot examples: {len(clf.examples or ())}",
        f"requests: {u.requests} sent, {u.cache_hits} answered by the cache; "
        f"{u.prompt_tokens} prompt and {u.completion_tokens} completion tokens",
        "predictions: `predictions.csv`",
        f"skllmprob {__version__}; command: `{' '.join([PROG, *map(_quote, run.argv)])}`",
    ]
    data = f"Test set: `{test.name}`, {len(y_test)} rows; " + (
        f"training set: `{train.name}`, {len(train)} rows." if train else "no training set."
    )
    return write_report(
        folder,
        results,
        y_test,
        classes,
        n_bins=run.args.bins,
        data=data,
        notes=[baseline_note] if baseline_note else [],
        about=about,
    )


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
