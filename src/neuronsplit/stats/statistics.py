"""Scan statistics as objects: each owns its update, merge, all-reduce and file state.

Nothing here is stored per sample. Per scanned layer (``C`` units, ``J`` inputs, ``K`` kernel
taps, ``N`` classes):

* :class:`ClassCounts` ``(N,)``: images per class (grouped by the relevance target);
* :class:`TauCounts` ``(T, N, C)``: images of class ``t`` for which unit ``c`` is important at
  each threshold of the tau grid (``R_c >= tau * sum_c' max(R_c', 0)``, Hesse et al.); an image
  whose positive relevance at the layer is zero is important for no unit;
* :class:`NoPositiveCounts` ``(N,)``: images per class whose positive relevance at the layer is
  zero (every ``R_c <= 0``), the images :class:`TauCounts` leaves out;
* :class:`ClassSums` ``(N, C)``: class sums of the unit relevances;
* :class:`TapSums` ``(N, J, K)``: class sums of the input summed over the positions each kernel
  tap reads; with the weight they give every average relevance vector in closed form;
* :class:`TopN` ``(C, n)``: per unit the ``n`` samples with the largest value (activation
  maximum over positions, or relevance), with their sample index and the position of the
  maximum -- merged by selection, not by summing.

Sums accumulate in float64 (counts in integers) on the scan's device; half-precision inputs are
summed in float32 before they get there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..errors import InvalidArgumentError

__all__ = [
    "LayerBatch",
    "Statistic",
    "ClassCounts",
    "TauCounts",
    "NoPositiveCounts",
    "ClassSums",
    "TapSums",
    "TopN",
    "STATISTIC_TYPES",
    "has_positive",
    "reduce_on",
]


@dataclass(frozen=True)
class LayerBatch:
    """What one batch contributes to the statistics of one layer.

    Attributes
    ----------
    targets : Tensor
        ``(B,)`` class index of every sample (the relevance target).
    index : Tensor
        ``(B,)`` sample index in the data set.
    relevance : Tensor
        ``(B, C)`` unit relevance (float32 or better).
    taps : Tensor
        ``(B, J, K)`` input tap sums.
    act_max, act_pos : Tensor or None
        ``(B, C)`` largest activation of each unit over positions, and where it is.
    rel_pos : Tensor or None
        ``(B, C)`` position of each unit's largest elementwise relevance.
    """

    targets: Tensor
    index: Tensor
    relevance: Tensor
    taps: Tensor
    act_max: Tensor | None = None
    act_pos: Tensor | None = None
    rel_pos: Tensor | None = None


class Statistic:
    """One accumulator. Subclasses define the tensors (:attr:`fields`) and :meth:`update`."""

    fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **tensors: Tensor) -> None:
        missing = set(self.fields) - set(tensors)
        if missing:
            raise ValueError(f"{type(self).__name__} needs the tensors {sorted(missing)}")
        self.tensors: dict[str, Tensor] = {k: tensors[k] for k in self.fields}

    def __getattr__(self, name: str) -> Tensor:
        tensors = self.__dict__.get("tensors", {})
        if name in tensors:
            return tensors[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def update(self, batch: LayerBatch) -> None:
        """Add one batch."""
        raise NotImplementedError

    def spec(self) -> dict[str, Any]:
        """JSON-ready parameters beyond the tensors (stored in the file header)."""
        return {}

    def merge(self, other: Statistic) -> Statistic:
        """The statistic of both data sets together (default: elementwise sum)."""
        return type(self)(
            **{k: self.tensors[k] + other.tensors[k] for k in self.fields}, **self.spec()
        )

    def all_reduce(self, group: Any = None) -> None:
        """Combine the statistic over the processes of a ``torch.distributed`` group, in place."""
        import torch.distributed as dist

        for tensor in self.tensors.values():
            dist.all_reduce(tensor, group=group)

    def to(self, device: torch.device | str, *, copy: bool = True) -> Statistic:
        """The statistic on ``device``: a copy, or with ``copy=False`` the same tensors where
        they are there already."""
        tensors = {k: t.to(device, copy=copy) for k, t in self.tensors.items()}
        return type(self)(**tensors, **self.spec())

    def nbytes(self) -> int:
        """Bytes held."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def equal(self, other: Statistic) -> bool:
        """Same type, parameters and tensors."""
        return (
            type(self) is type(other)
            and self.spec() == other.spec()
            and all(torch.equal(self.tensors[k], other.tensors[k]) for k in self.fields)
        )


class ClassCounts(Statistic):
    """``counts (N,)`` int64: samples per class."""

    fields = ("counts",)

    @classmethod
    def zeros(cls, num_classes: int, device: Any = None) -> ClassCounts:
        """An empty count."""
        return cls(counts=torch.zeros(num_classes, dtype=torch.int64, device=device))

    def add(self, targets: Tensor) -> None:
        """Count one batch of target classes."""
        self.counts.index_add_(0, targets, torch.ones_like(targets))

    def update(self, batch: LayerBatch) -> None:
        self.add(batch.targets)


def has_positive(relevance: Tensor) -> Tensor:
    """``(B,)`` bool: the sample has some positive unit relevance (``sum_c max(R_c, 0) > 0``)."""
    return (relevance > 0).any(1)


class TauCounts(Statistic):
    """``counts (T, N, C)`` int32: how often each unit is important, per class and tau.

    Unit ``c`` is important for an image when ``R_c >= tau * sum_c' max(R_c', 0)``. An image
    whose positive relevance at the layer is zero is important for no unit: the rule would
    otherwise read ``R_c >= 0`` and mark every unit with zero relevance (all of a dead layer's)
    as important. This deviates on purpose from the official code; such images are counted
    by :class:`NoPositiveCounts`.
    """

    fields = ("counts",)

    def __init__(self, *, counts: Tensor, taus: tuple[float, ...]) -> None:
        super().__init__(counts=counts)
        self.taus = tuple(float(t) for t in taus)
        self._thresholds: dict[tuple[torch.dtype, torch.device], Tensor] = {}

    @classmethod
    def zeros(
        cls, taus: tuple[float, ...], num_classes: int, units: int, device: Any = None
    ) -> TauCounts:
        """Empty counts."""
        counts = torch.zeros(len(taus), num_classes, units, dtype=torch.int32, device=device)
        return cls(counts=counts, taus=taus)

    def spec(self) -> dict[str, Any]:
        return {"taus": list(self.taus)}

    def update(self, batch: LayerBatch) -> None:
        rel = batch.relevance
        positive_total = rel.clamp(min=0).sum(1, keepdim=True)
        key = (rel.dtype, rel.device)
        if key not in self._thresholds:  # built once, not on every batch
            self._thresholds[key] = torch.tensor(self.taus, dtype=rel.dtype, device=rel.device)
        thresholds = self._thresholds[key].view(-1, 1, 1)
        important = rel.unsqueeze(0) >= thresholds * positive_total.unsqueeze(0)
        important &= has_positive(rel).view(1, -1, 1)  # no positive relevance: no unit
        important = important.to(torch.int32)
        self.counts.index_add_(1, batch.targets, important)  # all taus in one call: (T, B, C)


class NoPositiveCounts(Statistic):
    """``counts (N,)`` int64: images per class whose positive relevance at the layer is zero.

    Such images (every unit relevance ``<= 0``) are important for no unit in
    :class:`TauCounts`; this count says how many there were.
    """

    fields = ("counts",)

    @classmethod
    def zeros(cls, num_classes: int, device: Any = None) -> NoPositiveCounts:
        """An empty count."""
        return cls(counts=torch.zeros(num_classes, dtype=torch.int64, device=device))

    def update(self, batch: LayerBatch) -> None:
        none = ~has_positive(batch.relevance)
        self.counts.index_add_(0, batch.targets, none.to(torch.int64))


class ClassSums(Statistic):
    """``sums (N, C)`` float64: class sums of the unit relevances."""

    fields = ("sums",)

    @classmethod
    def zeros(cls, num_classes: int, units: int, device: Any = None) -> ClassSums:
        """Empty sums."""
        return cls(sums=torch.zeros(num_classes, units, dtype=torch.float64, device=device))

    def update(self, batch: LayerBatch) -> None:
        self.sums.index_add_(0, batch.targets, batch.relevance.to(torch.float64))


class TapSums(Statistic):
    """``sums (N, J, K)`` float64: class sums of the input tap sums."""

    fields = ("sums",)

    @classmethod
    def zeros(cls, num_classes: int, inputs: int, taps: int, device: Any = None) -> TapSums:
        """Empty sums."""
        return cls(sums=torch.zeros(num_classes, inputs, taps, dtype=torch.float64, device=device))

    def update(self, batch: LayerBatch) -> None:
        self.sums.index_add_(0, batch.targets, batch.taps.to(torch.float64))


def _select(
    values: Tensor, index: Tensor, position: Tensor, n: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Keep the ``n`` largest values per row; ties go to the smaller sample index.

    Ties are broken explicitly (sort by index, then a stable sort by value) so that the result
    does not depend on how samples were split over batches or processes.
    """
    order = torch.sort(index, dim=1, stable=True).indices
    values, index, position = (t.gather(1, order) for t in (values, index, position))
    order = torch.sort(values, dim=1, descending=True, stable=True).indices[:, :n]
    return values.gather(1, order), index.gather(1, order), position.gather(1, order)


class TopN(Statistic):
    """Per unit the ``n`` samples with the largest value: ``values``, ``index``, ``position``.

    ``values (C, n)`` float64 (``-inf`` while a slot is empty), ``index (C, n)`` int64 sample
    indices (``-1`` while empty), ``position (C, n)`` int64 flat position of the maximum in the
    layer output (conv pixel ``h * W + w``, token index, or 0). ``by`` is ``"activation"``
    (largest value of the layer output over positions) or ``"relevance"`` (unit relevance).
    """

    fields = ("values", "index", "position")

    def __init__(self, *, values: Tensor, index: Tensor, position: Tensor, by: str) -> None:
        if by not in ("activation", "relevance"):
            raise InvalidArgumentError(f"TopN by must be 'activation' or 'relevance', got {by!r}")
        super().__init__(values=values, index=index, position=position)
        self.by = by

    @classmethod
    def empty(cls, units: int, n: int, by: str, device: Any = None) -> TopN:
        """No samples yet."""
        return cls(
            values=torch.full((units, n), -torch.inf, dtype=torch.float64, device=device),
            index=torch.full((units, n), -1, dtype=torch.int64, device=device),
            position=torch.zeros(units, n, dtype=torch.int64, device=device),
            by=by,
        )

    @property
    def n(self) -> int:
        """Slots per unit."""
        return int(self.values.shape[1])

    def spec(self) -> dict[str, Any]:
        return {"by": self.by}

    def _combine(self, values: Tensor, index: Tensor, position: Tensor) -> None:
        cat = [
            torch.cat(pair, 1)
            for pair in zip(self.tensors.values(), (values, index, position), strict=True)
        ]
        v, i, p = _select(*cat, self.n)
        self.tensors.update(values=v, index=i, position=p)

    def update(self, batch: LayerBatch) -> None:
        if self.by == "activation":
            values, position = batch.act_max, batch.act_pos
        else:
            values, position = batch.relevance, batch.rel_pos
        if values is None or position is None:
            raise ValueError(f"TopN by {self.by} needs the batch's maxima and their positions")
        index = batch.index.to(values.device).unsqueeze(0).expand(values.shape[1], -1)
        self._combine(values.T.to(torch.float64), index, position.T.to(torch.int64))

    def merge(self, other: Statistic) -> TopN:
        out = self.to(self.values.device)
        out._combine(*other.tensors.values())
        return out

    def all_reduce(self, group: Any = None) -> None:
        import torch.distributed as dist

        world = dist.get_world_size(group)
        gathered = []
        for tensor in self.tensors.values():
            parts = [torch.empty_like(tensor) for _ in range(world)]
            dist.all_gather(parts, tensor.contiguous(), group=group)
            gathered.append(torch.cat(parts, 1))
        v, i, p = _select(*gathered, self.n)
        self.tensors.update(values=v, index=i, position=p)

    def top(self, unit: int, k: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``(values, index, position)`` of the filled slots of ``unit``, largest first."""
        keep = self.index[unit] >= 0
        v, i, p = self.values[unit][keep], self.index[unit][keep], self.position[unit][keep]
        return (v, i, p) if k is None else (v[:k], i[:k], p[:k])


def reduce_on(stat: Statistic, device: torch.device, group: Any = None) -> Statistic:
    """All-reduce ``stat`` on ``device`` (where the backend's collectives run) and return it
    where it was; no copy when it is there already (NCCL on a GPU scan, gloo on the CPU)."""
    home = next(iter(stat.tensors.values())).device
    moved = stat.to(device, copy=False)
    moved.all_reduce(group)
    return moved.to(home, copy=False)


#: statistic classes by the name stored in scan files
STATISTIC_TYPES: Mapping[str, type[Statistic]] = {
    cls.__name__: cls
    for cls in (ClassCounts, TauCounts, NoPositiveCounts, ClassSums, TapSums, TopN)
}
