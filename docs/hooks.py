"""MkDocs hooks: publish the repository files that the pages link to outside docs/.

A page may link to a Markdown file of the repository outside the docs folder with a
relative link, ``[...](../benchmarks/RESULTS-calibration.md)``, which works on GitHub.
MkDocs only knows the files of the docs folder and, in strict mode, aborts on such a
link. These hooks add each such file to the site as a page under ``repo/`` (here
``repo/benchmarks/RESULTS-calibration.md``) and point the link at it. A link to a file
that does not exist is left alone, so strict mode still reports it.

Registered in mkdocs.yml under ``hooks``.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File

#: The folder of the site that holds the published repository files.
PREFIX = "repo"
_LINK = re.compile(r"\]\((?P<target>\.\./[^)#\s]+\.md)(?P<anchor>#[^)\s]*)?\)")


def _outside(config, src_uri: str, target: str) -> Path | None:
    """The repository file a link of page ``src_uri`` points to, if outside docs/."""
    docs = Path(config.docs_dir).resolve()
    root = Path(config.config_file_path).resolve().parent
    path = ((docs / src_uri).parent / target).resolve()
    if path.is_relative_to(docs) or not path.is_relative_to(root) or not path.is_file():
        return None
    return path


def _uri(config, path: Path) -> str:
    root = Path(config.config_file_path).resolve().parent
    return f"{PREFIX}/{path.relative_to(root).as_posix()}"


def on_files(files, config):
    """Add the repository files linked from the pages to the site."""
    for page in list(files.documentation_pages()):
        if page.abs_src_path is None:
            continue
        text = Path(page.abs_src_path).read_text(encoding="utf-8")
        for m in _LINK.finditer(text):
            path = _outside(config, page.src_uri, m["target"])
            if path is not None and files.get_file_from_path(_uri(config, path)) is None:
                files.append(File.generated(config, _uri(config, path), abs_src_path=str(path)))
    return files


def on_page_markdown(markdown, page, config, files):
    """Point the links to repository files at their published copies."""

    def replace(m: re.Match) -> str:
        path = _outside(config, page.file.src_uri, m["target"])
        if path is None:
            return m[0]
        start = posixpath.dirname(page.file.src_uri) or "."
        link = posixpath.relpath(_uri(config, path), start)
        return f"]({link}{m['anchor'] or ''})"

    return _LINK.sub(replace, markdown)
