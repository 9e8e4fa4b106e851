"""The result of :func:`~neuronsplit.evaluation.evaluate`: one :class:`EvaluationRow` per split
unit, subunit and residual, as a tidy table (list of dicts, CSV)."""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..errors import UnknownSubunitError
from ..nn import EquivalenceReport

__all__ = ["EvaluationRow", "Evaluation", "LABEL_COLUMNS"]

#: the columns that need labels; ``evaluate(..., labels=False)`` leaves them out
LABEL_COLUMNS = (
    "fraction_own", "purity", "entropy", "top_class", "selectivity", "preferred_class",
    "n_classes", "classes",
)  # fmt: skip


@dataclass(frozen=True)
class EvaluationRow:
    """The measures of one split unit (``subunit=None``), subunit ``k`` or residual (``-1``).

    The definitions are in :func:`~neuronsplit.evaluation.evaluate`. Undefined values (no image
    where the unit matters, a constant row, ...) are NaN and ``note`` says why; measures that
    do not apply to a row (equivalence of a subunit, own-concept fraction without concepts)
    are None.
    """

    layer: str
    unit: int
    subunit: int | None
    role: str
    form: str
    n_images: int
    mean_activation: float
    fraction: float
    fraction_images: int
    fraction_own: float | None
    top_indices: tuple[int, ...]
    purity: float | None
    entropy: float | None
    top_class: int | None
    selectivity: float | None
    preferred_class: int | None
    n_classes: int | None
    classes: tuple[int, ...] | None
    exact: bool | None
    max_rel_delta: float | None
    note: str = ""

    @property
    def name(self) -> str:
        """``layer/u<unit>``, ``layer/u<unit>/k<k>`` or ``layer/u<unit>/residual`` (the
        :class:`~neuronsplit.SubunitRef` spelling)."""
        base = f"{self.layer}/u{self.unit}"
        if self.subunit is None:
            return base
        return f"{base}/residual" if self.subunit < 0 else f"{base}/k{self.subunit}"


def _plain(value: Any) -> Any:
    """A CSV cell: tuples as ``;``-joined text, None as empty, floats as repr."""
    if value is None:
        return ""
    if isinstance(value, tuple):
        return ";".join(str(v) for v in value)
    return value


class Evaluation:
    """Tidy result of :func:`~neuronsplit.evaluation.evaluate`.

    Attributes
    ----------
    rows : list of EvaluationRow
        Per split unit: the unit, its subunits ``0 .. K-1``, its residual.
    labels : bool
        Whether the label measures were computed (else :meth:`to_dicts` leaves them out).
    n_images : int
        Images seen.
    k : int
        Images per top set.
    equivalence : EquivalenceReport or None
        :func:`~neuronsplit.verify_equivalence` on the first batch (None when switched off).
    max_abs_delta : float
        Largest ``|split(x) - model(x)|`` over every batch, in the models' own dtype.
    notes : list of str
        Everything that made a measure undefined, one line each.

    Examples
    --------
    >>> ev = Evaluation([], labels=False, n_images=0, k=1, equivalence=None,
    ...                 max_abs_delta=0.0, notes=[])
    >>> ev.to_dicts(), "purity" in ev.columns
    ([], False)
    """

    def __init__(
        self, rows: list[EvaluationRow], *, labels: bool, n_images: int, k: int,
        equivalence: EquivalenceReport | None, max_abs_delta: float, notes: list[str],
    ) -> None:  # fmt: skip
        self.rows = list(rows)
        self.labels = labels
        self.n_images = n_images
        self.k = k
        self.equivalence = equivalence
        self.max_abs_delta = max_abs_delta
        self.notes = list(notes)

    @property
    def columns(self) -> list[str]:
        """The columns of :meth:`to_dicts` / :meth:`to_csv`, in order."""
        names = [f.name for f in fields(EvaluationRow)]
        return names if self.labels else [n for n in names if n not in LABEL_COLUMNS]

    def to_dicts(self) -> list[dict[str, Any]]:
        """One plain dict per row (no pandas needed): ``pandas.DataFrame(ev.to_dicts())``."""
        cols = self.columns
        return [{c: getattr(r, c) for c in cols} for r in self.rows]

    def to_csv(self, path: str | os.PathLike | None = None) -> str:
        """Write the rows as CSV to ``path`` (if given) and return the text.

        Tuples (top images, classes) are ``;``-joined; None is an empty cell.
        """
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns, lineterminator="\n")
        writer.writeheader()
        for row in self.to_dicts():
            writer.writerow({c: _plain(v) for c, v in row.items()})
        text = buf.getvalue()
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    def row(self, layer: str, unit: int, subunit: int | None = None) -> EvaluationRow:
        """The row of a unit (``subunit=None``), a subunit or the residual (``-1``)."""
        for r in self.rows:
            if (r.layer, r.unit, r.subunit) == (layer, unit, subunit):
                return r
        raise UnknownSubunitError(
            f"no row for layer {layer!r}, unit {unit}, subunit {subunit}; evaluated: "
            f"{sorted({(r.layer, r.unit) for r in self.rows})[:10]}"
        )

    def __len__(self) -> int:
        return len(self.rows)

    def __str__(self) -> str:
        cols = ["fraction", "purity", "selectivity", "n_classes"] if self.labels else ["fraction"]
        lines = [f"{'row':<24}" + "".join(f"{c:>12}" for c in cols)]
        for r in self.rows:
            cells = []
            for c in cols:
                v = getattr(r, c)
                cells.append(f"{'-' if v is None else v:>12}" if not isinstance(v, float)
                             else f"{v:>12.3f}")  # fmt: skip
            lines.append(f"{r.name:<24}" + "".join(cells))
        if self.equivalence is not None:
            lines.append(f"equivalence: {'passed' if self.equivalence.passed else 'FAILED'}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def __repr__(self) -> str:
        units = len({(r.layer, r.unit) for r in self.rows})
        return f"Evaluation({units} units, {len(self.rows)} rows, {self.n_images} images)"


def nan_if(value: float, defined: bool) -> float:
    """``value``, or NaN where it is undefined."""
    return float(value) if defined else math.nan
