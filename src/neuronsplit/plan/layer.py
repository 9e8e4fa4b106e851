"""A whole layer's split as one integer assignment: :class:`LayerSplit`.

For the ``S`` split units of a layer with ``J`` inputs the plan is a ``(S, J)`` integer tensor:
entry ``[s, j]`` is the subunit ``0 .. K_s - 1`` that input ``j`` feeds for unit ``units[s]``,
or ``-1`` for the shared inputs seen by the residual. Every unit of a ViT-B ``mlp.fc2`` split
four ways is one 768 x 3072 tensor, stored as int8 (2.4 MB), instead of millions of Python
index tuples.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import PlanError, PlanMismatchError
from ._util import as_long_tensor, fmt_indices, unit_labels
from .forms import normalise_form
from .unit import UnitSplit

__all__ = ["LayerSplit", "SHARED"]

#: assignment value of an input that goes to the residual (the shared set ``S0``)
SHARED = -1


class LayerSplit:
    """The split of some (or all) units of one layer.

    Parameters
    ----------
    layer : str
        Dotted layer name, e.g. ``"blocks.11.mlp.fc2"``.
    units : sequence of int or 1-d tensor
        The split units (stored in ascending order; rows of ``assignment`` follow them).
    assignment : (S, J) integer array or tensor
        ``assignment[s, j]`` = subunit of input ``j`` for unit ``units[s]``, or ``-1`` (shared).
    num_subunits : sequence of int, optional
        ``K`` per unit (>= 2); default ``max(assignment[s]) + 1``. A subunit may be empty.
    merge : {"disjoint", "overlap"}, default "disjoint"
        How the subunits are read (see :class:`UnitSplit`); the split rows are the same.
    labels : mapping of unit to sequence of str, optional
        Concept names of some units, one per subunit.

    Notes
    -----
    The tensors are copies and should be treated as read-only.

    Examples
    --------
    >>> ls = LayerSplit("fc", units=[3, 1], assignment=[[0, 1, -1], [1, 0, 0]])
    >>> ls.units.tolist(), ls.num_subunits.tolist(), ls.num_inputs
    ([1, 3], [2, 2], 3)
    >>> ls.unit_split(3).groups, ls.unit_split(3).shared
    (((0,), (1,)), (2,))
    """

    __slots__ = (
        "layer", "units", "assignment", "num_subunits", "merge", "labels", "_digest", "_pos",
    )  # fmt: skip

    def __init__(
        self,
        layer: str,
        units: Sequence[int] | Tensor,
        assignment: Any,
        num_subunits: Sequence[int] | Tensor | None = None,
        *,
        merge: str = "disjoint",
        labels: Mapping[int, Sequence[str]] | None = None,
    ) -> None:
        if not isinstance(layer, str) or not layer:
            raise PlanError(f"layer must be a non-empty dotted name, got {layer!r}")
        where = f"split of layer {layer!r}"
        unit_t = as_long_tensor(units, f"units of the {where}", 1)
        assign = as_long_tensor(assignment, f"assignment of the {where}", 2)
        if assign.shape[0] != unit_t.shape[0]:
            raise PlanError(
                f"the {where} lists {unit_t.shape[0]} units but its assignment has "
                f"{assign.shape[0]} rows; give one row of input assignments per unit"
            )
        if (unit_t < 0).any():
            raise PlanError(f"units of the {where} must be >= 0, got {unit_t.min().item()}")
        order = torch.argsort(unit_t)
        unit_t, assign = unit_t[order], assign[order]
        dup = unit_t[1:][unit_t[1:] == unit_t[:-1]]
        if dup.numel():
            raise PlanError(
                f"units {fmt_indices(dup.tolist())} are split twice in the {where}; give each "
                "unit one row"
            )
        if num_subunits is None:
            ks = assign.amax(1) + 1 if assign.numel() else torch.zeros_like(unit_t)
        else:
            ks = as_long_tensor(num_subunits, f"num_subunits of the {where}", 1)
            if ks.shape != unit_t.shape:
                raise PlanError(
                    f"num_subunits of the {where} has {ks.numel()} entries for "
                    f"{unit_t.numel()} units"
                )
            ks = ks[order]
        few = unit_t[ks < 2]
        if few.numel():
            raise PlanError(
                f"units {fmt_indices(few.tolist())} of the {where} have fewer than 2 subunits; "
                "a unit with a single concept needs no split: leave it out of the plan"
            )
        bad = (assign < SHARED) | (assign >= ks[:, None])
        if bad.any():
            s, j = (int(i) for i in bad.nonzero()[0])
            raise PlanError(
                f"assignment of input {j} for unit {int(unit_t[s])} of the {where} is "
                f"{int(assign[s, j])}; valid: -1 (shared) or 0..{int(ks[s]) - 1}"
            )
        form = normalise_form(merge, where)
        label_map = unit_labels(labels, dict(zip(unit_t.tolist(), ks.tolist(), strict=True)), where)
        # the smallest integer type that holds every subunit number: int8 up to K = 127 (a
        # ViT-B fc2 layer split four ways is then 2.4 MB), int16 beyond
        top_k = int(ks.max()) if ks.numel() else 0
        if top_k > 32767:
            raise PlanError(f"the {where} has a unit with K={top_k} subunits; at most 32767")
        dtype = torch.int8 if top_k <= 127 else torch.int16
        for name, value in (
            ("layer", layer),
            ("units", unit_t),
            ("assignment", assign.to(dtype).contiguous()),
            ("num_subunits", ks),
            ("merge", form),
            ("labels", dict(sorted(label_map.items()))),
            ("_digest", None),
            ("_pos", None),
        ):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("LayerSplit is read-only; build a new one")

    # ------------------------------------------------------------------ sizes and lookups
    @property
    def num_units(self) -> int:
        """``S``, the number of split units."""
        return int(self.units.numel())

    @property
    def num_inputs(self) -> int:
        """``J``, the number of inputs of the layer."""
        return int(self.assignment.shape[1])

    @property
    def num_extra_rows(self) -> int:
        """Rows the split adds to the layer: ``sum_s K_s`` (``K_s - 1`` subunits + residual)."""
        return int(self.num_subunits.sum())

    def position(self, unit: int) -> int:
        """Row of ``unit`` in :attr:`units` / :attr:`assignment`; ``KeyError`` if not split."""
        if self._pos is None:
            object.__setattr__(self, "_pos", {u: s for s, u in enumerate(self.units.tolist())})
        return self._pos[int(unit)]

    def __contains__(self, unit: object) -> bool:
        try:
            self.position(int(unit))  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError):
            return False
        return True

    def unit_split(self, unit: int) -> UnitSplit:
        """The :class:`UnitSplit` view of one split unit."""
        s = self.position(unit)
        row = self.assignment[s].to(torch.int64)
        k = int(self.num_subunits[s])
        groups = [torch.nonzero(row == i).flatten().tolist() for i in range(k)]
        shared = torch.nonzero(row == SHARED).flatten().tolist()
        return UnitSplit(
            self.layer, int(unit), groups, shared, merge=self.merge,
            labels=self.labels.get(int(unit), ()),
        )  # fmt: skip

    def unit_splits(self) -> Iterator[UnitSplit]:
        """Every split unit as a :class:`UnitSplit`, in ascending unit order."""
        for u in self.units.tolist():
            yield self.unit_split(u)

    def check_shape(self, n_units: int, n_inputs: int) -> None:
        """Raise :class:`PlanMismatchError` unless the split fits a layer of that shape.

        Examples
        --------
        >>> LayerSplit("fc", [0], [[0, 1]]).check_shape(4, 3)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        neuronsplit.errors.PlanMismatchError: the split of layer 'fc' covers 2 inputs, but ...
        """
        where = f"the split of layer {self.layer!r}"
        if self.num_inputs != n_inputs:
            hint = (
                f"inputs {fmt_indices(range(self.num_inputs, n_inputs))} are in no group (put "
                "unassigned inputs into shared)"
                if self.num_inputs < n_inputs
                else f"input indices {fmt_indices(range(n_inputs, self.num_inputs))} are out of "
                f"range (valid: 0..{n_inputs - 1})"
            )
            raise PlanMismatchError(
                f"{where} covers {self.num_inputs} inputs, but the layer has {n_inputs}: {hint}. "
                "Is the plan for another model?"
            )
        if self.num_units and int(self.units[-1]) >= n_units:
            too_big = self.units[self.units >= n_units].tolist()
            which = (
                f"unit {too_big[0]} is"
                if len(too_big) == 1
                else f"units {fmt_indices(too_big)} are"
            )
            raise PlanMismatchError(
                f"{which} out of range for layer {self.layer!r}, which has {n_units} units "
                f"(valid: 0..{n_units - 1})"
            )

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_unit_splits(cls, splits: Sequence[UnitSplit]) -> LayerSplit:
        """Pack unit splits of one layer (same layer name and merge form) into a layer split.

        Raises
        ------
        PlanError
            Different layers or merge forms, units split twice, unit splits over different
            numbers of inputs, or input indices in no group.
        """
        if not splits:
            raise PlanError("a layer split needs at least one UnitSplit")
        layer = splits[0].layer
        forms = sorted({s.merge for s in splits})
        if any(s.layer != layer for s in splits):
            raise PlanError(
                "all unit splits of one layer split must name the same layer, got "
                f"{sorted({s.layer for s in splits})}"
            )
        if len(forms) != 1:
            raise PlanError(
                f"the units of layer {layer!r} use different merge forms {forms}; one split "
                "layer has one form: give every unit of a layer the same merge="
            )
        # the layer has at least as many inputs as the largest index any unit routes
        j = max(max((i for g in (*s.groups, s.shared) for i in g), default=-1) for s in splits) + 1
        assign = np.full((len(splits), j), SHARED, dtype=np.int64)
        for row, s in enumerate(splits):
            missing = s.missing_inputs(j)
            if missing:
                raise PlanError(
                    f"input indices {fmt_indices(missing)} are in no group and not in shared for "
                    f"unit {s.unit} of layer {layer!r}; every input index 0..{j - 1} must appear "
                    "exactly once (put the unassigned ones into shared)"
                )
            for k, group in enumerate(s.groups):
                assign[row, list(group)] = k
        labels = {s.unit: s.labels for s in splits if s.labels}
        return cls(
            layer, [s.unit for s in splits], assign, [s.num_subunits for s in splits],
            merge=forms[0], labels=labels,
        )  # fmt: skip

    def renamed(self, layer: str) -> LayerSplit:
        """The same split for a layer of another name (e.g. the path inside a wrapper)."""
        return LayerSplit(
            layer, self.units, self.assignment, self.num_subunits, merge=self.merge,
            labels=self.labels,
        )  # fmt: skip

    # ------------------------------------------------------------------ dicts
    def header(self) -> dict[str, Any]:
        """JSON-ready description without the assignment (what ``plan.json`` stores)."""
        return {
            "layer": self.layer,
            "merge": self.merge,
            "num_units": self.num_units,
            "num_inputs": self.num_inputs,
            "labels": {str(u): list(v) for u, v in self.labels.items()},
        }

    def tensors(self) -> dict[str, Tensor]:
        """The index tensors keyed by field name (what the safetensors file stores)."""
        return {
            "units": self.units,
            "num_subunits": self.num_subunits,
            "assignment": self.assignment,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with the assignment inline (compact for small layers).

        Examples
        --------
        >>> LayerSplit("fc", [0], [[1, 0, -1]]).to_dict()["assignment"]
        [[1, 0, -1]]
        """
        data = self.header()
        data.update(
            units=self.units.tolist(),
            num_subunits=self.num_subunits.tolist(),
            assignment=self.assignment.tolist(),
        )
        return data

    @classmethod
    def from_parts(cls, header: Mapping[str, Any], tensors: Mapping[str, Any]) -> LayerSplit:
        """Inverse of :meth:`header` plus :meth:`tensors` (or of :meth:`to_dict`)."""
        labels = header.get("labels") or {}
        if not isinstance(labels, Mapping):
            raise PlanError(f"labels of layer {header.get('layer')!r} must be an object")
        split = cls(
            header["layer"], tensors["units"], tensors["assignment"], tensors["num_subunits"],
            merge=header.get("merge", "disjoint"), labels=labels,
        )  # fmt: skip
        declared = (
            header.get("num_units", split.num_units),
            header.get("num_inputs", split.num_inputs),
        )
        if declared != (split.num_units, split.num_inputs):
            raise PlanError(
                f"layer {split.layer!r} declares {declared[0]} units x {declared[1]} inputs but its "
                f"assignment is {split.num_units} x {split.num_inputs}"
            )
        return split

    # ------------------------------------------------------------------ comparison
    def digest(self) -> str:
        """SHA-256 of everything that defines the split (cached)."""
        if self._digest is None:
            h = hashlib.sha256(f"{self.layer}|{self.merge}|{sorted(self.labels.items())}".encode())
            for t in (self.units, self.num_subunits, self.assignment.to(torch.int16)):
                h.update(str(tuple(t.shape)).encode())
                h.update(t.numpy().tobytes())
            object.__setattr__(self, "_digest", h.hexdigest())
        return self._digest

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LayerSplit):
            return NotImplemented
        return (
            self.layer == other.layer
            and self.merge == other.merge
            and self.labels == other.labels
            and torch.equal(self.units, other.units)
            and torch.equal(self.num_subunits, other.num_subunits)
            and torch.equal(self.assignment.to(torch.int16), other.assignment.to(torch.int16))
        )

    def __hash__(self) -> int:
        return hash(self.digest())

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.header(), self.tensors()))

    def __repr__(self) -> str:
        ks = self.num_subunits
        k_text = "-" if not ks.numel() else (
            str(int(ks.min())) if int(ks.min()) == int(ks.max()) else f"{int(ks.min())}-{int(ks.max())}"
        )  # fmt: skip
        return (
            f"LayerSplit({self.layer!r}, units={self.num_units}, inputs={self.num_inputs}, "
            f"K={k_text}, merge={self.merge!r})"
        )


def _rebuild(header: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> LayerSplit:
    return LayerSplit.from_parts(header, tensors)
