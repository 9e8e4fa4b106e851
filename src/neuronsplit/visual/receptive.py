"""Where in the input a unit looks: receptive fields of conv positions and patches of ViT tokens.

A conv unit at output position ``(h, w)`` depends on a window of input pixels, its *receptive
field*. :func:`receptive_boxes` finds it exactly and model-agnostically, zennit-crp style, as
the support of the gradient of that output element with respect to the input -- but not on the
model as it is: a ReLU that happens to be off, the argmax of a max pool or weights that cancel
would zero the gradient of pixels the unit does depend on, and the box would shrink with the
input. The gradient is taken on a *linearised copy* instead (:func:`linearised_copy`):

* elementwise activations (every ``torch.nn`` and timm activation module) become identities;
* max pools become average pools over the same windows (same kernel, stride, padding);
* every ``Conv2d`` / ``Linear`` gets positive random weights and zero bias, batch norms become
  identities;

and it is evaluated on a positive random input. Every path from a pixel to the output element
is then a product of positive factors, so the support is exactly the set of pixels connected to
that element: a stack of two 3x3 convs gives 5x5, strides and pools shift and widen it, and
zero padding clips it at the image border. Layers kept as they are (layer norms, functional
``F.max_pool2d`` calls in a ``forward``) can still hide pixels; the user's model is never
touched (the copy is made with ``copy.deepcopy``).

A ViT token ``t`` after the ``num_prefix_tokens`` prefix tokens (class token, registers) is the
patch ``t - num_prefix_tokens`` of the row-major patch grid of ``model.patch_embed``
(:func:`token_box`); a prefix token has no patch.

Examples
--------
>>> from torch import nn
>>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 3))
>>> receptive_boxes(net, "2", (1, 9, 9), [0, 12])  # position 12 of the 5x5 output is (2, 2)
{0: (0, 0, 5, 5), 12: (2, 2, 7, 7)}
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..capture import capture, model_device
from ..errors import InputShapeError

__all__ = ["Box", "linearised_copy", "receptive_boxes", "token_box", "patch_grid"]

Box = tuple[int, int, int, int]
"""``(top, left, bottom, right)`` in input pixels, bottom and right exclusive."""

# activation modules live here (torch's and timm's); those that mix positions stay
_ACTIVATION_MODULES = ("torch.nn.modules.activation", "timm.layers.activations")
_NOT_ELEMENTWISE = {"MultiheadAttention", "Softmax", "Softmax2d", "LogSoftmax", "Softmin"}
_SEED = 0


def _is_activation(module: nn.Module) -> bool:
    name = type(module).__module__
    return (
        any(name.startswith(m) for m in _ACTIVATION_MODULES)
        and type(module).__name__ not in _NOT_ELEMENTWISE
    ) or isinstance(module, nn.modules.dropout._DropoutNd)


def _replacement(module: nn.Module) -> nn.Module | None:
    """The linear stand-in of ``module``, or None to keep it."""
    if _is_activation(module):
        return nn.Identity()
    plain = not getattr(module, "return_indices", True)
    if isinstance(module, nn.MaxPool2d) and module.dilation in (1, (1, 1)) and plain:
        return nn.AvgPool2d(module.kernel_size, module.stride, module.padding, module.ceil_mode)
    if isinstance(module, nn.AdaptiveMaxPool2d) and plain:
        return nn.AdaptiveAvgPool2d(module.output_size)
    return None


def linearised_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode on which every path is linear with positive factors.

    See the module docstring. The parameters are seeded, so the copy is the same every time.

    Examples
    --------
    >>> from torch import nn
    >>> lin = linearised_copy(nn.Sequential(nn.Conv2d(1, 1, 3), nn.ReLU(), nn.MaxPool2d(2)))
    >>> [type(m).__name__ for m in lin], bool((lin[0].weight > 0).all())
    (['Conv2d', 'Identity', 'AvgPool2d'], True)
    """
    work = copy.deepcopy(model).eval()
    for parent in list(work.modules()):
        for name, child in list(parent.named_children()):
            new = _replacement(child)
            if new is not None:
                setattr(parent, name, new)
    gen = torch.Generator().manual_seed(_SEED)
    with torch.no_grad():
        for module in work.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                w = torch.rand(module.weight.shape, generator=gen, dtype=torch.float64) + 0.5
                module.weight.copy_(w)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, _BatchNorm):
                if module.running_mean is not None:
                    module.running_mean.zero_()
                    module.running_var.fill_(1.0)
                if module.affine:
                    module.weight.fill_(1.0)
                    module.bias.zero_()
    for param in work.parameters():
        param.requires_grad_(False)  # only the input's gradient is wanted
    return work


def _box_of(support: Tensor) -> Box:
    """Bounding box ``(top, left, bottom, right)`` of the True pixels of ``(H, W)``."""
    rows = torch.nonzero(support.any(1)).flatten()
    cols = torch.nonzero(support.any(0)).flatten()
    if not rows.numel():  # the element does not depend on the input at all
        return (0, 0, int(support.shape[0]), int(support.shape[1]))
    return (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)


def receptive_boxes(
    model: nn.Module, layer: str, image_shape: Sequence[int], positions: Sequence[int], *,
    batch_size: int = 64, work: nn.Module | None = None,
) -> dict[int, Box]:  # fmt: skip
    """The receptive field of each flat position ``h * W' + w`` of a conv layer's output.

    Parameters
    ----------
    model : nn.Module
        The model (not modified; a linearised copy is made unless ``work`` is one already).
    layer : str
        Dotted name of a layer with a ``(B, C, H', W')`` output.
    image_shape : sequence of int
        ``(C, H, W)`` of one input image.
    positions : sequence of int
        Flat output positions, as the scan's :class:`~neuronsplit.stats.TopN` stores them.
    batch_size : int, default 64
        Positions per forward pass (one input copy per position).
    work : nn.Module, optional
        A :func:`linearised_copy` of ``model`` to reuse.

    Returns
    -------
    dict of int to Box
        ``(top, left, bottom, right)``, bottom and right exclusive, clipped to the image.

    Raises
    ------
    InputShapeError
        If the layer's output is not 4-D or a position is outside it.
    """
    work = linearised_copy(model) if work is None else work
    wanted = sorted({int(p) for p in positions})
    device = model_device(work)
    param = next(work.parameters(), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    gen = torch.Generator().manual_seed(_SEED)
    base = torch.rand(tuple(image_shape), generator=gen, dtype=torch.float64) + 0.5
    out: dict[int, Box] = {}
    for start in range(0, len(wanted), batch_size):
        chunk = wanted[start : start + batch_size]
        x = base.to(dtype).expand(len(chunk), *base.shape).clone()
        x = x.to(device) if device is not None else x
        x.requires_grad_(True)
        with torch.enable_grad(), capture(work, [layer], grad=True, stop=True) as cap:
            cap.forward(work, x)
            y = cap.output(layer)
            if y.dim() != 4:
                raise InputShapeError(
                    f"layer {layer!r} gives {tuple(y.shape)} outputs; a receptive field needs a "
                    "conv's (B, C, H, W) output"
                )
            flat = y.flatten(2)
            pos = torch.tensor(chunk, device=flat.device)
            if int(pos.max()) >= flat.shape[2]:
                raise InputShapeError(
                    f"position {int(pos.max())} is outside the {tuple(y.shape[2:])} output of "
                    f"layer {layer!r}"
                )
            picked = flat.gather(2, pos.view(-1, 1, 1).expand(-1, flat.shape[1], 1))
            (grad,) = torch.autograd.grad(picked.sum(), x)
        support = grad.detach().ne(0)
        if support.dim() == 4:  # (P, C, H, W): any channel
            support = support.any(1)
        for i, p in enumerate(chunk):
            out[p] = _box_of(support[i].cpu())
    return out


def patch_grid(model: nn.Module, image_hw: Sequence[int]) -> tuple[int, int, int, int, int] | None:
    """``(prefix, grid_h, grid_w, patch_h, patch_w)`` of a timm-style ViT, or None.

    Read from ``model.patch_embed.patch_size`` / ``grid_size`` and ``model.num_prefix_tokens``;
    the grid follows the image size where ``model.dynamic_img_size`` is set.

    Examples
    --------
    >>> from neuronsplit.demo import DigitsViT
    >>> patch_grid(DigitsViT(), (8, 8))
    (1, 4, 4, 2, 2)
    """
    embed = getattr(model, "patch_embed", None)
    patch = getattr(embed, "patch_size", None)
    if embed is None or patch is None:
        return None
    ph, pw = (patch, patch) if isinstance(patch, int) else (int(patch[0]), int(patch[1]))
    grid = getattr(embed, "grid_size", None)
    if grid is None or getattr(model, "dynamic_img_size", False):
        grid = (int(image_hw[0]) // ph, int(image_hw[1]) // pw)
    prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
    return prefix, int(grid[0]), int(grid[1]), ph, pw


def token_box(grid: Any, token: int, image_hw: Sequence[int]) -> tuple[Box, str]:
    """The patch box of token ``token`` on a :func:`patch_grid`, and a note where it has none.

    A prefix token (class token, registers) or a token beyond the grid gets the whole image.

    Examples
    --------
    >>> token_box((1, 4, 4, 2, 2), 6, (8, 8))  # patch 5: row 1, column 1
    ((2, 2, 4, 4), '')
    >>> token_box((1, 4, 4, 2, 2), 0, (8, 8))[1]
    'token 0 is a prefix token (class token or register): no patch, the whole image is shown'
    """
    whole: Box = (0, 0, int(image_hw[0]), int(image_hw[1]))
    prefix, gh, gw, ph, pw = grid
    if token < prefix:
        return whole, (
            f"token {token} is a prefix token (class token or register): no patch, the whole "
            "image is shown"
        )
    patch = token - prefix
    if patch >= gh * gw:
        return whole, f"token {token} is outside the {gh}x{gw} patch grid: the whole image is shown"
    row, col = divmod(patch, gw)
    box = (row * ph, col * pw, min((row + 1) * ph, whole[2]), min((col + 1) * pw, whole[3]))
    return box, ""
