"""Interpretability gain of a split, measured with labels: :func:`top_k_purity`.

For every split unit, the ``k`` test images that activate it most (an image's activation is its
largest value over tokens or positions) and the ``k`` that activate each of its subunits most are
looked up, and the labels of each set scored: **purity** (share of the most common label) and
**label entropy** (bits). A split made the unit more interpretable when its subunits' top images
are purer than the unit's. Labels are only read here, never by the methods being judged.

The subunit activations are computed from the layer's input and the plan (``t_k``: the inputs
routed to subunit ``k`` times their weights; Hesse's overlap form adds the residual; a LayerScale
that :func:`~neuronsplit.apply_plan` folds into the layer scales them too), so the same
pass also scores a **random** control: for every unit, its assignment row shuffled (same group
sizes). A rule that finds nothing scores about the random control.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .._checks import check_int, check_module
from ..capture import capture, eval_mode, model_device, resolve_layer
from ..capture.layer_scales import layer_scale_pairs
from ..errors import InvalidArgumentError
from ..plan import LayerSplit, SplitPlan

__all__ = ["PurityReport", "top_k_purity", "label_purity"]


@dataclass(frozen=True)
class PurityReport:
    """Top-``k`` label purity and entropy of split units and of their subunits.

    Attributes
    ----------
    k : int
        Images per top set.
    units : int
        Split units scored.
    unit_purity, subunit_purity, random_purity : float
        Means over units of the unit's purity, of its subunits' mean purity, and of the mean
        purity of randomly assigned subunits of the same sizes.
    unit_entropy, subunit_entropy, random_entropy : float
        The same for label entropy (bits).
    per_unit : list of dict
        ``layer``, ``unit``, ``k`` and the six figures of each unit.
    """

    k: int
    units: int
    unit_purity: float
    subunit_purity: float
    random_purity: float
    unit_entropy: float
    subunit_entropy: float
    random_entropy: float
    per_unit: list[dict[str, Any]]

    @property
    def purity_gain(self) -> float:
        """Mean subunit purity minus mean unit purity."""
        return self.subunit_purity - self.unit_purity

    @property
    def random_gain(self) -> float:
        """The same for the random control."""
        return self.random_purity - self.unit_purity

    @property
    def entropy_change(self) -> float:
        """Mean subunit entropy minus mean unit entropy (negative: purer)."""
        return self.subunit_entropy - self.unit_entropy

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible summary (without ``per_unit``)."""
        return {
            "k": self.k, "units": self.units, "unit_purity": self.unit_purity,
            "subunit_purity": self.subunit_purity, "random_purity": self.random_purity,
            "purity_gain": self.purity_gain, "random_gain": self.random_gain,
            "unit_entropy": self.unit_entropy, "subunit_entropy": self.subunit_entropy,
            "random_entropy": self.random_entropy, "entropy_change": self.entropy_change,
        }  # fmt: skip


def label_purity(labels: Tensor) -> tuple[float, float]:
    """``(purity, entropy in bits)`` of a set of integer labels.

    Examples
    --------
    >>> label_purity(torch.tensor([1, 1, 2, 3]))
    (0.5, 1.5)
    """
    counts = torch.bincount(labels.long()).double()
    p = counts[counts > 0] / counts.sum()
    return float(p.max()), float(-(p * p.log2()).sum()) + 0.0


def _masked_weights(
    layer: nn.Module, split: LayerSplit, rows: Tensor, scale: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Stacked weights ``(sum K + units, ...)`` of every subunit, then every whole unit, and
    the bias to add to each (``overlap``: subunits carry the residual and the bias). ``scale``:
    a LayerScale that ``apply_plan`` folds into the rows (the subunits are ``gamma * t_k``)."""
    w = layer.weight.detach().double()
    b = layer.bias.detach().double() if layer.bias is not None else w.new_zeros(w.shape[0])
    rows = rows.to(w.device)
    if scale is not None:
        g = scale.detach().double().to(w.device)
        w, b = w * g.reshape(-1, *([1] * (w.dim() - 1))), b * g
    parts, bias = [], []
    for s, unit in enumerate(split.units.tolist()):
        row = rows[s]
        shared = (row == -1).to(w.dtype)
        for k in range(int(split.num_subunits[s])):
            mask = (row == k).to(w.dtype)
            if split.merge == "overlap":
                mask = mask + shared
            parts.append(w[unit] * mask.reshape(-1, *([1] * (w.dim() - 2))))
            bias.append(b[unit] if split.merge == "overlap" else b[unit] * 0)
    units = split.units
    return torch.cat([torch.stack(parts), w[units]]), torch.cat([torch.stack(bias), b[units]])


def _image_max(layer: nn.Module, x: Tensor, weight: Tensor, bias: Tensor, tokens: slice) -> Tensor:
    x = x.double()
    if isinstance(layer, nn.Conv2d):
        out = F.conv2d(x, weight, bias, layer.stride, layer.padding, layer.dilation)
        return out.flatten(2).amax(2)
    out = F.linear(x, weight, bias)
    return out[:, tokens].amax(1) if out.dim() == 3 else out


def top_k_purity(
    model: nn.Module, plan: SplitPlan, loader: Iterable[Any], *, k: int = 20,
    tokens: slice = slice(None), seed: int = 0,
) -> PurityReport:  # fmt: skip
    """Score every split unit of ``plan`` by the labels of its and its subunits' top-k images.

    Parameters
    ----------
    model : nn.Module
        The **original** model (the subunits are computed from the plan).
    plan : SplitPlan
        The splits to judge.
    loader : iterable of (images, labels)
        Labelled held-out images.
    k : int, default 20
        Images per top set.
    tokens : slice, default all
        Tokens whose maximum is an image's activation, for token layers.
    seed : int, default 0
        Seed of the random control.

    Returns
    -------
    PurityReport
    """
    check_module(model, "model")
    check_int(k, "k", low=1)
    if not len(plan):
        raise InvalidArgumentError("the plan splits no unit; there is nothing to score")
    gen = torch.Generator().manual_seed(seed)
    layers = {name: resolve_layer(model, name) for name in plan.layers}
    pairs = layer_scale_pairs(model)
    scales = {n: model.get_submodule(pairs[n]).gamma for n in layers if n in pairs}
    stacks = {}
    for name, split in plan.by_layer().items():
        real = split.assignment.long()
        shuffled = torch.stack([row[torch.randperm(row.numel(), generator=gen)] for row in real])
        stacks[name] = [
            _masked_weights(layers[name], split, r, scales.get(name)) for r in (real, shuffled)
        ]
    acts: dict[str, list[list[Tensor]]] = {name: [[], []] for name in layers}
    device = model_device(model)
    labels = []
    with eval_mode(model), torch.no_grad(), capture(model, layers, outputs=False, inputs=True,
                                                    stop=True) as cap:  # fmt: skip
        for images, y in loader:
            cap.clear()
            cap.forward(model, images.to(device) if device is not None else images)
            labels.append(y)
            for name, layer in layers.items():
                x = cap.input(name)
                for i, (w, b) in enumerate(stacks[name]):
                    acts[name][i].append(_image_max(layer, x, w, b, tokens).cpu())
    y = torch.cat(labels)
    if k > y.numel():
        raise InvalidArgumentError(f"k={k} but the loader gave only {y.numel()} images")
    rows = []
    for name, split in plan.by_layer().items():
        real, rand = (torch.cat(a) for a in acts[name])
        n_sub = int(split.num_subunits.sum())
        start = 0
        for s, unit in enumerate(split.units.tolist()):
            kk = int(split.num_subunits[s])
            whole = label_purity(y[real[:, n_sub + s].topk(k).indices])
            sub = [label_purity(y[real[:, start + i].topk(k).indices]) for i in range(kk)]
            rnd = [label_purity(y[rand[:, start + i].topk(k).indices]) for i in range(kk)]
            start += kk
            rows.append({
                "layer": name, "unit": unit, "k": kk,
                "unit_purity": whole[0], "unit_entropy": whole[1],
                "subunit_purity": float(np.mean([p for p, _ in sub])),
                "subunit_entropy": float(np.mean([e for _, e in sub])),
                "random_purity": float(np.mean([p for p, _ in rnd])),
                "random_entropy": float(np.mean([e for _, e in rnd])),
            })  # fmt: skip

    def mean(key: str) -> float:
        return float(np.mean([r[key] for r in rows]))

    return PurityReport(
        k, len(rows), mean("unit_purity"), mean("subunit_purity"), mean("random_purity"),
        mean("unit_entropy"), mean("subunit_entropy"), mean("random_entropy"), rows,
    )  # fmt: skip
