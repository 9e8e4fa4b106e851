"""The result types of :func:`neuronsplit.verify_equivalence`."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["UnitDiff", "LayerResult", "DtypeResult", "EquivalenceReport"]


@dataclass(frozen=True)
class UnitDiff:
    """Largest deviation of one unit: ``max_abs`` and ``rel = max_abs / max|y of layer|``."""

    unit: int
    max_abs: float
    rel: float


@dataclass(frozen=True)
class LayerResult:
    """Deviation of one split layer's merged output from the original layer's output.

    ``unsplit_*`` is the worst over the units that were not split, ``split_units`` lists every
    split unit. Relative values divide by ``max_ref``, the largest ``|y|`` of the layer.
    ``calls`` counts how often the split layer ran over all batches; a layer that never ran
    (``calls == 0``) was not checked at all and fails unless ``verify_equivalence`` was called
    with ``allow_unused=True``.
    """

    layer: str
    max_ref: float
    unsplit_max_abs: float
    unsplit_rel: float
    unsplit_worst_unit: int | None
    split_units: tuple[UnitDiff, ...]
    passed: bool
    calls: int

    @property
    def ran(self) -> bool:
        """Whether the split layer ran on the inputs at all (else nothing was compared)."""
        return self.calls > 0

    @property
    def worst_split(self) -> UnitDiff | None:
        """The split unit with the largest deviation (None if nothing ran)."""
        return max(self.split_units, key=lambda d: _key(d.max_abs), default=None)


@dataclass(frozen=True)
class DtypeResult:
    """All comparisons in one dtype."""

    dtype: str
    n_batches: int
    output_max_abs: float
    output_max_ref: float
    output_rel: float
    atol: float
    rtol: float
    passed: bool
    layers: tuple[LayerResult, ...]


@dataclass(frozen=True)
class EquivalenceReport:
    """Result of :func:`verify_equivalence`: ``passed`` and one :class:`DtypeResult` per dtype.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> import neuronsplit as ns
    >>> m = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    >>> s = ns.apply_plan(m, ns.SplitPlan([ns.UnitSplit("0", 1, [[0], [1]], shared=[2])]))
    >>> rep = ns.verify_equivalence(m, s, torch.randn(8, 3))
    >>> rep.passed, [r.dtype for r in rep.rows]
    (True, ['float32', 'float64'])
    """

    passed: bool
    rows: tuple[DtypeResult, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON-compatible)."""
        return {"passed": self.passed, "rows": [asdict(r) for r in self.rows]}

    def worst(self) -> str:
        """One line naming the worst failing (or, if all pass, the worst) comparison."""
        rows = [r for r in self.rows if not r.passed] or list(self.rows)
        parts = []
        for r in rows:
            tol = r.atol + r.rtol * r.output_max_ref
            parts.append(
                f"{r.dtype}: output max|Δ|={r.output_max_abs:.3g} (rel {r.output_rel:.3g}, "
                f"allowed {tol:.3g})"
            )
            for lay in r.layers:
                if lay.passed and r.passed is False:
                    continue
                if not lay.ran:
                    parts.append(_not_run(lay))
                    continue
                if lay.unsplit_worst_unit is not None:
                    parts.append(
                        f"layer {lay.layer!r} unsplit unit {lay.unsplit_worst_unit}: "
                        f"max|Δ|={lay.unsplit_max_abs:.3g} (rel {lay.unsplit_rel:.3g})"
                    )
                w = lay.worst_split
                if w is not None:
                    parts.append(
                        f"layer {lay.layer!r} split unit {w.unit}: max|Δ|={w.max_abs:.3g} "
                        f"(rel {w.rel:.3g})"
                    )
        return "; ".join(parts)

    def __str__(self) -> str:
        lines = [f"EquivalenceReport: {'PASSED' if self.passed else 'FAILED'}"]
        head = f"{'dtype':<9}{'batches':>8}{'max|Δ|':>11}{'max|y|':>11}{'rel':>11}{'rtol':>9}  ok"
        lines.append(head)
        for r in self.rows:
            lines.append(
                f"{r.dtype:<9}{r.n_batches:>8}{r.output_max_abs:>11.3g}{r.output_max_ref:>11.3g}"
                f"{r.output_rel:>11.3g}{r.rtol:>9.0e}  {'yes' if r.passed else 'NO'}"
            )
            for lay in r.layers:
                if not lay.ran:
                    lines.append(f"  {_not_run(lay)}  {'ok' if lay.passed else 'NOT CHECKED'}")
                    continue
                w = lay.worst_split
                split = f"split rel {w.rel:.3g} (unit {w.unit})" if w else "no split units"
                lines.append(
                    f"  layer {lay.layer!r}: unsplit rel {lay.unsplit_rel:.3g} "
                    f"(unit {lay.unsplit_worst_unit}), {split}  "
                    f"{'ok' if lay.passed else 'NOT EXACT'}"
                )
        return "\n".join(lines)


def _not_run(lay: LayerResult) -> str:
    how = "allowed by allow_unused=True" if lay.passed else "pass allow_unused=True to accept"
    return f"layer {lay.layer!r} never ran on the inputs, so it was not checked ({how})"


def _key(x: float) -> float:
    return math.inf if math.isnan(x) else x
