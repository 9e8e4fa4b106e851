"""What feature visualisation maximises: the activation of a unit or subunit on its own image.

A reference resolves to a :class:`Target`: the module whose output holds it (a split layer's
``.subunits`` child for a subunit, the layer itself for a unit), its weighted rows there, and how
the positions of a conv or the tokens of a ViT are reduced to one number per image. One forward
pass of the batch gives every target's value on *its own* image (image ``i`` belongs to target
``i``); the pass stops as soon as the last hooked module has run, so the layers after it cost
nothing.

Examples
--------
>>> import torch
>>> from torch import nn
>>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
>>> targets = resolve_targets(model, ["0/u2", "2/u0"])
>>> [t.name for t in targets], targets[0].rows
(['0/u2', '2/u0'], ((2, 1.0),))
>>> x = torch.ones(2, 4)
>>> got = model_outputs(model, targets, x)
>>> bool(torch.allclose(got, torch.stack([model[0](x)[0, 2], model(x)[1, 0]])))
True
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..attribution import SubunitRef, subunit_rows
from ..capture import resolve_layer
from ..errors import InvalidArgumentError, UnknownSubunitError, UnsupportedLayerError
from ..nn import SplitConv2d, SplitLinear

__all__ = ["Target", "resolve_targets", "model_outputs", "infer_image_shape"]

_UNIT = re.compile(r"^(?P<layer>.+)/u(?P<unit>\d+)$")
_LAYERS = (nn.Conv2d, nn.Linear, SplitConv2d, SplitLinear)


@dataclass(frozen=True, eq=False)
class Target:
    """One reference: ``sum_w w * output[..., channel]`` of ``module``, reduced to a number.

    Attributes
    ----------
    name : str
        ``"layer/u3"`` or the :class:`~neuronsplit.SubunitRef` string ``"layer/u3/k0"``.
    module : nn.Module
        The hooked module.
    rows : tuple of (int, float)
        Weighted channels of the module's output.
    conv : bool
        Conv output ``(B, C, H, W)`` (else a Linear's ``(B, C)`` or ``(B, T, C)``).
    position : str
        ``"mean"`` or ``"centre"`` (convs only).
    prefix : int
        Leading tokens (class/register) left out of a token output's mean.
    """

    name: str
    module: nn.Module
    rows: tuple[tuple[int, float], ...]
    conv: bool
    position: str = "mean"
    prefix: int = 0

    def value(self, output: Tensor, i: int) -> Tensor:
        """The objective on sample ``i`` of the module's ``output``."""
        sample = output[i]
        picked = sum(w * (sample[c] if self.conv else sample[..., c]) for c, w in self.rows)
        if self.conv:  # (H, W)
            if self.position == "centre":
                return picked[picked.shape[0] // 2, picked.shape[1] // 2]
            return picked.mean()
        if picked.dim() == 1:  # (T,) tokens of a ViT
            return picked[self.prefix :].mean()
        return picked


def _prefix(model: nn.Module) -> int:
    prefix = getattr(model, "num_prefix_tokens", 0)
    return prefix if isinstance(prefix, int) and not isinstance(prefix, bool) else 0


def _unit_target(model: nn.Module, layer: str, unit: int, position: str) -> Target:
    module = resolve_layer(model, layer)
    if not isinstance(module, _LAYERS):
        raise UnsupportedLayerError(
            f"layer {layer!r} is a {type(module).__name__}; units can be visualised on Conv2d "
            "and Linear layers (split or not)"
        )
    if isinstance(module, (SplitConv2d, SplitLinear)):
        n_out = module.original_out
    else:
        n_out = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
    if unit >= n_out:
        raise InvalidArgumentError(
            f"unit {unit} does not exist in layer {layer!r}, which has {n_out} units "
            f"(valid: 0..{n_out - 1})"
        )
    conv = isinstance(module, (nn.Conv2d, SplitConv2d))
    return Target(f"{layer}/u{unit}", module, ((unit, 1.0),), conv, position, _prefix(model))


def resolve_targets(model: nn.Module, refs: Sequence[Any], position: str = "mean") -> list[Target]:
    """One :class:`Target` per reference (a unit ``"layer/u3"`` or ``(layer, unit)``, or a
    subunit as :class:`~neuronsplit.SubunitRef` accepts it).

    Raises
    ------
    UnknownSubunitError, UnknownLayerError
        A reference the model does not contain (the message lists what exists).
    InvalidArgumentError
        A unit out of range, or the same reference twice.
    """
    targets = []
    for ref in refs:
        unit = _UNIT.match(ref) if isinstance(ref, str) else None
        if unit is not None:
            targets.append(_unit_target(model, unit["layer"], int(unit["unit"]), position))
            continue
        if isinstance(ref, tuple) and len(ref) == 2:
            layer, index = ref
            if not isinstance(layer, str) or isinstance(index, bool) or not isinstance(index, int):
                raise UnknownSubunitError(f"a unit must be (layer name, int), got {ref!r}")
            targets.append(_unit_target(model, layer, index, position))
            continue
        sub = SubunitRef.coerce(ref)
        layer, rows, _ = subunit_rows(model, sub)
        conv = isinstance(layer, SplitConv2d)
        targets.append(Target(str(sub), layer.subunits, rows, conv, position, _prefix(model)))
    names = [t.name for t in targets]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InvalidArgumentError(f"refs name {dup} more than once; give each reference once")
    return targets


class _Stop(Exception):
    """Raised by the last hook: the layers after the targets need not run."""


def model_outputs(model: nn.Module, targets: list[Target], x: Tensor) -> Tensor:
    """Run ``model`` on ``x`` (one image per target) and return each target's value on its own
    image, ``(n,)``; the hooks are removed before it returns.

    Raises
    ------
    InvalidArgumentError
        A target's module did not run in the forward pass.
    """
    modules = list({id(t.module): t.module for t in targets}.values())
    outputs: dict[int, Tensor] = {}

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        if id(module) in outputs:
            return  # a module that runs twice: its first output is the one visualised
        outputs[id(module)] = output
        if len(outputs) == len(modules):
            raise _Stop

    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        model(x)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    missing = [t.name for t in targets if id(t.module) not in outputs]
    if missing:
        raise InvalidArgumentError(
            f"the layers of {missing[:5]} did not run in the model's forward pass; visualise "
            "layers the forward pass uses"
        )
    values = [t.value(outputs[id(t.module)], i) for i, t in enumerate(targets)]
    return torch.stack(values)


def infer_image_shape(model: nn.Module) -> tuple[int, int, int] | None:
    """``(C, H, W)`` of a timm model's input, or None.

    The patch embedding's ``img_size`` comes first (it is what the model accepts, also when it
    was built with another ``img_size`` than its ``pretrained_cfg`` names), then
    ``pretrained_cfg["input_size"]``.

    Examples
    --------
    >>> from torch import nn
    >>> infer_image_shape(nn.Linear(2, 2)) is None
    True
    """
    embed = getattr(model, "patch_embed", None)
    size = getattr(embed, "img_size", None)
    proj = getattr(embed, "proj", None)
    channels = getattr(proj, "in_channels", None)
    if isinstance(size, (tuple, list)) and len(size) == 2 and isinstance(channels, int):
        return (channels, int(size[0]), int(size[1]))
    cfg = getattr(model, "pretrained_cfg", None)
    shape = cfg.get("input_size") if isinstance(cfg, dict) else None
    if isinstance(shape, (tuple, list)) and len(shape) == 3:
        return tuple(int(v) for v in shape)  # type: ignore[return-value]
    return None
