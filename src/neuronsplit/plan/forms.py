"""The two merge forms of a split and the deprecated alias ``"partition"``."""

from __future__ import annotations

import sys
import warnings

from ..errors import PlanError

__all__ = ["MERGE_FORMS", "normalise_form"]

#: ``"disjoint"``: subunit k sees only its group, the residual the shared inputs and the bias,
#: ``z = sum_k t_k + r``. ``"overlap"`` (Hesse et al.): subunit k is ``t_k + r``, the residual
#: ``r``, ``z = sum_k s_k - (K - 1) r``. Both describe the same rows (see ``neuronsplit.nn``).
MERGE_FORMS: tuple[str, ...] = ("disjoint", "overlap")


def _caller_level() -> int:
    """``stacklevel`` that points a warning at the first frame outside neuronsplit.

    Frames are told apart by their module (``__name__`` of their globals), which also covers
    the ``__init__`` that ``dataclasses`` generates for :class:`UnitSplit`.
    """
    level, frame = 1, sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__", "").startswith("neuronsplit"):
        level += 1
        frame = frame.f_back
    return level


def normalise_form(form: object, where: str) -> str:
    """Return a valid merge form; ``"partition"`` becomes ``"disjoint"`` with a warning."""
    if form == "partition":
        warnings.warn(
            'merge="partition" is deprecated; it is now called merge="disjoint"',
            DeprecationWarning,
            stacklevel=_caller_level(),
        )
        return "disjoint"
    if form not in MERGE_FORMS:
        raise PlanError(
            f"merge must be one of {', '.join(map(repr, MERGE_FORMS))}; got {form!r} for the "
            f"{where}"
        )
    return str(form)
