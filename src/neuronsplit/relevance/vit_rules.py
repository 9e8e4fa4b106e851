"""Zennit rules and helper layers for AttnLRP-style relevance in timm ViTs.

Zennit's modified backward pass carries relevance itself (not ``relevance / activation``), so
every operation that is not a plain re-indexing needs a rule:

* :class:`LayerNormRule` -- LayerNorm with its standard deviation held constant is a linear map
  of its input (centring, then a fixed scale per token); the epsilon rule on that map passes
  relevance in proportion to each input's contribution (AttnLRP, Achtibat et al. 2024).
* :class:`AttentionValues` -- ``softmax(q k^T) @ v`` with the attention weights held constant
  (CP-LRP): a parameter-free linear map of ``v``, given Zennit's ``Norm`` (epsilon) rule.
* :class:`TokenMean` -- average pooling over tokens, a parameter-free linear map (``Norm``).

Elementwise activations (GELU) get Zennit's ``Pass`` rule (the identity rule of AttnLRP:
relevance passes unchanged); residual additions go through ``zennit.layer.Sum`` (``Norm``).

The forward methods that :class:`~neuronsplit.relevance.TimmViTCanonizer` binds to a model's
``Block``, ``Attention`` and ``VisionTransformer`` instances are here too; each computes the same
values as timm's (no class is patched).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from zennit.core import Hook, Stabilizer, stabilize
from zennit.types import Activation

from ..capture import is_split_layer
from .fast_rules import FastEpsilon

__all__ = [
    "LayerNormRule",
    "AttentionValues",
    "TokenMean",
    "SafeStabilizer",
    "linearised_layer_norm",
]


class SafeStabilizer(Stabilizer):
    """Zennit's stabiliser with ``epsilon`` raised to the smallest normal number of the dtype.

    ``1e-9`` is 0 in float16, and an output of exactly 0 would then give 0/0.

    Examples
    --------
    >>> SafeStabilizer(1e-9)(torch.zeros(1, dtype=torch.float16))
    tensor([6.1035e-05], dtype=torch.float16)
    """

    def __call__(self, input: Tensor) -> Tensor:
        epsilon = max(self.epsilon, float(torch.finfo(input.dtype).tiny))
        return stabilize(input, epsilon, self.clip, self.norm_scale, self.dim)


def linearised_layer_norm(
    module: nn.LayerNorm, x: Tensor, zero_params: Sequence[str] = ()
) -> Tensor:
    """``module(x)`` with the standard deviation detached: a linear map of ``x`` (plus bias).

    Parameters
    ----------
    module : nn.LayerNorm
        Normalises over its ``normalized_shape`` (the last dimensions of ``x``).
    x : Tensor
        The input.
    zero_params : sequence of str
        ``"weight"`` and/or ``"bias"``: treat these as zero (Zennit's ``zero_params``).

    Examples
    --------
    >>> ln = nn.LayerNorm(4).double()
    >>> x = torch.randn(2, 4, dtype=torch.float64)
    >>> torch.allclose(linearised_layer_norm(ln, x), ln(x))
    True
    """
    dims = tuple(range(-len(module.normalized_shape), 0))
    # statistics in at least float32, as torch's and timm's LayerNorms compute them: in float16
    # a deviation of 256 squares to inf and would zero the output (the model's forward)
    compute = torch.promote_types(x.dtype, torch.float32)
    xc = x.to(compute)
    centred = xc - xc.mean(dims, keepdim=True)
    variance = centred.detach().pow(2).mean(dims, keepdim=True)
    y = centred * torch.rsqrt(variance + module.eps)
    if module.weight is not None and "weight" not in zero_params:
        y = y * module.weight.to(compute)
    if module.bias is not None and "bias" not in zero_params:
        y = y + module.bias.to(compute)
    return y.to(x.dtype)


class LayerNormRule(Hook):
    """Epsilon rule on a LayerNorm linearised in its input (standard deviation held constant).

    ``y = w * (x - mean(x)) / std + b`` with ``std`` a constant is linear in ``x``; relevance is
    ``R_x = x * J^T (R_y / (y + eps))`` with ``J`` the Jacobian of that map (mean subtraction
    included). Without bias it conserves relevance: ``sum R_x = sum R_y y / (y + eps)``. This is
    AttnLRP's LayerNorm rule (LXT detaches the std and takes gradient x input).

    Parameters
    ----------
    epsilon : float or callable, default 1e-6
        Stabiliser of the denominator, as in ``zennit.rules.Epsilon``.
    zero_params : sequence of str, optional
        ``"bias"`` (and/or ``"weight"``) to treat as zero.

    Examples
    --------
    >>> from zennit.composites import LayerMapComposite
    >>> from zennit.rules import Epsilon
    >>> model = nn.Sequential(nn.Linear(4, 4, bias=False), nn.LayerNorm(4, bias=False),
    ...                       nn.Linear(4, 1, bias=False)).double()
    >>> composite = LayerMapComposite([(nn.LayerNorm, LayerNormRule(1e-12)),
    ...                                (nn.Linear, Epsilon(1e-12))])
    >>> x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    >>> with composite.context(model) as modified:
    ...     y = modified(x)
    ...     (relevance,) = torch.autograd.grad(y, x, y)
    >>> torch.allclose(relevance.sum(1), y[:, 0])
    True
    """

    def __init__(self, epsilon: Any = 1e-6, zero_params: Sequence[str] | None = None) -> None:
        super().__init__()
        self.epsilon = epsilon
        self.zero_params = tuple(zero_params or ())

    def copy(self) -> LayerNormRule:
        """A fresh hook with the same settings (Zennit copies the template per module)."""
        return type(self)(self.epsilon, self.zero_params)

    def forward(self, module: nn.Module, input: Any, output: Any) -> None:
        """Keep the input for the backward pass."""
        self.stored_tensors["input"] = input

    def backward(self, module: nn.Module, grad_input: Any, grad_output: Any) -> Any:
        """Relevance of the input from the relevance of the output."""
        x = self.stored_tensors["input"][0].clone().requires_grad_()
        upper = grad_output[0]
        with torch.enable_grad():
            y = linearised_layer_norm(module, x, self.zero_params)
        (grad,) = torch.autograd.grad(
            y, x, upper / Stabilizer.ensure(self.epsilon)(y), create_graph=upper.requires_grad
        )
        relevance = x * grad
        return tuple(
            relevance if g is not None and g.shape == relevance.shape else None for g in grad_input
        )


class FastLayerNormRule(FastEpsilon):
    """:class:`LayerNormRule` computed inside the ordinary backward pass (no second forward).

    The LayerNorm's output is recomputed once with the standard deviation detached (the same
    values; its graph is then linear in the input), and :class:`FastEpsilon` divides the
    incoming relevance by the stabilised output and multiplies the outgoing gradient by the
    input: ``R_x = x * J^T (R_y / (y + eps))``, the rule of :class:`LayerNormRule`.

    Examples
    --------
    >>> from zennit.composites import LayerMapComposite
    >>> from zennit.rules import Epsilon
    >>> model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 1)).double()
    >>> x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    >>> def lrp(rule):
    ...     composite = LayerMapComposite([(nn.LayerNorm, rule), (nn.Linear, Epsilon(1e-9))])
    ...     with composite.context(model) as modified:
    ...         y = modified(x)
    ...         return torch.autograd.grad(y, x, y)[0]
    >>> torch.allclose(lrp(FastLayerNormRule(1e-9)), lrp(LayerNormRule(1e-9)), atol=1e-12)
    True
    """

    def post_forward(self, module: nn.Module, input: Any, output: Any) -> Any:
        """Replace the output by the linearised LayerNorm of the same input (same values)."""
        linear = linearised_layer_norm(module, input[0])
        return super().post_forward(module, input, linear)

    def recompute(self, module: nn.Module, inputs: tuple[Tensor, ...]) -> Tensor:
        """The linearised output from the input (after an in-place edit of the output)."""
        with torch.no_grad():
            return linearised_layer_norm(module, inputs[0])

    def copy(self) -> FastLayerNormRule:
        """A fresh hook with the same epsilon."""
        return FastLayerNormRule(self.epsilon)


class AttentionValues(nn.Module):
    """``attn @ v`` with ``attn`` held constant; the input is ``cat([attn, v], dim=-1)``.

    Taking the (detached) attention weights in the same tensor as the values keeps the layer
    stateless, so Zennit's ``Norm`` rule can recompute it in the backward pass: ``R_v = v *
    attn^T (R / (attn @ v + eps))`` and no relevance reaches the weights (CP-LRP).

    Examples
    --------
    >>> attn = torch.softmax(torch.randn(1, 2, 3, 3), -1)
    >>> v = torch.randn(1, 2, 3, 4)
    >>> torch.allclose(AttentionValues()(torch.cat([attn, v], -1)), attn @ v)
    True
    """

    def forward(self, input: Tensor) -> Tensor:
        n = input.shape[-2]
        return input[..., :n].detach() @ input[..., n:]


class TokenMean(nn.Module):
    """Mean over the token axis (dim 1) of ``(B, N, D)``; given Zennit's ``Norm`` rule.

    Examples
    --------
    >>> TokenMean()(torch.ones(2, 5, 3)).shape
    torch.Size([2, 3])
    """

    def forward(self, input: Tensor) -> Tensor:
        return input.mean(dim=1)


# --------------------------------------------------------------------------------------------
# forward methods bound to single timm instances by TimmViTCanonizer
def block_forward(
    self: nn.Module, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False
) -> Tensor:
    """timm ``Block.forward`` with both residual additions through Zennit ``Sum`` modules."""
    y = self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal)
    x = self.canonizer_sum1(torch.stack([x, self.drop_path1(self.ls1(y))], dim=-1))
    y = self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
    return self.canonizer_sum2(torch.stack([x, y], dim=-1))


def attention_forward(
    self: nn.Module, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False
) -> Tensor:
    """timm ``Attention.forward`` (unfused) with the attention weights held constant."""
    from timm.layers import maybe_add_mask, resolve_self_attn_mask

    b, n, _ = x.shape
    width = self.num_heads * self.head_dim
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = self.q_norm(q.detach()), self.k_norm(k.detach())  # CP-LRP: no relevance to q, k
    attn = (q * self.scale) @ k.transpose(-2, -1)
    attn = maybe_add_mask(attn, resolve_self_attn_mask(n, attn, attn_mask, is_causal))
    attn = self.attn_drop(attn.softmax(dim=-1))
    x = self.canonizer_values(torch.cat([attn.to(v.dtype), v], dim=-1))
    x = self.norm(x.transpose(1, 2).reshape(b, n, width))
    return self.proj_drop(self.proj(x))


def vit_pos_embed(self: nn.Module, x: Tensor) -> Tensor:
    """timm ``VisionTransformer._pos_embed`` adding the embedding through a Zennit ``Sum``."""
    from timm.layers import resample_abs_pos_embed

    prefix = [
        t.expand(x.shape[0], -1, -1) for t in (self.cls_token, self.reg_token) if t is not None
    ]
    if self.pos_embed is None:
        return torch.cat(prefix + [x.view(x.shape[0], -1, x.shape[-1])], dim=1)
    pos_embed = self.pos_embed
    if self.dynamic_img_size:
        b, h, w, c = x.shape
        pos_embed = resample_abs_pos_embed(
            self.pos_embed,
            new_size=(h, w),
            old_size=self.patch_embed.grid_size,
            num_prefix_tokens=0 if self.no_embed_class else self.num_prefix_tokens,
        )
        x = x.view(b, -1, c)
    if not self.no_embed_class and prefix:
        x = torch.cat(prefix + [x], dim=1)
    x = self.canonizer_pos_sum(torch.stack([x, pos_embed.expand_as(x)], dim=-1))
    if self.no_embed_class and prefix:
        x = torch.cat(prefix + [x], dim=1)
    return self.pos_drop(x)


def vit_pool(self: nn.Module, x: Tensor, pool_type: str | None = None) -> Tensor:
    """timm ``VisionTransformer.pool`` with average pooling through a :class:`TokenMean`."""
    pool_type = self.global_pool if pool_type is None else pool_type
    if pool_type != "avg":
        return type(self).pool(self, x, pool_type)
    if not self.pool_include_prefix:
        x = x[:, self.num_prefix_tokens :]
    return self.canonizer_pool(x)


# --------------------------------------------------------------------------------------------
# what the canonizer and the composite know
@functools.cache
def timm_types() -> dict[str, type]:
    """The timm classes the canonizer rewrites or accepts (imported on first use)."""
    from timm.layers import (
        Attention,
        DropPath,
        LayerNorm,
        LayerScale,
        Mlp,
        PatchDropout,
        PatchEmbed,
    )
    from timm.layers.norm import LayerNormFp32
    from timm.models.vision_transformer import Block, VisionTransformer

    return {
        "VisionTransformer": VisionTransformer, "Block": Block, "Attention": Attention,
        "Mlp": Mlp, "PatchEmbed": PatchEmbed, "LayerScale": LayerScale, "DropPath": DropPath,
        "PatchDropout": PatchDropout, "LayerNorm": LayerNorm, "LayerNormFp32": LayerNormFp32,
    }  # fmt: skip


@functools.cache
def activation_types() -> tuple[type, ...]:
    """Elementwise activations (``Pass`` rule): Zennit's, less MultiheadAttention, and timm's."""
    import timm.layers.activations as acts

    zennit_acts = [t for t in Activation.__subclass__ if t is not nn.MultiheadAttention]
    names = ("GELU", "GELUTanh", "QuickGELU", "Swish", "Mish", "Sigmoid", "Tanh", "HardSwish")
    return (*zennit_acts, *(getattr(acts, n) for n in names if hasattr(acts, n)))


def special_linears(model: nn.Module, which: str) -> Iterator[int]:
    """ids of every ViT's classifier ``head`` or patch-embedding ``proj`` (its rows if split)."""
    for vit in model.modules():
        if isinstance(vit, timm_types()["VisionTransformer"]):
            layer = vit.head if which == "head" else vit.patch_embed.proj
            yield id(layer.subunits if is_split_layer(layer) else layer)
