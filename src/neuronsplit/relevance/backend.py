"""The relevance backend interface and its default, gradient x activation.

A backend is the one object that ``scan`` and ``Disentangle`` ask about relevance. It owns

* its **session** on a model (:meth:`RelevanceBackend.session`): nothing for gradient x
  activation; composite and canonizer registration for Zennit, undone on exit;
* the **seed** of the output relevance (:meth:`RelevanceBackend.output_seed`): the
  ``grad_outputs`` given to autograd for the selected target outputs;
* the **relevance of a tensor** from its value and the (possibly modified) gradient that
  reached it (:meth:`RelevanceBackend.relevance`), per unit (:meth:`RelevanceBackend.unit_relevance`)
  and at the input (:meth:`RelevanceBackend.input_attribution`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ..capture import unit_sum
from ..errors import ArgumentTypeError, InvalidArgumentError

__all__ = ["RelevanceBackend", "GradXAct", "get_backend", "per_unit"]


def per_unit(relevance: Tensor, kind: str) -> Tensor:
    """Sum elementwise relevance to ``(B, C)``, in float32 or better.

    Half-precision relevance summed over a 112x112 map overflows, so it is summed in float32.
    """
    if relevance.dtype in (torch.float16, torch.bfloat16):
        relevance = relevance.float()
    return unit_sum(relevance, kind)


class RelevanceBackend:
    """How relevance is computed; subclass it to add a backend.

    Subclasses override :meth:`relevance` (and, if they change the model, :meth:`session`).
    """

    name: str = "base"

    @contextlib.contextmanager
    def session(self, model: nn.Module, *, copy: bool = False) -> Iterator[nn.Module]:
        """Prepare ``model`` for relevance and yield the module to run; undone on exit.

        Parameters
        ----------
        model : nn.Module
            The model.
        copy : bool
            Work on a private deep copy (so the caller's model never carries a hook).
        """
        yield model

    def output_seed(self, selected: Tensor) -> Tensor:
        """``grad_outputs`` for the selected target outputs (default: ones, as Captum seeds)."""
        return torch.ones_like(selected)

    def relevance(self, activation: Tensor, grad: Tensor) -> Tensor:
        """Elementwise relevance of a tensor from its value and the gradient that reached it."""
        raise NotImplementedError

    def unit_relevance(self, activation: Tensor, grad: Tensor, kind: str) -> Tensor:
        """Per-unit relevance ``(B, C)`` of a layer output, in float32 or better."""
        return per_unit(self.relevance(activation, grad), kind)

    def input_attribution(self, inputs: Tensor, grad: Tensor) -> Tensor:
        """Relevance of the model input from its (modified) gradient."""
        return self.relevance(inputs, grad)

    def describe(self) -> str:
        """Short description stored in scan results and plans."""
        return self.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()!r})"


class GradXAct(RelevanceBackend):
    """Gradient x activation (``relevance="grad_x_act"``): Hesse et al.'s relevance.

    ``R = A * dy_t/dA``; per unit it is summed over space (tokens), which equals Captum's
    ``LayerGradientXActivation`` summed the same way, and LRP-0 on ReLU networks.

    Examples
    --------
    >>> backend = GradXAct()
    >>> backend.unit_relevance(torch.ones(1, 2, 3, 3), torch.full((1, 2, 3, 3), 2.0), "conv2d")
    tensor([[18., 18.]])
    """

    name = "grad_x_act"

    def relevance(self, activation: Tensor, grad: Tensor) -> Tensor:
        return activation * grad


def get_backend(relevance: Any, *, model: nn.Module | None = None) -> RelevanceBackend:
    """Turn ``"grad_x_act"``, a Zennit composite, a backend or an attribution into a backend.

    Every entry point that takes a ``relevance=`` argument (scan, Disentangle,
    ZennitAttribution) goes through this one function, so they accept the same objects:

    * a :class:`RelevanceBackend` (``GradXAct()``, ``Zennit(...)``, ``Zennit.for_model(m)``):
      used as it is;
    * ``"grad_x_act"``;
    * a bare Zennit ``Composite``: ``Zennit.for_model(model, composite)`` (the model family's
      canonizers) when ``model`` is given, else ``Zennit(composite)``;
    * an attribution object that holds a backend (``ZennitAttribution``, ``Disentangle``):
      its ``.backend``.

    Raises
    ------
    InvalidArgumentError
        For an unknown string; the message lists the valid choices.
    ArgumentTypeError
        For any other type.
    UnsupportedModelError
        A bare composite with a ``model`` of no known family (see ``Zennit.for_model``).

    Examples
    --------
    >>> get_backend("grad_x_act").describe()
    'grad_x_act'
    >>> from zennit.composites import EpsilonPlusFlat
    >>> get_backend(EpsilonPlusFlat(), model=nn.Sequential(nn.Linear(2, 2))).describe()
    'zennit:EpsilonPlusFlat'
    """
    if isinstance(relevance, RelevanceBackend):
        return relevance
    held = getattr(relevance, "backend", None)
    if isinstance(held, RelevanceBackend) and not isinstance(relevance, (str, nn.Module)):
        return held
    if isinstance(relevance, str):
        if relevance == "grad_x_act":
            return GradXAct()
        raise InvalidArgumentError(
            f"unknown relevance {relevance!r}; use 'grad_x_act' or ns.Zennit(composite), e.g. "
            "ns.Zennit(zennit.composites.EpsilonPlusFlat()), or ns.Zennit.for_model(model)"
        )
    from zennit.core import Composite

    from .zennit import Zennit

    if isinstance(relevance, Composite):
        return Zennit(relevance) if model is None else Zennit.for_model(model, relevance)
    raise ArgumentTypeError(
        f"relevance must be 'grad_x_act', a zennit Composite, neuronsplit.Zennit(...) or an "
        f"attribution holding one (ns.ZennitAttribution), got {type(relevance).__name__}"
    )
