"""Model surgery: apply a plan to a copy of a model, and find the split layers of a model."""

from __future__ import annotations

import copy
from collections.abc import Iterator

from torch import nn

from .._checks import check_bool, check_module
from ..capture import check_plain, check_supported, layer_shape, resolve_layer
from ..errors import ArgumentTypeError, PlanError, UnknownLayerError
from ..plan import SplitPlan
from .layer_scale import FoldedLayerScale, planned_folds, scaled_linear
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


def apply_plan(model: nn.Module, plan: SplitPlan, *, fold_layer_scale: bool = True) -> nn.Module:
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
    fold_layer_scale : bool, default True
        Fold the LayerScale of a timm ViT block into a planned ``attn.proj`` / ``mlp.fc2``
        (see Notes). ``False`` keeps the LayerScale; the subunits are then the linear's
        outputs before the scale (the behaviour of neuronsplit 0.2).

    Returns
    -------
    nn.Module
        The rewritten copy, in the same training/eval mode as ``model``.

    Raises
    ------
    UnknownLayerError, UnsupportedLayerError, PlanError, PlanMismatchError
        See :func:`check_plan`.
    ArgumentTypeError
        ``plan`` is not a SplitPlan, or ``fold_layer_scale`` not a bool.

    Notes
    -----
    **LayerScale (DINOv2).** When a planned layer is the ``attn.proj`` (``mlp.fc2``) of a timm
    ViT ``Block`` whose ``ls1`` (``ls2``) is a ``timm.layers.LayerScale`` (``y * gamma``), the
    copy's layer is split with its weight rows and bias multiplied by ``gamma``, and the
    LayerScale is replaced by a
    :class:`~neuronsplit.nn.layer_scale.FoldedLayerScale` (an ``nn.Identity``). This is exact
    (``gamma (W h + b) = (gamma W) h + gamma b``; float64 to about 1e-12), and the subunits are
    then the block's writes to the residual stream, ``ls(fc2(h))`` split, rather than
    pre-scale values that ``gamma`` would rescale channel by channel. Only planned layers fold:
    a block whose ``fc2`` is not split keeps its ``ls2``. Not folded (the LayerScale stays, the
    split is still exact): a linear or LayerScale registered at several paths, and blocks,
    attentions or MLPs that are subclasses with their own forward. Consequences:
    ``layer.unsplit()`` gives the scaled linear (``gamma W``, with the Identity in place of the
    LayerScale, the same function), the split model's state dict has no ``ls*.gamma`` for a
    folded LayerScale (:func:`neuronsplit.nn.save` / :func:`neuronsplit.nn.load` handle it), and
    :func:`verify_equivalence` compares the split layer with the original's LayerScale output.
    The split layer's fast path (no one observing the rows) is then exact to rounding rather than
    bitwise. Hooks on a folded LayerScale are not carried over. See
    :mod:`neuronsplit.nn.layer_scale`.

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
    check_bool(fold_layer_scale, "fold_layer_scale")
    check_plan(model, plan)
    new = copy.deepcopy(model)
    paths: dict[int, list[str]] = {}
    for name, mod in new.named_modules(remove_duplicate=False):
        paths.setdefault(id(mod), []).append(name)
    by_layer = plan.by_layer()
    folds = planned_folds(new, by_layer, paths) if fold_layer_scale else {}
    for name, layer_split in by_layer.items():
        old = new.get_submodule(name)
        cls = SplitConv2d if isinstance(old, nn.Conv2d) else SplitLinear
        source = old
        if name in folds:  # gamma into the rows (a new Linear: a tied weight stays as it is)
            source = scaled_linear(old, new.get_submodule(folds[name]))
        replacement = cls(source, layer_split)
        for path in paths[id(old)]:
            _set_module(new, path, replacement)
    for name, scale_path in folds.items():
        block = scale_path.rpartition(".")[0]
        relative = name[len(block) + 1 :] if block else name
        dim = new.get_submodule(scale_path).gamma.shape[0]
        _set_module(new, scale_path, FoldedLayerScale(dim, relative))
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
