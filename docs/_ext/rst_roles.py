"""Griffe extension for the API pages: read the reST bits of neuronsplit's docstrings as Markdown.

The docstrings are numpy style (parsed by griffe) with Sphinx roles in the prose
(``:func:`~neuronsplit.scan```). mkdocstrings renders Markdown, where a role would show as
literal text, so each role becomes a code span (the last dotted part with ``~``, as Sphinx shows
it), and a paragraph's closing ``::`` (reST's "literal block follows") becomes ``:``; the
indented block after it is a Markdown code block already. The docstrings themselves stay as
they are: ``help()`` and the doctests read them unchanged.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|exc|obj):`(~?)([^`]+)`")
_LITERAL = re.compile(r"::$", re.MULTILINE)


def _role(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    if tilde:  # Sphinx shows only the last component of ``~a.b.c``
        target = target.rsplit(".", 1)[-1]
    return f"`{target.lstrip('.')}`"


def markdown(text: str) -> str:
    """Docstring text with reST roles as code spans and ``::`` as ``:``.

    Examples
    --------
    >>> markdown("See :func:`~neuronsplit.stats.scan` and :class:`.ScanResult`::")
    'See `scan` and `ScanResult`:'
    """
    return _LITERAL.sub(":", _ROLE.sub(_role, text))


class RstRoles(griffe.Extension):
    """Rewrite every docstring griffe loads (modules, classes, functions, attributes)."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
