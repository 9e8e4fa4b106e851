"""Scan statistics: O(units x classes) accumulators, merge, all-reduce, save and load.

Nothing here is stored per sample. Per scanned layer and per class the accumulators hold

* ``important``: ``(T, N, C)`` int32, how many images of class ``t`` make unit ``c`` important at
  each threshold of the tau grid (``R_c >= tau * sum_c' max(R_c', 0)``, Hesse et al.);
* ``relevance_sum``: ``(N, C)`` float64, the class sums of the unit relevances;
* ``input_sums``: ``(N, J, K)`` float64, the class sums of the layer input summed over the output
  positions each kernel tap sees. Because a Conv2d/Linear layer is linear, the per-input
  contribution ``r_{j->c} = sum_hw X_j * dz_c/dX_j`` (gradient x input) equals
  ``sum_k W[c, j, k] * S[j, k]`` exactly, so every average relevance vector (ARV) of every unit
  follows from these sums and the weight, without a backward pass per unit.

Re-thresholding tau later: counts exist for every tau of the grid chosen at scan time (default
0.01, 0.02, 0.03, 0.05, 0.1). A per-image histogram of relative relevances would allow any tau but
costs bins x units x classes memory; the grid keeps the statistics small and exact on the grid.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .errors import CorruptFileError, EmptyClassError, IncompatibleResultsError, UnknownLayerError

__all__ = ["LayerStats", "ScanResult", "DEFAULT_TAU_GRID"]

DEFAULT_TAU_GRID: tuple[float, ...] = (0.01, 0.02, 0.03, 0.05, 0.1)
_FORMAT = "neuronsplit.scan/1"


@dataclass
class LayerStats:
    """Accumulated statistics of one layer (see the module docstring for the fields)."""

    name: str
    kind: str  # "conv2d" or "linear"
    weight: torch.Tensor  # (C, J, K) float64: the layer weight with the kernel flattened
    important: torch.Tensor  # (T, N, C) int32
    relevance_sum: torch.Tensor  # (N, C) float64
    input_sums: torch.Tensor  # (N, J, K) float64

    @property
    def num_units(self) -> int:
        """Number of units (output channels or features)."""
        return int(self.weight.shape[0])

    @property
    def num_inputs(self) -> int:
        """Number of inputs (input channels or features)."""
        return int(self.weight.shape[1])

    def tensors(self) -> dict[str, torch.Tensor]:
        """The accumulators and the weight, keyed by field name."""
        return {
            "weight": self.weight,
            "important": self.important,
            "relevance_sum": self.relevance_sum,
            "input_sums": self.input_sums,
        }


@dataclass
class ScanResult:
    """What :func:`neuronsplit.scan` measured, ready for detection.

    Attributes
    ----------
    layers : dict[str, LayerStats]
        Statistics per scanned layer, in scan order.
    class_counts : torch.Tensor
        ``(N,)`` int64, images per class (grouped by the relevance target).
    tau_grid : tuple of float
        Thresholds for which importance counts exist.
    relevance : str
        Description of the relevance backend.
    target : str
        ``"label"`` or ``"prediction"``: which logit the relevance explains and which class an
        image is counted under.
    meta : dict
        Free-form provenance (model class, number of batches, ...).
    """

    layers: dict[str, LayerStats]
    class_counts: torch.Tensor
    tau_grid: tuple[float, ...] = DEFAULT_TAU_GRID
    relevance: str = "grad_x_act"
    target: str = "label"
    meta: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ queries
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

    def important_counts(self, layer: str, tau: float) -> torch.Tensor:
        """``(N, C)`` counts of images of each class for which each unit is important at ``tau``.

        Raises
        ------
        ValueError
            If ``tau`` is not on the grid the scan used.
        """
        return self.layer(layer).important[self._tau_index(tau)]

    def mean_relevance(self, layer: str) -> torch.Tensor:
        """``(N, C)`` class-mean relevance of each unit (NaN rows for empty classes)."""
        counts = self.class_counts.to(torch.float64).unsqueeze(1)
        return self.layer(layer).relevance_sum / counts

    def arv(self, layer: str, unit: int, cls: int) -> torch.Tensor:
        """Average relevance vector of ``unit`` for class ``cls``: ``(J,)`` float64.

        ``ARV_j = (1 / N_t) sum_{x in class t} sum_hw X_j dz_unit/dX_j`` (signed, not normalised),
        computed in closed form from the class input sums and the weight.

        Raises
        ------
        EmptyClassError
            If no scanned image belongs to ``cls``.
        """
        stats = self.layer(layer)
        if not 0 <= unit < stats.num_units:
            raise IndexError(
                f"unit {unit} out of range for layer {layer!r} ({stats.num_units} units)"
            )
        n = self._class_count(cls)
        return (stats.weight[unit] * stats.input_sums[cls]).sum(-1) / n

    def arvs(self, layer: str, unit: int, classes: Sequence[int]) -> torch.Tensor:
        """Stacked ARVs ``(len(classes), J)`` of one unit."""
        return torch.stack([self.arv(layer, unit, c) for c in classes])

    def memory_bytes(self) -> int:
        """Bytes held by all accumulators (weights included)."""
        total = self.class_counts.numel() * self.class_counts.element_size()
        for stats in self.layers.values():
            total += sum(t.numel() * t.element_size() for t in stats.tensors().values())
        return total

    # ------------------------------------------------------------------ combine
    def merge(self, other: ScanResult) -> ScanResult:
        """Return the statistics of both scans together (scanning A then B = merge of A and B).

        Raises
        ------
        IncompatibleResultsError
            If layers, classes, tau grid, relevance backend, target or weights differ.
        """
        self._check_compatible(other)
        layers = {}
        for name, a in self.layers.items():
            b = other.layers[name]
            layers[name] = LayerStats(
                name,
                a.kind,
                a.weight.clone(),
                a.important + b.important,
                a.relevance_sum + b.relevance_sum,
                a.input_sums + b.input_sums,
            )
        meta = dict(self.meta)
        meta["merged"] = int(self.meta.get("merged", 1)) + int(other.meta.get("merged", 1))
        return ScanResult(
            layers,
            self.class_counts + other.class_counts,
            self.tau_grid,
            self.relevance,
            self.target,
            meta,
        )

    def all_reduce(self, group: object | None = None) -> ScanResult:
        """Sum the statistics over all processes of a ``torch.distributed`` group, in place.

        Each process scans its shard of the data; after ``all_reduce`` every process holds the
        statistics of the whole data set. Returns ``self``.
        """
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(
                "all_reduce needs an initialised torch.distributed process group; call "
                "torch.distributed.init_process_group first, or merge() results by hand."
            )
        dist.all_reduce(self.class_counts, group=group)
        for stats in self.layers.values():
            for tensor in (stats.important, stats.relevance_sum, stats.input_sums):
                dist.all_reduce(tensor, group=group)
        return self

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> None:
        """Write the result to one safetensors file (tensors plus JSON metadata)."""
        from safetensors.torch import save_file

        tensors = {"class_counts": self.class_counts.contiguous()}
        for name, stats in self.layers.items():
            for key, tensor in stats.tensors().items():
                tensors[f"{name}/{key}"] = tensor.contiguous()
        header = {
            "format": _FORMAT,
            "layers": [[name, stats.kind] for name, stats in self.layers.items()],
            "tau_grid": list(self.tau_grid),
            "relevance": self.relevance,
            "target": self.target,
            "meta": self.meta,
        }
        save_file(tensors, os.fspath(path), metadata={"neuronsplit": json.dumps(header)})

    @classmethod
    def load(cls, path: str | os.PathLike) -> ScanResult:
        """Read a file written by :meth:`save`.

        Raises
        ------
        CorruptFileError
            If the file is missing pieces, is not a safetensors file, or was not written by
            neuronsplit.
        """
        from safetensors import safe_open

        path = os.fspath(path)
        try:
            with safe_open(path, framework="pt") as handle:
                header = json.loads((handle.metadata() or {})["neuronsplit"])
                if not isinstance(header, dict):
                    raise TypeError(f"metadata is a JSON {type(header).__name__}, not an object")
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise CorruptFileError(
                f"{path!r} is not a neuronsplit scan file ({type(exc).__name__}: {exc}); "
                "re-create it with ScanResult.save()."
            ) from exc
        if header.get("format") != _FORMAT:
            raise CorruptFileError(
                f"{path!r} has format {header.get('format')!r}, expected {_FORMAT!r}"
            )
        try:
            layers = {
                name: LayerStats(
                    name,
                    kind,
                    tensors[f"{name}/weight"],
                    tensors[f"{name}/important"],
                    tensors[f"{name}/relevance_sum"],
                    tensors[f"{name}/input_sums"],
                )
                for name, kind in header["layers"]
            }
            return cls(
                layers,
                tensors["class_counts"],
                tuple(header["tau_grid"]),
                header["relevance"],
                header["target"],
                header.get("meta", {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptFileError(
                f"{path!r} is incomplete or malformed ({type(exc).__name__}: {exc}); "
                "re-create it with ScanResult.save()."
            ) from None

    # ------------------------------------------------------------------ helpers
    def _tau_index(self, tau: float) -> int:
        for i, grid_tau in enumerate(self.tau_grid):
            if math.isclose(grid_tau, tau, rel_tol=1e-9, abs_tol=1e-12):
                return i
        raise ValueError(
            f"tau={tau} is not on this scan's tau grid {list(self.tau_grid)}; re-scan with "
            f"scan(..., tau_grid=[..., {tau}]) to count importance at that threshold."
        )

    def _class_count(self, cls: int) -> int:
        if not 0 <= cls < self.num_classes:
            raise IndexError(f"class {cls} out of range [0, {self.num_classes})")
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
                if not torch.equal(stats.weight, other.layers[name].weight):
                    problems.append(f"weights of {name!r} differ (different models?)")
        if problems:
            raise IncompatibleResultsError("cannot merge scan results: " + "; ".join(problems))
