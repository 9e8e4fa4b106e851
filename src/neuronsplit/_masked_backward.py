"""The computation behind :class:`~neuronsplit.Disentangle`: one masked backward per subunit.

Private module; the public API is :mod:`neuronsplit.attribution`, whose module docstring gives
the definitions. This module holds

* the relevance backend of a call (:func:`_backend`: gradient x activation or a Zennit
  composite with canonizers),
* the hook session of one call (:func:`relevance_session`): Zennit's composite and canonizers,
  the ``Norm`` rule on every :class:`~neuronsplit.surgery.IndexMerge` that the composite does
  not rule, and the recorders of the split layer's ``.subunits`` and ``.merge`` outputs -- all
  removed again on exit, also on error,
* the forward pass with typed shape errors (:func:`forward_checked`) and the masked backward
  from subunit channels to the inputs (:func:`masked_backward`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ._captum_inputs import TargetLike, format_args, format_inputs, select_target
from .errors import InputShapeError, UnsupportedLayerError
from .neurons import _channel_sum
from .surgery import IndexMerge, SplitConv2d, SplitLinear

__all__ = ["relevance_session", "forward_checked", "masked_backward"]

# Substrings of PyTorch's messages for inputs that do not fit a layer (why: a wrong input shape
# surfaces as a RuntimeError deep inside the model; we re-raise it as a typed error, but leave
# unrelated RuntimeErrors of user modules alone).
_SHAPE_WORDS = ("shape", "size", "mat1 and mat2", "dimension", "channels", "expected input")


def _masked(grad: Tensor, dim: int, channel: int) -> Tensor:
    seed = torch.zeros_like(grad)
    seed.select(dim, channel).copy_(grad.select(dim, channel))
    return seed


# --------------------------------------------------------------------------------------------
# relevance backends
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Backend:
    composite: Any = None  # None: gradient x activation
    canonizers: tuple[Any, ...] = ()

    @property
    def zennit(self) -> bool:
        return self.composite is not None

    def describe(self) -> str:
        return f"zennit:{type(self.composite).__name__}" if self.zennit else "grad_x_act"


def _backend(relevance: Any) -> _Backend:
    """The composite and canonizers of a ``relevance=`` value (via ``relevance.get_backend``)."""
    from .relevance import GradXAct, Zennit, get_backend

    backend = get_backend(relevance)
    if isinstance(backend, Zennit):
        return _Backend(backend.composite, tuple(backend.canonizers))
    if isinstance(backend, GradXAct):
        return _Backend()
    raise ValueError(
        f"Disentangle supports 'grad_x_act' and Zennit relevance, got {type(backend).__name__}"
    )


class _Recorder:
    """Forward hooks that keep the (last) output of ``.subunits`` and ``.merge``."""

    def __init__(self) -> None:
        self.inter: list[Tensor] = []
        self.out: list[Tensor] = []

    def hook_inter(self, module: nn.Module, args: Any, output: Tensor) -> None:
        self.inter.append(output)

    def hook_out(self, module: nn.Module, args: Any, output: Tensor) -> None:
        self.out.append(output)

    def tensors(self, name: str) -> tuple[Tensor, Tensor]:
        if len(self.inter) != 1 or len(self.out) != 1:
            raise UnsupportedLayerError(
                f"split layer {name!r} ran {len(self.inter)} times in one forward pass; "
                "Disentangle needs it to run exactly once (a module reused in several places "
                "cannot be attributed per use)"
            )
        return self.inter[0], self.out[0]


@dataclass(frozen=True)
class _Raw:
    attrs: list[tuple[Tensor, ...]]  # per requested channel, one tensor per input
    relevance: Tensor  # (B, n_channels)
    unit_attr: tuple[Tensor, ...] | None
    unit_relevance: Tensor | None


# --------------------------------------------------------------------------------------------
# one call: hooks, forward, masked backward
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def relevance_session(
    model: nn.Module,
    backend: _Backend,
    split: SplitConv2d | SplitLinear,
    merge_epsilon: float,
) -> Iterator[_Recorder]:
    """Register relevance hooks and recorders; everything is undone on exit (also on error).

    Parameters
    ----------
    model : nn.Module
        The split model.
    backend : _Backend
        From :func:`_backend`.
    split : SplitConv2d or SplitLinear
        The split layer whose ``.subunits`` and ``.merge`` outputs are recorded.
    merge_epsilon : float
        Stabilizer of the ``Norm`` rule given to merges the composite does not rule.

    Yields
    ------
    _Recorder
    """
    recorder = _Recorder()
    with contextlib.ExitStack() as stack:
        if backend.zennit:
            from zennit.rules import Norm

            for canonizer in backend.canonizers:
                for handle in canonizer.apply(model):
                    stack.callback(handle.remove)
            merges = [m for m in model.modules() if isinstance(m, IndexMerge)]
            before = {id(m): len(m._forward_pre_hooks) for m in merges}
            stack.callback(backend.composite.remove)  # first, so a failed register is undone
            backend.composite.register(model)
            for merge in merges:
                # a composite that already rules the merge wins; otherwise the Norm rule
                # (epsilon rule for a parameter-free linear map) distributes R_u to the rows
                if len(merge._forward_pre_hooks) == before[id(merge)]:
                    rule = Norm(stabilizer=merge_epsilon)
                    handles = rule.register(merge)
                    stack.callback(handles.remove)
        # registered last, so they see the tensors after Zennit's own forward hooks
        h1 = split.subunits.register_forward_hook(recorder.hook_inter)
        stack.callback(h1.remove)
        h2 = split.merge.register_forward_hook(recorder.hook_out)
        stack.callback(h2.remove)
        yield recorder


def forward_checked(model: nn.Module, xs: tuple[Tensor, ...], args: tuple[Any, ...]) -> Tensor:
    """``model(*xs, *args)``; a shape ``RuntimeError`` becomes :class:`InputShapeError`."""
    try:
        return model(*xs, *args)
    except RuntimeError as err:
        text = str(err).lower()
        if any(word in text for word in _SHAPE_WORDS):
            shapes = ", ".join(str(tuple(x.shape)) for x in xs)
            raise InputShapeError(
                f"inputs of shape {shapes} do not fit {type(model).__name__}: {err}"
            ) from err
        raise


def masked_backward(
    model: nn.Module,
    backend: _Backend,
    merge_epsilon: float,
    inputs: Any,
    target: TargetLike,
    additional_forward_args: Any,
    layer_name: str,
    split: SplitConv2d | SplitLinear,
    channels: Sequence[int],
    *,
    unit: int | None = None,
    with_attributions: bool = True,
) -> _Raw:
    """Relevance of ``channels`` of ``split.subunits`` and their input attributions, one forward.

    Parameters
    ----------
    model, backend, merge_epsilon
        As in :func:`relevance_session`.
    inputs, target, additional_forward_args
        Captum's conventions (see :class:`~neuronsplit.Disentangle.attribute`).
    layer_name : str
        Name of ``split`` (for error messages).
    split : SplitConv2d or SplitLinear
        The split layer.
    channels : sequence of int
        Channels of the ``.subunits`` output to attribute.
    unit : int, optional
        Also attribute this channel of the merged output (the whole unit).
    with_attributions : bool
        False: relevance only (no backward to the inputs).

    Returns
    -------
    _Raw
    """
    _, originals = format_inputs(inputs)
    args = format_args(additional_forward_args)
    dim, zennit = split.merge.dim, backend.zennit
    with torch.enable_grad(), relevance_session(model, backend, split, merge_epsilon) as recorder:
        # leaf copies: the caller's tensors keep their requires_grad flags and graphs
        xs = tuple(x.detach().clone().requires_grad_(True) for x in originals)
        output = forward_checked(model, xs, args)
        inter, out = recorder.tensors(layer_name)
        y = select_target(output, target)
        seed = y.detach() if zennit else torch.ones_like(y)
        g_inter, g_out = torch.autograd.grad(
            y, (inter, out), grad_outputs=seed, retain_graph=True, allow_unused=True
        )
        g_inter = torch.zeros_like(inter) if g_inter is None else g_inter
        g_out = torch.zeros_like(out) if g_out is None else g_out
        # under Zennit the (modified) gradient at a tensor already is its relevance
        rel_inter = g_inter if zennit else inter.detach() * g_inter
        relevance = torch.stack([_channel_sum(rel_inter, dim, c) for c in channels], 1)
        unit_relevance = None
        if unit is not None:
            rel_out = g_out if zennit else out.detach() * g_out
            unit_relevance = _channel_sum(rel_out, dim, unit)

        def to_inputs(tensor: Tensor, grad: Tensor, channel: int) -> tuple[Tensor, ...]:
            grads = torch.autograd.grad(
                tensor, xs, _masked(grad, dim, channel), retain_graph=True, allow_unused=True
            )
            return tuple(
                torch.zeros_like(x) if g is None else (g if zennit else x.detach() * g)
                for x, g in zip(xs, grads, strict=True)
            )

        attrs: list[tuple[Tensor, ...]] = []
        unit_attr = None
        if with_attributions:
            attrs = [to_inputs(inter, g_inter, c) for c in channels]
            if unit is not None:
                unit_attr = to_inputs(out, g_out, unit)
    return _Raw(attrs, relevance.detach(), unit_attr, unit_relevance)
