"""Building the rows of a split layer from the original weight and a :class:`LayerSplit`.

Every entry is an exact copy (``torch.where`` against zero, no arithmetic): row ``u`` of a split
unit keeps the inputs of subunit 0, the appended rows (per split unit in ascending order) keep
those of subunits ``1 .. K-1`` and then the shared inputs; the whole bias goes to the residual.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..plan import LayerSplit
from .merge import RESIDUAL, extra_rows

__all__ = ["build_rows"]


def _broadcast(mask: Tensor, like: Tensor) -> Tensor:
    return mask.reshape(mask.shape + (1,) * (like.dim() - mask.dim()))


def build_rows(
    weight: Tensor, bias: Tensor | None, split: LayerSplit
) -> tuple[Tensor, Tensor | None]:
    """The widened weight and bias of a split layer (exact copies of entries, no arithmetic).

    Parameters
    ----------
    weight, bias : Tensor
        The original layer's parameters (``(C, J, ...)`` and ``(C,)``).
    split : LayerSplit
        The split of the layer.

    Returns
    -------
    (Tensor, Tensor or None)
        ``(C + E, J, ...)`` rows and ``(C + E,)`` bias (the whole bias on the residual rows).
    """
    w = weight.detach()
    device = w.device
    units = split.units.to(device)
    assign = split.assignment.to(device, torch.long)  # (S, J)
    unit_rows = w.index_select(0, units)  # (S, J, ...)
    zero = torch.zeros((), dtype=w.dtype, device=device)
    new_w = w.clone()
    new_w[units] = torch.where(_broadcast(assign == 0, unit_rows), unit_rows, zero)
    pos, slot = (t.to(device) for t in extra_rows(split.num_subunits))
    extra_mask = assign.index_select(0, pos) == slot[:, None]  # (E, J)
    extra_w = torch.where(_broadcast(extra_mask, unit_rows), unit_rows.index_select(0, pos), zero)
    new_w = torch.cat([new_w, extra_w], 0)
    if bias is None:
        return new_w, None
    b = bias.detach()
    new_b = b.clone()
    new_b[units] = 0  # the bias goes to the residual alone
    unit_b = b.index_select(0, units).index_select(0, pos)
    extra_b = torch.where(slot == RESIDUAL, unit_b, torch.zeros_like(unit_b))
    return new_w, torch.cat([new_b, extra_b], 0)
