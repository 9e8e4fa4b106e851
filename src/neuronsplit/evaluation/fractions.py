"""Evaluation of a split, following Hesse et al.'s quantitative protocol.

For each concept of a split unit, on held-out images of the concept's classes whose positive
relative relevance of the unit reaches ``tau`` (``rel_c = sum relu(A_c * dy/dA_c) / sum_c' ...``,
clamped per position before summing, as in the official ``get_results.py``), record the fractions
``sum s_k / sum A_c`` for every subunit ``k`` and ``sum r / sum A_c`` for the residual.
On concept-k images a good split has ``f_k`` near 1 and the other subunits near 0. The subunits are
read in the plan's form: by construction ``sum_k f_k - (K-1) f_r = 1`` (overlap, Hesse's ``d_k``)
or ``sum_k f_k + f_r = 1`` (disjoint).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .._checks import check_int, check_module, check_number
from ..capture import capture, eval_mode, layer_kind, resolve_layer, unit_sum
from ..errors import ArgumentTypeError, InvalidArgumentError
from ..nn import get_split_layer
from ..nn.layer_scale import folded_layer_scales

__all__ = ["ConceptFractions", "concept_fractions"]


@dataclass(frozen=True)
class ConceptFractions:
    """Fractions of one unit's activation carried by each subunit, on one concept's images.

    Attributes
    ----------
    concept : int
        Index of the concept (= subunit) whose images were used.
    classes : tuple of int
        The concept's classes.
    n_images : int
        Images that passed the relevance filter.
    subunit_mean, subunit_median : tuple of float
        Mean and median over images of ``sum s_k / sum A_c``, one entry per subunit.
    residual_mean, residual_median : float
        The same for the residual.
    """

    concept: int
    classes: tuple[int, ...]
    n_images: int
    subunit_mean: tuple[float, ...]
    subunit_median: tuple[float, ...]
    residual_mean: float
    residual_median: float

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict."""
        return {
            "concept": self.concept,
            "classes": list(self.classes),
            "n_images": self.n_images,
            "subunit_mean": list(self.subunit_mean),
            "subunit_median": list(self.subunit_median),
            "residual_mean": self.residual_mean,
            "residual_median": self.residual_median,
        }


def _layer_io(
    model: nn.Module, layer: str, x: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's output for ``x`` and the gradient of the label logits w.r.t. it."""
    with capture(model, [layer], grad=True) as cap, torch.enable_grad():
        logits = model(x)
        out = cap.output(layer)
        grad = torch.autograd.grad(logits.gather(1, labels[:, None]).sum(), out)[0]
    return out.detach(), grad


def concept_fractions(
    original: nn.Module,
    split: nn.Module,
    layer: str,
    unit: int,
    images: torch.Tensor,
    labels: torch.Tensor,
    concepts: Sequence[Sequence[int]],
    *,
    tau: float = 0.03,
) -> list[ConceptFractions]:
    """Per-concept fractions ``d_k / orig`` and ``r / orig`` of a split unit (Hesse et al.).

    Parameters
    ----------
    original : nn.Module
        The unsplit model (not modified).
    split : nn.Module
        The model returned by :func:`neuronsplit.apply_plan`.
    layer : str
        Dotted name of the split layer.
    unit : int
        The split unit.
    images, labels : torch.Tensor
        Held-out images and their labels.
    concepts : sequence of sequence of int
        Class sets in subunit order (``plan.meta["units"][i]["concepts"]``).
    tau : float
        Positive relative relevance an image needs for the unit to count it.

    Returns
    -------
    list of ConceptFractions
        One entry per concept.

    Examples
    --------
    >>> fr = concept_fractions(model, split, "fc2", 2, x_test, y_test, [[6], [9]])  # doctest: +SKIP
    >>> fr[0].subunit_mean  # high first entry, low second  # doctest: +SKIP
    """
    check_module(original, "original")
    check_module(split, "split")
    check_number(tau, "tau", low=0.0, high=1.0)
    if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise ArgumentTypeError("images and labels must be tensors (the held-out data)")
    if labels.dim() != 1 or labels.shape[0] != images.shape[0] or labels.is_floating_point():
        raise InvalidArgumentError(
            f"labels must be integer class indices of shape ({images.shape[0]},), got "
            f"{labels.dtype} {tuple(labels.shape)}"
        )
    kind = layer_kind(resolve_layer(original, layer))
    split_layer = get_split_layer(split, layer)
    check_int(unit, "unit", low=0, high=split_layer.original_out - 1)
    device = split_layer.subunits.weight.device
    images, labels = images.to(device), labels.to(device)
    with eval_mode(original, split):
        # a LayerScale folded into the split layer: read the original after it (gamma * A_c;
        # rel_c is unchanged, A_c * dy/dA_c does not depend on the scale)
        read = folded_layer_scales(split).get(layer, layer)
        out, grad = _layer_io(original, read, images, labels)
        positive = unit_sum((out * grad).clamp(min=0), kind)  # clamp per position, then sum
        rel = positive[:, unit] / positive.sum(1).clamp(min=1e-30)
        with capture(split, {"subunits": split_layer.subunits}) as cap, torch.no_grad():
            split(images)
        inter = unit_sum(cap.output("subunits"), kind)
        orig = unit_sum(out, kind)[:, unit]
    k_count = split_layer.num_subunits(unit)

    def read(k: int) -> torch.Tensor:
        # the subunit in the plan's form: one row (disjoint) or its row plus the residual
        return sum(w * inter[:, c] for c, w in split_layer.subunit_channels(unit, k))

    subs = torch.stack([read(k) for k in range(k_count)], 1)
    res = read(-1)
    results = []
    for k, concept in enumerate(concepts):
        members = torch.tensor(list(concept), device=labels.device)
        mask = torch.isin(labels, members) & (rel >= tau) & (orig != 0)
        denom = orig[mask]
        fractions = subs[mask] / denom.unsqueeze(1)
        residual = res[mask] / denom
        n = int(mask.sum())
        nan = float("nan")
        results.append(
            ConceptFractions(
                k,
                tuple(int(c) for c in concept),
                n,
                tuple(float(v) for v in fractions.mean(0)) if n else (nan,) * k_count,
                tuple(float(v) for v in fractions.median(0).values) if n else (nan,) * k_count,
                float(residual.mean()) if n else nan,
                float(residual.median()) if n else nan,
            )
        )
    return results
