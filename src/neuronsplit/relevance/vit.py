"""AttnLRP-style LRP for timm Vision Transformers as Zennit pieces.

:class:`TimmViTCanonizer` rewrites, for the duration of a Zennit context and only on the model
it is applied to (no class is patched), every ``timm.models.vision_transformer.Block``,
``timm.layers.Attention`` and ``VisionTransformer`` into a form whose every operation has an LRP
rule; :class:`TimmViTComposite` gives those rules. Modules it does not know (another attention,
an MLP variant, a norm without a rule) raise :class:`~neuronsplit.errors.UnsupportedLayerError`
naming the module instead of giving silently wrong relevance. The rules, helper layers and
rewritten forward methods live in :mod:`neuronsplit.relevance.vit_rules`.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from zennit.canonizers import Canonizer
from zennit.composites import LayerMapComposite
from zennit.core import Hook
from zennit.layer import Sum
from zennit.rules import Gamma, Pass
from zennit.types import Linear

from .._checks import check_number
from ..capture import is_split_layer
from ..errors import ArgumentTypeError
from . import vit_rules as vr
from .fast_rules import FastEpsilon
from .vit_rules import (
    AttentionValues,
    FastLayerNormRule,
    SafeStabilizer,
    TokenMean,
    activation_types,
    special_linears,
    timm_types,
)
from .vit_support import check_model

__all__ = ["TimmViTCanonizer", "TimmViTComposite"]

_MARK = "_neuronsplit_vit_canonized"


class TimmViTCanonizer(Canonizer):
    """Zennit canonizer for timm ViTs (supervised ViT, DINOv2 with or without registers).

    While applied, on the model's own modules:

    * every ``Block`` adds its residuals through two ``zennit.layer.Sum`` modules
      (``canonizer_sum1/2``, ``Norm`` rule: each summand gets its share of the relevance);
    * LayerScale ``gamma`` is folded into ``attn.proj`` and ``mlp.fc2`` (weight rows and bias;
      into every row of ``.subunits`` when that layer is split) and ``ls1/ls2.gamma`` become
      ones, so the relevance is not multiplied by ``gamma``;
    * every ``Attention`` has ``fused_attn = False`` and computes ``softmax(q k^T)`` from
      detached ``q, k``: the weights are constants and relevance flows through the values only
      (CP-LRP), via an :class:`~neuronsplit.relevance.vit_rules.AttentionValues` module;
    * the ``VisionTransformer`` adds the positional embedding through a ``Sum`` (it takes its
      share like a bias) and average pooling goes through a
      :class:`~neuronsplit.relevance.vit_rules.TokenMean`.

    ``remove`` restores every forward method, weight tensor, ``gamma`` and ``fused_attn`` flag
    exactly. The rules for LayerNorm, GELU, Linear and the added modules come from
    :class:`TimmViTComposite`; another composite leaves LayerNorm and attention without rules.

    Raises
    ------
    UnsupportedLayerError
        On ``apply``, for a module it cannot rewrite or that has no rule in
        :class:`TimmViTComposite` (``nn.MultiheadAttention``, a custom attention, ``SwiGLU``,
        a MAP head, a gated attention, ``RmsNorm``, a subclass overriding ``forward``, ...);
        the message names the module.

    Examples
    --------
    >>> from timm.models.vision_transformer import VisionTransformer
    >>> vit = VisionTransformer(img_size=8, patch_size=4, embed_dim=8, depth=1, num_heads=2,
    ...                         num_classes=3).eval()
    >>> instances = TimmViTCanonizer().apply(vit)
    >>> type(vit.blocks[0].canonizer_sum1).__name__, vit.blocks[0].attn.fused_attn
    ('Sum', False)
    >>> for instance in instances:
    ...     instance.remove()
    >>> hasattr(vit.blocks[0], "canonizer_sum1")
    False
    """

    def __init__(self) -> None:
        self.module: nn.Module | None = None
        self._undo: list[Callable[[], None]] = []

    def copy(self) -> TimmViTCanonizer:
        return type(self)()

    def apply(self, root_module: nn.Module) -> list[TimmViTCanonizer]:
        """Check the whole model, then rewrite every ViT, Block and Attention in it."""
        targets = check_model(root_module)
        instances: list[TimmViTCanonizer] = []
        try:
            for module in targets:
                if getattr(module, _MARK, False):  # already canonized by an outer context
                    continue
                instance = self.copy()
                instances.append(instance)
                instance.register(module)
        except BaseException:
            for instance in reversed(instances):
                instance.remove()
            raise
        return instances

    def register(self, module: nn.Module) -> None:
        """Rewrite one ``VisionTransformer``, ``Block`` or ``Attention`` (undone by remove)."""
        self.module = module
        known = timm_types()
        self._set(module, _MARK, True)
        if isinstance(module, known["VisionTransformer"]):
            self._forward(module, "_pos_embed", vr.vit_pos_embed)
            self._forward(module, "pool", vr.vit_pool)
            self._set(module, "canonizer_pos_sum", Sum())
            self._set(module, "canonizer_pool", TokenMean())
            self._set(module, "grad_checkpointing", False)  # a re-run forward would break LRP
        elif isinstance(module, known["Block"]):
            self._forward(module, "forward", vr.block_forward)
            self._set(module, "canonizer_sum1", Sum())
            self._set(module, "canonizer_sum2", Sum())
            for scale, linear in (("ls1", module.attn.proj), ("ls2", module.mlp.fc2)):
                layer_scale = getattr(module, scale)
                if isinstance(layer_scale, known["LayerScale"]):
                    self._fold(layer_scale, linear)
        else:  # Attention
            self._forward(module, "forward", vr.attention_forward)
            self._set(module, "fused_attn", False)
            self._set(module, "canonizer_values", AttentionValues())

    def remove(self) -> None:
        """Undo every change of :meth:`register`, last first."""
        while self._undo:
            self._undo.pop()()

    # ---------------------------------------------------------------------------------------
    def _set(self, module: nn.Module, key: str, value: Any) -> None:
        """Set an attribute or submodule; undo restores the previous one (or removes it)."""
        missing = object()
        if key in module._modules:
            previous = module._modules[key]
        else:
            previous = module.__dict__.get(key, missing)
        setattr(module, key, value)

        def undo() -> None:
            if previous is missing:
                delattr(module, key)
            else:
                setattr(module, key, previous)

        self._undo.append(undo)

    def _forward(self, module: nn.Module, name: str, function: Callable[..., Any]) -> None:
        self._set(module, name, types.MethodType(function, module))

    def _swap(self, param: torch.Tensor, new: torch.Tensor) -> None:
        old = param.data
        param.data = new

        def undo() -> None:
            param.data = old

        self._undo.append(undo)

    def _fold(self, layer_scale: nn.Module, linear: nn.Module) -> None:
        """``gamma * (W x + b)`` -> ``(gamma W) x + gamma b``; ``gamma`` becomes ones."""
        gamma = layer_scale.gamma.detach()
        target = linear.subunits if is_split_layer(linear) else linear
        if is_split_layer(linear):  # extra rows belong to the unit merge.index names
            gamma = torch.cat([gamma, gamma[linear.merge.index]])
        self._swap(target.weight, target.weight.data * gamma[:, None].to(target.weight.dtype))
        if target.bias is not None:
            self._swap(target.bias, target.bias.data * gamma.to(target.bias.dtype))
        self._swap(layer_scale.gamma, torch.ones_like(layer_scale.gamma.data))


class TimmViTComposite(LayerMapComposite):
    """AttnLRP-style Zennit composite for timm ViTs, with :class:`TimmViTCanonizer`.

    Rules per module type (first match wins):

    ==========================================  =============================================
    module                                      rule
    ==========================================  =============================================
    ``zennit.layer.Sum`` (residuals, pos. emb.)  ``Norm``: each summand's share (FastEpsilon)
    ``AttentionValues`` (``attn @ v``)          ``Norm``; weights constant (CP-LRP)
    ``TokenMean`` (average pooling)             ``Norm``
    split layers (``.subunits`` + ``.merge``)    the Linear rule, paired across the rows by
                                                ``SplitRule`` (explained as the unsplit layer);
                                                else ``Norm(stabilizer)`` on the merge
    ``nn.LayerNorm`` / timm ``LayerNorm``       :class:`FastLayerNormRule`: std held constant
    GELU and other elementwise activations      ``Pass`` (identity rule)
    patch embedding ``Conv2d``                  ``first_rule`` if given, else as Linear
    classifier ``head``                         ``FastEpsilon(epsilon)``
    other ``Linear`` (qkv, proj, fc1, fc2)      ``FastEpsilon(epsilon)``, or ``Gamma(gamma)``
    ``nn.MultiheadAttention``                   none: the canonizer refuses it
    ==========================================  =============================================

    LayerScale is folded into ``attn.proj``/``mlp.fc2`` by the canonizer; dropout, DropPath and
    identities are identities in eval mode; re-indexing (reshape, the CLS token, max pooling)
    moves relevance unchanged. Relevance that reaches the class/register tokens, the positional
    embedding or a bias stays there: on a model without biases, prefix tokens and positional
    embedding the input relevance sums to the target logit (up to the stabilisers).

    Parameters
    ----------
    epsilon : float, default 1e-6
        The epsilon of the epsilon rules (Linear, Conv, LayerNorm; also Gamma's stabiliser).
    stabilizer : float, default 1e-9
        Stabiliser of the ``Norm`` rules of the parameter-free maps (residual sums, ``attn @
        v``, pooling, split merges): a guard against 0/0, not an absorber, kept small because
        a random-init DINOv2's class token is ~1e-6 and a larger value eats its relevance.
        Both are raised to the smallest normal number of the tensor's dtype when below it.
    gamma : float, optional
        Use ``Gamma(gamma, stabilizer=epsilon)`` on every Linear/Conv except the classifier
        head (AttnLRP's choice for ViTs; the value needs tuning per model). Default: epsilon.
    first_rule : zennit Hook, optional
        Rule of the patch-embedding convolution, e.g. ``zennit.rules.Flat()`` or ``ZBox``.
    canonizers : sequence of zennit Canonizer, optional
        Applied after :class:`TimmViTCanonizer`.

    Raises
    ------
    InvalidArgumentError, ArgumentTypeError
        ``epsilon`` or ``stabilizer`` not positive, ``gamma`` negative, ``first_rule`` not a
        zennit rule, a canonizer that is not a zennit ``Canonizer``.

    Examples
    --------
    >>> from timm.models.vision_transformer import VisionTransformer
    >>> from zennit.attribution import Gradient
    >>> vit = VisionTransformer(img_size=8, patch_size=4, embed_dim=8, depth=1, num_heads=2,
    ...                         num_classes=3).eval()
    >>> x = torch.randn(2, 3, 8, 8)
    >>> with Gradient(vit, TimmViTComposite()) as attributor:
    ...     logits, relevance = attributor(x, lambda y: y * torch.eye(3)[[0, 0]])
    >>> relevance.shape, bool(relevance.isfinite().all())
    (torch.Size([2, 3, 8, 8]), True)
    """

    def __init__(
        self,
        epsilon: float = 1e-6,
        gamma: float | None = None,
        *,
        stabilizer: float = 1e-9,
        first_rule: Any = None,
        canonizers: Sequence[Canonizer] | None = None,
    ) -> None:
        epsilon = check_number(epsilon, "TimmViTComposite epsilon", low=0, low_open=True)
        stabilizer = check_number(stabilizer, "TimmViTComposite stabilizer", low=0, low_open=True)
        if gamma is not None:
            gamma = check_number(gamma, "TimmViTComposite gamma", low=0)
        if first_rule is not None and not isinstance(first_rule, Hook):
            raise ArgumentTypeError(
                f"TimmViTComposite first_rule must be a zennit rule such as "
                f"zennit.rules.Flat() or ZBox(low, high), got {type(first_rule).__name__}"
            )
        canonizers = list(canonizers or ())
        for canonizer in canonizers:
            if not isinstance(canonizer, Canonizer):
                raise ArgumentTypeError(
                    "TimmViTComposite canonizers must be zennit Canonizer objects, got "
                    f"{type(canonizer).__name__} {canonizer!r}"
                )
        self.epsilon = epsilon
        self.gamma = gamma
        self.stabilizer = stabilizer
        self.first_rule = first_rule
        eps = SafeStabilizer(epsilon)
        # FastEpsilon: Zennit's epsilon rule inside the ordinary backward (no second forward)
        self.head_rule = FastEpsilon(eps)
        # the parameter-free linear maps: Zennit's Norm rule is the epsilon rule without
        # parameters, so FastEpsilon computes it inside the ordinary backward too
        self.norm_rule = FastEpsilon(SafeStabilizer(stabilizer))
        linear_rule = FastEpsilon(eps) if gamma is None else Gamma(gamma, stabilizer=eps)
        layer_map = [
            ((Sum, AttentionValues, TokenMean), self.norm_rule),
            ((nn.LayerNorm,), FastLayerNormRule(eps)),
            ((nn.MultiheadAttention,), None),
            (activation_types(), Pass()),
            ((Linear,), linear_rule),
        ]
        self._special: dict[int, Any] = {}
        super().__init__(layer_map, canonizers=[TimmViTCanonizer(), *canonizers])

    def register(self, module: nn.Module) -> None:
        """Apply the canonizers and the rules; on any error undo everything, then raise."""
        self._special = {}
        if self.gamma is not None:
            self._special.update(dict.fromkeys(special_linears(module, "head"), self.head_rule))
        if self.first_rule is not None:
            self._special.update(dict.fromkeys(special_linears(module, "patch"), self.first_rule))
        try:
            super().register(module)
            self._rule_merges(module)
        except BaseException:
            self.remove()
            raise

    def _rule_merges(self, module: nn.Module) -> None:
        """Pair the rules of split layers' rows and merges; ``Norm`` on any other merge."""
        from .split_rules import register_split_rules

        merges = [m for m in module.modules() if getattr(m, "parameter_free_linear", False)]
        before = {id(m): len(m._forward_pre_hooks) for m in merges}
        register_split_rules(module, self)  # its handles join self.handles
        for merge in merges:
            if len(merge._forward_pre_hooks) == before[id(merge)]:
                hook = self.norm_rule.copy()
                self.hook_refs.add(hook)
                self.handles.append(hook.register(merge))

    def mapping(self, ctx: dict, name: str, module: nn.Module) -> Any:
        """The rule of ``module`` (see the table in the class docstring)."""
        special = self._special.get(id(module))
        if special is not None:
            return special
        return super().mapping(ctx, name, module)
