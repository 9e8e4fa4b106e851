"""Plain chains: the traced graph that decides the ``plain`` model family.

A model is plain when its ``torch.fx`` graph (split layers kept as leaves) is a chain of
convolutions, linear layers, BatchNorms, activations, pooling, ``Flatten``, ``Dropout`` and
``Identity`` with only reshapes and ``relu`` as functions, and every BatchNorm reads the output
of a convolution/linear layer used nowhere else (so it can be folded into it, by name).
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..capture import is_split_layer
from .canonizers import ExactNamedMergeBatchNorm

__all__ = ["plain_reason", "plain_canonizers", "is_split_layer"]


_PLAIN_FUNCTIONS = {
    torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.relu, F.relu,
    operator.getitem, getattr,
}  # fmt: skip
_PLAIN_METHODS = {"view", "reshape", "flatten", "size", "squeeze", "unsqueeze", "contiguous",
                  "relu", "dim"}  # fmt: skip
_LINEAR = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCH_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_OTHER = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Flatten, nn.Unflatten, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
)  # fmt: skip


def _is_activation(module: nn.Module) -> bool:
    from zennit.types import Activation

    # zennit counts MultiheadAttention as an activation (and passes relevance through it)
    return isinstance(module, Activation) and not isinstance(module, nn.MultiheadAttention)


class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return is_split_layer(m) or super().is_leaf_module(m, module_qualified_name)


_Pairs = list[tuple[str, str]]


def _plain_graph(model: nn.Module) -> tuple[str | None, _Pairs, _Pairs]:
    """``(reason it is not plain or None, [(producer, batch_norm), ...] to fold by name)``, the
    pairs after plain layers and the pairs after split layers."""
    try:
        graph = _Tracer().trace(model)
    except Exception as err:  # any failure to trace means: we cannot see the data flow
        text = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
        return f"torch.fx could not trace its forward ({type(err).__name__}: {text})", [], []
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs: _Pairs = []
    split_pairs: _Pairs = []
    for node in graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        if node.op == "get_attr":
            return f"its forward reads the tensor {node.target!r} directly", [], []
        if node.op == "call_function" and node.target not in _PLAIN_FUNCTIONS:
            name = getattr(node.target, "__name__", str(node.target))
            return f"its forward calls {name}() (a residual add, a product or a reduction?)", [], []
        if node.op == "call_method" and node.target not in _PLAIN_METHODS:
            return f"its forward calls the tensor method .{node.target}()", [], []
        if node.op != "call_module":
            continue
        module = modules[node.target]
        if isinstance(module, _BATCH_NORM):
            source = node.args[0] if node.args else None
            is_call = isinstance(source, torch.fx.Node) and source.op == "call_module"
            producer = modules[source.target] if is_call else None
            if not (isinstance(producer, _LINEAR) or (producer and is_split_layer(producer))):
                return (
                    f"BatchNorm {node.target!r} does not follow a convolution/linear layer",
                    [],
                    [],
                )
            if len(source.users) != 1 or calls[source.target] != 1:
                return f"the input of BatchNorm {node.target!r} is used elsewhere too", [], []
            found = split_pairs if is_split_layer(producer) else pairs
            found.append((source.target, node.target))
        elif not (
            isinstance(module, _LINEAR + _OTHER) or is_split_layer(module) or _is_activation(module)
        ):
            return f"it contains {type(module).__name__} {node.target!r}", [], []
    return None, pairs, split_pairs


def plain_reason(model: nn.Module) -> str | None:
    """Why ``model`` is not a plain chain (``None`` if it is); see the module docstring.

    Examples
    --------
    >>> plain_reason(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))) is None
    True
    >>> plain_reason(nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4)))
    "it contains LayerNorm '1'"
    """
    return _plain_graph(model)[0]


def plain_canonizers(model: nn.Module) -> list[Any]:
    """BatchNorms folded into the layer before them in the graph (not in module order)."""
    _, pairs, split_pairs = _plain_graph(model)
    canonizers: list[Any] = []
    if pairs:
        canonizers.append(ExactNamedMergeBatchNorm([((a,), b) for a, b in pairs]))
    if split_pairs:
        from .split_canonizer import SplitLayerCanonizer

        canonizers.append(SplitLayerCanonizer(split_pairs))
    return canonizers
