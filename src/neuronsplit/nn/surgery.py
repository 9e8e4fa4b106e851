"""Model surgery: apply a plan to a copy of a model, and find the split layers of a model."""

from __future__ import annotations

import copy
from collections.abc import Iterator

from torch import nn

from .._checks import check_module
from ..capture import check_plain, check_supported, layer_shape, resolve_layer
from ..errors import ArgumentTypeError, PlanError, UnknownLayerError
from ..plan import SplitPlan
from .split_layer import SPLIT_TYPES, SplitConv2d, SplitLinear

__all__ = ["apply_plan", "check_plan", "iter_split_layers", "get_split_layer", "plan_of"]


def check_plan(model: nn.Module, plan: SplitPlan) -> None:
    """Check that ``plan`` fits ``model`` (read-only; the model is not changed).

    Raises
    ------
    UnknownLayerError
        A planned layer does not exist (the message lists close names).
    UnsupportedLayerError
        A planned layer is not a plain Conv2d (groups=1) or Linear.
    PlanError
        A planned layer is already split, or lies inside a split layer.
    PlanMismatchError
        A unit or input count does not fit the layer.

    Examples
    --------
    >>> from neuronsplit.plan import UnitSplit
    >>> check_plan(nn.Sequential(nn.Linear(3, 2)), SplitPlan([UnitSplit("0", 1, [[0], [1]], [2])]))
    """
    split_names = [name for name, _ in iter_split_layers(model)]
    planned: dict[int, str] = {}
    for name, layer_split in plan.by_layer().items():
        for sname in split_names:
            if name.startswith(sname + "."):
                raise PlanError(
                    f"layer {name!r} lies inside the split layer {sname!r}; nested splits are "
                    "not supported. Plan against the original model instead."
                )
        layer = resolve_layer(model, name)
        if isinstance(layer, SPLIT_TYPES):
            raise PlanError(
                f"layer {name!r} is already split; nested splits are not supported. Apply "
                "one combined plan to the original model (see neuronsplit.nn.plan_of)."
            )
        check_supported(layer, name)
        check_plain(model, layer, name)
        if id(layer) in planned:
            raise PlanError(
                f"layers {planned[id(layer)]!r} and {name!r} are the same module (registered "
                "twice); plan it under one name, and every path to it gets the split"
            )
        planned[id(layer)] = name
        layer_split.check_shape(*layer_shape(layer))


def _set_module(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_name, _, child = path.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def apply_plan(model: nn.Module, plan: SplitPlan) -> nn.Module:
    """Return a deep copy of ``model`` with the planned layers replaced by split layers.

    The plan is checked first (:func:`check_plan`); on any error nothing is returned and
    ``model`` is untouched. The input model is never mutated (parameters, buffers, hooks,
    ``requires_grad`` flags, training flag). Each planned layer is replaced at every path where
    the same module object is registered (shared modules stay shared). Hooks registered on a
    replaced layer are not carried over to its split version.

    Parameters
    ----------
    model : nn.Module
        The original model.
    plan : SplitPlan
        The splits to apply.

    Returns
    -------
    nn.Module
        The rewritten copy, in the same training/eval mode as ``model``.

    Raises
    ------
    UnknownLayerError, UnsupportedLayerError, PlanError, PlanMismatchError
        See :func:`check_plan`.

    Examples
    --------
    >>> import torch
    >>> from neuronsplit.plan import UnitSplit
    >>> m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> split = apply_plan(m, SplitPlan([UnitSplit("0", 1, [[0], [1]], shared=[2])]))
    >>> type(split[0]).__name__, type(m[0]).__name__
    ('SplitLinear', 'Linear')
    >>> x = torch.randn(5, 3)
    >>> torch.allclose(split(x), m(x), atol=1e-6)
    True
    """
    check_module(model, "model")
    if not isinstance(plan, SplitPlan):
        raise ArgumentTypeError(
            f"plan must be a SplitPlan, got {type(plan).__name__}; build one with "
            "SplitPlan([UnitSplit(...), ...]) or SplitPlan.from_json(...)"
        )
    check_plan(model, plan)
    new = copy.deepcopy(model)
    paths: dict[int, list[str]] = {}
    for name, mod in new.named_modules(remove_duplicate=False):
        paths.setdefault(id(mod), []).append(name)
    for name, layer_split in plan.by_layer().items():
        old = new.get_submodule(name)
        cls = SplitConv2d if isinstance(old, nn.Conv2d) else SplitLinear
        replacement = cls(old, layer_split)
        for path in paths[id(old)]:
            _set_module(new, path, replacement)
    return new


def iter_split_layers(model: nn.Module) -> Iterator[tuple[str, SplitConv2d | SplitLinear]]:
    """Yield ``(name, layer)`` for every split layer of ``model`` in module order.

    Examples
    --------
    >>> from neuronsplit.plan import UnitSplit
    >>> m = apply_plan(nn.Sequential(nn.Linear(2, 2)), SplitPlan([UnitSplit("0", 0, [[0], [1]])]))
    >>> [n for n, _ in iter_split_layers(m)]
    ['0']
    """
    for name, mod in model.named_modules():
        if isinstance(mod, SPLIT_TYPES):
            yield name, mod


def get_split_layer(model: nn.Module, name: str) -> SplitConv2d | SplitLinear:
    """Return the split layer at ``name``.

    Parameters
    ----------
    model : nn.Module
        A split model.
    name : str
        Dotted layer name.

    Returns
    -------
    SplitConv2d or SplitLinear

    Raises
    ------
    UnknownLayerError
        If there is no such layer or it is not split; the message lists the split layers.
    """
    layer = resolve_layer(model, name)
    if not isinstance(layer, SPLIT_TYPES):
        names = [n for n, _ in iter_split_layers(model)]
        raise UnknownLayerError(
            f"layer {name!r} is a {type(layer).__name__}, not a split layer; split layers of "
            f"this model: {names[:10] or 'none (run apply_plan first)'}"
        )
    return layer


def plan_of(model: nn.Module) -> SplitPlan:
    """The :class:`SplitPlan` of a split model (layer names = current paths).

    ``apply_plan(original, plan_of(split))`` rebuilds the same row layout.

    Examples
    --------
    >>> from neuronsplit.plan import UnitSplit
    >>> plan = SplitPlan([UnitSplit("0", 0, [[0], [1]])])
    >>> plan_of(apply_plan(nn.Sequential(nn.Linear(2, 2)), plan)) == plan
    True
    """
    return SplitPlan(
        [
            layer.layer_split
            if layer.layer_split.layer == name
            else layer.layer_split.renamed(name)
            for name, layer in iter_split_layers(model)
        ]
    )
