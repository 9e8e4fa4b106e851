"""Reference images' top samples: every requested row ranked in one pass over a dataset.

The rows are :class:`~neuronsplit.visual.targets.Target` objects (what a reference names, as
:mod:`~neuronsplit.visual.targets` parses it). :func:`top_samples` ranks the samples of a dataset for
every requested row in one pass, by the row's largest value over positions / tokens or by its
grad x activation relevance for the target logit, exactly as the scan's
:class:`~neuronsplit.stats.TopN` reservoirs do (which it uses to keep them: same positions, same
ties to the smaller sample index).

Examples
--------
>>> import torch
>>> from torch import nn
>>> from neuronsplit.visual.targets import resolve_targets
>>> net = nn.Sequential(nn.Linear(3, 2))
>>> x = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1]])
>>> values, index, _ = top_samples(net, x, resolve_targets(net, "0/u1"), by="activation",
...                                k=2, progress=False)["0/u1"]
>>> index.tolist() == net(x)[:, 1].argsort(descending=True)[:2].tolist()
True
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._progress import progress_bar
from ..capture import capture, eval_mode, model_device
from ..errors import ArgumentTypeError, InputShapeError, InvalidArgumentError, InvalidTargetError
from ..stats import LayerBatch, TopN
from ..stats.batches import targets_of
from .targets import Target

__all__ = ["dataset_size", "read_item", "row_tensor", "top_samples"]

# ------------------------------------------------------------------ the dataset


def dataset_size(dataset: Any) -> int:
    """``len(dataset)``, checked: a tensor or an indexable dataset with at least one item."""
    if isinstance(dataset, Tensor):
        n = int(dataset.shape[0]) if dataset.dim() else 0
    elif hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__"):
        n = len(dataset)
    else:
        raise ArgumentTypeError(
            f"dataset must be a tensor (N, C, H, W) or an indexable dataset of images or "
            f"(image, label) tuples, got {type(dataset).__name__}"
        )
    if n == 0:
        raise InvalidArgumentError("dataset is empty; pass at least one image")
    return n


def read_item(dataset: Any, index: int) -> tuple[Tensor, int | None]:
    """Image ``index`` of ``dataset`` (an image, or the first entry of an ``(image, label, ...)``
    item) and its label, None where the item has none."""
    try:
        item = dataset[index]
    except IndexError as err:
        raise InvalidArgumentError(
            f"sample {index} is not in the dataset ({err}); pass the dataset the scan ran over, "
            "in the same order"
        ) from err
    label = None
    if isinstance(item, tuple | list):
        if not item:
            raise ArgumentTypeError(f"dataset item {index} is an empty {type(item).__name__}")
        item, label = item[0], (item[1] if len(item) > 1 else None)
    try:
        image = torch.as_tensor(item)
    except (TypeError, RuntimeError, ValueError) as err:
        raise ArgumentTypeError(
            f"dataset item {index} is a {type(item).__name__}, not an image tensor; transform "
            "the dataset to tensors first"
        ) from err
    if label is not None:
        flat = torch.as_tensor(label).reshape(-1)
        label = int(flat[0]) if flat.numel() == 1 else None  # one-hot or none: no label
    return image, label


def _batches(dataset: Any, n: int, batch_size: int) -> Iterator[tuple[Tensor, Tensor | None, int]]:
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        if isinstance(dataset, Tensor):
            yield dataset[start:stop], None, start
            continue
        items = [read_item(dataset, i) for i in range(start, stop)]
        labels = [y for _, y in items]
        y = None if any(v is None for v in labels) else torch.tensor(labels)
        yield torch.stack([x for x, _ in items]), y, start


# ------------------------------------------------------------------ rows


def _channel(t: Tensor, channel: int, kind: str) -> Tensor:
    """``(B, P)``: one channel of a layer output at every position / token (flat as the scan)."""
    if kind == "conv2d":
        return t[:, channel].reshape(t.shape[0], -1)
    return t[..., channel].reshape(t.shape[0], -1)


def row_tensor(merged: Tensor, inter: Tensor, targets: Sequence[Target]) -> Tensor:
    """``(B, R, P)`` values of the targets' rows (differentiable, in the outputs' dtype).

    Rows are picked before anything is converted, so a wide layer is not copied.
    """
    parts = []
    for t in targets:
        if t.subunit is None:
            parts.append(_channel(merged, t.unit, t.kind))
        else:
            parts.append(sum(w * _channel(inter, c, t.kind) for c, w in t.channels))
    return torch.stack(parts, 1)


def _layer_outputs(
    model: nn.Module, x: Tensor, labels: Tensor | None, layers: dict[str, list[Target]],
    by: str, target: str, batch: int,
) -> dict[str, tuple[Tensor, Tensor, Tensor | None]]:  # fmt: skip
    """Per layer ``(merged, inter, grad of the target logit w.r.t. merged or None)``."""
    names = list(layers)
    subs = {n: f"{n}.subunits" for n, ts in layers.items() if any(t.reads_rows for t in ts)}
    if by == "activation":
        with torch.no_grad(), capture(model, names + list(subs.values()), stop=True) as cap:
            cap.forward(model, x)
            return {n: (cap.output(n), cap.output(subs.get(n, n)), None) for n in names}
    with torch.enable_grad(), capture(model, names, grad=True) as cap, \
            capture(model, list(subs.values())) as sub:  # fmt: skip
        logits = model(x)
        if not isinstance(logits, Tensor) or logits.dim() != 2:
            raise InputShapeError(
                "by='relevance' needs a classifier's (batch, classes) output, got "
                f"{getattr(logits, 'shape', type(logits).__name__)}"
            )
        goal = targets_of(logits, labels, target, logits.shape[1], batch)
        outs = [cap.output(n) for n in names]
        grads = torch.autograd.grad(logits.gather(1, goal[:, None]).sum(), outs, allow_unused=True)
    return {
        n: (out.detach(), sub.output(subs[n]) if n in subs else out.detach(),
            torch.zeros_like(out) if g is None else g)
        for n, out, g in zip(names, outs, grads, strict=True)
    }  # fmt: skip


def top_samples(
    model: nn.Module, dataset: Any, targets: Sequence[Target], *, by: str, k: int,
    target: str = "label", batch_size: int = 64, progress: bool = True,
) -> dict[str, tuple[Tensor, Tensor, Tensor]]:  # fmt: skip
    """``{name: (values, index, position)}``: each target's top ``k`` samples, largest first.

    ``by="activation"``: the row's largest value over positions / tokens and where it is.
    ``by="relevance"``: ``coef * row * dy/dz_unit`` (grad x activation of the row for the
    target logit ``y``: the label, or the prediction with ``target="prediction"``), summed over
    positions, and the position of its largest element -- the scan's unit relevance and
    ``rel_pos`` for a unit. One pass over ``dataset``; indices are its positions.
    """
    n = dataset_size(dataset)
    if by == "relevance" and target == "label" and isinstance(dataset, Tensor):
        raise InvalidTargetError(
            "by='relevance' with target='label' needs labels, but the dataset is a bare tensor; "
            "pass (image, label) items (e.g. a TensorDataset) or target='prediction'"
        )
    layers: dict[str, list[Target]] = {}
    for t in targets:
        layers.setdefault(t.layer, []).append(t)
    tops = {name: TopN.empty(len(ts), k, by) for name, ts in layers.items()}
    device = model_device(model)
    total = -(-n // batch_size)
    stream = progress_bar(
        _batches(dataset, n, batch_size), desc="reference images", total=total, enabled=progress
    )
    with eval_mode(model):
        for b, (x, labels, offset) in enumerate(stream):
            x = x.to(device) if device is not None else x
            outputs = _layer_outputs(model, x, labels, layers, by, target, b)
            index = torch.arange(offset, offset + x.shape[0])
            for name, ts in layers.items():
                merged, inter, grad = outputs[name]
                rows = row_tensor(merged, inter, ts).double()
                if grad is None:
                    values, pos = rows.max(2)
                else:
                    g = row_tensor(grad, grad, [_unit_of(t) for t in ts]).double()
                    coef = torch.tensor([t.coef for t in ts], dtype=rows.dtype, device=rows.device)
                    elementwise = coef.view(1, -1, 1) * rows * g
                    values, pos = elementwise.sum(2), elementwise.argmax(2)
                values, pos = values.cpu(), pos.cpu()
                batch = LayerBatch(
                    index, index, values, torch.empty(0), act_max=values, act_pos=pos, rel_pos=pos
                )
                tops[name].update(batch)
    out = {}
    for name, ts in layers.items():
        for i, t in enumerate(ts):
            out[t.name] = tops[name].top(i, k)
    return out


def _unit_of(t: Target) -> Target:
    """The unit a row belongs to (its gradient is the row's: the merge adds the rows)."""
    return Target(t.name, t.layer, t.unit, None, (), 1.0, t.kind)
