"""Naming and checking the layers neuronsplit reads and splits.

Every place that takes a layer name goes through :func:`resolve_layer` (close-match
suggestions on a typo) and :func:`check_supported` / :func:`check_plain` (which layer types can be
scanned exactly and split exactly). :func:`unit_axis` says where a layer's units live in its
output: channels (axis 1) of a ``Conv2d``, the last axis of a ``Linear`` (also on token tensors).
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterator

import torch
from torch import nn

from ..errors import UnknownLayerError, UnsupportedLayerError

__all__ = [
    "SUPPORTED_TYPES",
    "resolve_layer",
    "check_supported",
    "check_plain",
    "check_plain_forward",
    "layer_kind",
    "layer_shape",
    "unit_axis",
    "eval_mode",
    "is_split_layer",
    "model_device",
]

SUPPORTED_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """Return the submodule of ``model`` at the dotted path ``name``.

    Parameters
    ----------
    model : nn.Module
        The model to search.
    name : str
        Dotted path as listed by ``model.named_modules()``, e.g. ``"layer4.2.conv3"`` or
        ``"blocks.11.mlp.fc2"``.

    Returns
    -------
    nn.Module
        The submodule.

    Raises
    ------
    UnknownLayerError
        If no submodule has that name; the message lists the closest names.

    Examples
    --------
    >>> from torch import nn
    >>> m = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
    >>> resolve_layer(m, "0")
    Linear(in_features=2, out_features=3, bias=True)
    """
    if not isinstance(name, str) or not name:
        raise UnknownLayerError(
            f"layer name must be a non-empty dotted string like 'layer4.2.conv3', got {name!r}"
        )
    try:
        return model.get_submodule(name)
    except AttributeError:
        pass
    candidates = [n for n, m in model.named_modules() if n and isinstance(m, SUPPORTED_TYPES)]
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.5) or candidates[-5:]
    raise UnknownLayerError(
        f"model {type(model).__name__} has no layer {name!r}; closest Conv2d/Linear names: "
        f"{', '.join(repr(c) for c in close)}. List all with "
        "[n for n, m in model.named_modules()]."
    )


def check_supported(module: nn.Module, name: str) -> nn.Module:
    """Raise unless ``module`` is a ``Conv2d`` with ``groups == 1`` and zero padding, or a ``Linear``.

    Parameters
    ----------
    module : nn.Module
        The layer to check.
    name : str
        Its dotted name, used in the error message.

    Returns
    -------
    nn.Module
        ``module`` itself, for chaining.

    Raises
    ------
    UnsupportedLayerError
        For any other type, and for grouped or depthwise convolutions.

    Examples
    --------
    >>> check_supported(nn.Linear(2, 2), "fc").out_features
    2
    """
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            raise UnsupportedLayerError(
                f"layer {name!r} is a grouped Conv2d (groups={module.groups}); neuronsplit "
                "handles only groups=1 convolutions. Choose the following 1x1 (pointwise) conv "
                "instead."
            )
        if module.padding_mode != "zeros":
            raise UnsupportedLayerError(
                f"layer {name!r} uses padding_mode={module.padding_mode!r}; only 'zeros' is "
                "supported because other paddings are not linear per input channel."
            )
        return module
    if isinstance(module, nn.Linear):
        return module
    raise UnsupportedLayerError(
        f"layer {name!r} is a {type(module).__name__}; neuronsplit scans and splits only "
        "nn.Conv2d and nn.Linear layers. Pick the Conv2d/Linear that produces the units you "
        "care about (for a timm ViT e.g. 'blocks.11.mlp.fc1')."
    )


def check_plain_forward(layer: nn.Module, name: str) -> None:
    """Refuse ``Conv2d``/``Linear`` subclasses whose forward is not the plain conv/matmul.

    Masked rows reproduce a plain conv/matmul only: timm's ``StdConv2d`` standardises weights per
    output row and ``Conv2dSame`` pads dynamically.

    Raises
    ------
    UnsupportedLayerError
        Naming the layer and what to split instead.
    """
    base = nn.Conv2d if isinstance(layer, nn.Conv2d) else nn.Linear
    custom = type(layer).forward is not base.forward
    if base is nn.Conv2d:
        custom = custom or type(layer)._conv_forward is not nn.Conv2d._conv_forward
    if custom:
        raise UnsupportedLayerError(
            f"layer {name!r} is a {type(layer).__name__}, a {base.__name__} subclass with its "
            f"own forward; neuronsplit splits only plain {base.__name__} computations. Split a "
            "plain layer next to it instead."
        )


def check_plain(model: nn.Module, layer: nn.Module, name: str) -> None:
    """:func:`check_plain_forward`, and refuse layers whose parent bypasses their forward.

    ``nn.MultiheadAttention`` reads its ``out_proj`` weights directly instead of calling the
    module, so a split version would never run.

    Raises
    ------
    UnsupportedLayerError
        Naming the layer and what to split instead.
    """
    check_plain_forward(layer, name)
    parent_name = name.rpartition(".")[0]
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(parent, nn.MultiheadAttention):
        raise UnsupportedLayerError(
            f"layer {name!r} belongs to nn.MultiheadAttention, which reads its weights directly "
            "instead of calling it, so a split version would be bypassed"
        )


def layer_kind(module: nn.Module) -> str:
    """Return ``"conv2d"`` or ``"linear"`` for a supported layer.

    Examples
    --------
    >>> layer_kind(nn.Conv2d(1, 2, 3)), layer_kind(nn.Linear(2, 2))
    ('conv2d', 'linear')
    """
    return "conv2d" if isinstance(module, nn.Conv2d) else "linear"


def layer_shape(module: nn.Module) -> tuple[int, int]:
    """``(units, inputs)`` of a supported layer: output and input channels / features.

    Examples
    --------
    >>> layer_shape(nn.Conv2d(3, 8, 3))
    (8, 3)
    """
    if isinstance(module, nn.Conv2d):
        return module.out_channels, module.in_channels
    return module.out_features, module.in_features


def unit_axis(kind: str) -> int:
    """Axis of the units in a layer's output, counted from the end (works batched or not).

    ``-3`` for ``Conv2d`` outputs ``(B, C, H, W)``; ``-1`` for ``Linear`` outputs ``(B, C)`` or
    token tensors ``(B, T, C)``.

    Examples
    --------
    >>> unit_axis("conv2d"), unit_axis("linear")
    (-3, -1)
    """
    return -3 if kind == "conv2d" else -1


@contextlib.contextmanager
def eval_mode(*models: nn.Module) -> Iterator[None]:
    """Put ``models`` in eval mode and restore every submodule's own flag afterwards.

    ``model.train(flag)`` would set all submodules to one flag, flipping those the user left in
    another mode (e.g. a frozen BatchNorm in eval mode inside a model in train mode).

    Examples
    --------
    >>> m = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2).eval())
    >>> with eval_mode(m):
    ...     m.training
    False
    >>> m.training, m[1].training
    (True, False)
    """
    modes = [(module, module.training) for model in models for module in model.modules()]
    try:
        for model in models:
            model.eval()
        yield
    finally:
        for module, mode in modes:
            module.training = mode


def is_split_layer(module: nn.Module) -> bool:
    """Whether ``module`` is a neuronsplit split layer (``.subunits`` rows and an index merge).

    Duck-typed, so that the packages below :mod:`neuronsplit.nn` (relevance, methods) can tell
    split layers apart without importing it.

    Examples
    --------
    >>> is_split_layer(nn.Linear(2, 2))
    False
    """
    merge = getattr(module, "merge", None)
    return bool(
        isinstance(getattr(module, "subunits", None), nn.Module)
        and getattr(merge, "parameter_free_linear", False)
        and hasattr(merge, "index")
        and hasattr(merge, "sub")
    )


def model_device(model: nn.Module) -> torch.device | None:
    """The device of the model's first parameter (``None`` for a model without parameters).

    Examples
    --------
    >>> model_device(nn.Linear(2, 2))
    device(type='cpu')
    """
    param = next(model.parameters(), None)
    return None if param is None else param.device
