"""Zennit canonizers: exact BatchNorm merging, timm ResNets, torchvision ResNets.

Zennit's ``ResNetCanonizer`` only matches torchvision's ``Bottleneck``/``BasicBlock``; timm's
blocks add the shortcut in place (``x += shortcut``), which would bypass LRP's sum rule.
:class:`TimmResNetCanonizer` routes that add through a Zennit ``Sum``.

zennit 0.5.1's BatchNorm merge leaves ``eps`` on the emptied BatchNorm, which then divides by
``sqrt(1 + eps)`` instead of 1 (a 1e-4 relative change of a ResNet-50's logits). The ``Exact*``
merges here make the emptied BatchNorm an exact identity, so a canonized model computes the
same function as the original (up to the rounding of the folded weights).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from zennit.canonizers import (
    AttributeCanonizer,
    CompositeCanonizer,
    NamedMergeBatchNorm,
    SequentialMergeBatchNorm,
)
from zennit.layer import Sum

__all__ = [
    "ExactSequentialMergeBatchNorm",
    "ExactNamedMergeBatchNorm",
    "TimmResNetBlockCanonizer",
    "TimmResNetCanonizer",
    "TorchvisionResNetCanonizer",
]


class _ExactMerge:
    """Mixin for zennit's ``MergeBatchNorm`` canonizers: the emptied BatchNorm is an identity.

    Setting ``running_var = eps = 0.5`` makes it divide by ``sqrt(1.0) = 1`` exactly (as zennit's
    later fix does; ``eps`` must stay > 0 for recent torch); ``remove`` restores the original
    ``eps`` (zennit restores the other parameters and buffers).
    """

    batch_norm: nn.Module

    def register(self, linears: Any, batch_norm: nn.Module) -> None:
        self.batch_norm_eps = batch_norm.eps
        super().register(linears, batch_norm)  # type: ignore[misc]
        batch_norm.running_var.data = torch.full_like(batch_norm.running_var.data, 0.5)
        batch_norm.eps = 0.5

    def remove(self) -> None:
        super().remove()  # type: ignore[misc]
        self.batch_norm.eps = self.batch_norm_eps


class ExactSequentialMergeBatchNorm(_ExactMerge, SequentialMergeBatchNorm):
    """Zennit's ``SequentialMergeBatchNorm`` (a BatchNorm right after a conv/linear leaf in
    module order is folded into it), leaving an exact identity behind.

    Examples
    --------
    >>> m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).eval()
    >>> handles = ExactSequentialMergeBatchNorm().apply(m)
    >>> len(handles), m[1].eps
    (1, 0.5)
    >>> for h in handles:
    ...     h.remove()
    >>> m[1].eps
    1e-05
    """


class ExactNamedMergeBatchNorm(_ExactMerge, NamedMergeBatchNorm):
    """Zennit's ``NamedMergeBatchNorm`` (``[((linear names), batch_norm name), ...]``), leaving
    an exact identity behind.

    Examples
    --------
    >>> m = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)).eval()
    >>> handles = ExactNamedMergeBatchNorm([(("0",), "1")]).apply(m)
    >>> for h in handles:
    ...     h.remove()
    >>> len(handles), m[1].eps
    (1, 1e-05)
    """


def _timm_bottleneck_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm ``Bottleneck.forward`` with the residual add routed through a Zennit ``Sum``."""
    shortcut = x
    x = self.act1(self.bn1(self.conv1(x)))
    x = self.aa(self.act2(self.drop_block(self.bn2(self.conv2(x)))))
    x = self.bn3(self.conv3(x))
    if self.se is not None:
        x = self.se(x)
    if self.drop_path is not None:
        x = self.drop_path(x)
    if self.downsample is not None:
        shortcut = self.downsample(shortcut)
    x = self.canonizer_sum(torch.stack([shortcut, x], dim=-1))
    return self.act3(x)


def _timm_basicblock_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm ``BasicBlock.forward`` with the residual add routed through a Zennit ``Sum``."""
    shortcut = x
    x = self.aa(self.act1(self.drop_block(self.bn1(self.conv1(x)))))
    x = self.bn2(self.conv2(x))
    if self.se is not None:
        x = self.se(x)
    if self.drop_path is not None:
        x = self.drop_path(x)
    if self.downsample is not None:
        shortcut = self.downsample(shortcut)
    x = self.canonizer_sum(torch.stack([shortcut, x], dim=-1))
    return self.act2(x)


class TimmResNetBlockCanonizer(AttributeCanonizer):
    """Give every timm ``Bottleneck``/``BasicBlock`` a ``Sum`` module for its residual add.

    The block's forward is replaced (an instance attribute) by one that adds the shortcut
    through ``canonizer_sum``, so a composite can give the add LRP's ``Norm`` rule; ``remove``
    deletes both attributes, which restores the class's forward.
    """

    def __init__(self) -> None:
        super().__init__(self._attribute_map)

    @staticmethod
    def _attribute_map(name: str, module: nn.Module) -> dict[str, Any] | None:
        from timm.models.resnet import BasicBlock, Bottleneck

        if isinstance(module, Bottleneck):
            forward = _timm_bottleneck_forward
        elif isinstance(module, BasicBlock):
            forward = _timm_basicblock_forward
        else:
            return None
        return {"forward": forward.__get__(module), "canonizer_sum": Sum()}

    def copy(self) -> TimmResNetBlockCanonizer:
        return type(self)()


class TimmResNetCanonizer(CompositeCanonizer):
    """Zennit canonizer for timm ResNets: exact BatchNorm merging plus residual ``Sum`` modules.

    Zennit's ``ResNetCanonizer`` only matches torchvision's ``Bottleneck``/``BasicBlock``. This
    one matches ``timm.models.resnet.Bottleneck`` and ``BasicBlock``, whose in-place
    ``x += shortcut`` would otherwise bypass LRP's sum rule, and folds every BatchNorm that
    follows a convolution in module order into it (exactly: see the module docstring).

    Use it with :class:`~neuronsplit.relevance.Zennit` or in a composite's ``canonizers``;
    ``apply(model)`` returns the applied instances, each undone by ``remove()``.
    ``Zennit.for_model`` picks it for timm ResNets.

    Examples
    --------
    >>> from zennit.composites import EpsilonPlusFlat
    >>> from neuronsplit.relevance import Zennit
    >>> backend = Zennit(EpsilonPlusFlat(), canonizers=[TimmResNetCanonizer()])
    >>> backend.describe()
    'zennit:EpsilonPlusFlat[TimmResNetCanonizer]'
    """

    def __init__(self) -> None:
        super().__init__((ExactSequentialMergeBatchNorm(), TimmResNetBlockCanonizer()))


class TorchvisionResNetCanonizer(CompositeCanonizer):
    """Zennit's ``zennit.torchvision.ResNetCanonizer`` with the exact BatchNorm merge.

    Adds a ``Sum`` to torchvision's ``Bottleneck``/``BasicBlock`` and folds every BatchNorm
    into the convolution before it (module order); the emptied BatchNorm is an exact identity
    (zennit 0.5.1's leaves ``1/sqrt(1 + eps)`` behind). ``Zennit.for_model`` picks it for
    torchvision ResNets.

    Examples
    --------
    >>> [type(c).__name__ for c in TorchvisionResNetCanonizer().canonizers]
    ['ExactSequentialMergeBatchNorm', 'ResNetBottleneckCanonizer', 'ResNetBasicBlockCanonizer']
    """

    def __init__(self) -> None:
        from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer

        super().__init__(
            (
                ExactSequentialMergeBatchNorm(),
                ResNetBottleneckCanonizer(),
                ResNetBasicBlockCanonizer(),
            )
        )
