"""Scoring every rho of the grid on the concept images: one pass per layer for all its units.

For each image of a unit's concepts the layer input is captured (the forward pass stops right
after the layer), the unit's per-position contributions are computed once
(:func:`neuronsplit.capture.contributions`), and every rho's Hesse subunits ``d_k`` (own inputs,
shared inputs and bias) are read off with one einsum. Only ``sum_positions ReLU(d_k)`` per image
is kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..._progress import progress_bar
from ...capture import capture, contributions, eval_mode, resolve_layer
from ...errors import EmptyClassError, InputShapeError
from .rho import hesse_masks, subunit_score

__all__ = ["UnitToScore", "score_units"]


@dataclass
class UnitToScore:
    """One unit whose rho grid is scored: its concepts (class sets) and candidate assignments."""

    unit: int
    concepts: Sequence[Sequence[int]]
    assignments: Tensor  # (R, J): one assignment per rho of the grid

    def __post_init__(self) -> None:
        self.class_to_concept = {c: k for k, concept in enumerate(self.concepts) for c in concept}
        self.seen = [0] * len(self.concepts)
        self.sums: list[Tensor] = []
        self.owners: list[Tensor] = []


def _take(item: UnitToScore, labels: list[int], max_images: int | None) -> list[int]:
    """Rows of the batch that belong to the unit's concepts, at most ``max_images`` per concept."""
    keep = []
    for i, c in enumerate(labels):
        k = item.class_to_concept.get(c)
        if k is None or (max_images is not None and item.seen[k] >= max_images):
            continue
        item.seen[k] += 1  # counted as it is taken, so max_images is exact within a batch too
        keep.append(i)
    return keep


def score_units(
    model: nn.Module,
    loader: Iterable[Any],
    layer: str,
    items: Sequence[UnitToScore],
    *,
    max_images: int | None = None,
    progress: bool = False,
) -> list[list[tuple[float, float]]]:
    """Official and robust score of every rho for every unit of one layer (one data pass).

    Parameters
    ----------
    model : nn.Module
        The scanned model (not modified; run in eval mode, the forward pass stops after
        ``layer``).
    loader : iterable of (inputs, labels)
        The training data.
    layer : str
        The layer the units belong to.
    items : sequence of UnitToScore
        The units, their concepts and one candidate assignment per rho.
    max_images : int, optional
        At most this many images per concept and unit.
    progress : bool
        Show a progress bar.

    Returns
    -------
    list of list of (float, float)
        Per unit, per rho: ``(official, robust)``.

    Raises
    ------
    InputShapeError
        A loader that does not yield ``(inputs, labels)`` pairs.
    EmptyClassError
        A unit none of whose concept images appear in the loader.
    """
    module = resolve_layer(model, layer)
    dtype = torch.float64 if module.weight.dtype == torch.float64 else torch.float32
    device = module.weight.device
    bias = None if module.bias is None else module.bias.detach().to(dtype)
    masks = [hesse_masks(item.assignments, len(item.concepts)).to(device, dtype) for item in items]
    with eval_mode(model), torch.no_grad(), capture(model, {layer: module}, outputs=False, inputs=True, stop=True) as cap:  # fmt: skip
        for batch in progress_bar(loader, desc="neuronsplit rho score", enabled=progress):
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise InputShapeError("plan_split needs a loader of (inputs, labels) pairs")
            x, labels = batch[0], torch.as_tensor(batch[1]).tolist()
            picks = [_take(item, labels, max_images) for item in items]
            rows = sorted({i for keep in picks for i in keep})
            if not rows:
                continue
            cap.clear()
            cap.forward(model, x[rows].to(device))
            inputs = cap.input(layer)
            where = {r: i for i, r in enumerate(rows)}
            for item, keep, mask in zip(items, picks, masks, strict=True):
                if not keep:
                    continue
                sel = inputs[[where[i] for i in keep]]
                contrib = contributions(module, sel, [item.unit], per_position=True)[:, 0]
                # (B, J, P) x (R, K, J) -> (B, R, K, P): every rho and subunit in one einsum
                acts = torch.einsum("bjp,rkj->brkp", contrib.to(dtype), mask)
                if bias is not None:
                    acts = acts + bias[item.unit]
                item.sums.append(acts.clamp(min=0).sum(-1).cpu())
                item.owners.append(torch.tensor([item.class_to_concept[labels[i]] for i in keep]))
    out = []
    for item in items:
        if not item.sums:
            raise EmptyClassError(
                f"the loader holds no images of the concept classes {list(item.concepts)} of "
                f"unit {item.unit}; pass the training loader that was scanned"
            )
        sums, owners = torch.cat(item.sums), torch.cat(item.owners)
        k_count = len(item.concepts)
        out.append([subunit_score(sums[:, r], owners, k_count) for r in range(sums.shape[1])])
    return out
