"""LRP relevance from Zennit composites: the :class:`Zennit` backend.

Zennit's modified backward pass makes the gradient at a tensor *its relevance* once the output
is seeded with the target logit, so ``R = grad`` everywhere (and LRP-0 equals gradient x
activation). The session registers canonizers and the composite, and gives every module that
declares itself a parameter-free linear map (``parameter_free_linear = True``, e.g. the merge of
a split layer) Zennit's ``Norm`` rule when the composite leaves it without one, so relevance is
distributed to its inputs in proportion to their contributions instead of by plain gradients.
"""

from __future__ import annotations

import contextlib
import copy as copy_module
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ArgumentTypeError
from .backend import RelevanceBackend

__all__ = ["Zennit"]


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
    merge_epsilon : float, default 1e-9
        Stabiliser of the ``Norm`` rule given to parameter-free linear maps (split merges).

    Notes
    -----
    Composites with z+, gamma or alpha-beta rules on convolutions do not reproduce Hesse et al.'s
    gradient x activation relevance, so they change which units become candidates.

    Examples
    --------
    >>> from zennit.composites import EpsilonPlusFlat
    >>> backend = Zennit(EpsilonPlusFlat())
    >>> backend.describe()
    'zennit:EpsilonPlusFlat'
    """

    name = "zennit"

    def __init__(
        self, composite: Any, canonizers: Sequence[Any] = (), *, merge_epsilon: float = 1e-9
    ) -> None:
        from zennit.core import Composite

        if not isinstance(composite, Composite):
            raise ArgumentTypeError(
                f"Zennit(composite) needs a zennit Composite such as EpsilonPlusFlat(), got "
                f"{type(composite).__name__}"
            )
        self.composite = composite
        self.canonizers = tuple(canonizers)
        self.merge_epsilon = float(merge_epsilon)

    def describe(self) -> str:
        extra = "+".join(type(c).__name__ for c in self.canonizers)
        return f"zennit:{type(self.composite).__name__}" + (f"[{extra}]" if extra else "")

    @contextlib.contextmanager
    def session(self, model: nn.Module, *, copy: bool = False) -> Iterator[nn.Module]:
        """Register canonizers, the composite and ``Norm`` rules; remove them all on exit.

        With ``copy=True`` everything happens on a private deep copy, so the caller's model is
        never touched even if a canonizer fails half-way.
        """
        from zennit.rules import Norm

        work = copy_module.deepcopy(model) if copy else model
        with contextlib.ExitStack() as stack:
            for canonizer in self.canonizers:
                for handle in canonizer.apply(work):
                    stack.callback(handle.remove)
            linear_maps = [m for m in work.modules() if getattr(m, "parameter_free_linear", False)]
            before = {id(m): len(m._forward_pre_hooks) for m in linear_maps}
            stack.callback(self.composite.remove)  # first, so a failed register is undone
            self.composite.register(work)
            stabilizer = self._stabilizer(work)
            for module in linear_maps:
                # a composite that already rules the module wins; otherwise the Norm rule
                # (epsilon rule of a parameter-free linear map) distributes R to its inputs
                if len(module._forward_pre_hooks) == before[id(module)]:
                    handles = Norm(stabilizer=stabilizer).register(module)
                    stack.callback(handles.remove)
            yield work

    def _stabilizer(self, model: nn.Module) -> float:
        # 1e-9 is 0 in float16, and a merged output of exactly 0 would then give 0/0: never go
        # below the smallest normal number of the model's dtype
        param = next((p for p in model.parameters() if p.is_floating_point()), None)
        if param is None:
            return self.merge_epsilon
        return max(self.merge_epsilon, float(torch.finfo(param.dtype).tiny))

    def output_seed(self, selected: Tensor) -> Tensor:
        # LRP starts from the target logit itself, so LRP-0 reproduces gradient x activation
        return selected.detach()

    def relevance(self, activation: Tensor, grad: Tensor) -> Tensor:
        # in Zennit's modified backward pass the gradient at a tensor already is its relevance
        return grad
