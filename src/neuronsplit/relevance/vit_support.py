"""Which modules :class:`~neuronsplit.relevance.vit.TimmViTCanonizer` can explain.

:func:`check_model` walks a model and returns the timm ``VisionTransformer`` / ``Block`` /
``Attention`` modules to rewrite, and raises :class:`~neuronsplit.errors.UnsupportedLayerError`
naming the first module that has no LRP rule (so relevance is never silently wrong).
"""

from __future__ import annotations

from torch import nn
from zennit.layer import Sum
from zennit.types import Linear

from ..capture import is_split_layer
from ..errors import UnsupportedLayerError
from .vit_rules import AttentionValues, TokenMean, activation_types, timm_types

__all__ = ["check_model"]


def _same(module: nn.Module, base: type, *methods: str) -> bool:
    return isinstance(module, base) and all(
        getattr(type(module), m) is getattr(base, m) for m in methods
    )


def _refuse(name: str, module: nn.Module, why: str | None = None) -> UnsupportedLayerError:
    """The error for ``module``; ``why=None``: an unknown module (attention or not)."""
    shown = name or "<root>"
    lowered = type(module).__name__.lower()
    if why is None:
        attention = isinstance(module, nn.MultiheadAttention) or "att" in lowered
        if attention:
            why = "an attention other than timm's Attention (its softmax cannot be held constant)"
        elif next(module.children(), None) is not None:
            why = "a module whose own forward is unknown (pass the ViT itself, not a wrapper)"
        else:
            why = "it has no LRP rule in TimmViTComposite"
    return UnsupportedLayerError(
        f"TimmViTCanonizer cannot explain module {shown!r} ({type(module).__name__}): {why}. "
        "Only timm VisionTransformer / Block / Attention / Mlp with LayerNorm, elementwise "
        "activations and Linear layers are supported; relevance through it would be wrong"
    )


def _check_leaf(name: str, module: nn.Module) -> None:
    t = timm_types()
    if isinstance(module, nn.LayerNorm):
        if not any(_same(module, t[k], "forward") for k in ("LayerNorm", "LayerNormFp32")) and (
            type(module).forward is not nn.LayerNorm.forward
        ):
            raise _refuse(name, module, "a LayerNorm over other than the last dimensions")
        return
    ok = (
        Linear, Sum, AttentionValues, TokenMean, nn.Identity, nn.modules.dropout._DropoutNd,
        t["DropPath"], t["PatchDropout"], t["LayerScale"], *activation_types(),
    )  # fmt: skip
    if not isinstance(module, ok) and not getattr(module, "parameter_free_linear", False):
        raise _refuse(name, module)


def check_model(model: nn.Module) -> list[nn.Module]:
    """Every ViT, Block and Attention to rewrite; raise on any module without a known rule."""
    t = timm_types()
    targets: list[nn.Module] = []

    def walk(name: str, module: nn.Module) -> None:
        prefix = f"{name}." if name else ""
        children = dict(module.named_children())
        if is_split_layer(module):
            if not isinstance(module.subunits, Linear):
                raise _refuse(name, module, "a split layer whose rows are not a Linear/Conv")
            children = {"subunits": module.subunits, "merge": module.merge}
        elif isinstance(module, t["VisionTransformer"]):
            methods = ("forward", "forward_features", "forward_head", "pool", "_pos_embed")
            if not _same(module, t["VisionTransformer"], *methods):
                raise _refuse(name, module, "a VisionTransformer subclass with its own forward")
            if module.attn_pool is not None:
                raise _refuse(f"{prefix}attn_pool", module.attn_pool, "attention pooling (MAP)")
            if module.global_pool not in ("", "token", "avg", "max"):
                raise _refuse(
                    name, module, f"global_pool={module.global_pool!r}, which has no LRP rule "
                    "(the mean and the max summed; use 'avg', 'token' or 'max')",
                )  # fmt: skip
            targets.append(module)
        elif isinstance(module, t["Block"]):
            if not _same(module, t["Block"], "forward"):
                raise _refuse(name, module, "a Block subclass with its own forward")
            if not isinstance(module.attn, t["Attention"]):
                raise _refuse(f"{prefix}attn", module.attn)
            targets.append(module)
        elif isinstance(module, t["Attention"]):
            if not _same(module, t["Attention"], "forward"):
                raise _refuse(name, module, "an Attention subclass with its own forward")
            if getattr(module, "gate", None) is not None:
                raise _refuse(name, module, "a gated attention")
            targets.append(module)
            children = {k: v for k, v in children.items() if k not in ("q_norm", "k_norm")}
        elif _same(module, t["Mlp"], "forward") or _same(module, t["PatchEmbed"], "forward"):
            pass
        elif isinstance(module, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
            pass
        elif not children:
            _check_leaf(name, module)
        else:
            raise _refuse(name, module)
        for child_name, child in children.items():
            walk(prefix + child_name, child)

    walk("", model)
    return targets
