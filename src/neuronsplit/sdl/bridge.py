"""The side-by-side: a sparse dictionary on a layer's activations versus the exact split.

:func:`layer_outputs` and :func:`spliced_output_change` are the two hooks a comparison needs:
the layer's output on some data, and how much the network's output moves when that layer's
output is replaced by a dictionary's reconstruction. :func:`feature_purity` scores any set of
feature activations by the labels of each feature's top-activating samples, so SAE latents,
transcoder latents, units and subunits are judged the same way. The two studies that use them
(planted concepts, the demo ViT) are in :mod:`neuronsplit.sdl.studies`.

Examples
--------
>>> acts = torch.tensor([[3.0, 0.0], [2.0, 0.1], [0.0, 5.0], [0.1, 4.0]])
>>> feature_purity(acts, torch.tensor([0, 0, 1, 1]), k=2)
tensor([1., 1.], dtype=torch.float64)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_int, check_module
from ..capture import eval_mode, resolve_layer
from ..errors import InvalidArgumentError
from ..plan import LayerSplit
from .models import SparseAutoencoder

__all__ = ["layer_outputs", "spliced_output_change", "feature_purity", "subunit_activations"]


def _batches(data: Iterable[Any]) -> Iterable[Tensor]:
    for batch in data:
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


def layer_outputs(model: nn.Module, layer: str, data: Iterable[Any]) -> tuple[Tensor, Tensor]:
    """``(layer inputs, layer outputs)`` over ``data`` (batches, or ``(inputs, labels)``).

    Token layers keep their token axis: ``(N, T, d)``. The model runs in eval mode under
    ``no_grad``; the hook is removed even when the forward pass fails.

    Examples
    --------
    >>> net = nn.Sequential(nn.Linear(3, 2), nn.ReLU())
    >>> x, y = layer_outputs(net, "0", [torch.ones(4, 3)])
    >>> x.shape, y.shape
    (torch.Size([4, 3]), torch.Size([4, 2]))
    """
    check_module(model)
    target = resolve_layer(model, layer)
    ins, outs = [], []

    def hook(_m: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> None:
        ins.append(args[0].detach().cpu())
        outs.append(out.detach().cpu())

    handle = target.register_forward_hook(hook)
    try:
        with eval_mode(model), torch.no_grad():
            for x in _batches(data):
                model(x)
    finally:
        handle.remove()
    if not outs:
        raise InvalidArgumentError("data gave no batch")
    return torch.cat(ins), torch.cat(outs)


def spliced_output_change(
    model: nn.Module, layer: str, replace: SparseAutoencoder | Callable[[Tensor], Tensor],
    data: Iterable[Any], *, reads: str = "output",
) -> dict[str, float]:  # fmt: skip
    """How far the network's output moves when ``layer``'s output is ``replace(...)``.

    ``reads="output"`` (an SAE) feeds ``replace`` the layer's output; ``"input"`` (a
    transcoder) its input. A :class:`SparseAutoencoder` contributes its reconstruction.

    Returns
    -------
    dict
        ``relative_change`` (``||f' - f|| / ||f||`` over all outputs), ``max_abs_change``,
        ``layer_relative_error`` (the same for the layer's own output), and
        ``agreement`` (share of samples whose arg-max output is unchanged).

    Examples
    --------
    >>> net = nn.Sequential(nn.Linear(3, 2), nn.ReLU())
    >>> spliced_output_change(net, "0", lambda y: y, [torch.ones(4, 3)])["relative_change"]
    0.0
    """
    check_module(model)
    if reads not in ("output", "input"):
        raise InvalidArgumentError(f"reads must be 'output' or 'input'; got {reads!r}")
    target = resolve_layer(model, layer)
    fn = replace
    if isinstance(replace, SparseAutoencoder):
        sae = replace

        def fn(t: Tensor) -> Tensor:
            flat = t.reshape(-1, t.shape[-1]).to(sae.w_enc)
            return sae(flat)[0].reshape(*t.shape[:-1], -1).to(t.dtype)

    errs: list[tuple[float, float]] = []

    def hook(_m: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> Tensor:
        new = fn(args[0] if reads == "input" else out)
        if new.shape != out.shape:
            raise InvalidArgumentError(
                f"the replacement has shape {tuple(new.shape)}, the layer output {tuple(out.shape)}"
            )
        errs.append((float((new - out).square().sum()), float(out.square().sum())))
        return new

    base, spliced = [], []
    with eval_mode(model), torch.no_grad():
        for x in _batches(data):
            base.append(model(x))
            handle = target.register_forward_hook(hook)
            try:
                spliced.append(model(x))
            finally:
                handle.remove()
    if not base:
        raise InvalidArgumentError("data gave no batch")
    f, g = torch.cat(base).double(), torch.cat(spliced).double()
    err, norm = (sum(v) for v in zip(*errs, strict=False))
    same = (f.argmax(-1) == g.argmax(-1)).double().mean() if f.dim() > 1 else torch.tensor(1.0)
    return {
        "relative_change": float((g - f).norm() / f.norm().clamp_min(1e-30)),
        "max_abs_change": float((g - f).abs().max()),
        "layer_relative_error": (err / norm) ** 0.5 if norm > 0 else 0.0,
        "agreement": float(same),
    }


def subunit_activations(weight: Tensor, bias: Tensor | None, split: LayerSplit | None,
                        inputs: Tensor) -> tuple[Tensor, list[tuple[int, int]]]:  # fmt: skip
    """Activations of every feature of a split Linear layer: each subunit of a split unit
    (``t_k``: its routed inputs times their weights; Hesse's overlap form adds the residual
    and the bias) and every unsplit unit whole. Returns ``(activations (N, F), [(unit, k)])``
    with ``k = -1`` for a whole unit.

    Examples
    --------
    >>> from neuronsplit.plan import UnitSplit, SplitPlan
    >>> plan = SplitPlan([UnitSplit("0", 0, [[0], [1]])])
    >>> acts, names = subunit_activations(torch.ones(2, 2), None, plan.by_layer()["0"],
    ...                                   torch.tensor([[1.0, 2.0]]))
    >>> acts.tolist(), names
    ([[1.0, 2.0, 3.0]], [(0, 0), (0, 1), (1, -1)])
    """
    w = weight.detach().double()
    b = bias.detach().double() if bias is not None else w.new_zeros(w.shape[0])
    x = inputs.double()
    split_units = {} if split is None else {u: i for i, u in enumerate(split.units.tolist())}
    cols, names = [], []
    for u in range(w.shape[0]):
        if split is None or u not in split_units:
            cols.append(x @ w[u] + b[u])
            names.append((u, -1))
            continue
        row = split.assignment[split_units[u]].long()
        shared = (row == -1).double()
        for k in range(int(split.num_subunits[split_units[u]])):
            mask = (row == k).double()
            overlap = split.merge == "overlap"
            mask = mask + shared if overlap else mask
            cols.append(x @ (w[u] * mask) + (b[u] if overlap else 0.0))
            names.append((u, k))
    return torch.stack(cols, dim=-1), names


def feature_purity(activations: Tensor, labels: Tensor, *, k: int = 20,
                   min_active: int = 1) -> Tensor:  # fmt: skip
    """Top-``k`` label purity of every feature: the share of the most common label among the
    ``k`` samples that activate it most. ``activations`` is ``(N, F)`` (take the maximum over
    tokens first); features positive on fewer than ``min_active`` samples get NaN (dead).
    """
    k = check_int(k, "k", low=1)
    if activations.dim() != 2 or labels.shape != activations.shape[:1]:
        raise InvalidArgumentError(
            f"activations must be (N, F) and labels (N,); got {tuple(activations.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if k > activations.shape[0]:
        raise InvalidArgumentError(f"k={k} but there are only {activations.shape[0]} samples")
    top = activations.topk(k, dim=0).indices  # (k, F)
    lab = labels.long()[top]
    counts = torch.zeros(lab.shape[1], int(labels.max()) + 1, dtype=torch.float64)
    counts.scatter_add_(1, lab.T, torch.ones_like(lab.T, dtype=torch.float64))
    purity = counts.max(1).values / k
    alive = (activations > 0).sum(0) >= min_active
    return torch.where(alive, purity, torch.full_like(purity, float("nan")))
