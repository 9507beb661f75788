"""The argument parser of the ``skllmprob`` command and its number types.

Examples
--------
>>> args = build_parser().parse_args(["classify", "in.csv", "--labels", "a", "b"])
>>> args.command, args.labels, args.output
('classify', ['a', 'b'], '-')
>>> positive_int("0")
Traceback (most recent call last):
...
argparse.ArgumentTypeError: 0 must be at least 1
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from .. import __version__
from .. import calibration as _calibration
from .. import classifier as _classifier
from ..calibrators import CALIBRATORS

__all__ = [
    "CALIBRATIONS",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_TERMINATED",
    "EXIT_USAGE",
    "PROG",
    "THRESHOLD_METRICS",
    "ZERO_SHOT_CALIBRATIONS",
    "build_parser",
    "positive_int",
]

PROG = "skllmprob"
# The choices follow the estimator, so that a new calibration is a new option value.
CALIBRATIONS = tuple(_classifier.CALIBRATIONS)
ZERO_SHOT_CALIBRATIONS = tuple(c for c in CALIBRATIONS if not CALIBRATORS[c].needs_labels)
THRESHOLD_METRICS = tuple(_calibration.THRESHOLD_METRICS)
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_TERMINATED = 128 + 15  # SIGTERM, by the same convention as 130 for SIGINT


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


positive_int = _number_type(int, "a whole number", lambda v: v >= 1, "must be at least 1")
non_negative_int = _number_type(int, "a whole number", lambda v: v >= 0, "must be 0 or more")
positive_float = _number_type(
    float, "a number", lambda v: v > 0 and math.isfinite(v), "must be a positive number"
)


def key_value(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` of ``--backend-option``; VALUE is read as JSON when it parses."""
    key, sep, raw = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"{text!r} is not of the form KEY=VALUE")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, value


# ------------------------------------------------------------------ option groups


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
        type=positive_int,
        metavar="N",
        help="requests in flight at once (server backends; default 8)",
    )
    g.add_argument(
        "--timeout",
        type=positive_float,
        metavar="SECONDS",
        help="seconds per request before it is retried (default 60)",
    )
    g.add_argument(
        "--max-retries",
        type=non_negative_int,
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
        choices=["auto", "llamacpp", "openai", "deterministic", "decisions", "systemone"],
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
        type=positive_int,
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
        type=key_value,
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
    g.add_argument(
        "--descriptions",
        metavar="CSV",
        help="one line about each label, written into the prompt's label list: a CSV "
        "file with the columns 'label' and 'description'",
    )
    return p


def _output_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-o",
        "--output",
        default="-",
        metavar="FILE",
        help="where to write ('-', the default: stdout)",
    )


def _scoring_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--scoring",
        default=None,
        choices=THRESHOLD_METRICS,
        help="the metric --calibration threshold maximizes (default: accuracy) and "
        "--calibration auto selects by (default: held-out log loss)",
    )


# ------------------------------------------------------------------- subcommands


def _add_classify(sub, parents) -> None:
    p = sub.add_parser(
        "classify",
        parents=[_prompt_options(label_column=False), *parents],
        help="add label probabilities, the predicted label and the label coverage to a CSV",
        description="Classify every row of INPUT (zero-shot, or with few-shot --examples) "
        "and write it back with one column proba_<label> per label, 'predicted' and "
        "'coverage' (the probability the model put on any label).",
    )
    p.add_argument("input", metavar="INPUT", help="CSV file with a header ('-': stdin)")
    _output_option(p)
    p.add_argument(
        "--calibration",
        default="none",
        choices=ZERO_SHOT_CALIBRATIONS,
        help="'contextual' corrects the label bias with content-free inputs (no labels "
        "needed); learned calibrations are for 'skllmprob fit'",
    )


def _add_fit(sub, parents) -> None:
    p = sub.add_parser(
        "fit",
        parents=[_prompt_options(label_column=True), *parents],
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
    _scoring_option(p)


def _add_predict(sub, parents) -> None:
    p = sub.add_parser(
        "predict",
        parents=parents,
        help="classify a CSV with a classifier saved by 'skllmprob fit'",
        description="Load MODEL (saved by 'skllmprob fit') and classify INPUT like "
        "'skllmprob classify'. Only load model files you trust: they are pickles.",
    )
    p.add_argument("model_file", metavar="MODEL", help="a .joblib file from 'skllmprob fit'")
    p.add_argument("input", metavar="INPUT", help="CSV file with a header ('-': stdin)")
    _output_option(p)
    p.add_argument(
        "--text-column", metavar="NAME", help="the column holding the text (default: text)"
    )


def _add_evaluate(sub, parents) -> None:
    p = sub.add_parser(
        "evaluate",
        parents=[_prompt_options(label_column=True), *parents],
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
    _scoring_option(p)
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
        "--bins", type=positive_int, default=10, metavar="N", help="bins of the ECE (default 10)"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``skllmprob`` command.

    The subcommand's name is ``args.command``.
    """
    parser = _Parser(
        prog=PROG,
        description="Classify text with any LLM that exposes token log-probabilities.",
        epilog="Run 'skllmprob COMMAND --help' for the options of a command. Exit status: "
        "0 success, 1 error, 2 bad command line, 130 interrupted, 143 terminated.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    model, runtime, common = _model_options(), _runtime_options(), _common_options()
    _add_classify(sub, [model, runtime, common])
    _add_fit(sub, [model, runtime, common])
    _add_predict(sub, [runtime, common])
    _add_evaluate(sub, [model, runtime, common])
    sub.add_parser(
        "demo",
        add_help=False,
        help="the demo: 40 movie reviews on the embedded model (see 'skllmprob demo --help')",
    )
    return parser
