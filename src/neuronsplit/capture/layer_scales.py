"""Which ``attn.proj`` / ``mlp.fc2`` of a timm ViT feed a LayerScale: :func:`layer_scale_pairs`.

Read by :func:`neuronsplit.apply_plan` (which folds the scale into a split layer, see
:mod:`neuronsplit.nn.layer_scale`) and by the methods and evaluations that must rank a unit by
the block's residual write ``gamma * z`` rather than by ``z`` (the order flips where
``gamma < 0``).
"""

from __future__ import annotations

import sys

from torch import nn

__all__ = ["layer_scale_pairs"]

#: (LayerScale attribute of the block, path of the linear it scales inside the block)
_SITES = (("ls1", "attn.proj"), ("ls2", "mlp.fc2"))


def _timm_classes() -> tuple[type, type, tuple, type, tuple] | None:
    """timm's Block, LayerScale, Mlp forwards, Attention; None if timm's ViT was never
    imported (then no module of the model can be one of its classes)."""
    if "timm.models.vision_transformer" not in sys.modules:
        return None
    from timm.layers import Attention, GluMlp, LayerScale, Mlp, SwiGLU
    from timm.models.vision_transformer import Block

    mlp_forwards = (Mlp.forward, GluMlp.forward, SwiGLU.forward)
    return Block, LayerScale, mlp_forwards, Attention, (Attention.forward,)


def _known(module: nn.Module, cls: type, forwards: tuple) -> bool:
    return isinstance(module, cls) and type(module).forward in forwards


def layer_scale_pairs(model: nn.Module) -> dict[str, str]:
    """``{linear path: LayerScale path}`` for every foldable ``attn.proj`` / ``mlp.fc2``.

    A pair is a timm ``Block`` whose ``ls1`` (``ls2``) is a ``LayerScale`` with one scale per
    output of ``attn.proj`` (``mlp.fc2``), an ``nn.Linear``, inside timm's ``Attention`` (an
    ``Mlp``, ``GluMlp`` or ``SwiGLU``). A block registered at several paths gives a pair per
    path. The model is only read.

    Examples
    --------
    >>> from timm.models.vision_transformer import VisionTransformer
    >>> vit = VisionTransformer(img_size=8, patch_size=4, embed_dim=8, depth=1, num_heads=2,
    ...                         init_values=1e-5)
    >>> layer_scale_pairs(vit)
    {'blocks.0.attn.proj': 'blocks.0.ls1', 'blocks.0.mlp.fc2': 'blocks.0.ls2'}
    >>> layer_scale_pairs(nn.Linear(2, 2))
    {}
    """
    classes = _timm_classes()
    if classes is None:
        return {}
    block_cls, scale_cls, mlp_forwards, attn_cls, attn_forwards = classes
    pairs: dict[str, str] = {}
    for path, block in model.named_modules(remove_duplicate=False):
        if not _known(block, block_cls, (block_cls.forward,)):
            continue
        prefix = f"{path}." if path else ""
        for scale_name, linear_path in _SITES:
            scale = getattr(block, scale_name, None)
            owner_name, _, linear_name = linear_path.partition(".")
            owner = getattr(block, owner_name, None)
            linear = getattr(owner, linear_name, None)
            owner_ok = (
                _known(owner, attn_cls, attn_forwards)
                if owner_name == "attn"
                else _known(owner, nn.Module, mlp_forwards)
            )
            if not (
                owner_ok
                and _known(scale, scale_cls, (scale_cls.forward,))
                and isinstance(linear, nn.Linear)
                and scale.gamma.shape == (linear.out_features,)
            ):
                continue
            pairs[prefix + linear_path] = prefix + scale_name
    return pairs
