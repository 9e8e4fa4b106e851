"""Per-input contributions ``w_uj * x_j`` of a layer's units, and the sums that give them.

A ``Conv2d``/``Linear`` unit ``u`` is linear in its input, so its output splits exactly into one
contribution per input ``j`` (input channel or input feature) plus the bias:
``z_u = sum_j c_uj + b_u``. This module is the only place that computes those contributions:

* :func:`contributions` per position (``(B, U, J, P)``: what the rho rule and clustering read)
  or summed over positions (``(B, U, J)``: gradient x input of the unit's spatial sum);
* :func:`tap_sums`: the layer input summed over the positions each kernel tap reads,
  ``S[b, j, k]``. Summed contributions are ``sum_k W[u, j, k] * S[b, j, k]``
  (:func:`contributions_from_taps`), so class sums of ``S`` give every average relevance vector
  of every unit without a per-unit pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["tap_sums", "contributions", "contributions_from_taps", "unit_sum", "flat_weight"]


def _conv_pads(module: nn.Conv2d) -> list[int]:
    """Explicit (left, right, top, bottom) zero padding of a Conv2d, for ``F.pad``."""
    pads: list[tuple[int, int]] = []
    for dim in (0, 1):
        k, d = module.kernel_size[dim], module.dilation[dim]
        if module.padding == "valid":
            pads.append((0, 0))
        elif module.padding == "same":
            total = d * (k - 1)  # PyTorch puts the odd extra pixel on the right/bottom
            pads.append((total // 2, total - total // 2))
        else:
            p = module.padding[dim]
            pads.append((p, p))
    (top, bottom), (left, right) = pads
    return [left, right, top, bottom]


def flat_weight(layer: nn.Module | Tensor) -> Tensor:
    """A layer's weight (or a weight tensor) as ``(units, inputs, taps)``; one tap for ``Linear``.

    Examples
    --------
    >>> flat_weight(nn.Conv2d(2, 3, 3)).shape, flat_weight(nn.Linear(4, 5)).shape
    (torch.Size([3, 2, 9]), torch.Size([5, 4, 1]))
    """
    w = layer.weight if isinstance(layer, nn.Module) else layer
    return w.reshape(w.shape[0], w.shape[1], -1)


def tap_sums(module: nn.Module, inputs: Tensor, out_shape: Sequence[int]) -> Tensor:
    """Per-sample sums of the layer input over the positions each kernel tap reads.

    For a ``Conv2d`` with weight ``W (C, J, kh, kw)`` the output summed over space is
    ``z_c = sum_{j,k} W[c, j, k] * S[j, k] + b_c * H_out * W_out``; this returns ``S`` with shape
    ``(B, J, kh * kw)``. For a ``Linear`` it returns the input summed over all token axes,
    ``(B, J, 1)``. Half-precision inputs are summed in float32 (a 112x112 fp16 map overflows).

    Parameters
    ----------
    module : nn.Conv2d or nn.Linear
        The layer.
    inputs : Tensor
        Its input ``X``.
    out_shape : sequence of int
        Shape of its output (gives the number of output positions).

    Returns
    -------
    Tensor
        ``(B, J, K)`` in the input's dtype, or float32 for half-precision inputs.

    Examples
    --------
    >>> conv = nn.Conv2d(2, 3, 3, padding=1, bias=False)
    >>> x = torch.randn(1, 2, 5, 5)
    >>> s = tap_sums(conv, x, (1, 3, 5, 5))
    >>> z = conv(x).sum((2, 3))
    >>> torch.allclose(z, (flat_weight(conv) * s[:, None]).sum((2, 3)), atol=1e-5)
    True
    """
    if inputs.dtype in (torch.float16, torch.bfloat16):
        inputs = inputs.float()
    if isinstance(module, nn.Linear):
        if inputs.dim() == 2:  # a copy: the scan keeps it past later in-place ops on the input
            return inputs.unsqueeze(-1).clone()
        return inputs.sum(dim=tuple(range(1, inputs.dim() - 1))).unsqueeze(-1)
    x = F.pad(inputs, _conv_pads(module))
    (kh, kw), (dh, dw), (sh, sw) = module.kernel_size, module.dilation, module.stride
    ho, wo = int(out_shape[-2]), int(out_shape[-1])
    taps = []
    for i in range(kh):
        for j in range(kw):
            window = x[
                ...,
                i * dh : i * dh + sh * (ho - 1) + 1 : sh,
                j * dw : j * dw + sw * (wo - 1) + 1 : sw,
            ]
            taps.append(window.sum(dim=(-2, -1)))
    return torch.stack(taps, dim=-1)


def contributions_from_taps(weight: Tensor, taps: Tensor) -> Tensor:
    """Summed contributions ``(..., U, J)`` from a flat weight ``(U, J, K)`` and taps ``(..., J, K)``.

    Works on per-sample taps ``(B, J, K)`` and on class sums ``(N, J, K)`` alike.

    Examples
    --------
    >>> contributions_from_taps(torch.ones(2, 3, 1), torch.ones(4, 3, 1)).shape
    torch.Size([4, 2, 3])
    """
    return torch.einsum("ujk,...jk->...uj", weight.to(taps.dtype), taps)


def contributions(
    module: nn.Module, inputs: Tensor, units: Sequence[int] | Tensor, *, per_position: bool = False
) -> Tensor:
    """Contributions ``c_uj`` of every input ``j`` to the chosen units, bias excluded.

    Parameters
    ----------
    module : nn.Conv2d or nn.Linear
        The layer.
    inputs : Tensor
        Its input: ``(B, J, H, W)`` for a Conv2d, ``(B, J)`` or ``(B, T, ..., J)`` for a Linear.
    units : sequence of int or 1-d Tensor
        The units (output channels / features).
    per_position : bool, default False
        Keep the output positions (conv pixels or tokens) instead of summing over them.

    Returns
    -------
    Tensor
        ``(B, U, J)``, or ``(B, U, J, P)`` with ``per_position=True`` (``P`` = output positions,
        1 for a 2-d Linear input). ``sum_j`` gives the unit's output without its bias.

    Examples
    --------
    >>> fc = nn.Linear(3, 2)
    >>> x = torch.randn(4, 5, 3)
    >>> c = contributions(fc, x, [1], per_position=True)
    >>> c.shape, torch.allclose(c.sum(2)[:, 0], (fc(x)[..., 1] - fc.bias[1]), atol=1e-6)
    (torch.Size([4, 1, 3, 5]), True)
    """
    units = torch.as_tensor(units, dtype=torch.long, device=module.weight.device)
    weight = module.weight.index_select(0, units)
    if not per_position:
        out_shape = _out_shape(module, inputs)
        return contributions_from_taps(flat_weight(weight), tap_sums(module, inputs, out_shape))
    if isinstance(module, nn.Linear):
        flat = inputs.reshape(inputs.shape[0], -1, inputs.shape[-1])  # (B, P, J)
        return (flat.unsqueeze(1) * weight[None, :, None, :]).transpose(2, 3)
    # a grouped conv gives every input channel's own map to each unit: groups = J
    b, j = inputs.shape[0], inputs.shape[1]
    u = weight.shape[0]
    kernel = weight.transpose(0, 1).reshape(j * u, 1, *weight.shape[2:])  # (J*U, 1, kh, kw)
    maps = F.conv2d(
        inputs, kernel, None, module.stride, module.padding, module.dilation, groups=j
    )  # (B, J*U, Ho, Wo), channel = j * U + u
    return maps.reshape(b, j, u, -1).transpose(1, 2)


def _out_shape(module: nn.Module, inputs: Tensor) -> tuple[int, ...]:
    if isinstance(module, nn.Linear):
        return (*inputs.shape[:-1], module.out_features)
    with torch.no_grad():  # only the spatial size is needed: ask the conv on one meta sample
        probe = torch.empty((1, *inputs.shape[1:]), device="meta", dtype=inputs.dtype)
        weight = torch.empty(module.weight.shape, device="meta", dtype=inputs.dtype)
        out = F.conv2d(probe, weight, None, module.stride, module.padding, module.dilation)
    return tuple(out.shape)


def unit_sum(tensor: Tensor, kind: str) -> Tensor:
    """Sum a layer output over everything but the batch and unit axes -> ``(B, units)``.

    Parameters
    ----------
    tensor : Tensor
        ``(B, C, H, W)`` for ``kind="conv2d"``; ``(B, C)`` or ``(B, T, ..., C)`` for ``"linear"``.
    kind : {"conv2d", "linear"}
        Which axis holds the units: 1 for convolutions, the last one for linear layers.

    Returns
    -------
    Tensor
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
