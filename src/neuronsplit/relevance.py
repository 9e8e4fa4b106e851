"""Relevance backends: gradient x activation (default) and Zennit LRP composites.

A backend answers one question for the scan: given the output tensor ``A`` of a layer and the
gradient that reached it from the target logit, how relevant is each unit of the layer for that
logit? Units are output channels of a ``Conv2d`` (summed over space) or output features of a
``Linear`` (summed over tokens for inputs shaped ``(B, T, D)``).

* :class:`GradXAct` (``relevance="grad_x_act"``): ``R_c = sum_space A_c * dy_t/dA_c``. This is the
  reference method of Hesse et al. and equals Captum's ``LayerGradientXActivation`` summed over
  space. On ReLU networks it equals LRP-0.
* :class:`Zennit`: any Zennit composite (``EpsilonPlusFlat``, ``EpsilonGammaBox``,
  ``EpsilonAlpha2Beta1``, ...), optionally with canonizers. Zennit's modified gradient at a tensor
  *is* the relevance, so ``R_c = sum_space grad_c`` with the output seeded with the target logit.
  The composite is registered on a private deep copy of the model, never on the user's.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "GradXAct",
    "Zennit",
    "RelevanceBackend",
    "get_backend",
    "unit_sum",
    "TimmResNetCanonizer",
]


def unit_sum(tensor: torch.Tensor, kind: str) -> torch.Tensor:
    """Sum a layer output over everything but the batch and unit axes -> ``(B, units)``.

    Parameters
    ----------
    tensor : torch.Tensor
        ``(B, C, H, W)`` for ``kind="conv2d"``; ``(B, C)`` or ``(B, T, ..., C)`` for ``"linear"``.
    kind : {"conv2d", "linear"}
        Which axis holds the units: 1 for convolutions, the last one for linear layers.

    Returns
    -------
    torch.Tensor
        Shape ``(B, C)``.

    Examples
    --------
    >>> unit_sum(torch.ones(2, 5, 7, 3), "linear").shape
    torch.Size([2, 3])
    """
    if kind == "conv2d":
        return tensor.sum(dim=tuple(range(2, tensor.dim()))) if tensor.dim() > 2 else tensor
    if tensor.dim() == 2:
        return tensor
    return tensor.sum(dim=tuple(range(1, tensor.dim() - 1)))


class RelevanceBackend:
    """Interface of a relevance backend used by :func:`neuronsplit.scan`."""

    name: str = "base"

    def prepare(self, model: nn.Module) -> contextlib.AbstractContextManager[nn.Module]:
        """Context manager yielding the module to run (the model or a prepared copy)."""
        raise NotImplementedError

    def unit_relevance(self, output: torch.Tensor, grad: torch.Tensor, kind: str) -> torch.Tensor:
        """Per-unit relevance ``(B, C)`` from a layer output and its (modified) gradient."""
        raise NotImplementedError

    def describe(self) -> str:
        """Short description stored in scan results."""
        return self.name


class GradXAct(RelevanceBackend):
    """Gradient x activation at the layer output, summed over space (= LRP-0 on ReLU nets).

    Examples
    --------
    >>> backend = GradXAct()
    >>> backend.unit_relevance(torch.ones(1, 2, 3, 3), torch.full((1, 2, 3, 3), 2.0), "conv2d")
    tensor([[18., 18.]])
    """

    name = "grad_x_act"

    @contextlib.contextmanager
    def prepare(self, model: nn.Module) -> Iterator[nn.Module]:
        # Gradient x activation needs no change to the model: only hooks, removed by the caller.
        yield model

    def unit_relevance(self, output: torch.Tensor, grad: torch.Tensor, kind: str) -> torch.Tensor:
        return unit_sum(output * grad, kind)


class Zennit(RelevanceBackend):
    """LRP relevance from a Zennit composite.

    Parameters
    ----------
    composite : zennit.core.Composite
        For example ``EpsilonPlusFlat()``, ``EpsilonAlpha2Beta1()`` or
        ``EpsilonGammaBox(low=-3.0, high=3.0)``. Its own canonizers are applied too.
    canonizers : sequence of zennit.canonizers.Canonizer, optional
        Extra canonizers applied before the composite, e.g. ``[TimmResNetCanonizer()]`` for timm
        ResNets (Zennit's own ``ResNetCanonizer`` only recognises torchvision's blocks) or
        ``[SequentialMergeBatchNorm()]``.

    Notes
    -----
    Composites with z+, gamma or alpha-beta rules on convolutions do not reproduce Hesse et al.'s
    gradient x activation relevance, so they change which units become candidates. The
    composite is registered on a deep copy of the model; the user's model never carries a hook.

    Examples
    --------
    >>> from zennit.composites import EpsilonPlusFlat
    >>> backend = Zennit(EpsilonPlusFlat())
    >>> backend.describe()
    'zennit:EpsilonPlusFlat'
    """

    name = "zennit"

    def __init__(self, composite: Any, canonizers: Sequence[Any] = ()) -> None:
        from zennit.core import Composite

        if not isinstance(composite, Composite):
            raise TypeError(
                f"Zennit(composite) needs a zennit Composite such as EpsilonPlusFlat(), got "
                f"{type(composite).__name__}"
            )
        self.composite = composite
        self.canonizers = tuple(canonizers)

    def describe(self) -> str:
        extra = "+".join(type(c).__name__ for c in self.canonizers)
        return f"zennit:{type(self.composite).__name__}" + (f"[{extra}]" if extra else "")

    @contextlib.contextmanager
    def prepare(self, model: nn.Module) -> Iterator[nn.Module]:
        # Canonizers rewrite parameters and forwards; doing that on a copy keeps the promise that
        # the user's model is never touched, even if something fails half-way.
        work = copy.deepcopy(model)
        handles: list[Any] = []
        try:
            for canonizer in self.canonizers:
                handles.extend(canonizer.apply(work))
            self.composite.register(work)
            yield work
        finally:
            self.composite.remove()
            for handle in reversed(handles):
                handle.remove()

    def unit_relevance(self, output: torch.Tensor, grad: torch.Tensor, kind: str) -> torch.Tensor:
        # In Zennit's modified backward pass the gradient at a tensor already is its relevance.
        return unit_sum(grad, kind)


def get_backend(relevance: Any) -> RelevanceBackend:
    """Turn ``"grad_x_act"``, a Zennit composite or a backend instance into a backend.

    A bare Zennit ``Composite`` is wrapped as ``Zennit(composite)``. Every entry point that takes
    a ``relevance=`` argument (scan, Disentangle) goes through this one function.

    Raises
    ------
    ValueError
        For an unknown string or type; the message lists the valid choices.
    """
    if isinstance(relevance, RelevanceBackend):
        return relevance
    if isinstance(relevance, str):
        if relevance == "grad_x_act":
            return GradXAct()
        raise ValueError(
            f"unknown relevance {relevance!r}; use 'grad_x_act' or ns.Zennit(composite), e.g. "
            "ns.Zennit(zennit.composites.EpsilonPlusFlat())"
        )
    from zennit.core import Composite

    if isinstance(relevance, Composite):
        return Zennit(relevance)
    raise ValueError(
        f"relevance must be 'grad_x_act', a zennit Composite or neuronsplit.Zennit(...), got "
        f"{type(relevance).__name__}"
    )


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
