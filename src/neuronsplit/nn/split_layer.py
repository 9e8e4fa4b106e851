"""Split layers: a ``Conv2d``/``Linear`` whose split units are computed as explicit rows.

A split layer computes the original rows and the extra rows in **one** conv/matmul (the child
``.subunits``, a plain ``nn.Conv2d``/``nn.Linear`` with ``C + E`` output rows) and folds the
extra rows back with an index-add (the child ``.merge``, an :class:`IndexMerge`). The rows are
stored in the **disjoint** form, whatever the plan's merge form: row ``u`` of a split unit holds
``t_0`` (the weights of the inputs assigned to subunit 0, all others zero), the appended rows
hold ``t_1 .. t_{K-1}`` and the residual ``r`` (the shared inputs and the whole bias). Every
input weight therefore sits in exactly one row, unchanged, and ``z_u = sum_k t_k + r``.

When nothing can observe the rows -- grad disabled, no hook on ``.subunits`` or ``.merge`` (nor a
global forward hook), no steering, not scripted or traced, :func:`explicit_rows` not in force --
the forward pass runs the original layer instead: its weight is the merge applied to the rows'
weights (``W_u = sum of u's rows``, exact because every entry is non-zero in one row only),
rebuilt on every such call, so it always follows the rows. A whole ViT-B layer split four ways
then costs next to nothing at inference; Captum, Zennit, gradients, steering and
``verify_equivalence`` all see the rows.

Hesse's overlap form is a *view* of these rows: subunit ``k`` is ``s_k = t_k + r`` and
``z_u = sum_k s_k - (K-1) r``. :meth:`SplitLinear.subunit_channels` gives the channels (and
weights) that make up a subunit in the layer's form, and :meth:`SplitLinear.merge_coefficient`
its coefficient in the merge, so attribution and steering read either form from the same rows.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules import module as torch_module

from ..capture import check_plain_forward, check_supported, layer_shape, unit_axis
from ..errors import UnknownSubunitError, UnsupportedLayerError
from ..plan import LayerSplit, UnitSplit
from .merge import RESIDUAL, IndexMerge
from .rows import build_rows

__all__ = ["SplitConv2d", "SplitLinear", "SPLIT_TYPES", "explicit_rows"]


class _SplitLayer(nn.Module):
    """Shared logic of :class:`SplitConv2d` and :class:`SplitLinear`."""

    _base: type[nn.Module]

    subunits: nn.Module
    merge: IndexMerge

    def __init__(self, layer: nn.Module, split: LayerSplit | Sequence[UnitSplit]) -> None:
        super().__init__()
        if not isinstance(split, LayerSplit):
            split = LayerSplit.from_unit_splits(list(split))
        if not isinstance(layer, self._base):
            raise UnsupportedLayerError(
                f"{type(self).__name__} wraps a {self._base.__name__}, got {type(layer).__name__}"
            )
        name = split.layer
        check_supported(layer, name)
        check_plain_forward(layer, name)
        n_out, n_in = layer_shape(layer)
        split.check_shape(n_out, n_in)
        with torch.no_grad():
            w, b = build_rows(layer.weight, layer.bias, split)
        self.subunits = self._widened(layer, w, b)
        self.merge = IndexMerge(
            n_out, split.units, split.num_subunits, unit_axis(self._kind), form=split.merge,
            device=w.device, dtype=w.dtype,
        )  # fmt: skip
        self.layer_split = split
        self.force_rows = False
        self.train(layer.training)

    _kind: str = "linear"

    # subclass hooks ---------------------------------------------------------------------------
    @staticmethod
    def _widened(layer: nn.Module, w: Tensor, b: Tensor | None) -> nn.Module:  # pragma: no cover
        raise NotImplementedError

    def _rebuild(self, w: Tensor, b: Tensor | None) -> nn.Module:  # pragma: no cover
        raise NotImplementedError

    # public API -------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """Run ``.subunits`` once and merge back; or the original layer if nothing observes."""
        if self.rows_needed():
            return self.merge(self.subunits(x))
        weight, bias = self._original_parameters()
        return self._run_original(x, weight, bias)

    def rows_needed(self) -> bool:
        """Whether this forward pass computes the explicit rows (see the module docstring)."""
        return (
            self.force_rows
            or torch.is_grad_enabled()
            or self.merge.steered
            or _observed(self.subunits)
            or _observed(self.merge)
            or bool(torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks)
            or torch.jit.is_scripting()
            or torch.jit.is_tracing()
        )

    def _original_parameters(self) -> tuple[Tensor, Tensor | None]:
        """The original weight and bias: the merge applied to the rows' parameters.

        Every weight entry is non-zero in exactly one row (the others hold 0.0), and the whole
        bias sits in the residual row, so adding a unit's rows gives its original row exactly.
        Rebuilt on every call (a read of the rows, cheap next to the layer itself), so it can
        never fall behind an edit of the rows.
        """
        index = self.merge.index
        c = self.original_out
        w = self.subunits.weight.detach()
        weight = w[:c].index_add(0, index, w[c:])
        b = self.subunits.bias
        bias = None if b is None else b.detach()[:c].index_add(0, index, b.detach()[c:])
        return weight, bias

    def _run_original(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        raise NotImplementedError  # pragma: no cover

    @property
    def original_out(self) -> int:
        """``C``, the number of units of the original layer (and of this layer's output)."""
        return self.merge.original_out

    @property
    def form(self) -> str:
        """The merge form the subunits are read in: ``"disjoint"`` or ``"overlap"``."""
        return self.layer_split.merge

    @property
    def split_units(self) -> tuple[int, ...]:
        """The split units in ascending order."""
        return tuple(self.layer_split.units.tolist())

    @property
    def splits(self) -> tuple[UnitSplit, ...]:
        """The :class:`UnitSplit` of every split unit (ascending unit order)."""
        return tuple(self.layer_split.unit_splits())

    def unit_split(self, unit: int) -> UnitSplit:
        """The :class:`UnitSplit` of ``unit`` (``UnknownSubunitError`` if not split)."""
        self.merge.position(unit)
        return self.layer_split.unit_split(unit)

    def num_subunits(self, unit: int) -> int:
        """Number ``K`` of subunits of ``unit`` (residual not counted)."""
        return self.merge.count(unit)

    def subunit_index(self, unit: int, k: int) -> int:
        """Row of ``t_k`` of ``unit`` in the ``.subunits`` output (k=0 -> ``unit``).

        Examples
        --------
        >>> lin = SplitLinear(nn.Linear(3, 4), [UnitSplit("fc", 2, [[0], [1], [2]])])
        >>> [lin.subunit_index(2, k) for k in range(3)], lin.residual_index(2)
        ([2, 4, 5], 6)
        """
        if k == RESIDUAL:
            raise UnknownSubunitError(
                f"subunit_index takes k = 0..K-1; use residual_index({unit}) for the residual"
            )
        return self.merge.channel(unit, k)

    def residual_index(self, unit: int) -> int:
        """Row of the residual ``r`` of ``unit`` in the ``.subunits`` output."""
        return self.merge.channel(unit, RESIDUAL)

    def subunit_channels(self, unit: int, k: int) -> tuple[tuple[int, float], ...]:
        """``(channel, weight)`` pairs whose weighted sum is subunit ``k`` of ``unit``.

        In the disjoint form a subunit is one row; in the overlap form subunit ``k >= 0`` is
        ``t_k + r`` (its own row plus the residual row). ``k = -1`` is the residual ``r``.

        Examples
        --------
        >>> split = UnitSplit("fc", 2, [[0], [1]], [2], merge="overlap")
        >>> lin = SplitLinear(nn.Linear(3, 4), [split])
        >>> lin.subunit_channels(2, 1), lin.subunit_channels(2, -1)
        (((4, 1.0), (5, 1.0)), ((5, 1.0),))
        """
        residual = self.merge.channel(unit, RESIDUAL)
        if k == RESIDUAL:
            return ((residual, 1.0),)
        own = self.merge.channel(unit, k)
        return ((own, 1.0), (residual, 1.0)) if self.form == "overlap" else ((own, 1.0),)

    def merge_coefficient(self, unit: int, k: int) -> float:
        """Coefficient of subunit ``k`` in the merge of its form: ``-(K-1)`` for an overlap
        residual, 1 otherwise; ``sum_k coef_k * subunit_k = z_u``."""
        self.merge.channel(unit, k)
        if self.form == "overlap" and k == RESIDUAL:
            return -(self.num_subunits(unit) - 1.0)
        return 1.0

    def unsplit(self) -> nn.Module:
        """Rebuild the original layer bit for bit (each weight entry is read from the one row
        that holds it).
        """
        w = self.subunits.weight.detach()
        b = None if self.subunits.bias is None else self.subunits.bias.detach()
        c = self.original_out
        new_w = w[:c].clone()
        new_b = None if b is None else b[:c].clone()
        split = self.layer_split
        if split.num_units:
            device = w.device
            units = split.units.to(device)
            assign = split.assignment.to(device, torch.long)
            offsets = self.merge.offsets.to(device)[:, None]
            ks = split.num_subunits.to(device)[:, None]
            residual_row = offsets + ks - 1
            rows = torch.where(
                assign == 0,
                units[:, None].expand_as(assign),
                torch.where(assign == RESIDUAL, residual_row, offsets + assign - 1),
            )
            cols = torch.arange(assign.shape[1], device=device).expand_as(assign)
            new_w[units] = w[rows, cols]
            if new_b is not None:
                new_b[units] = b[residual_row[:, 0]]
        return self._rebuild(new_w, new_b)

    def extra_repr(self) -> str:
        ks = self.layer_split.num_subunits
        low, high = (int(ks.min()), int(ks.max())) if ks.numel() else (0, 0)
        k_text = "" if not ks.numel() else f", K={low}" if low == high else f", K={low}..{high}"
        return (
            f"original_out={self.original_out}, split_units={self.layer_split.num_units}"
            f"{k_text}, extra_rows={self.merge.num_extra}, form={self.form!r}"
        )


def _observed(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks)


@contextlib.contextmanager
def explicit_rows(model: nn.Module) -> Iterator[None]:
    """Make every split layer of ``model`` compute its rows, also where nothing observes them.

    ``verify_equivalence`` uses it, so that it checks the rows rather than the original layer
    that unobserved inference runs.

    Examples
    --------
    >>> from neuronsplit.plan import SplitPlan, UnitSplit
    >>> from neuronsplit.nn import apply_plan
    >>> m = apply_plan(nn.Sequential(nn.Linear(3, 2)), SplitPlan([UnitSplit("0", 0, [[0], [1]], [2])]))
    >>> with torch.no_grad(), explicit_rows(m):
    ...     m[0].rows_needed()
    True
    """
    layers = [m for m in model.modules() if isinstance(m, _SplitLayer)]
    before = [m.force_rows for m in layers]
    try:
        for m in layers:
            m.force_rows = True
        yield
    finally:
        for m, flag in zip(layers, before, strict=True):
            m.force_rows = flag


def _params(new: nn.Module, layer: nn.Module, w: Tensor, b: Tensor | None) -> nn.Module:
    new.weight = nn.Parameter(w, requires_grad=layer.weight.requires_grad)
    if b is not None:
        new.bias = nn.Parameter(b, requires_grad=layer.bias.requires_grad)
    return new


class SplitConv2d(_SplitLayer):
    """Exact split of some output channels of an ``nn.Conv2d`` (groups=1, zero padding).

    Parameters
    ----------
    layer : nn.Conv2d
        The original convolution; read only, never modified.
    split : LayerSplit or sequence of UnitSplit
        The split of this layer.

    Examples
    --------
    >>> conv = nn.Conv2d(3, 4, 3, padding=1)
    >>> sc = SplitConv2d(conv, [UnitSplit("conv", 1, [[0], [1]], shared=[2])])
    >>> x = torch.randn(2, 3, 5, 5)
    >>> sc.subunits(x).shape[1], torch.allclose(sc(x), conv(x), atol=1e-6)
    (6, True)
    """

    _base = nn.Conv2d
    _kind = "conv2d"

    @staticmethod
    def _widened(layer: nn.Module, w: Tensor, b: Tensor | None) -> nn.Module:
        new = nn.Conv2d(
            layer.in_channels, w.shape[0], layer.kernel_size, stride=layer.stride,
            padding=layer.padding, dilation=layer.dilation, groups=1, bias=b is not None,
            padding_mode=layer.padding_mode, device="meta", dtype=w.dtype,
        )  # fmt: skip
        return _params(new, layer, w, b)

    def _rebuild(self, w: Tensor, b: Tensor | None) -> nn.Module:
        return self._widened(self.subunits, w, b)

    def _run_original(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return self.subunits._conv_forward(x, weight, bias)

    @property
    def in_channels(self) -> int:
        """Input channels of the original convolution."""
        return self.subunits.in_channels

    @property
    def out_channels(self) -> int:
        """Output channels of the original convolution (``original_out``)."""
        return self.original_out


class SplitLinear(_SplitLayer):
    """Exact split of some output features of an ``nn.Linear``; works on ``(..., C)`` inputs.

    Parameters
    ----------
    layer : nn.Linear
        The original layer; read only, never modified.
    split : LayerSplit or sequence of UnitSplit
        The split of this layer.

    Examples
    --------
    >>> fc = nn.Linear(4, 3)
    >>> sl = SplitLinear(fc, [UnitSplit("fc", 0, [[0, 1], [2]], shared=[3], merge="disjoint")])
    >>> x = torch.randn(2, 7, 4)
    >>> sl.subunits(x).shape, torch.allclose(sl(x), fc(x), atol=1e-6)
    (torch.Size([2, 7, 5]), True)
    """

    _base = nn.Linear
    _kind = "linear"

    @staticmethod
    def _widened(layer: nn.Module, w: Tensor, b: Tensor | None) -> nn.Module:
        new = nn.Linear(
            layer.in_features, w.shape[0], bias=b is not None, device="meta", dtype=w.dtype
        )
        return _params(new, layer, w, b)

    def _rebuild(self, w: Tensor, b: Tensor | None) -> nn.Module:
        return self._widened(self.subunits, w, b)

    def _run_original(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return nn.functional.linear(x, weight, bias)

    @property
    def in_features(self) -> int:
        """Input features of the original layer."""
        return self.subunits.in_features

    @property
    def out_features(self) -> int:
        """Output features of the original layer (``original_out``)."""
        return self.original_out


SPLIT_TYPES = (SplitConv2d, SplitLinear)
