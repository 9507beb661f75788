"""Griffe extension: render the Sphinx roles of the docstrings in the API reference.

The docstrings are numpydoc and use Sphinx roles (``:class:`~skllmprob.LogprobClassifier```,
``:meth:`predict_coverage```, ``:data:`LOG_PROB_FLOOR```...), which mkdocstrings would
show as raw text. Before mkdocstrings renders a docstring, each role becomes a code span
that links to the object when the object is rendered on the site (an *optional*
cross-reference of mkdocs-autorefs: an object that is not rendered, such as
``str.format``, stays a plain code span, without a warning).

The display text follows Sphinx: ``~`` keeps the last component only, and functions and
methods get ``()``. Registered in mkdocs.yml under the python handler's ``extensions``.
"""

from __future__ import annotations

import html
import re

import griffe

#: The Python-domain roles that are rewritten (also with a ``py:`` prefix).
ROLES = ("attr", "class", "const", "data", "exc", "func", "meth", "mod", "obj")
_CALLABLE = {"func", "meth"}
_ROLE = re.compile(
    r":(?:py:)?(?P<role>" + "|".join(ROLES) + r"):`(?P<tilde>~?)(?P<target>[\w.]+)(?:\(\))?`"
)


def resolve(obj: griffe.Object, target: str) -> str | None:
    """The full path of ``target`` as written in the docstring of ``obj``, or None.

    A dotted target is looked up by its first name in the scope of ``obj`` (its
    members, then its parents' members and imports), or taken as a full path when it
    starts with the package name. None when no object of the loaded packages has that
    path (a name of the standard library or of another package).
    """
    head, _, rest = target.partition(".")
    try:
        path = obj.resolve(head)
    except (griffe.NameResolutionError, AttributeError, KeyError):
        path = head if head == obj.package.name else None
    if path is None:
        return None
    path = f"{path}.{rest}" if rest else path
    try:  # ``openai.AsyncOpenAI`` is the OpenAI package's, not skllmprob.backends.openai's
        obj.modules_collection[path]
    except (KeyError, ValueError, griffe.AliasResolutionError):
        return None
    return path


def rewrite(text: str, obj: griffe.Object) -> str:
    """``text`` with every Sphinx role replaced by a code span (and a cross-reference)."""

    def replace(m: re.Match) -> str:
        target = m["target"]
        shown = target.rsplit(".", 1)[-1] if m["tilde"] else target
        if m["role"] in _CALLABLE:
            shown += "()"
        code = f"<code>{html.escape(shown)}</code>"
        path = resolve(obj, target)
        if path is None or not path.startswith(obj.package.name + "."):
            return code
        return f'<autoref identifier="{html.escape(path)}" optional>{code}</autoref>'

    return _ROLE.sub(replace, text)


class SphinxRoles(griffe.Extension):
    """Rewrite the Sphinx roles of every docstring once the object tree is complete."""

    def on_object(self, *, obj: griffe.Object, **kwargs) -> None:
        docstring = obj.docstring
        if obj.is_alias or docstring is None or ":" not in docstring.value:
            return
        new = rewrite(docstring.value, obj)
        if new != docstring.value:
            docstring.value = new
            docstring.__dict__.pop("parsed", None)  # parsed again from the new text
