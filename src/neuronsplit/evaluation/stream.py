"""Per-image values of split units and their subunits, and the streaming statistics that
:func:`~neuronsplit.evaluation.evaluate` keeps of them.

A *row* is one split unit (``subunit=None``, read from the split layer's merged output, which
equals the original layer's), one of its subunits ``k`` or its residual (``k = -1``), read from
the ``.subunits`` child in the plan's form (:meth:`~neuronsplit.SplitLinear.subunit_channels`).
Two per-image reductions are used:

* ``sum``: the row summed over positions / tokens -- Hesse et al.'s quantity, whose ratios to the
  unit's sum are the fractions ``d_k / orig`` and ``r / orig``;
* ``max``: the row's largest value over positions / tokens -- the image's *activation* ``a(x)``,
  ranked for the top-k images (as :func:`~neuronsplit.evaluation.top_k_purity` does) and averaged
  per class for selectivity and the relevant classes.

Everything kept is O(rows x (k + classes)); nothing is stored per image except the labels.

Examples
--------
>>> import torch
>>> from torch import nn
>>> from neuronsplit.nn import apply_plan
>>> from neuronsplit.plan import SplitPlan, UnitSplit
>>> fc = nn.Linear(3, 2, bias=False)
>>> with torch.no_grad():
...     _ = fc.weight.copy_(torch.tensor([[1.0, 2.0, 4.0], [1.0, 1.0, 1.0]]))
>>> split = apply_plan(nn.Sequential(fc), SplitPlan([UnitSplit("0", 0, [[0], [1]], [2])]))
>>> subunit_values(split, "0", 0, torch.ones(1, 3))
tensor([[7., 1., 2., 4.]], dtype=torch.float64)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..capture import capture, eval_mode, unit_sum
from ..nn import RESIDUAL, SplitConv2d, explicit_rows, get_split_layer

__all__ = ["Row", "kind_of", "unit_rows", "row_values", "subunit_values", "RowStats"]

Row = tuple[int, int | None, tuple[tuple[int, float], ...]]
"""``(unit, subunit, channels)``: ``subunit`` None for the unit itself, ``-1`` the residual;
``channels`` the ``(channel, weight)`` pairs of ``.subunits`` that make it up."""


def kind_of(split_layer: nn.Module) -> str:
    """``"conv2d"`` for a :class:`~neuronsplit.SplitConv2d`, else ``"linear"``."""
    return "conv2d" if isinstance(split_layer, SplitConv2d) else "linear"


def unit_rows(split_layer: nn.Module, unit: int) -> list[Row]:
    """The rows of one split unit: the unit, its subunits ``0 .. K-1``, then the residual."""
    rows: list[Row] = [(unit, None, ())]
    ks = [*range(split_layer.num_subunits(unit)), RESIDUAL]
    rows += [(unit, k, split_layer.subunit_channels(unit, k)) for k in ks]
    return rows


def _units_first(t: Tensor, kind: str) -> Tensor:
    """``(B, C, P)``: the unit axis second, every position / token flattened into the last."""
    if kind == "conv2d":
        return t.flatten(2) if t.dim() > 2 else t.unsqueeze(2)
    return t.unsqueeze(2) if t.dim() == 2 else t.movedim(-1, 1).flatten(2)


def row_values(merged: Tensor, inter: Tensor, rows: Sequence[Row], kind: str) -> Tensor:
    """``(B, R, P)`` float64 values of ``rows`` at every position.

    Parameters
    ----------
    merged : Tensor
        The split layer's output (the units, identical to the original layer's).
    inter : Tensor
        The output of its ``.subunits`` child.
    rows : sequence of Row
    kind : {"conv2d", "linear"}
    """
    z = _units_first(merged.detach(), kind).double()
    a = _units_first(inter.detach(), kind).double()
    parts = []
    for unit, k, channels in rows:
        if k is None:
            parts.append(z[:, unit])
        else:
            parts.append(sum(w * a[:, c] for c, w in channels))
    return torch.stack(parts, 1)


def subunit_values(
    split: nn.Module, layer: str, unit: int, inputs: Tensor, *, reduce: str = "sum"
) -> Tensor:
    """Per-image values of a split unit, its subunits and its residual.

    Parameters
    ----------
    split : nn.Module
        A model from :func:`neuronsplit.apply_plan`.
    layer : str
        The split layer.
    unit : int
        A split unit of it.
    inputs : Tensor
        One batch of inputs.
    reduce : {"sum", "max"}
        Over positions / tokens: ``"sum"`` (Hesse et al.'s quantity) or ``"max"``.

    Returns
    -------
    Tensor
        ``(B, K + 2)`` float64: the unit, subunits ``0 .. K-1``, the residual.
    """
    split_layer = get_split_layer(split, layer)
    rows = unit_rows(split_layer, unit)
    names = [layer, f"{layer}.subunits"]
    with eval_mode(split), torch.no_grad(), explicit_rows(split), capture(split, names) as cap:
        split(inputs)
        values = row_values(cap.output(layer), cap.output(names[1]), rows, kind_of(split_layer))
    return values.sum(2) if reduce == "sum" else values.amax(2)


class RowStats:
    """Streaming statistics of the rows of one split layer (see the module docstring)."""

    def __init__(self, rows: Sequence[Row], kind: str, k: int, tau: float) -> None:
        self.rows = list(rows)
        self.kind = kind
        self.k = k
        self.tau = tau
        n = len(self.rows)
        units = [u for u, _, _ in self.rows]
        origin = {u: i for i, (u, s, _) in enumerate(self.rows) if s is None}
        self.unit_of_row = torch.tensor(units)
        self.origin_of_row = torch.tensor([origin[u] for u in units])
        self.count = 0
        zeros = torch.zeros(n, dtype=torch.float64)
        self.act_sum, self.frac_sum, self.own_sum = zeros.clone(), zeros.clone(), zeros.clone()
        self.frac_n = torch.zeros(n, dtype=torch.long)
        self.own_n = torch.zeros(n, dtype=torch.long)
        self.act_min = torch.full((n,), torch.inf, dtype=torch.float64)
        self.act_max = torch.full((n,), -torch.inf, dtype=torch.float64)
        self.top_vals = torch.empty(n, 0, dtype=torch.float64)
        self.top_idx = torch.empty(n, 0, dtype=torch.long)
        self.class_pos: Tensor | None = None  # (R, C) sum of relu(a) per class
        self.members: Tensor | None = None  # (R, C) the classes of each row's concept

    def allocate(
        self, num_classes: int, concepts: dict[int, Sequence[Sequence[int]]] | None
    ) -> None:
        """Turn on the label statistics for ``num_classes`` classes; ``concepts`` (classes per
        subunit of each unit; the residual gets their union) turns on the own-concept
        fractions."""
        self.class_pos = torch.zeros(len(self.rows), num_classes, dtype=torch.float64)
        if concepts is None:
            return
        members = torch.zeros(len(self.rows), num_classes, dtype=torch.bool)
        for i, (unit, k, _) in enumerate(self.rows):
            groups = concepts.get(unit)
            if groups is None or k is None:
                continue
            chosen = [c for g in groups for c in g] if k == RESIDUAL else list(groups[k])
            members[i, [c for c in chosen if 0 <= c < num_classes]] = True
        self.members = members

    def update(
        self, merged: Tensor, grad: Tensor, inter: Tensor, labels: Tensor | None, offset: int
    ) -> None:
        """Add one batch: the layer's merged output, the target logit's gradient w.r.t. it,
        the ``.subunits`` output and the labels (None: label-free statistics only)."""
        values = row_values(merged, inter, self.rows, self.kind)
        sums, acts = values.sum(2), values.amax(2)  # (B, R)
        # the unit's positive relative relevance, clamped per position as in concept_fractions
        positive = unit_sum((merged.detach() * grad).clamp(min=0), self.kind).double().cpu()
        rel = positive[:, self.unit_of_row] / positive.sum(1, keepdim=True).clamp(min=1e-30)
        sums, acts = sums.cpu(), acts.cpu()
        orig = sums[:, self.origin_of_row]
        matters = (rel >= self.tau) & (orig != 0)
        ratio = torch.where(matters, sums / torch.where(matters, orig, 1.0), 0.0)
        self.frac_sum += ratio.sum(0)
        self.frac_n += matters.sum(0)
        if labels is not None:
            labels = labels.cpu()
            if self.members is not None:
                own = matters & self.members[:, labels].T
                self.own_sum += torch.where(own, ratio, 0.0).sum(0)
                self.own_n += own.sum(0)
            if self.class_pos is not None:
                self.class_pos.index_add_(1, labels, acts.clamp(min=0).T)
        self.act_sum += acts.sum(0)
        self.act_min = torch.minimum(self.act_min, acts.amin(0))
        self.act_max = torch.maximum(self.act_max, acts.amax(0))
        index = torch.arange(offset, offset + acts.shape[0]).expand(acts.shape[1], -1)
        vals = torch.cat([self.top_vals, acts.T], 1)
        idx = torch.cat([self.top_idx, index], 1)
        # ties go to the earlier image: sort by index first, then a stable sort by value
        order = torch.sort(idx, dim=1, stable=True).indices
        vals, idx = vals.gather(1, order), idx.gather(1, order)
        best = torch.sort(vals, dim=1, descending=True, stable=True).indices[:, : self.k]
        self.top_vals, self.top_idx = vals.gather(1, best), idx.gather(1, best)
        self.count += acts.shape[0]
