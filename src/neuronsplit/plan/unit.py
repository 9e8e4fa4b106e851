"""One unit's split as index sets: :class:`UnitSplit`, the readable one-unit view of a plan."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import CorruptFileError, PlanError, PlanMismatchError
from ._util import as_index, as_index_tuple, fmt_indices
from .forms import normalise_form

__all__ = ["UnitSplit"]

_UNIT_KEYS = {"layer", "unit", "groups", "shared", "merge", "labels"}


@dataclass(frozen=True)
class UnitSplit:
    """How one unit (a Conv2d output channel or a Linear output feature) is split.

    Parameters
    ----------
    layer : str
        Dotted name of the ``nn.Conv2d`` / ``nn.Linear`` layer, e.g. ``"layer4.2.conv3"``.
    unit : int
        Output channel / feature of that layer.
    groups : sequence of sequence of int
        ``groups[k]`` are the input indices (input channels of a Conv2d, input features of a
        Linear) routed to subunit ``k``. At least two groups are required: a single concept
        needs no split. A group may be empty (the split stays exact).
    shared : sequence of int, default ()
        The remaining input indices (``S0``), seen by the residual.
    merge : {"disjoint", "overlap"}, default "disjoint"
        How the subunits are read (the rows of the split layer are the same for both):
        ``"overlap"`` (Hesse et al.): subunit ``k`` is ``groups[k] + shared`` plus the bias and
        ``z = sum_k s_k - (K-1) r``; ``"disjoint"``: subunit ``k`` sees only ``groups[k]``, the
        residual ``r`` sees ``shared`` and the bias, ``z = sum_k t_k + r``. ``"partition"`` is
        a deprecated alias of ``"disjoint"``.
    labels : sequence of str, default ()
        Optional human-readable concept names, one per group.

    Notes
    -----
    Lists are normalised to sorted tuples of ints. Every index may appear only once across
    ``groups`` and ``shared``; the indices must be ``0 .. J-1`` for a layer with ``J`` inputs
    (checked against a layer by :meth:`validate`).

    Examples
    --------
    >>> s = UnitSplit("fc", 0, groups=[[2, 0], [1]], shared=[3], merge="disjoint")
    >>> s.groups, s.num_subunits
    (((0, 2), (1,)), 2)
    >>> UnitSplit.from_json(s.to_json()) == s
    True
    """

    layer: str
    unit: int
    groups: tuple[tuple[int, ...], ...]
    shared: tuple[int, ...] = ()
    merge: str = "disjoint"
    labels: tuple[str, ...] = ()

    def __repr__(self) -> str:
        # counts, not indices: a ViT unit has thousands of inputs
        sizes = ", ".join(str(len(g)) for g in self.groups)
        labels = f", labels={self.labels}" if self.labels else ""
        return (
            f"UnitSplit({self.layer!r}, unit={self.unit}, K={len(self.groups)}, group sizes=("
            f"{sizes}), shared={len(self.shared)}, merge={self.merge!r}{labels})"
        )

    def __post_init__(self) -> None:
        if not isinstance(self.layer, str) or not self.layer:
            raise PlanError(
                f"layer must be a non-empty dotted name like 'layer4.2.conv3', got {self.layer!r}"
            )
        unit = as_index(self.unit, f"unit of layer {self.layer!r}")
        where = f"split of unit {unit} of {self.layer!r}"
        if isinstance(self.groups, (str, bytes)) or not isinstance(self.groups, Iterable):
            raise PlanError(f"groups of the {where} must be a sequence of index sequences")
        groups = tuple(
            as_index_tuple(g, f"groups[{k}] of the {where}") for k, g in enumerate(self.groups)
        )
        if len(groups) < 2:
            raise PlanError(
                f"the {where} has {len(groups)} group(s); a split needs at least 2 groups "
                "(a unit with a single concept needs no split: leave it out of the plan)"
            )
        shared = as_index_tuple(self.shared, f"shared of the {where}")
        seen: dict[int, int] = {}
        for idx in (i for g in (*groups, shared) for i in g):
            seen[idx] = seen.get(idx, 0) + 1
        dup = [i for i, n in seen.items() if n > 1]
        if dup:
            raise PlanError(
                f"input indices {fmt_indices(dup)} appear more than once in the {where}; "
                "each input index must go to exactly one group or to shared"
            )
        merge = normalise_form(self.merge, where)
        labels = self.labels
        if isinstance(labels, str) or not isinstance(labels, Iterable):
            raise PlanError(f"labels of the {where} must be a sequence of str, got {labels!r}")
        labels = tuple(labels)
        if labels and len(labels) != len(groups):
            raise PlanError(
                f"the {where} has {len(groups)} groups but {len(labels)} labels; give one label "
                "per group or none"
            )
        if not all(isinstance(x, str) for x in labels):
            raise PlanError(f"labels of the {where} must all be str, got {labels!r}")
        object.__setattr__(self, "unit", unit)
        object.__setattr__(self, "groups", tuple(tuple(sorted(g)) for g in groups))
        object.__setattr__(self, "shared", tuple(sorted(shared)))
        object.__setattr__(self, "merge", merge)
        object.__setattr__(self, "labels", labels)

    @property
    def num_subunits(self) -> int:
        """Number of subunits ``K`` (the residual not counted)."""
        return len(self.groups)

    @property
    def num_extra_rows(self) -> int:
        """Rows the split adds to the layer: ``K - 1`` subunits plus the residual."""
        return len(self.groups)

    @property
    def num_inputs(self) -> int:
        """``J``: how many input indices the split routes (``0 .. J-1`` when complete)."""
        return sum(len(g) for g in self.groups) + len(self.shared)

    def missing_inputs(self, n_inputs: int | None = None) -> list[int]:
        """Input indices below ``n_inputs`` (default: the largest index + 1) in no group."""
        used = {i for g in (*self.groups, self.shared) for i in g}
        top = (max(used) + 1 if used else 0) if n_inputs is None else n_inputs
        return [i for i in range(top) if i not in used]

    def validate(self, n_inputs: int, n_units: int) -> None:
        """Check the split against a layer with ``n_inputs`` inputs and ``n_units`` outputs.

        Every input index ``0 .. n_inputs-1`` must appear exactly once across ``groups`` and
        ``shared``, and ``unit`` must be below ``n_units``.

        Raises
        ------
        PlanMismatchError
            Naming the unit or the missing / out-of-range indices.

        Examples
        --------
        >>> UnitSplit("fc", 1, groups=[[0], [1]], shared=[2]).validate(3, 4)
        >>> UnitSplit("fc", 1, groups=[[0], [1]]).validate(3, 4)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        neuronsplit.errors.PlanMismatchError: input indices 2 of layer 'fc' are in no group ...
        """
        where = f"layer {self.layer!r}"
        if self.unit >= n_units:
            raise PlanMismatchError(
                f"unit {self.unit} is out of range for {where}, which has {n_units} units "
                f"(valid: 0..{n_units - 1})"
            )
        too_big = [i for g in (*self.groups, self.shared) for i in g if i >= n_inputs]
        if too_big:
            raise PlanMismatchError(
                f"input indices {fmt_indices(too_big)} in the split of unit {self.unit} are out "
                f"of range for {where}, which has {n_inputs} inputs (valid: 0..{n_inputs - 1})"
            )
        missing = self.missing_inputs(n_inputs)
        if missing:
            raise PlanMismatchError(
                f"input indices {fmt_indices(missing)} of {where} are in no group and not in "
                f"shared for unit {self.unit}; every input index must appear exactly once "
                "(put the unassigned ones into shared)"
            )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (lists instead of tuples).

        Examples
        --------
        >>> UnitSplit("fc", 0, groups=[[0], [1]]).to_dict()["groups"]
        [[0], [1]]
        """
        return {
            "layer": self.layer,
            "unit": self.unit,
            "groups": [list(g) for g in self.groups],
            "shared": list(self.shared),
            "merge": self.merge,
            "labels": list(self.labels),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UnitSplit:
        """Build a split from :meth:`to_dict` output; unknown or missing keys raise PlanError.

        Examples
        --------
        >>> UnitSplit.from_dict({"layer": "fc", "unit": 0, "groups": [[0], [1]]}).merge
        'disjoint'
        """
        if not isinstance(data, Mapping):
            raise PlanError(f"a unit split must be a JSON object, got {type(data).__name__}")
        unknown = set(data) - _UNIT_KEYS
        if unknown:
            raise PlanError(
                f"unknown key(s) {sorted(unknown)} in unit split; valid: {sorted(_UNIT_KEYS)}"
            )
        missing = {"layer", "unit", "groups"} - set(data)
        if missing:
            raise PlanError(f"unit split {dict(data)!r:.80} lacks key(s) {sorted(missing)}")
        return cls(**dict(data))

    def to_json(self) -> str:
        """Return the split as a JSON string (see :meth:`to_dict`).

        Examples
        --------
        >>> UnitSplit("fc", 0, groups=[[0], [1]]).to_json()[:13]
        '{"layer": "fc'
        """
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> UnitSplit:
        """Parse a JSON string written by :meth:`to_json`.

        Examples
        --------
        >>> UnitSplit.from_json('{"layer": "fc", "unit": 2, "groups": [[1], [0]]}').groups
        ((1,), (0,))
        """
        try:
            data = json.loads(text)
        except (TypeError, json.JSONDecodeError) as err:
            raise CorruptFileError(f"unit split is not valid JSON: {err}") from err
        return cls.from_dict(data)
