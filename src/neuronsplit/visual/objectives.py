"""What feature visualisation maximises: the activation of a unit or subunit on its own image.

A reference, resolved by :mod:`~neuronsplit.visual.targets` (the parser reference images use
too), gives an :class:`Objective`: the module whose output holds it (a split layer's
``.subunits`` child for a subunit, the layer itself for a unit), its weighted rows there, and how
the positions of a conv or the tokens of a ViT are reduced to one number per image. One forward
pass of the batch gives every objective's value on *its own* image (image ``i`` belongs to
objective ``i``); the pass stops as soon as the last hooked module has run, so the layers after
it cost nothing.

Examples
--------
>>> import torch
>>> from torch import nn
>>> from neuronsplit.visual.targets import resolve_targets
>>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
>>> goals = [Objective.of(model, t) for t in resolve_targets(model, ["0/u2", "2/u0"])]
>>> [g.name for g in goals], goals[0].rows
(['0/u2', '2/u0'], ((2, 1.0),))
>>> x = torch.ones(2, 4)
>>> got = model_outputs(model, goals, x)
>>> bool(torch.allclose(got, torch.stack([model[0](x)[0, 2], model(x)[1, 0]])))
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import InvalidArgumentError
from .targets import Target

__all__ = ["Objective", "model_outputs", "infer_image_shape"]


@dataclass(frozen=True, eq=False)
class Objective:
    """One reference: ``sum_w w * output[..., channel]`` of ``module``, reduced to a number.

    Attributes
    ----------
    name : str
        The target's name: ``"layer/u3"`` or the :class:`~neuronsplit.SubunitRef` string
        ``"layer/u3/k0"``.
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

    @classmethod
    def of(cls, model: nn.Module, target: Target, position: str = "mean") -> Objective:
        """The objective of a resolved target: its rows of the layer or of its ``.subunits``."""
        conv = target.kind == "conv2d"
        return cls(target.name, target.module(model), target.rows, conv, position, _prefix(model))

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


class _Stop(Exception):
    """Raised by the last hook: the layers after the targets need not run."""


def model_outputs(model: nn.Module, targets: list[Objective], x: Tensor) -> Tensor:
    """Run ``model`` on ``x`` (one image per objective) and return each one's value on its own
    image, ``(n,)``; the hooks are removed before it returns.

    Raises
    ------
    InvalidArgumentError
        An objective's module did not run in the forward pass.
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
