"""Zennit canonizers for model families Zennit does not know: timm ResNets.

Zennit's ``ResNetCanonizer`` only matches torchvision's ``Bottleneck``/``BasicBlock``; timm's
blocks add the shortcut in place (``x += shortcut``), which would bypass LRP's sum rule.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["TimmResNetCanonizer"]


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


def TimmResNetCanonizer() -> Any:  # noqa: N802 - reads like a class, as Zennit's canonizers do
    """Zennit canonizer for timm ResNets: BatchNorm merging plus residual ``Sum`` modules.

    Zennit's ``ResNetCanonizer`` only matches torchvision's ``Bottleneck``/``BasicBlock``. This
    one matches ``timm.models.resnet.Bottleneck`` and ``BasicBlock``, whose in-place
    ``x += shortcut`` would otherwise bypass LRP's sum rule.

    Returns
    -------
    zennit.canonizers.CompositeCanonizer
        Use with :class:`Zennit` or in a composite's ``canonizers``.

    Examples
    --------
    >>> import timm
    >>> from zennit.composites import EpsilonPlusFlat
    >>> from neuronsplit.relevance import Zennit
    >>> backend = Zennit(EpsilonPlusFlat(), canonizers=[TimmResNetCanonizer()])
    """
    from timm.models.resnet import BasicBlock, Bottleneck
    from zennit.canonizers import AttributeCanonizer, CompositeCanonizer, SequentialMergeBatchNorm
    from zennit.layer import Sum

    def attribute_map(name: str, module: nn.Module) -> dict[str, Any] | None:
        if isinstance(module, Bottleneck):
            forward = _timm_bottleneck_forward
        elif isinstance(module, BasicBlock):
            forward = _timm_basicblock_forward
        else:
            return None
        return {"forward": forward.__get__(module), "canonizer_sum": Sum()}

    class ExactSequentialMergeBatchNorm(SequentialMergeBatchNorm):
        # zennit 0.5.1 leaves ``eps`` on the emptied BatchNorm, which then divides by
        # sqrt(1 + eps) instead of 1 (a 1e-4 relative change of a ResNet-50's logits). Setting
        # running_var = eps = 0.5 makes it an exact identity (as zennit's later fix does; eps
        # must stay > 0 for recent torch); ``remove`` restores the original eps.
        def register(self, linears: Any, batch_norm: nn.Module) -> None:
            self.batch_norm_eps = batch_norm.eps
            super().register(linears, batch_norm)
            batch_norm.running_var.data = torch.full_like(batch_norm.running_var.data, 0.5)
            batch_norm.eps = 0.5

        def remove(self) -> None:
            super().remove()
            self.batch_norm.eps = self.batch_norm_eps

    return CompositeCanonizer((ExactSequentialMergeBatchNorm(), AttributeCanonizer(attribute_map)))
