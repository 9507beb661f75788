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
when interrupted, 143 when terminated by SIGTERM); completions received before an
error stay in the cache, so the same command run again only sends what is missing.
Cache statistics and messages go to standard error, CSV output to a file or standard
output (``-``).

The package: :mod:`~skllmprob.cli.parser` (the options),
:mod:`~skllmprob.cli.run` (messages, cache, usage, errors),
:mod:`~skllmprob.cli.inputs` (prompt, texts, labels, examples),
:mod:`~skllmprob.cli.estimator` (the classifier and its output columns),
:mod:`~skllmprob.cli.commands` and :mod:`~skllmprob.cli.evaluate` (the subcommands),
:mod:`~skllmprob.cli.csvio` (CSV files).

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

import contextlib
import os
import sys
import traceback
from collections.abc import Sequence
from typing import TextIO

from .._secrets import mask_url
from ..exceptions import SkllmprobError
from .commands import cmd_classify, cmd_fit, cmd_predict
from .evaluate import cmd_evaluate
from .parser import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED, PROG, build_parser
from .run import (
    Run,
    Terminated,
    capture_warnings,
    describe,
    handle_sigterm,
    one_line,
    resume_hint,
    sentence,
)

__all__ = ["main"]

COMMANDS = {
    "classify": cmd_classify,
    "fit": cmd_fit,
    "predict": cmd_predict,
    "evaluate": cmd_evaluate,
}


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
        line, 130 when interrupted (Ctrl+C), 143 when terminated (SIGTERM).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    stdin = sys.stdin if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    if argv and argv[0] == "demo":
        return _demo(argv[1:], stdout, stderr)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            args = build_parser().parse_args(argv)
    except SystemExit as e:
        return _exit_code(e)
    return _execute(Run(args, argv, stdin, stdout, stderr))


def _demo(argv: list[str], stdout: TextIO, stderr: TextIO) -> int:
    from ..demo import main as demo_main

    try:
        with contextlib.redirect_stderr(stderr):
            return int(demo_main(argv, out=stdout) or 0)
    except SystemExit as e:
        return _exit_code(e)
    except (SkllmprobError, ImportError) as e:
        stderr.write(f"{PROG}: error: {one_line(e)}\n")
        return EXIT_ERROR


def _execute(run: Run) -> int:
    """Run the subcommand; every failure becomes one line and an exit status."""
    stderr = run.stderr
    try:
        with handle_sigterm(), capture_warnings(run):
            with run.stack:
                run.setup_cache()
                code = COMMANDS[run.args.command](run)
            run.report_usage()
        return code
    except KeyboardInterrupt as e:  # Ctrl+C, or SIGTERM (Terminated)
        event = "terminated" if isinstance(e, Terminated) else "interrupted"
        stderr.write(f"{PROG}: {event}.{resume_hint(run, e, interrupted=True)}\n")
        return EXIT_TERMINATED if isinstance(e, Terminated) else EXIT_INTERRUPTED
    except BrokenPipeError:
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, run.stdout.fileno())
        return EXIT_ERROR
    except Exception as e:
        if run.args.traceback:
            stderr.write(mask_url(traceback.format_exc()))
        hint = resume_hint(run, e)
        message = sentence(describe(e)) if hint else describe(e)
        stderr.write(f"{PROG}: error: {message}{hint}\n")
        stderr.flush()
        return EXIT_ERROR


def _exit_code(e: SystemExit) -> int:
    if e.code is None:
        return EXIT_OK
    return e.code if isinstance(e.code, int) else EXIT_ERROR
