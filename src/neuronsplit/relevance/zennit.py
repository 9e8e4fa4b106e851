"""LRP relevance from Zennit composites: the :class:`Zennit` backend.

Zennit's modified backward pass makes the gradient at a tensor *its relevance* once the output
is seeded with the target logit, so ``R = grad`` everywhere (and LRP-0 equals gradient x
activation). The session registers canonizers and the composite, and makes split layers explain
as their original layers: the BatchNorm after a split layer is folded into its rows
(:mod:`~neuronsplit.relevance.split_canonizer`), and the composite's rule on ``.subunits`` is
paired with the merge (:mod:`~neuronsplit.relevance.split_rules`), so that every unit and the
input get the unsplit model's relevance. Any other module that declares itself a parameter-free
linear map (``parameter_free_linear = True``, e.g. a merge whose rows carry a rule that cannot be
paired) gets Zennit's ``Norm`` rule when the composite leaves it without one, so relevance is
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
        Stabiliser of the ``Norm`` rule given to parameter-free linear maps: split merges whose
        ``.subunits`` rule cannot be paired (``Flat``, ``WSquare``, custom rules; see
        :func:`~neuronsplit.relevance.split_rules.split_rule_supported`) and other such maps.

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

    @classmethod
    def for_model(
        cls,
        model: nn.Module,
        composite: Any = None,
        *,
        family: str | None = None,
        merge_epsilon: float = 1e-9,
    ) -> Zennit:
        """The backend with the right canonizers for ``model``'s family (and its default composite).

        Families (tried in this order; see :mod:`neuronsplit.relevance.families`):
        ``torchvision-resnet`` and ``timm-resnet`` (exact BatchNorm folding, residual ``Sum``;
        default ``EpsilonPlusFlat``), ``timm-vit`` (``TimmViTCanonizer`` and
        ``TimmViTComposite``), ``plain`` (chains of conv/linear, BatchNorm, activations and
        pooling; BatchNorms folded; default ``EpsilonPlusFlat``). Split layers inside any of
        them are handled by the backend's session.

        Parameters
        ----------
        model : nn.Module
            The model (split or not).
        composite : zennit.core.Composite, optional
            Replaces the family's default composite. One that brings its own canonizers is
            used as it is.
        family : str, optional
            Skip detection and use this family (e.g. ``"plain"``).
        merge_epsilon : float, default 1e-9
            As in :class:`Zennit`.

        Raises
        ------
        UnsupportedModelError
            No family fits; the message lists them and how to pass canonizers by hand:
            ``ns.Zennit(composite, canonizers=[...])``.

        Examples
        --------
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        >>> Zennit.for_model(model).describe()
        'zennit:EpsilonPlusFlat[ExactNamedMergeBatchNorm]'
        """
        from .families import family_rules

        composite, canonizers = family_rules(model, composite, family=family)
        return cls(composite, canonizers, merge_epsilon=merge_epsilon)

    def describe(self) -> str:
        extra = "+".join(type(c).__name__ for c in self.canonizers)
        return f"zennit:{type(self.composite).__name__}" + (f"[{extra}]" if extra else "")

    @contextlib.contextmanager
    def session(self, model: nn.Module, *, copy: bool = False) -> Iterator[nn.Module]:
        """Register canonizers, the composite and the split layers' rules; remove all on exit.

        Split layers are explained as their original layers: the BatchNorm after a split layer
        is folded into its rows when the canonizers merge BatchNorms (``SplitLayerCanonizer``),
        and the composite's rule on ``.subunits`` becomes a ``SplitRule`` pair on ``.subunits``
        and ``.merge`` (:mod:`~neuronsplit.relevance.split_rules`). Merges it does not cover
        get Zennit's ``Norm`` rule.

        With ``copy=True`` everything happens on a private deep copy, so the caller's model is
        never touched even if a canonizer fails half-way.
        """
        from zennit.rules import Norm

        from .split_canonizer import register_split_rules, split_canonizers

        work = copy_module.deepcopy(model) if copy else model
        with contextlib.ExitStack() as stack:
            extra = split_canonizers([*self.canonizers, *self.composite.canonizers])
            for canonizer in (*self.canonizers, *extra):
                for handle in canonizer.apply(work):
                    stack.callback(handle.remove)
            linear_maps = [m for m in work.modules() if getattr(m, "parameter_free_linear", False)]
            before = {id(m): len(m._forward_pre_hooks) for m in linear_maps}
            stack.callback(self.composite.remove)  # first, so a failed register is undone
            self.composite.register(work)
            stack.callback(register_split_rules(work, self.composite).remove)
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
