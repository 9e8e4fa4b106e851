"""One row of the performance table, shared by every benchmark and by ``run_all.py``."""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass

_COMPARE: dict[str, Callable[[float, float], bool]] = {"<=": operator.le, ">=": operator.ge}


@dataclass(frozen=True)
class Figure:
    """A measured figure, how to print it, and its target (``"<= 1.15"``, ``">= 0.95"`` or "")."""

    benchmark: str
    name: str
    value: float
    fmt: str = "{:.3f}"
    target: str = ""

    @property
    def ok(self) -> bool | None:
        """Whether the target is met (None without a target)."""
        if not self.target:
            return None
        op, bound = self.target.split()
        return _COMPARE[op](self.value, float(bound))

    @property
    def text(self) -> str:
        """The value, formatted."""
        return self.fmt.format(self.value)


def print_table(figures: Sequence[Figure]) -> None:
    """Print figures as one aligned table: benchmark, figure, measured, target, verdict."""
    head = f"{'benchmark':<20}{'figure':<52}{'measured':>14}  {'target':<10}"
    print(head)
    print("-" * len(head))
    for f in figures:
        verdict = "" if f.ok is None else ("ok" if f.ok else "MISSED")
        print(f"{f.benchmark:<20}{f.name:<52}{f.text:>14}  {f.target:<10}{verdict}")
