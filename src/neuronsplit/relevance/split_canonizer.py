"""Zennit LRP on split layers, part 1: the BatchNorm after a split layer, folded into its rows.

Canonizers such as Zennit's ``SequentialMergeBatchNorm`` fold a BatchNorm into the conv/linear
leaf right before it. After a split layer that leaf is ``.merge``, so the BatchNorm stayed
unfolded and the composite explained a different model than the original's (the layer's rule
saw the pre-BatchNorm output: 3.4% off under EpsilonPlusFlat on a ResNet-18 unit).
:class:`SplitLayerCanonizer` folds it into the rows: every row is scaled by
``a = gamma / sqrt(var + eps)`` (running statistics, Zennit's arithmetic), the rows that carry a
bias (the residual rows and the rows of units that are not split) get ``(b - mean) * a + beta``,
the others keep zero, and the BatchNorm's forward becomes the identity, in train mode too (its
parameters and buffers are never touched; ``remove`` restores the rows bit for bit).

Part 2, the rule on the rows and the merge, is :mod:`neuronsplit.relevance.split_rules` (its
names are re-exported here); the :class:`~neuronsplit.relevance.Zennit` backend applies both to
every split layer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from zennit.canonizers import Canonizer, MergeBatchNorm
from zennit.core import collect_leaves
from zennit.types import BatchNorm

from ..errors import InvalidArgumentError
from .split_rules import (
    RowLayout,
    SplitRule,
    is_split_layer,
    register_split_rules,
    split_rule_supported,
)

__all__ = [
    "SplitLayerCanonizer",
    "split_canonizers",
    # part 2, re-exported: this module is the public face of split-layer LRP
    "SplitRule",
    "register_split_rules",
    "split_rule_supported",
    "is_split_layer",
]

_STOCK_BN_FORWARD = nn.modules.batchnorm._BatchNorm.forward
_MISSING = object()


def _identity(input: Tensor) -> Tensor:
    return input


class SplitLayerCanonizer(Canonizer):
    """Fold the BatchNorm that follows a split layer into its rows (exactly; undone on remove).

    Parameters
    ----------
    pairs : sequence of (str, str), optional
        ``(split layer name, BatchNorm name)`` pairs. By default a BatchNorm is paired with the
        split layer whose last leaf (``.merge``) comes right before it in module order, as
        Zennit's ``SequentialMergeBatchNorm`` pairs a BatchNorm with the leaf before it.

    Notes
    -----
    Only stock ``BatchNorm1d/2d/3d`` forwards with running statistics are folded (a subclass
    with its own forward, e.g. timm's ``BatchNormAct2d``, is left alone). The
    :class:`~neuronsplit.relevance.Zennit` backend adds this canonizer by itself whenever one of
    its canonizers merges BatchNorms (and none of them is a ``SplitLayerCanonizer``).

    Examples
    --------
    >>> from neuronsplit.nn import apply_plan
    >>> from neuronsplit.plan import SplitPlan, UnitSplit
    >>> model = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3)).eval()
    >>> split = apply_plan(model, SplitPlan([UnitSplit("0", 1, [[0], [1]])]))
    >>> before = split[0].subunits.weight.clone()
    >>> handles = SplitLayerCanonizer().apply(split)
    >>> x = torch.rand(1, 2, 4, 4)
    >>> len(handles), torch.allclose(split(x), model(x), atol=1e-6)
    (1, True)
    >>> for handle in handles:
    ...     handle.remove()
    >>> torch.equal(split[0].subunits.weight, before), split[0].subunits.bias is None
    (True, False)
    """

    def __init__(self, pairs: Sequence[tuple[str, str]] | None = None) -> None:
        super().__init__()
        self.pairs = None if pairs is None else tuple((str(a), str(b)) for a, b in pairs)
        self.layer: nn.Module | None = None
        self.batch_norm: nn.Module | None = None
        self._saved: tuple[Any, ...] | None = None
        self._forward: Any = _MISSING

    def copy(self) -> SplitLayerCanonizer:
        return type(self)(self.pairs)

    @staticmethod
    def foldable(layer: nn.Module, batch_norm: nn.Module) -> bool:
        """Whether ``batch_norm`` (stock forward, running statistics) fits ``layer``'s units."""
        return (
            isinstance(batch_norm, BatchNorm)
            and type(batch_norm).forward is _STOCK_BN_FORWARD
            and "forward" not in batch_norm.__dict__
            and batch_norm.running_mean is not None
            and batch_norm.running_var is not None
            and batch_norm.num_features == layer.merge.original_out
        )

    def _find(self, root: nn.Module) -> Iterator[tuple[nn.Module, nn.Module]]:
        if self.pairs is not None:
            for layer_name, bn_name in self.pairs:
                layer, bn = root.get_submodule(layer_name), root.get_submodule(bn_name)
                if not is_split_layer(layer) or not self.foldable(layer, bn):
                    raise InvalidArgumentError(
                        f"SplitLayerCanonizer: ({layer_name!r}, {bn_name!r}) is not a split "
                        "layer followed by a BatchNorm over its units; name pairs "
                        "(split layer, the BatchNorm that reads it) or pass pairs=None"
                    )
                yield layer, bn
            return
        owners = {id(m.merge): m for m in root.modules() if is_split_layer(m)}
        last = None
        for leaf in collect_leaves(root):
            layer = owners.get(id(last))
            if layer is not None and self.foldable(layer, leaf):
                yield layer, leaf
            last = leaf

    def apply(self, root_module: nn.Module) -> list[SplitLayerCanonizer]:
        """Fold every pair found in ``root_module``; returns the applied instances."""
        instances: list[SplitLayerCanonizer] = []
        try:
            for layer, bn in list(self._find(root_module)):
                instance = self.copy()
                instance.register(layer, bn)
                instances.append(instance)
        except BaseException:
            for instance in reversed(instances):  # a half-done fold never stays in the model
                instance.remove()
            raise
        return instances

    def register(self, layer: nn.Module, batch_norm: nn.Module) -> None:
        """Fold ``batch_norm`` into the rows of ``layer`` and make it an identity."""
        rows = layer.subunits
        layout = RowLayout(layer)
        weight, bias = rows.weight, rows.bias
        self.layer, self.batch_norm = layer, batch_norm
        self._saved = (weight.data, bias, None if bias is None else bias.data)
        with torch.no_grad():
            bn = batch_norm
            # Zennit's arithmetic (MergeBatchNorm.merge_batch_norm), per unit, then per row
            scale = (bn.running_var + bn.eps) ** 0.5
            scale = (1.0 / scale if bn.weight is None else bn.weight / scale).to(weight.dtype)
            beta = torch.zeros_like(scale) if bn.bias is None else bn.bias.to(weight.dtype)
            mean = bn.running_mean.to(weight.dtype)
            ru = layout.row_unit
            old = torch.zeros(ru.numel(), dtype=weight.dtype, device=weight.device)
            old = old if bias is None else bias.data
            row_scale = scale[ru]
            new_bias = torch.where(
                layout.bias_rows, (old - mean[ru]) * row_scale + beta[ru], old * row_scale
            )
            new_weight = weight.data * row_scale.reshape((-1,) + (1,) * (weight.dim() - 1))
        weight.data = new_weight
        if bias is None:
            rows.bias = nn.Parameter(new_bias, requires_grad=weight.requires_grad)
        else:
            bias.data = new_bias
        self._forward = batch_norm.__dict__.get("forward", _MISSING)
        batch_norm.forward = _identity

    def remove(self) -> None:
        """Restore the rows and the BatchNorm exactly."""
        if self._saved is None:
            return
        rows, (weight, bias, bias_data) = self.layer.subunits, self._saved
        rows.weight.data = weight
        if bias is None:
            rows.bias = None
        else:
            rows.bias = bias
            bias.data = bias_data
        if self._forward is _MISSING:
            del self.batch_norm.forward
        else:
            self.batch_norm.forward = self._forward
        self._saved = None


def _flatten(canonizers: Sequence[Any]) -> Iterator[Any]:
    for canonizer in canonizers:
        yield canonizer
        yield from _flatten(getattr(canonizer, "canonizers", ()) or ())


def split_canonizers(canonizers: Sequence[Any]) -> list[SplitLayerCanonizer]:
    """The split-layer canonizers a session with ``canonizers`` needs.

    ``[SplitLayerCanonizer()]`` when one of them merges BatchNorms (a Zennit ``MergeBatchNorm``,
    also inside a ``CompositeCanonizer``) and none is a :class:`SplitLayerCanonizer` already;
    otherwise ``[]`` (the original's BatchNorms are not folded either).
    """
    flat = list(_flatten(canonizers))
    if any(isinstance(c, SplitLayerCanonizer) for c in flat):
        return []
    return [SplitLayerCanonizer()] if any(isinstance(c, MergeBatchNorm) for c in flat) else []
