"""LayerScale folding: split ``mlp.fc2`` / ``attn.proj`` of a timm ViT block as residual writes.

A timm ``Block`` (DINOv2 and other ViTs built with ``init_values``) computes
``x + ls1(attn(norm1(x)))`` and ``x + ls2(mlp(norm2(x)))``, where ``ls*`` is a
``timm.layers.LayerScale`` (``y * gamma``, one scale per channel). ``attn.proj`` and ``mlp.fc2``
are the last layers before ``ls1`` and ``ls2`` (only dropout lies between them, which is
elementwise and commutes with the scale), so ``gamma * (W h + b) = (gamma W) h + gamma b`` exactly
(methods §2.3 "Affine after the split", §3.2). :func:`neuronsplit.nn.apply_plan` folds ``gamma``
into a planned ``fc2``/``proj`` before it builds the split rows and puts a
:class:`FoldedLayerScale` (an ``nn.Identity``) where the LayerScale was, in its copy of the model.
The subunits are then the block's writes to the residual stream.

Only the timm classes whose forward is known are folded: ``Block`` (not a subclass with its own
forward), ``Attention`` for ``attn.proj``, ``Mlp`` / ``GluMlp`` / ``SwiGLU`` for ``mlp.fc2``, and
``LayerScale`` (in place or not). Every other module keeps its LayerScale; the split stays exact
there too, its subunits are then the linear's outputs before the scale.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from ..capture.layer_scales import layer_scale_pairs

__all__ = [
    "FoldedLayerScale",
    "layer_scale_pairs",
    "folded_layer_scales",
    "scaled_linear",
    "with_fold_rounding",
]


class FoldedLayerScale(nn.Identity):
    """The identity that stands where a LayerScale was folded into a split layer.

    It is an ``nn.Identity`` (no parameters, so no state-dict entries); it keeps the size of the
    folded ``gamma`` and the path of the split layer relative to the block, which
    :func:`neuronsplit.nn.io.original_shapes` and :func:`neuronsplit.verify_equivalence` read.

    Examples
    --------
    >>> FoldedLayerScale(768, "mlp.fc2")
    FoldedLayerScale(dim=768, folded_into='mlp.fc2')
    """

    def __init__(self, dim: int, folded_into: str) -> None:
        super().__init__()
        self.dim = int(dim)
        self.folded_into = folded_into

    def extra_repr(self) -> str:
        return f"dim={self.dim}, folded_into={self.folded_into!r}"


def planned_folds(
    model: nn.Module, layers: Iterable[str], paths: Mapping[int, list[str]]
) -> dict[str, str]:
    """The pairs of :func:`layer_scale_pairs` whose linear is planned and whose linear and
    LayerScale are each registered at one path only (``paths``: module id -> its paths).

    A shared linear or LayerScale is not folded: the fold would change its other users.
    """
    planned = set(layers)
    folds = {}
    for linear_path, scale_path in layer_scale_pairs(model).items():
        if linear_path not in planned:
            continue
        linear, scale = model.get_submodule(linear_path), model.get_submodule(scale_path)
        if len(paths.get(id(linear), ())) == 1 and len(paths.get(id(scale), ())) == 1:
            folds[linear_path] = scale_path
    return folds


def scaled_linear(linear: nn.Linear, layer_scale: nn.Module) -> nn.Linear:
    """A new ``nn.Linear`` computing ``layer_scale(linear(h))``: rows and bias times ``gamma``.

    ``linear`` and ``layer_scale`` are only read; the new parameters keep the linear's dtype,
    device and ``requires_grad`` flags, the module its training flag.

    Examples
    --------
    >>> import torch
    >>> from timm.layers import LayerScale
    >>> fc, ls = nn.Linear(3, 2), LayerScale(2, init_values=0.5)
    >>> h = torch.randn(4, 3)
    >>> torch.allclose(scaled_linear(fc, ls)(h), ls(fc(h)))
    True
    """
    weight = linear.weight
    gamma = layer_scale.gamma.detach().to(weight.device, weight.dtype)
    new = nn.Linear(
        linear.in_features, linear.out_features, bias=linear.bias is not None,
        device="meta", dtype=weight.dtype,
    )  # fmt: skip
    new.weight = nn.Parameter(weight.detach() * gamma[:, None], requires_grad=weight.requires_grad)
    if linear.bias is not None:
        bias = linear.bias
        new.bias = nn.Parameter(
            bias.detach() * gamma.to(bias.dtype), requires_grad=bias.requires_grad
        )
    return new.train(linear.training)


def folded_layer_scales(model: nn.Module) -> dict[str, str]:
    """``{split layer path: FoldedLayerScale path}`` of a model returned by ``apply_plan``.

    Examples
    --------
    >>> m = nn.Module()
    >>> m.ls2 = FoldedLayerScale(4, "mlp.fc2")
    >>> folded_layer_scales(m)
    {'mlp.fc2': 'ls2'}
    """
    out = {}
    for path, mod in model.named_modules(remove_duplicate=False):
        if isinstance(mod, FoldedLayerScale):
            parent = path.rpartition(".")[0]
            out[f"{parent}.{mod.folded_into}" if parent else mod.folded_into] = path
    return out


def with_fold_rounding(
    reference: nn.Module, original: nn.Module, folded: Mapping[str, str]
) -> nn.Module:
    """Give ``reference`` (a copy of ``original`` in a more precise dtype) the rounding a fold
    made in the original's dtype, keeping its LayerScales; returns ``reference``, changed.

    A fold stores ``gamma * W`` rounded to the model's dtype, so a float32 model folded and
    checked in float64 differs from the original by that rounding (about 1e-8 relative), which
    would hide the split's own error. The reference's linear gets ``fl(gamma W) / gamma`` (and
    the bias likewise; rows with ``gamma = 0`` keep ``W``), computed in float64: its LayerScale
    then gives back ``fl(gamma W)`` to float64 precision. The reference keeps the original's
    structure (every LayerScale in place), so a wrong fold still shows. Only layers whose dtype
    is less precise than the reference's change. ``folded``: ``{linear path: LayerScale
    path}`` (:func:`folded_layer_scales` of the split model); pairs ``original`` lacks are
    skipped.
    """
    for linear_path, scale_path in folded.items():
        try:
            linear, scale = original.get_submodule(linear_path), original.get_submodule(scale_path)
            ref_linear = reference.get_submodule(linear_path)
        except AttributeError:
            continue
        gamma = getattr(scale, "gamma", None)
        if not (isinstance(linear, nn.Linear) and isinstance(ref_linear, nn.Linear)):
            continue
        if not torch.is_tensor(gamma) or gamma.shape != (linear.out_features,):
            continue
        dtype = ref_linear.weight.dtype
        if not linear.weight.is_floating_point() or not dtype.is_floating_point:
            continue
        if torch.finfo(dtype).eps >= torch.finfo(linear.weight.dtype).eps:
            continue
        rounded = scaled_linear(linear, scale)
        g = gamma.detach().double().to(ref_linear.weight.device)
        with torch.no_grad():
            for name in ("weight", "bias"):
                exact, folded_t = getattr(linear, name), getattr(rounded, name)
                if exact is None:
                    continue
                g_b = g[:, None] if name == "weight" else g
                value = torch.where(
                    g_b != 0, folded_t.detach().double() / g_b, exact.detach().double()
                )
                getattr(ref_linear, name).copy_(value.to(dtype))
    return reference
