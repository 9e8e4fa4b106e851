"""Choosing reference images: which row a reference names, and its top samples in one pass.

A reference names a *row* of a layer output (:class:`Target`): a unit (``"layer/u3"``,
``("layer", 3)``, or ``"layer/u3/k0"`` of a unit that is not split), a subunit
(``"layer/u3/k1"``) or a residual (``"layer/u3/residual"``) of a split layer, read from its
``.subunits`` child in the plan's form (:func:`~neuronsplit.attribution.subunit_rows`).
:func:`top_samples` ranks the samples of a dataset for every requested row in one pass, by
the row's largest value over positions / tokens or by its grad x activation relevance for the
target logit, exactly as the scan's :class:`~neuronsplit.stats.TopN` reservoirs do (which it
uses to keep them: same positions, same ties to the smaller sample index).

Examples
--------
>>> from torch import nn
>>> net = nn.Sequential(nn.Linear(3, 2))
>>> resolve_target(net, "0/u1")
Target(name='0/u1', layer='0', unit=1, subunit=None, channels=(), coef=1.0, kind='linear')
"""

from __future__ import annotations

import operator
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .._progress import progress_bar
from ..attribution import SubunitRef, subunit_rows
from ..capture import capture, eval_mode, is_split_layer, layer_kind, model_device, resolve_layer
from ..errors import (
    ArgumentTypeError,
    InputShapeError,
    InvalidArgumentError,
    InvalidTargetError,
    UnknownSubunitError,
    UnsupportedLayerError,
)
from ..stats import LayerBatch, TopN
from ..stats.batches import targets_of

__all__ = ["Target", "resolve_target", "dataset_size", "read_item", "row_tensor", "top_samples"]

_UNIT = re.compile(r"^(?P<layer>.+)/u(?P<unit>\d+)(?:/unit)?$")


@dataclass(frozen=True)
class Target:
    """One row to find reference images for.

    Attributes
    ----------
    name : str
        Its key in a :class:`~neuronsplit.visual.ReferenceSet`.
    layer, unit : str, int
        The layer (dotted name in the given model) and the original unit.
    subunit : int or None
        None for the unit itself (the layer's output), ``k`` or ``-1`` (residual) for a subunit.
    channels : tuple of (int, float)
        ``(channel, weight)`` pairs of ``.subunits`` that make up the subunit.
    coef : float
        Its coefficient in the merge (``-(K-1)`` for an overlap residual, else 1).
    kind : {"conv2d", "linear"}
    """

    name: str
    layer: str
    unit: int
    subunit: int | None
    channels: tuple[tuple[int, float], ...]
    coef: float
    kind: str

    @property
    def reads_rows(self) -> bool:
        """Whether the row is read from the split layer's ``.subunits`` output."""
        return self.subunit is not None


def _unit_target(model: nn.Module, layer: str, unit: Any, name: str) -> Target:
    try:
        if isinstance(unit, bool):
            raise TypeError
        unit = operator.index(unit)  # int, numpy ints, 0-d integer tensors
    except TypeError:
        raise UnknownSubunitError(
            f"unit of reference {name!r} must be an int, got {type(unit).__name__}"
        ) from None
    module = resolve_layer(model, layer)
    if is_split_layer(module):
        units, kind = int(module.original_out), layer_kind(module.subunits)
    elif isinstance(module, nn.Conv2d | nn.Linear):
        units = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
        kind = layer_kind(module)
    else:
        raise UnsupportedLayerError(
            f"layer {layer!r} of reference {name!r} is a {type(module).__name__}; reference "
            "images read the units of Conv2d and Linear layers (or split layers)"
        )
    if not 0 <= unit < units:
        raise UnknownSubunitError(
            f"unit {unit} of reference {name!r} does not exist: layer {layer!r} has {units} "
            f"units (0..{units - 1})"
        )
    return Target(name, layer, int(unit), None, (), 1.0, kind)


def resolve_target(model: nn.Module, ref: Any) -> Target:
    """The :class:`Target` of a reference (see the module docstring for the spellings).

    Raises
    ------
    UnknownSubunitError
        A reference of no known form, a unit out of range, a subunit that does not exist
        (also any ``k != 0`` on a layer or unit that is not split).
    UnknownLayerError, UnsupportedLayerError
        No such layer, or not a Conv2d / Linear / split layer.
    """
    if isinstance(ref, str) and (m := _UNIT.match(ref)):
        return _unit_target(model, m["layer"], int(m["unit"]), f"{m['layer']}/u{m['unit']}")
    if isinstance(ref, tuple) and len(ref) == 2:
        layer, unit = ref
        if not isinstance(layer, str) or not layer:
            raise UnknownSubunitError(f"the layer of reference {ref!r} must be a dotted name")
        return _unit_target(model, layer, unit, f"{layer}/u{unit}")
    try:
        sub = SubunitRef.coerce(ref)
    except UnknownSubunitError as err:
        raise UnknownSubunitError(f"{err}; a whole unit is 'layer/u3' or ('layer', 3)") from None
    module = resolve_layer(model, sub.layer)
    if is_split_layer(module) and sub.unit in module.split_units:
        split, channels, coef = subunit_rows(model, sub)
        return Target(
            str(sub), sub.layer, sub.unit, sub.k, channels, coef, layer_kind(split.subunits)
        )
    if sub.k != 0:
        raise UnknownSubunitError(
            f"unit {sub.unit} of layer {sub.layer!r} is not split, so {str(sub)!r} does not "
            f"exist; name the unit itself ('{sub.layer}/u{sub.unit}') or apply a plan that "
            "splits it (ns.apply_plan)"
        )
    return _unit_target(model, sub.layer, sub.unit, str(sub))


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
