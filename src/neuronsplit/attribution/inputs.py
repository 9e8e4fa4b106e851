"""Captum's conventions for attribution inputs and the output neuron (``target``).

Used by :class:`~neuronsplit.Disentangle` to accept exactly what Captum's own methods accept, with
typed errors (:class:`~neuronsplit.errors.InputShapeError`,
:class:`~neuronsplit.errors.InvalidTargetError`) instead of failures deep inside the model.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import Tensor

from ..errors import InputShapeError, InvalidTargetError

__all__ = ["TargetLike", "format_inputs", "format_args", "select_target"]

TargetLike = int | tuple[int, ...] | Tensor | list[int] | list[tuple[int, ...]] | None


def format_inputs(inputs: Any) -> tuple[bool, tuple[Tensor, ...]]:
    """``(was_tuple, inputs_as_tuple)``; typed errors for non-tensors, ints, empty or ragged batches.

    Examples
    --------
    >>> import torch
    >>> format_inputs(torch.zeros(2, 3))[0], len(format_inputs((torch.zeros(2, 3),))[1])
    (False, 1)
    """
    is_tuple = isinstance(inputs, tuple)
    xs = inputs if is_tuple else (inputs,)
    if not xs or not all(isinstance(x, Tensor) for x in xs):
        kinds = ", ".join(type(x).__name__ for x in xs) if is_tuple else type(inputs).__name__
        raise InputShapeError(
            f"inputs must be a Tensor or a tuple of Tensors (batch on dim 0), got {kinds}"
        )
    for i, x in enumerate(xs):
        if not x.is_floating_point():
            raise InputShapeError(
                f"input {i} has dtype {x.dtype}; attributions need floating-point inputs "
                "(convert with .float())"
            )
        if x.dim() == 0 or x.shape[0] == 0:
            raise InputShapeError(
                f"input {i} has shape {tuple(x.shape)}; expected a non-empty batch on dim 0"
            )
    batch = {int(x.shape[0]) for x in xs}
    if len(batch) != 1:
        shapes = ", ".join(str(tuple(x.shape)) for x in xs)
        raise InputShapeError(f"all inputs must share the batch size on dim 0, got {shapes}")
    return is_tuple, xs


def format_args(additional_forward_args: Any) -> tuple[Any, ...]:
    """Captum's ``additional_forward_args`` as a tuple appended after the inputs."""
    if additional_forward_args is None:
        return ()
    if isinstance(additional_forward_args, tuple):
        return additional_forward_args
    return (additional_forward_args,)


def _as_target_index(value: Any, target: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, Tensor) and value.is_floating_point()):
        raise InvalidTargetError(f"target {target!r} must hold integer indices, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise InvalidTargetError(
            f"target {target!r} must be an int, a tuple of ints, a list or an integer tensor; "
            f"got {type(value).__name__} {value!r}"
        ) from None


def _target_rows(target: Any, batch: int) -> list[tuple[int, ...]]:
    """One index tuple per sample (Captum's target conventions, validated)."""
    if isinstance(target, Tensor):
        if target.is_floating_point():
            raise InvalidTargetError(f"target tensor must be integer, got dtype {target.dtype}")
        if target.numel() == 1 and target.dim() <= 1:  # 0-d or one element: same for all
            return [(int(target.reshape(())),)] * batch
        if target.dim() == 1 and target.shape[0] == batch:
            return [(int(t),) for t in target.tolist()]
        if target.dim() == 2 and target.shape[0] == batch:
            return [tuple(int(v) for v in row) for row in target.tolist()]
        raise InvalidTargetError(
            f"target tensor of shape {tuple(target.shape)} does not fit a batch of {batch}; "
            f"give one index per sample (shape ({batch},)) or a single index"
        )
    if isinstance(target, tuple):
        return [tuple(_as_target_index(v, target) for v in target)] * batch
    if isinstance(target, list):
        if len(target) != batch:
            raise InvalidTargetError(
                f"target list has {len(target)} entries but the batch has {batch} samples"
            )
        return [
            tuple(_as_target_index(v, target) for v in t)
            if isinstance(t, tuple)
            else (_as_target_index(t, target),)
            for t in target
        ]
    return [(_as_target_index(target, target),)] * batch


def select_target(output: Tensor, target: Any) -> Tensor:
    """The target output of every sample, shape ``(B,)``, with Captum's target conventions.

    ``target`` is an int or 0-d tensor (same index for all samples), a tuple (one index per
    output dimension), a list or 1-d tensor (one per sample), a list of tuples, or ``None``
    for models with one output per sample.

    Raises
    ------
    InvalidTargetError
        Naming the value and the valid range.

    Examples
    --------
    >>> import torch
    >>> select_target(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([1, 0]))
    tensor([2., 3.])
    """
    if not isinstance(output, Tensor) or output.dim() == 0:
        raise InvalidTargetError(
            f"the model must return a batched Tensor, got {type(output).__name__}"
        )
    batch, per_sample = int(output.shape[0]), tuple(output.shape[1:])
    if target is None:
        if output[0].numel() != 1:
            raise InvalidTargetError(
                f"target=None needs one output per sample, but the model returns shape "
                f"{tuple(output.shape)}; pass target=<index> with 0 <= index < "
                f"{per_sample[0] if per_sample else 1}"
            )
        return output.reshape(batch)
    rows = _target_rows(target, batch)
    for row in rows:
        if len(row) != len(per_sample) or any(
            not 0 <= i < n for i, n in zip(row, per_sample, strict=False)
        ):
            valid = " x ".join(f"0..{n - 1}" for n in per_sample) or "none"
            shown = row[0] if len(row) == 1 else row
            raise InvalidTargetError(
                f"target {shown!r} is out of range for model outputs of shape "
                f"{tuple(output.shape)} (valid per sample: {valid})"
            )
    cols = [torch.tensor(c, device=output.device) for c in zip(*rows, strict=True)]
    return output[(torch.arange(batch, device=output.device), *cols)]
