"""What a scan measured: :class:`ScanResult` (per-layer :class:`LayerStats`) and its queries.

See :mod:`neuronsplit.stats.statistics` for the accumulators. Because a ``Conv2d``/``Linear``
layer is linear, the per-input contribution ``r_{j->c} = sum_hw X_j * dz_c/dX_j`` equals
``sum_k W[c, j, k] * S[j, k]`` exactly (:func:`neuronsplit.capture.contributions_from_taps`),
so every average relevance vector (ARV) of every unit follows from the class tap sums and the
weight, without a backward pass per unit.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..capture import contributions_from_taps
from ..errors import (
    EmptyClassError,
    IncompatibleResultsError,
    InvalidArgumentError,
    UnknownLayerError,
)
from .layer import DEFAULT_TAU_GRID, LayerStats, layout
from .statistics import ClassCounts, reduce_on

__all__ = ["LayerStats", "ScanResult", "DEFAULT_TAU_GRID"]


@dataclass
class ScanResult:
    """What :func:`neuronsplit.scan` measured, ready for detection and discovery.

    Attributes
    ----------
    layers : dict[str, LayerStats]
        Statistics per scanned layer, in scan order.
    counts : ClassCounts or Tensor
        Images per class (grouped by the relevance target); a ``(N,)`` tensor is wrapped.
    tau_grid : tuple of float
        Thresholds for which importance counts exist.
    relevance : str
        Description of the relevance backend.
    target : str
        ``"label"`` or ``"prediction"``: which logit the relevance explains and which class an
        image is counted under.
    meta : dict
        Provenance (model class, number of batches, processes, ...).
    """

    layers: dict[str, LayerStats]
    counts: ClassCounts
    tau_grid: tuple[float, ...] = DEFAULT_TAU_GRID
    relevance: str = "grad_x_act"
    target: str = "label"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.counts, Tensor):
            self.counts = ClassCounts(counts=self.counts.to(torch.int64))
        self.tau_grid = tuple(float(t) for t in self.tau_grid)

    # ------------------------------------------------------------------ queries
    @property
    def class_counts(self) -> Tensor:
        """``(N,)`` int64 images per class."""
        return self.counts.counts

    @property
    def num_classes(self) -> int:
        """Number of classes N."""
        return int(self.class_counts.shape[0])

    @property
    def num_samples(self) -> int:
        """Images scanned."""
        return int(self.class_counts.sum())

    @property
    def empty_classes(self) -> tuple[int, ...]:
        """Classes that no scanned image belongs to."""
        return tuple(int(i) for i in torch.nonzero(self.class_counts == 0).flatten())

    def layer(self, name: str) -> LayerStats:
        """Statistics of one layer.

        Raises
        ------
        UnknownLayerError
            If the layer was not scanned; the message lists the scanned layers.
        """
        try:
            return self.layers[name]
        except KeyError:
            raise UnknownLayerError(
                f"layer {name!r} was not scanned; scanned layers: {list(self.layers)}. "
                "Pass it in scan(..., layers=[...])."
            ) from None

    def important_counts(self, layer: str, tau: float) -> Tensor:
        """``(N, C)`` counts of images of each class for which each unit is important at ``tau``.

        Raises
        ------
        ValueError
            If ``tau`` is not on the grid the scan used.
        """
        return self.layer(layer).important[self._tau_index(tau)]

    def no_positive_relevance(self, layer: str) -> Tensor:
        """``(N,)`` int64 images of each class whose positive relevance at ``layer`` is zero.

        For such an image every unit has relevance ``<= 0`` (a dead layer: all zero), so
        Hesse's threshold ``tau * sum_c max(R_c, 0)`` is zero; these images are counted as
        important for **no** unit (the official code counts them for every unit with
        ``R_c >= 0``). They still count in :attr:`class_counts`, so they lower the share of
        a class's images for which a unit is important.
        """
        return self.layer(layer).no_positive

    def mean_relevance(self, layer: str) -> Tensor:
        """``(N, C)`` class-mean relevance of each unit (NaN rows for empty classes)."""
        counts = self.class_counts.to(torch.float64).unsqueeze(1)
        return self.layer(layer).relevance_sum / counts

    def arv(self, layer: str, unit: int, cls: int) -> Tensor:
        """Average relevance vector of ``unit`` for class ``cls``: ``(J,)`` float64.

        ``ARV_j = (1 / N_t) sum_{x in class t} sum_hw X_j dz_unit/dX_j`` (signed, not normalised),
        computed in closed form from the class input sums and the weight.

        Raises
        ------
        EmptyClassError
            If no scanned image belongs to ``cls``.
        """
        return self.concept_arvs(layer, unit, [[cls]])[0]

    def arvs(self, layer: str, unit: int, classes: Sequence[int]) -> Tensor:
        """Stacked ARVs ``(len(classes), J)`` of one unit."""
        return self.concept_arvs(layer, unit, [[c] for c in classes])

    def concept_arvs(self, layer: str, unit: int, concepts: Sequence[Sequence[int]]) -> Tensor:
        """ARV of each class set: the image-weighted mean over its classes ``(len(concepts), J)``."""
        stats = self.layer(layer)
        if not 0 <= unit < stats.num_units:
            raise InvalidArgumentError(
                f"unit {unit} out of range for layer {layer!r} ({stats.num_units} units)"
            )
        taps, counts = [], []
        for concept in concepts:
            counts.append(sum(self._class_count(int(c)) for c in concept))
            taps.append(stats.input_sums[[int(c) for c in concept]].sum(0))
        contrib = contributions_from_taps(stats.weight[unit : unit + 1], torch.stack(taps))[:, 0]
        return contrib / torch.tensor(counts, dtype=contrib.dtype).unsqueeze(1)

    def memory_bytes(self) -> int:
        """Bytes held by all statistics (weights included)."""
        total = self.counts.nbytes()
        for stats in self.layers.values():
            total += stats.weight.numel() * stats.weight.element_size()
            total += sum(s.nbytes() for s in stats.statistics.values())
        return total

    # ------------------------------------------------------------------ combine
    def merge(self, other: ScanResult) -> ScanResult:
        """The statistics of both scans together (scanning A then B = merge of A and B).

        Sample indices of the kept samples are taken as they are: scan the parts with
        ``sample_offset=`` so that they do not collide.

        Raises
        ------
        IncompatibleResultsError
            If layers, classes, tau grid, relevance backend, target, kept samples or weights
            differ, or ``other`` is not a ScanResult.
        """
        if not isinstance(other, ScanResult):
            raise IncompatibleResultsError(
                f"merge() takes another ScanResult, got {type(other).__name__}; load files with "
                "ScanResult.load(path) first"
            )
        self._check_compatible(other)
        layers = {name: a.merge(other.layers[name]) for name, a in self.layers.items()}
        meta = dict(self.meta)
        meta["merged"] = int(self.meta.get("merged", 1)) + int(other.meta.get("merged", 1))
        meta["batches"] = int(self.meta.get("batches", 0)) + int(other.meta.get("batches", 0))
        return ScanResult(
            layers,
            self.counts.merge(other.counts),
            self.tau_grid,
            self.relevance,
            self.target,
            meta,
        )

    def all_reduce(self, group: Any = None) -> ScanResult:
        """Combine the statistics over all processes of a ``torch.distributed`` group, in place.

        Each process scanned its shard of the data; afterwards every process holds the
        statistics of the whole data set. Tensors are reduced on the device the backend needs
        (CUDA for NCCL) and returned to where they were. :func:`neuronsplit.scan` does this
        itself under ``torchrun``; call it only for scans run with ``shard=False``.

        Returns
        -------
        ScanResult
            ``self``.
        """
        from .sharding import (
            check_same_everywhere,
            collective_device,
            current_shard,
            require_process_group,
        )

        require_process_group()
        # shapes must agree before any tensor collective, or NCCL would wait forever
        check_same_everywhere(current_shard(group), self._signature())
        device = collective_device(group)
        self.counts = reduce_on(self.counts, device, group)  # type: ignore[assignment]
        for stats in self.layers.values():
            for key, stat in list(stats.statistics.items()):
                stats.statistics[key] = reduce_on(stat, device, group)
        return self

    def to(self, device: torch.device | str) -> ScanResult:
        """A copy with every statistic on ``device`` (weights stay float64 on the CPU)."""
        layers = {
            name: LayerStats(
                name, s.kind, s.weight, {k: v.to(device) for k, v in s.statistics.items()}
            )
            for name, s in self.layers.items()
        }
        counts = self.counts.to(device)
        return ScanResult(
            layers, counts, self.tau_grid, self.relevance, self.target, dict(self.meta)
        )  # type: ignore[arg-type]

    def _signature(self) -> dict[str, Any]:
        """What every process of a distributed reduction must agree on."""
        return {
            "layers": {
                n: (s.kind, tuple(s.weight.shape), layout(s)) for n, s in self.layers.items()
            },
            "num_classes": self.num_classes,
            "tau_grid": list(self.tau_grid),
            "relevance": self.relevance,
            "target": self.target,
        }

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> None:
        """Write the result to one safetensors file (tensors plus a versioned JSON header)."""
        from .files import save_scan

        save_scan(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ScanResult:
        """Read a file written by :meth:`save`.

        Raises
        ------
        CorruptFileError
            If the file is not a neuronsplit scan file, has another format version, or a tensor
            disagrees with the header.
        FileNotFoundError
            If the file does not exist.
        """
        from .files import load_scan

        return load_scan(path)

    # ------------------------------------------------------------------ helpers
    def _tau_index(self, tau: float) -> int:
        for i, grid_tau in enumerate(self.tau_grid):
            if math.isclose(grid_tau, tau, rel_tol=1e-9, abs_tol=1e-12):
                return i
        raise InvalidArgumentError(
            f"tau={tau} is not on this scan's tau grid {list(self.tau_grid)}; re-scan with "
            f"scan(..., tau_grid=[..., {tau}]) to count importance at that threshold."
        )

    def _class_count(self, cls: int) -> int:
        if not 0 <= cls < self.num_classes:
            raise InvalidArgumentError(f"class {cls} out of range [0, {self.num_classes})")
        n = int(self.class_counts[cls])
        if n == 0:
            raise EmptyClassError(
                f"class {cls} has no scanned images, so its statistics are undefined; scan data "
                "that contains it, or leave it out."
            )
        return n

    def _check_compatible(self, other: ScanResult) -> None:
        problems = []
        if list(self.layers) != list(other.layers):
            problems.append(f"layers {list(self.layers)} vs {list(other.layers)}")
        if self.num_classes != other.num_classes:
            problems.append(f"num_classes {self.num_classes} vs {other.num_classes}")
        if tuple(self.tau_grid) != tuple(other.tau_grid):
            problems.append(f"tau_grid {self.tau_grid} vs {other.tau_grid}")
        if self.relevance != other.relevance:
            problems.append(f"relevance {self.relevance!r} vs {other.relevance!r}")
        if self.target != other.target:
            problems.append(f"target {self.target!r} vs {other.target!r}")
        if not problems:
            for name, stats in self.layers.items():
                theirs = other.layers[name]
                same = stats.weight.shape == theirs.weight.shape
                if not same or not torch.equal(stats.weight, theirs.weight):
                    problems.append(f"weights of {name!r} differ (different models?)")
                if layout(stats) != layout(theirs):
                    problems.append(
                        f"statistics of {name!r} differ: {layout(stats)} vs {layout(theirs)}"
                    )
        if problems:
            raise IncompatibleResultsError("cannot merge scan results: " + "; ".join(problems))
