"""Steering curves: the logit of each class as one subunit is scaled from 0 to 2.

At ``alpha = 1`` the model is unchanged (the curves pass through the unsteered logits), at 0
the subunit is ablated, above 1 amplified (:func:`~neuronsplit.steer`). A subunit that carries
a concept moves that concept's classes and leaves the others alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from .._checks import check_module
from ..attribution import SubunitRef
from ..capture import eval_mode
from ..errors import ArgumentTypeError, InputShapeError, InvalidArgumentError
from ..nn import steer
from .figures import new_figure

__all__ = ["steering_logits", "steering_curves", "DEFAULT_ALPHAS"]

#: 0, 0.1, ..., 2 (1 exactly included)
DEFAULT_ALPHAS = tuple(round(0.1 * i, 10) for i in range(21))


def steering_logits(
    split: nn.Module, inputs: Tensor, subunit: Any, alphas: Sequence[float] = DEFAULT_ALPHAS
) -> np.ndarray:
    """Mean logits over ``inputs`` with ``subunit`` scaled by each alpha.

    Parameters
    ----------
    split : nn.Module
        A model from :func:`neuronsplit.apply_plan` (its scales are restored after each alpha).
    inputs : Tensor
        One batch.
    subunit : SubunitRef, (layer, unit, k) or str
        The subunit to scale (``k = -1``: the residual).
    alphas : sequence of float
        The scales.

    Returns
    -------
    numpy.ndarray
        ``(len(alphas), classes)`` float64.

    Examples
    --------
    >>> from neuronsplit.nn import apply_plan
    >>> from neuronsplit.plan import SplitPlan, UnitSplit
    >>> fc = nn.Linear(2, 2, bias=False)
    >>> with torch.no_grad():
    ...     _ = fc.weight.copy_(torch.tensor([[1.0, 2.0], [0.0, 1.0]]))
    >>> split = apply_plan(nn.Sequential(fc), SplitPlan([UnitSplit("0", 0, [[0], [1]])]))
    >>> steering_logits(split, torch.ones(1, 2), "0/u0/k1", [0.0, 1.0, 2.0]).tolist()
    [[1.0, 1.0], [3.0, 1.0], [5.0, 1.0]]
    """
    check_module(split, "split")
    if not isinstance(inputs, Tensor):
        raise ArgumentTypeError(f"inputs must be a Tensor batch, got {type(inputs).__name__}")
    ref = SubunitRef.coerce(subunit)
    key = (ref.layer, ref.unit, ref.k)
    alphas = [float(a) for a in alphas]
    if not alphas:
        raise InvalidArgumentError("alphas is empty; give at least one scale, e.g. [0, 1, 2]")
    rows = []
    with eval_mode(split), torch.no_grad():
        for alpha in alphas:
            with steer(split, {key: alpha}):
                out = split(inputs)
            if out.dim() != 2:
                raise InputShapeError(f"steering curves need (batch, classes) logits, got "
                                      f"{tuple(out.shape)}")  # fmt: skip
            rows.append(out.double().mean(0).cpu())
    return torch.stack(rows).numpy()


def steering_curves(
    split: nn.Module, inputs: Tensor, subunit: Any, alphas: Sequence[float] = DEFAULT_ALPHAS,
    *, classes: Sequence[int] | None = None, class_names: Sequence[str] | None = None,
) -> Figure:  # fmt: skip
    """Plot the mean logit of each class against alpha for one subunit.

    Parameters
    ----------
    split, inputs, subunit, alphas
        As for :func:`steering_logits`.
    classes : sequence of int, optional
        Classes to draw (default: all).
    class_names : sequence of str, optional
        Legend names, one per class of the model.

    Returns
    -------
    matplotlib.figure.Figure
        One axes with one line per class (x: alpha, y: mean logit) and a dotted line at 1.

    Examples
    --------
    >>> fig = steering_curves(split, x_test, "fc2/u0/k1")  # doctest: +SKIP
    """
    logits = steering_logits(split, inputs, subunit, alphas)
    chosen = list(range(logits.shape[1])) if classes is None else [int(c) for c in classes]
    bad = [c for c in chosen if not 0 <= c < logits.shape[1]]
    if bad:
        raise InvalidArgumentError(f"classes {bad} are outside [0, {logits.shape[1]})")
    fig, (ax,) = new_figure(1, 1, size=(5.0, 3.4))
    x = [float(a) for a in alphas]
    for c in chosen:
        name = class_names[c] if class_names is not None else f"class {c}"
        ax.plot(x, logits[:, c], marker=".", label=name)
    ax.axvline(1.0, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("alpha (scale of the subunit)")
    ax.set_ylabel(f"mean logit over {inputs.shape[0]} inputs")
    ax.set_title(f"steering {SubunitRef.coerce(subunit)}", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    return fig
