"""The computation behind :class:`~neuronsplit.Disentangle`: one masked backward per subunit.

One call runs with the split model in eval mode (as :func:`neuronsplit.scan` does: BatchNorm
uses and keeps its running statistics, dropout is off; every module's training flag is restored
afterwards), inside the relevance backend's session on the split model:

1. a forward pass with :func:`neuronsplit.capture.capture` on the split layer's ``.subunits``
   output ``A`` (every row) and on its merged output ``z``;
2. one backward pass from the target outputs to ``A`` and ``z`` (seeded by the backend);
3. per subunit, a backward pass from ``A`` to the inputs, seeded with the gradient at ``A``
   restricted to the subunit's rows and weighted by its reading (``t_k + r`` in the overlap
   form) and merge coefficient; the backend turns the input gradient into relevance.

Relevance of a subunit at the layer: ``coef * sum_rows w * R(A_row)``, summed over positions,
with ``R`` the backend's elementwise relevance (``A * grad`` or Zennit's modified gradient); in
float32 for half-precision models (as the scan's relevance), the attributions in the inputs'
dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..capture import capture, eval_mode
from ..nn import SplitConv2d, SplitLinear
from ..relevance import RelevanceBackend
from .inputs import TargetLike, format_args, format_inputs, select_target
from .selectors import channel_sum

__all__ = ["Subunit", "Raw", "forward_checked", "masked_backward"]


@dataclass(frozen=True)
class Subunit:
    """The rows of a subunit in the ``.subunits`` output, their weights and the merge coefficient."""

    rows: tuple[tuple[int, float], ...]
    coef: float = 1.0


@dataclass(frozen=True)
class Raw:
    """Results of :func:`masked_backward`."""

    attrs: list[tuple[Tensor, ...]]  # per subunit, one tensor per input
    relevance: Tensor  # (B, n_subunits)
    unit_attr: tuple[Tensor, ...] | None
    unit_relevance: Tensor | None


def forward_checked(model: nn.Module, xs: tuple[Tensor, ...], args: tuple[Any, ...]) -> Tensor:
    """``model(*xs, *args)``; an error of the user's model passes through with a note.

    (neuronsplit 0.1 turned every RuntimeError that mentioned a size or a shape into an
    ``InputShapeError``, which hid bugs of the model itself.)
    """
    try:
        return model(*xs, *args)
    except Exception as err:
        shapes = ", ".join(str(tuple(x.shape)) for x in xs)
        err.add_note(f"neuronsplit.Disentangle: the model failed on inputs of shape {shapes}")
        raise


def _wide(relevance: Tensor) -> Tensor:
    """Half-precision relevance in float32: its sums over a large map overflow float16."""
    return relevance.float() if relevance.dtype in (torch.float16, torch.bfloat16) else relevance


def _seed(grad: Tensor, dim: int, subunit: Subunit) -> Tensor:
    seed = torch.zeros_like(grad)
    for row, weight in subunit.rows:
        seed.select(dim, row).add_(grad.select(dim, row), alpha=subunit.coef * weight)
    return seed


def masked_backward(
    model: nn.Module,
    backend: RelevanceBackend,
    inputs: Any,
    target: TargetLike,
    additional_forward_args: Any,
    split: SplitConv2d | SplitLinear,
    subunits: Sequence[Subunit],
    *,
    unit: int | None = None,
    with_attributions: bool = True,
) -> Raw:
    """Relevance of ``subunits`` of ``split`` and their input attributions, one forward pass.

    Parameters
    ----------
    model : nn.Module
        The split model.
    backend : RelevanceBackend
        Gradient x activation or Zennit; its session is opened for the call.
    inputs, target, additional_forward_args
        Captum's conventions (see :meth:`~neuronsplit.Disentangle.attribute`).
    split : SplitConv2d or SplitLinear
        The split layer.
    subunits : sequence of Subunit
        What to attribute.
    unit : int, optional
        Also attribute this unit of the merged output (the whole unit).
    with_attributions : bool
        False: relevance only (no backward to the inputs).

    Returns
    -------
    Raw
    """
    _, originals = format_inputs(inputs)
    args = format_args(additional_forward_args)
    dim = split.merge.dim
    layers = {"rows": split.subunits, "merged": split}
    with (
        eval_mode(model),  # attributions explain the model in eval mode (BatchNorm stats fixed)
        torch.enable_grad(),
        backend.session(model) as work,
        capture(work, layers, grad=True) as cap,
    ):
        # leaf copies: the caller's tensors keep their requires_grad flags and graphs
        xs = tuple(x.detach().clone().requires_grad_(True) for x in originals)
        output = forward_checked(work, xs, args)
        inter, out = cap.output("rows"), cap.output("merged")
        y = select_target(output, target)
        g_inter, g_out = torch.autograd.grad(
            y, (inter, out), grad_outputs=backend.output_seed(y), retain_graph=True,
            allow_unused=True,
        )  # fmt: skip
        g_inter = torch.zeros_like(inter) if g_inter is None else g_inter
        g_out = torch.zeros_like(out) if g_out is None else g_out
        rel_inter = _wide(backend.relevance(inter.detach(), g_inter))
        relevance = torch.stack(
            [s.coef * sum(w * channel_sum(rel_inter, dim, r) for r, w in s.rows) for s in subunits],
            1,
        )
        unit_relevance = None
        if unit is not None:
            unit_relevance = channel_sum(_wide(backend.relevance(out.detach(), g_out)), dim, unit)

        def to_inputs(tensor: Tensor, seed: Tensor) -> tuple[Tensor, ...]:
            grads = torch.autograd.grad(tensor, xs, seed, retain_graph=True, allow_unused=True)
            return tuple(
                torch.zeros_like(x) if g is None else backend.input_attribution(x.detach(), g)
                for x, g in zip(xs, grads, strict=True)
            )

        attrs: list[tuple[Tensor, ...]] = []
        unit_attr = None
        if with_attributions:
            attrs = [to_inputs(inter, _seed(g_inter, dim, s)) for s in subunits]
            if unit is not None:
                unit_attr = to_inputs(out, _seed(g_out, dim, Subunit(((unit, 1.0),))))
    return Raw(attrs, relevance.detach(), unit_attr, unit_relevance)
