"""The documentation's code runs: every ```python and ```bash block of docs/*.md and
README.md is executed, page by page, in order, like a notebook.

How a page runs
---------------
- In a fresh folder of its own (the current directory), with its own cache folder
  (``$SKLLMPROB_CACHE_DIR``, from conftest) and ``MPLBACKEND=Agg``.
- Python blocks share one namespace per page. Shell blocks run with ``bash -e -o
  pipefail`` in the same folder, with this interpreter's folder first on ``PATH`` (so
  ``python`` and the ``skllmprob`` console script are the ones under test).
- A block runs in the fast tier unless the HTML comment on the line before its fence
  says otherwise (the comments are invisible on GitHub and in the built site):

  ``<!-- test: local -->``
      needs the embedded model: the page is marked ``local`` (and ``slow``).
  ``<!-- test: stub -->``
      talks to an OpenAI-compatible server: it runs against the stub server of
      :mod:`skllmprob.testing.openai_stub`, started in-process on 127.0.0.1 (fast
      tier, like the backend's own stub tests; the block must send at least one
      request):
      ``OPENAI_BASE_URL``, ``OPENAI_API_KEY``, ``AZURE_OPENAI_ENDPOINT`` and
      ``AZURE_OPENAI_API_KEY`` point at it, and every ``http://localhost:PORT/v1``
      in the block is rewritten to the stub's address, so a snippet written for
      vLLM, Ollama, LM Studio or a llama.cpp server really goes over HTTP.
  ``<!-- test: skip ID -->``
      not run; ``ID`` must be a key of :data:`EXCLUDED`, which gives the reason.

  The README must open with its two set-up commands exactly, so a block made only of
  those commands (``python3 -m venv .venv && ...``) is skipped as ``setup`` without a
  comment.
- Every page's folder starts with the example files the documentation refers to,
  made from the demo's 40 reviews as docs/cli.md shows: ``train.csv`` and
  ``test.csv`` (text, label) and ``reviews.csv`` (text).

The site builds
---------------
``mkdocs build --strict`` (the docs extra: mkdocs-material, mkdocstrings[python]) must
pass, so a broken link or reference fails the suite, and the API reference must show no
raw Sphinx role (``:meth:`...```): docs/griffe_roles.py turns them into code spans and
cross-references.
"""

from __future__ import annotations

import csv
import html
import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: Blocks that are not run, and why. Keep this list short.
EXCLUDED = {
    "setup": "creates a virtual environment and installs packages from PyPI (no network "
    "in the test run; CI runs exactly these commands itself)",
    "test-suite": "runs the test suite, which would run itself",
    "cluster": "needs a Dask, Spark or Ray cluster and a PostgreSQL server; the Dask and "
    "PostgreSQL blocks are what tests/scale/test_dask.py and test_pgcache.py run",
    "benchmark": "benchmarks run for minutes on the data sets of /work/shared/data "
    "(taken as arguments); their results are reported from their own runs",
}

_FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w+-]*)\s*$")
_NOTE = re.compile(r"^\s*<!--\s*test:\s*(?P<kind>local|stub|skip)\s*(?P<id>[\w-]*)\s*-->\s*$")
_LOCALHOST = re.compile(r"http://localhost:\d+/v1")
SETUP_PREFIX = "python3 -m venv .venv && . .venv/bin/activate && pip install -e "
PYTHON = {"python", "py"}
SHELL = {"bash", "sh", "shell"}


@dataclass
class Block:
    page: str
    line: int  # line of the opening fence, 1-based
    lang: str
    code: str
    kind: str = "fast"  # fast, local, stub, skip
    skip_id: str = ""


@dataclass
class Page:
    path: Path
    blocks: list[Block] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.path.relative_to(ROOT))

    def needs(self, kind: str) -> bool:
        return any(b.kind == kind for b in self.blocks)


def parse(path: Path) -> Page:
    """The runnable blocks of one Markdown file, with their annotations."""
    page = Page(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m or not m["lang"]:
            i += 1
            continue
        start, indent, lang = i, len(m["indent"]), m["lang"].lower()
        body = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][indent:] if lines[i][:indent].isspace() else lines[i])
            i += 1
        i += 1
        if lang not in PYTHON | SHELL:
            continue
        prev = start - 1
        while prev >= 0 and not lines[prev].strip():
            prev -= 1
        note = _NOTE.match(lines[prev]) if prev >= 0 else None
        block = Block(
            page.name, start + 1, "python" if lang in PYTHON else "bash", "\n".join(body)
        )
        if note:
            block.kind = note["kind"]
            block.skip_id = note["id"]
        elif _is_setup(block.code):
            block.kind, block.skip_id = "skip", "setup"
        page.blocks.append(block)
    return page


def _is_setup(code: str) -> bool:
    lines = [line for line in code.splitlines() if line.strip()]
    return bool(lines) and all(line.startswith(SETUP_PREFIX) for line in lines)


def write_example_files(folder: Path) -> None:
    """train.csv, test.csv and reviews.csv, as docs/cli.md makes them."""
    from skllmprob.demo import REVIEWS

    def write(name, rows, header=("text", "label")):
        with open(folder / name, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([header, *rows])

    write("train.csv", REVIEWS[1::2])
    write("test.csv", REVIEWS[::2])
    write("reviews.csv", [(text,) for text, _ in REVIEWS[::4]], header=("text",))


def _params():
    out = []
    for path in PAGES:
        page = parse(path)
        if not any(b.kind != "skip" for b in page.blocks):
            continue
        # A page on the embedded model takes several seconds (each shell command
        # loads the model in its own process).
        marks = [pytest.mark.local, pytest.mark.slow] if page.needs("local") else []
        out.append(pytest.param(page, id=page.name, marks=marks))
    return out


def test_readme_opens_with_the_two_setup_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert text.startswith(
        "# skllmprob\n\n```bash\n"
        'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[local]" && '
        "python -m skllmprob.demo\n"
        'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[local,server,test]"'
        " && python -m pytest\n```\n"
    )


def test_every_page_is_found_and_every_exclusion_is_explained():
    pages = [parse(p) for p in PAGES]
    names = {p.name for p in pages}
    for expected in ("README.md", "docs/index.md", "docs/concepts.md", "docs/backends.md"):
        assert expected in names
    used = set()
    for page in pages:
        for b in page.blocks:
            if b.kind == "skip":
                assert b.skip_id in EXCLUDED, (
                    f"{b.page}:{b.line}: 'test: skip {b.skip_id}' has no reason in EXCLUDED"
                )
                used.add(b.skip_id)
    assert used == set(EXCLUDED), f"unused exclusions: {set(EXCLUDED) - used}"


def _shell_prelude() -> str:
    bindir = Path(sys.executable).parent
    lines = [f'export PATH="{bindir}{os.pathsep}$PATH"']
    if not (bindir / "skllmprob").exists():  # not installed: run the module instead
        lines.append(f'skllmprob() {{ "{sys.executable}" -m skllmprob "$@"; }}')
    return "\n".join(lines) + "\n"


@pytest.fixture
def stub_server(monkeypatch):
    """Start the stub OpenAI-compatible server; point the usual variables at it."""
    from skllmprob.testing.openai_stub import OpenAIStub

    with OpenAIStub() as stub:
        monkeypatch.setenv("OPENAI_BASE_URL", stub.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-docs-test")
        monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", stub.url)
        monkeypatch.setenv("AZURE_OPENAI_API_KEY", "azure-docs-test")
        yield stub


@pytest.mark.parametrize("page", _params())
def test_page_runs(page: Page, tmp_path, monkeypatch, request):
    monkeypatch.chdir(tmp_path)
    write_example_files(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    stub = request.getfixturevalue("stub_server") if page.needs("stub") else None
    namespace: dict = {"__name__": "__docs__"}
    for b in page.blocks:
        if b.kind == "skip":
            continue
        code = b.code
        if b.kind == "stub":
            before = stub.requests
            code = _LOCALHOST.sub(stub.base_url, code)
        where = f"{b.page}:{b.line}"
        if b.lang == "python":
            try:
                exec(compile(code, where, "exec"), namespace)
            except Exception as e:
                raise AssertionError(
                    f"the block at {where} failed: {type(e).__name__}: {e}"
                ) from e
        else:
            r = subprocess.run(
                ["bash", "-e", "-o", "pipefail", "-c", _shell_prelude() + code],
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert r.returncode == 0, (
                f"the block at {where} exited with {r.returncode}\n--- stdout\n{r.stdout}"
                f"\n--- stderr\n{r.stderr}"
            )
        if b.kind == "stub":  # it really went over HTTP to the stub
            assert stub.requests > before, f"the block at {where} sent no request"


#: A Sphinx role left raw in the HTML (after Markdown: ``:meth:<code>x</code>``).
_RAW_ROLE = re.compile(r":(?:py:)?(?:attr|class|const|data|exc|func|meth|mod|obj):(?:<code>|`)")
#: The packages the site build needs (the ``docs`` extra).
DOCS_MODULES = {"mkdocs": "mkdocs", "material": "mkdocs-material", "mkdocstrings": "mkdocstrings"}


def test_site_builds_in_strict_mode_with_the_roles_rendered(tmp_path):
    missing = [pkg for mod, pkg in DOCS_MODULES.items() if importlib.util.find_spec(mod) is None]
    if importlib.util.find_spec("mkdocstrings_handlers.python") is None:
        missing.append("mkdocstrings-python")
    assert not missing, f"building the site needs {missing}: pip install -e '.[docs]'"
    site = tmp_path / "site"
    # not --quiet: it hides the warnings from the count that makes --strict abort
    config = ["-f", str(ROOT / "mkdocs.yml"), "-d", str(site)]
    r = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", *config],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert r.returncode == 0, f"mkdocs build --strict failed:\n{r.stdout}\n{r.stderr}"

    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    assert 'id="skllmprob.LogprobClassifier.predict_proba"' in api  # docstrings rendered
    raw = sorted({api[m.start() : m.end() + 40] for m in _RAW_ROLE.finditer(api)})
    assert not raw, f"raw Sphinx roles in the API reference: {raw}"
    # the roles became code spans that link to the objects rendered on the page
    assert re.search(r'<a class="autorefs autorefs-internal"[^>]*><code>', api)

    # the benchmarks page links to the repository's results file, published with the site
    bench = (site / "benchmarks" / "index.html").read_text(encoding="utf-8")
    results = site / "repo" / "benchmarks" / "RESULTS-calibration" / "index.html"
    assert 'href="../repo/benchmarks/RESULTS-calibration/"' in html.unescape(bench)
    assert "Calibration in <code>fit</code>" in results.read_text(encoding="utf-8")
