"""Argument checks shared by the public functions: typed errors that name the value and the fix.

Every check raises :class:`~neuronsplit.errors.InvalidArgumentError` (a ``ValueError``) or
:class:`~neuronsplit.errors.ArgumentTypeError` (a ``TypeError``), both ``NeuronSplitError``, so
``except ns.NeuronSplitError`` catches every user error while errors raised by the user's own
model or loader pass through unchanged.
"""

from __future__ import annotations

import argparse
import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Any

from torch import nn

from .errors import ArgumentTypeError, InvalidArgumentError

__all__ = [
    "check_int",
    "check_number",
    "check_choice",
    "check_bool",
    "check_module",
    "check_names",
    "int_in",
    "number_in",
]


def check_int(
    value: Any, name: str, *, low: int | None = None, high: int | None = None,
    optional: bool = False,
) -> int | None:  # fmt: skip
    """An integer in ``[low, high]`` (``None`` passes when ``optional``).

    Examples
    --------
    >>> check_int(3, "top", low=1)
    3
    >>> check_int(0, "top", low=1)
    Traceback (most recent call last):
    ...
    neuronsplit.errors.InvalidArgumentError: top must be >= 1, got 0
    """
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if low is not None and value < low:
        raise InvalidArgumentError(f"{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise InvalidArgumentError(f"{name} must be <= {high}, got {value}")
    return value


def check_number(
    value: Any, name: str, *, low: float | None = None, high: float | None = None,
    low_open: bool = False, high_open: bool = False,
) -> float:  # fmt: skip
    """A finite real number in the given interval (open or closed at each end).

    Examples
    --------
    >>> check_number(0.5, "p", low=0, high=1, low_open=True)
    0.5
    >>> check_number(1.5, "p", low=0, high=1, low_open=True)
    Traceback (most recent call last):
    ...
    neuronsplit.errors.InvalidArgumentError: p must be in (0, 1], got 1.5
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    lo = -math.inf if low is None else low
    hi = math.inf if high is None else high
    ok = math.isfinite(value) and (lo < value if low_open else lo <= value)
    ok = ok and (value < hi if high_open else value <= hi)
    if not ok:
        left = "(" if low_open or low is None else "["
        right = ")" if high_open or high is None else "]"
        lo_text = "-inf" if low is None else f"{low:g}"
        hi_text = "inf" if high is None else f"{high:g}"
        raise InvalidArgumentError(
            f"{name} must be in {left}{lo_text}, {hi_text}{right}, got {value!r}"
        )
    return value


def check_choice(value: Any, name: str, choices: Sequence[Any]) -> Any:
    """One of ``choices``.

    Examples
    --------
    >>> check_choice("label", "target", ("label", "prediction"))
    'label'
    """
    if value not in choices:
        raise InvalidArgumentError(
            f"{name} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}"
        )
    return value


def check_bool(value: Any, name: str) -> bool:
    """A bool (not a truthy string or number)."""
    if not isinstance(value, bool):
        raise ArgumentTypeError(
            f"{name} must be True or False, got {type(value).__name__} {value!r}"
        )
    return value


def check_module(value: Any, name: str = "model") -> nn.Module:
    """A ``torch.nn.Module``."""
    if not isinstance(value, nn.Module):
        raise ArgumentTypeError(f"{name} must be a torch.nn.Module, got {type(value).__name__}")
    return value


def check_names(value: Any, name: str = "layers", *, example: str = "'fc2'") -> list[str]:
    """A non-empty list of distinct, non-empty names (a single string counts as one name)."""
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, Iterable) or isinstance(names, (bytes, dict)):
        raise ArgumentTypeError(
            f"{name} must be a name or a sequence of names like [{example}], got "
            f"{type(value).__name__}"
        )
    names = list(names)
    if not names:
        raise InvalidArgumentError(f"{name} is empty; name at least one, e.g. [{example}]")
    bad = [n for n in names if not isinstance(n, str) or not n]
    if bad:
        raise ArgumentTypeError(f"{name} must hold non-empty strings, got {bad[0]!r}")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InvalidArgumentError(f"{name} lists {dup} twice; give each name once")
    return names


def int_in(low: int, high: int | None = None):
    """An argparse ``type``: an integer in ``[low, high]`` (argparse prints the usage on error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"{value} is not {bound}")
        return value

    return parse


def number_in(low: float, high: float, *, low_open: bool = False):
    """An argparse ``type``: a number in ``[low, high]`` (``(low, high]`` with ``low_open``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (low < value if low_open else low <= value) or not value <= high:
            raise argparse.ArgumentTypeError(
                f"{value} is not in {'(' if low_open else '['}{low:g}, {high:g}]"
            )
        return value

    return parse
