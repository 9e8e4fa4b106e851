"""Model surgery: replace Conv2d/Linear layers by exact split versions.

A split layer computes the original rows and the extra subunit rows in **one** conv/matmul
(the child ``.subunits``, a plain ``nn.Conv2d`` / ``nn.Linear`` with ``C + E`` output rows) and
then folds the extra rows back into their parent units with an index-add (the child
``.merge``, an :class:`IndexMerge`). Row ``u`` of a split unit holds its first subunit; the
other subunits and then the residual of ``u`` are appended as rows ``C, C+1, ...`` in plan
order. See ``reference/methods.md`` §2 for the math.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from ._index_merge import RESIDUAL, IndexMerge
from ._plan_util import _check_plain_forward
from .errors import PlanError, UnknownLayerError, UnknownSubunitError
from .layers import check_supported, resolve_layer
from .plan import SplitPlan, UnitSplit

__all__ = [
    "IndexMerge",
    "SplitConv2d",
    "SplitLinear",
    "apply_plan",
    "iter_split_layers",
    "get_split_layer",
    "plan_of",
]


def _check_layer_name(splits: Sequence[UnitSplit]) -> str:
    if not splits:
        raise PlanError("a split layer needs at least one UnitSplit")
    names = {s.layer for s in splits}
    if len(names) != 1:
        raise PlanError(f"all splits of one layer must name the same layer, got {sorted(names)}")
    return splits[0].layer


def _masked_row(row: Tensor, cols: Sequence[int]) -> Tensor:
    """Copy of ``row`` (inputs on dim 0) keeping only ``cols``; exact copy, no multiply."""
    out = torch.zeros_like(row)
    if cols:
        idx = torch.tensor(cols, dtype=torch.long, device=row.device)
        out.index_copy_(0, idx, row.index_select(0, idx))
    return out


def _build_rows(
    weight: Tensor, bias: Tensor | None, splits: Sequence[UnitSplit]
) -> tuple[Tensor, Tensor | None, list[int], list[int], list[float]]:
    """Widened weight/bias plus (index, sub, coef) for the merge, following the layout rule."""
    w = weight.detach().clone()
    b = None if bias is None else bias.detach().clone()
    rows: list[Tensor] = []
    brows: list[Tensor] = []
    index: list[int] = []
    sub: list[int] = []
    coef: list[float] = []
    zero = None if b is None else torch.zeros_like(b[0])
    for s in splits:
        u, k_total, overlap = s.unit, s.num_subunits, s.merge == "overlap"
        orig_row = weight[s.unit].detach()
        cols = [list(g) + list(s.shared) if overlap else list(g) for g in s.groups]
        w[u] = _masked_row(orig_row, cols[0])
        for k in range(1, k_total):
            rows.append(_masked_row(orig_row, cols[k]))
            index.append(u)
            sub.append(k)
            coef.append(1.0)
        rows.append(_masked_row(orig_row, list(s.shared)))
        index.append(u)
        sub.append(RESIDUAL)
        coef.append(-(k_total - 1.0) if overlap else 1.0)
        if b is not None:
            bu = bias[u].detach()
            # overlap: every row carries b_u and the -(K-1) residual cancels the surplus;
            # partition: only the residual carries it
            if not overlap:
                b[u] = zero
            brows.extend([bu if overlap else zero] * (k_total - 1) + [bu])
    new_w = torch.cat([w, torch.stack(rows)], dim=0)
    new_b = None if b is None else torch.cat([b, torch.stack(brows)], dim=0)
    return new_w, new_b, index, sub, coef


class _SplitLayer(nn.Module):
    """Shared logic of :class:`SplitConv2d` and :class:`SplitLinear`."""

    _base: type[nn.Module]
    _dim: int

    subunits: nn.Module
    merge: IndexMerge

    def __init__(self, layer: nn.Module, splits: Sequence[UnitSplit]) -> None:
        super().__init__()
        splits = tuple(splits)
        name = _check_layer_name(splits)
        if not isinstance(layer, self._base):
            raise TypeError(
                f"{type(self).__name__} wraps a {self._base.__name__}, got {type(layer).__name__}"
            )
        check_supported(layer, name)
        _check_plain_forward(layer, name)
        n_in, n_out = self._sizes(layer)
        seen: set[int] = set()
        for s in splits:
            if s.unit in seen:
                raise PlanError(f"unit {s.unit} of layer {name!r} is split twice")
            seen.add(s.unit)
            s.validate(n_in, n_out)
        with torch.no_grad():
            w, b, index, sub, coef = _build_rows(layer.weight, layer.bias, splits)
        self.subunits = self._widened(layer, w, b)
        self.merge = IndexMerge(n_out, index, sub, coef, self._dim, dtype=w.dtype, device=w.device)
        self._splits: dict[int, UnitSplit] = {s.unit: s for s in splits}
        self._offset: dict[int, int] = {}
        pos = n_out
        for s in splits:
            self._offset[s.unit] = pos
            pos += s.num_extra_rows
        self.train(layer.training)

    # subclass hooks ---------------------------------------------------------------------------
    @staticmethod
    def _sizes(layer: nn.Module) -> tuple[int, int]:  # pragma: no cover - overridden
        raise NotImplementedError

    @staticmethod
    def _widened(layer: nn.Module, w: Tensor, b: Tensor | None) -> nn.Module:  # pragma: no cover
        raise NotImplementedError

    # public API -------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """Run ``.subunits`` once, then merge back to the original units."""
        return self.merge(self.subunits(x))

    @property
    def original_out(self) -> int:
        """``C``, the number of units of the original layer (and of this layer's output)."""
        return self.merge.original_out

    @property
    def split_units(self) -> tuple[int, ...]:
        """The split units in plan order."""
        return tuple(self._splits)

    @property
    def splits(self) -> tuple[UnitSplit, ...]:
        """The :class:`UnitSplit` of every split unit, in plan order (= row layout order)."""
        return tuple(self._splits.values())

    def _split(self, unit: int) -> UnitSplit:
        try:
            return self._splits[int(unit)]
        except (KeyError, TypeError, ValueError):
            raise UnknownSubunitError(
                f"unit {unit!r} is not split in this layer; split units: "
                f"{list(self._splits)[:20]} (units 0..{self.original_out - 1} exist)"
            ) from None

    def unit_split(self, unit: int) -> UnitSplit:
        """Return the :class:`UnitSplit` of ``unit`` (``UnknownSubunitError`` if not split)."""
        return self._split(unit)

    def num_subunits(self, unit: int) -> int:
        """Number ``K`` of subunits of ``unit`` (residual not counted)."""
        return self._split(unit).num_subunits

    def subunit_index(self, unit: int, k: int) -> int:
        """Channel of subunit ``k`` of ``unit`` in the ``.subunits`` output (k=0 -> ``unit``).

        Examples
        --------
        >>> lin = SplitLinear(nn.Linear(3, 4), [UnitSplit("fc", 2, [[0], [1], [2]])])
        >>> [lin.subunit_index(2, k) for k in range(3)], lin.residual_index(2)
        ([2, 4, 5], 6)
        """
        s = self._split(unit)
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < s.num_subunits:
            raise UnknownSubunitError(
                f"subunit k={k!r} does not exist for unit {s.unit}, which has "
                f"{s.num_subunits} subunits (valid k: 0..{s.num_subunits - 1}); use "
                "residual_index() for the residual"
            )
        return s.unit if k == 0 else self._offset[s.unit] + k - 1

    def residual_index(self, unit: int) -> int:
        """Channel of the residual of ``unit`` in the ``.subunits`` output."""
        s = self._split(unit)
        return self._offset[s.unit] + s.num_subunits - 1

    def unsplit(self) -> nn.Module:
        """Rebuild the original layer bit for bit (each weight entry is read from the one row
        that holds it unchanged).
        """
        w = self.subunits.weight.detach()
        b = None if self.subunits.bias is None else self.subunits.bias.detach()
        c = self.original_out
        new_w = w[:c].clone()
        new_b = None if b is None else b[:c].clone()
        for s in self._splits.values():
            u, overlap = s.unit, s.merge == "overlap"
            for k, g in enumerate(s.groups):
                if g:
                    idx = torch.tensor(g, dtype=torch.long, device=w.device)
                    new_w[u].index_copy_(0, idx, w[self.subunit_index(u, k)].index_select(0, idx))
            r = self.residual_index(u)
            if s.shared:
                idx = torch.tensor(s.shared, dtype=torch.long, device=w.device)
                new_w[u].index_copy_(0, idx, w[r].index_select(0, idx))
            if new_b is not None:
                new_b[u] = b[u] if overlap else b[r]
        return self._rebuild(new_w, new_b)

    def _rebuild(self, w: Tensor, b: Tensor | None) -> nn.Module:  # pragma: no cover
        raise NotImplementedError

    def extra_repr(self) -> str:
        kinds = ", ".join(
            f"{s.unit}:K={s.num_subunits}/{s.merge}" for s in list(self._splits.values())[:8]
        )
        more = ", ..." if len(self._splits) > 8 else ""
        return (
            f"original_out={self.original_out}, extra_rows={self.merge.num_extra}, "
            f"split_units=[{kinds}{more}]"
        )


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
    splits : sequence of UnitSplit
        Splits of this layer (all with the same ``layer`` name); order fixes the row layout.

    Examples
    --------
    >>> conv = nn.Conv2d(3, 4, 3, padding=1)
    >>> sc = SplitConv2d(conv, [UnitSplit("conv", 1, [[0], [1]], shared=[2])])
    >>> x = torch.randn(2, 3, 5, 5)
    >>> sc.subunits(x).shape[1], torch.allclose(sc(x), conv(x), atol=1e-6)
    (6, True)
    """

    _base = nn.Conv2d
    _dim = -3

    @staticmethod
    def _sizes(layer: nn.Module) -> tuple[int, int]:
        return layer.in_channels, layer.out_channels

    @staticmethod
    def _widened(layer: nn.Module, w: Tensor, b: Tensor | None) -> nn.Module:
        new = nn.Conv2d(
            layer.in_channels, w.shape[0], layer.kernel_size, stride=layer.stride,
            padding=layer.padding, dilation=layer.dilation, groups=1, bias=b is not None,
            padding_mode=layer.padding_mode, device="meta", dtype=w.dtype,
        )  # fmt: skip
        return _params(new, layer, w, b)

    def _rebuild(self, w: Tensor, b: Tensor | None) -> nn.Module:
        s = self.subunits
        new = nn.Conv2d(
            s.in_channels, w.shape[0], s.kernel_size, stride=s.stride, padding=s.padding,
            dilation=s.dilation, bias=b is not None, padding_mode=s.padding_mode,
            device="meta", dtype=w.dtype,
        )  # fmt: skip
        return _params(new, s, w, b)

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
    splits : sequence of UnitSplit
        Splits of this layer (all with the same ``layer`` name); order fixes the row layout.

    Examples
    --------
    >>> fc = nn.Linear(4, 3)
    >>> sl = SplitLinear(fc, [UnitSplit("fc", 0, [[0, 1], [2]], shared=[3], merge="partition")])
    >>> x = torch.randn(2, 7, 4)
    >>> sl.subunits(x).shape, torch.allclose(sl(x), fc(x), atol=1e-6)
    (torch.Size([2, 7, 5]), True)
    """

    _base = nn.Linear
    _dim = -1

    @staticmethod
    def _sizes(layer: nn.Module) -> tuple[int, int]:
        return layer.in_features, layer.out_features

    @staticmethod
    def _widened(layer: nn.Module, w: Tensor, b: Tensor | None) -> nn.Module:
        new = nn.Linear(
            layer.in_features, w.shape[0], bias=b is not None, device="meta", dtype=w.dtype
        )
        return _params(new, layer, w, b)

    def _rebuild(self, w: Tensor, b: Tensor | None) -> nn.Module:
        new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device="meta", dtype=w.dtype)
        return _params(new, self.subunits, w, b)

    @property
    def in_features(self) -> int:
        """Input features of the original layer."""
        return self.subunits.in_features

    @property
    def out_features(self) -> int:
        """Output features of the original layer (``original_out``)."""
        return self.original_out


_SPLIT_TYPES = (SplitConv2d, SplitLinear)


def _set_module(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_name, _, child = path.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def apply_plan(model: nn.Module, plan: SplitPlan) -> nn.Module:
    """Return a deep copy of ``model`` with the planned layers replaced by split layers.

    The plan is validated first; on any error nothing is returned and ``model`` is untouched.
    The input model is never mutated (parameters, buffers, hooks, ``requires_grad`` flags,
    training flag). Each planned layer is replaced at every path where the same module object
    is registered (shared modules stay shared). Hooks registered on a replaced layer are not
    carried over to its split version. Nested splits (planning a layer that is already split)
    are refused with ``PlanError``; apply one combined plan to the original model instead.

    Parameters
    ----------
    model : nn.Module
        The original model.
    plan : SplitPlan
        The splits to apply.

    Returns
    -------
    nn.Module
        The rewritten copy, in the same training/eval mode as ``model``.

    Raises
    ------
    UnknownLayerError, UnsupportedLayerError, PlanError, PlanMismatchError
        See :meth:`SplitPlan.validate`.

    Examples
    --------
    >>> m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> plan = SplitPlan([UnitSplit("0", 1, [[0], [1]], shared=[2])])
    >>> split = apply_plan(m, plan)
    >>> type(split[0]).__name__, type(m[0]).__name__
    ('SplitLinear', 'Linear')
    >>> x = torch.randn(5, 3)
    >>> torch.allclose(split(x), m(x), atol=1e-6)
    True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(plan, SplitPlan):
        raise TypeError(
            f"plan must be a SplitPlan, got {type(plan).__name__}; build one with "
            "SplitPlan([UnitSplit(...), ...]) or SplitPlan.from_json(...)"
        )
    plan.validate(model)
    new = copy.deepcopy(model)
    paths: dict[int, list[str]] = {}
    for name, mod in new.named_modules(remove_duplicate=False):
        paths.setdefault(id(mod), []).append(name)
    for name, splits in plan.by_layer().items():
        old = new.get_submodule(name)
        cls = SplitConv2d if isinstance(old, nn.Conv2d) else SplitLinear
        replacement = cls(old, splits)
        for path in paths[id(old)]:
            _set_module(new, path, replacement)
    return new


def iter_split_layers(model: nn.Module) -> Iterator[tuple[str, SplitConv2d | SplitLinear]]:
    """Yield ``(name, layer)`` for every split layer of ``model`` in module order.

    Examples
    --------
    >>> m = apply_plan(nn.Sequential(nn.Linear(2, 2)), SplitPlan([UnitSplit("0", 0, [[0], [1]])]))
    >>> [n for n, _ in iter_split_layers(m)]
    ['0']
    """
    for name, mod in model.named_modules():
        if isinstance(mod, _SPLIT_TYPES):
            yield name, mod


def get_split_layer(model: nn.Module, name: str) -> SplitConv2d | SplitLinear:
    """Return the split layer at ``name``.

    Raises
    ------
    UnknownLayerError
        If there is no such layer or it is not split; the message lists the split layers.

    Examples
    --------
    >>> m = apply_plan(nn.Sequential(nn.Linear(2, 2)), SplitPlan([UnitSplit("0", 0, [[0], [1]])]))
    >>> get_split_layer(m, "0").split_units
    (0,)
    """
    layer = resolve_layer(model, name)
    if not isinstance(layer, _SPLIT_TYPES):
        names = [n for n, _ in iter_split_layers(model)]
        raise UnknownLayerError(
            f"layer {name!r} is a {type(layer).__name__}, not a split layer; split layers of "
            f"this model: {names[:10] or 'none (run apply_plan first)'}"
        )
    return layer


def plan_of(model: nn.Module) -> SplitPlan:
    """Reconstruct the :class:`SplitPlan` of a split model (layer names = current paths).

    ``apply_plan(original, plan_of(split))`` rebuilds the same row layout.

    Examples
    --------
    >>> plan = SplitPlan([UnitSplit("0", 0, [[0], [1]])])
    >>> plan_of(apply_plan(nn.Sequential(nn.Linear(2, 2)), plan)) == plan
    True
    """
    splits = [
        dataclasses.replace(s, layer=name)
        for name, layer in iter_split_layers(model)
        for s in layer.splits
    ]
    return SplitPlan(tuple(splits))
