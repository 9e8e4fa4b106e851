"""Resolving dotted layer names and checking which layers neuronsplit can handle."""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterator

from torch import nn

from .errors import UnknownLayerError, UnsupportedLayerError

__all__ = ["resolve_layer", "check_supported", "layer_kind", "eval_mode", "SUPPORTED_TYPES"]

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
    modules = dict(model.named_modules())
    if name in modules:
        return modules[name]
    candidates = [n for n, m in modules.items() if n and isinstance(m, SUPPORTED_TYPES)]
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.5)
    if not close:
        close = candidates[-5:]
    raise UnknownLayerError(
        f"model {type(model).__name__} has no layer {name!r}; closest Conv2d/Linear names: "
        f"{', '.join(repr(c) for c in close)}. List all with "
        "[n for n, m in model.named_modules()]."
    )


def check_supported(module: nn.Module, name: str) -> nn.Module:
    """Raise unless ``module`` is a ``Conv2d`` with ``groups == 1`` or a ``Linear``.

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


def layer_kind(module: nn.Module) -> str:
    """Return ``"conv2d"`` or ``"linear"`` for a supported layer."""
    return "conv2d" if isinstance(module, nn.Conv2d) else "linear"


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
