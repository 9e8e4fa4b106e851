"""Zennit LRP as Captum attributions: :class:`ZennitAttribution` and :class:`LayerZennitAttribution`.

One call runs the model in eval mode (BatchNorm uses and keeps its running statistics, dropout
is off; every module's training flag is restored afterwards) inside the relevance backend's
session (canonizers, the composite's rules and the ``Norm`` rule on split merges, all removed
on exit), seeds the backward pass with the target logit and reads Zennit's modified gradient:

* :class:`ZennitAttribution`: the relevance of the input (input-shaped, the inputs'
  tuple-ness), and on request the convergence delta ``y_t - sum(relevance)`` per sample (zero
  when relevance is conserved from the target logit down to the input);
* :class:`LayerZennitAttribution`: the relevance of a layer's output (layer-shaped). On a split
  layer's ``.subunits`` it has one channel per stored row (units, then the appended rows), so
  a subunit's relevance is its rows' columns, the same numbers ``Disentangle`` reads.

``composite=None`` takes the model family's default (:meth:`neuronsplit.Zennit.for_model`); a
bare composite gets the family's canonizers; ``relevance=`` takes anything
:func:`neuronsplit.relevance.get_backend` accepts (also ``"grad_x_act"``, which gives gradient
x input). The same objects work as ``scan(relevance=...)`` and ``Disentangle(relevance=...)``,
and an attribution object itself can be passed on as ``relevance=``.

Examples
--------
>>> import torch
>>> from torch import nn
>>> torch.manual_seed(0) and None
>>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
>>> lrp = ZennitAttribution(model)
>>> lrp.backend.describe()
'zennit:EpsilonPlusFlat'
>>> rel, delta = lrp.attribute(torch.rand(2, 4), target=1, return_convergence_delta=True)
>>> rel.shape, delta.shape
(torch.Size([2, 4]), torch.Size([2]))
"""

from __future__ import annotations

import contextlib
import typing
from collections.abc import Iterator, Sequence
from typing import Any, Literal, TypeVar

import torch
from captum.attr import GradientAttribution, LayerAttribution
from captum.log import log_usage
from torch import Tensor, nn

from .._checks import check_module
from ..capture import capture, eval_mode, resolve_layer
from ..errors import ArgumentTypeError, InvalidArgumentError, UnknownLayerError
from ..relevance import RelevanceBackend, Zennit, get_backend
from .inputs import TargetLike, format_args, format_inputs, select_target

__all__ = ["ZennitAttribution", "LayerZennitAttribution", "resolve_backend"]

TensorOrTuple = TypeVar("TensorOrTuple", Tensor, tuple[Tensor, ...])


def resolve_backend(
    model: nn.Module, composite: Any = None, relevance: Any = None
) -> RelevanceBackend:
    """The backend for ``composite=`` / ``relevance=`` (at most one of them).

    ``None`` for both: ``Zennit.for_model(model)``; otherwise ``get_backend(value, model=model)``
    (a bare composite gets the model family's canonizers).

    Examples
    --------
    >>> from torch import nn
    >>> resolve_backend(nn.Sequential(nn.Linear(2, 2)), relevance="grad_x_act").describe()
    'grad_x_act'
    """
    if composite is not None and relevance is not None:
        raise InvalidArgumentError(
            "give composite= or relevance=, not both (relevance= also takes a composite)"
        )
    value = composite if composite is not None else relevance
    if value is None:
        return Zennit.for_model(model)
    return get_backend(value, model=model)


def _wide(tensor: Tensor) -> Tensor:
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def _sum_per_sample(tensors: Sequence[Tensor]) -> Tensor:
    return sum(_wide(t).reshape(t.shape[0], -1).sum(1) for t in tensors)  # type: ignore[return-value]


def _forward(model: nn.Module, xs: tuple[Tensor, ...], args: tuple[Any, ...], who: str) -> Tensor:
    """``model(*xs, *args)``; an error of the user's model passes through with a note."""
    try:
        return model(*xs, *args)
    except Exception as err:
        shapes = ", ".join(str(tuple(x.shape)) for x in xs)
        err.add_note(f"neuronsplit.{who}: the model failed on inputs of shape {shapes}")
        raise


@contextlib.contextmanager
def _relevance_pass(
    model: nn.Module, backend: RelevanceBackend, inputs: Any, args: Any, layer: str | None, who: str
) -> Iterator[tuple[tuple[Tensor, ...], Tensor, Tensor | None]]:
    """Yield ``(leaf inputs, model output, layer output or None)`` inside the backend session."""
    _, originals = format_inputs(inputs)
    extra = format_args(args)
    with contextlib.ExitStack() as stack:
        stack.enter_context(eval_mode(model))
        stack.enter_context(torch.enable_grad())
        work = stack.enter_context(backend.session(model))
        cap = stack.enter_context(capture(work, [layer], grad=True)) if layer else None
        # leaf copies: the caller's tensors keep their requires_grad flags and graphs
        xs = tuple(x.detach().clone().requires_grad_(True) for x in originals)
        output = _forward(work, xs, extra, who)
        yield xs, output, (cap.output(layer) if cap is not None else None)


def _check_model(model: Any, who: str) -> nn.Module:
    return check_module(model, f"{who}'s model")


class ZennitAttribution(GradientAttribution):
    """Input relevance from Zennit LRP, as a Captum ``GradientAttribution``.

    Parameters
    ----------
    model : nn.Module
        The model (split or not). Relevance is computed in eval mode; training flags are
        restored after each call, and every hook and canonizer is removed.
    composite : zennit.core.Composite, optional
        ``None``: the model family's default (``Zennit.for_model``); a composite: used with
        the family's canonizers.
    relevance : optional
        Instead of ``composite``: anything ``scan(relevance=...)`` accepts, e.g.
        ``ns.Zennit(composite, canonizers=[...])`` for a model of no known family,
        ``"grad_x_act"`` (gradient x input) or another attribution object.

    Attributes
    ----------
    backend : RelevanceBackend
        The backend used (pass it, or this object, to ``scan``/``Disentangle``).

    Raises
    ------
    UnsupportedModelError
        ``composite=None`` (or a bare composite) and a model of no known family.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from zennit.composites import EpsilonAlpha2Beta1
    >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 2))
    >>> lrp = ZennitAttribution(model, EpsilonAlpha2Beta1())
    >>> lrp.attribute((torch.rand(2, 3, 6, 6),), target=[0, 1])[0].shape
    torch.Size([2, 3, 6, 6])
    """

    def __init__(self, model: nn.Module, composite: Any = None, *, relevance: Any = None) -> None:
        model = _check_model(model, "ZennitAttribution")
        self.backend = resolve_backend(model, composite, relevance)
        GradientAttribution.__init__(self, model)

    @property
    def model(self) -> nn.Module:
        """The model attributions are computed on."""
        return self.forward_func

    @property
    def multiplies_by_inputs(self) -> bool:
        """True: LRP relevance (like gradient x input) contains the input factor."""
        return True

    def has_convergence_delta(self) -> bool:
        """True: ``y_t - sum(relevance)``, see :meth:`compute_convergence_delta`."""
        return True

    @typing.overload
    def attribute(
        self,
        inputs: TensorOrTuple,
        target: TargetLike = None,
        additional_forward_args: Any = None,
        *,
        return_convergence_delta: Literal[False] = False,
    ) -> TensorOrTuple: ...

    @typing.overload
    def attribute(
        self,
        inputs: TensorOrTuple,
        target: TargetLike = None,
        additional_forward_args: Any = None,
        *,
        return_convergence_delta: Literal[True],
    ) -> tuple[TensorOrTuple, Tensor]: ...

    @log_usage()
    def attribute(
        self,
        inputs: TensorOrTuple,
        target: TargetLike = None,
        additional_forward_args: Any = None,
        *,
        return_convergence_delta: bool = False,
    ) -> TensorOrTuple | tuple[TensorOrTuple, Tensor]:
        """Relevance of every input element for the target output.

        Parameters
        ----------
        inputs : Tensor or tuple of Tensor
            Batch on dim 0. The result has the same tuple-ness, shapes and dtype.
        target : int, tuple, Tensor, list or None
            Captum's target conventions (as :meth:`neuronsplit.Disentangle.attribute`).
        additional_forward_args : Any, optional
            Extra positional arguments of the model, appended after the inputs.
        return_convergence_delta : bool, default False
            Also return ``y_t - sum(relevance)`` per sample (float32 or better).

        Returns
        -------
        Tensor or tuple of Tensor, optionally with the delta ``(B,)``

        Examples
        --------
        >>> import torch
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2))
        >>> ZennitAttribution(m).attribute(torch.rand(4, 3), target=torch.tensor(1)).shape
        torch.Size([4, 3])
        """
        is_tuple, _ = format_inputs(inputs)
        with _relevance_pass(
            self.model, self.backend, inputs, additional_forward_args, None, "ZennitAttribution"
        ) as (xs, output, _):
            y = select_target(output, target)
            grads = torch.autograd.grad(
                y, xs, grad_outputs=self.backend.output_seed(y), allow_unused=True
            )
            attrs = tuple(
                torch.zeros_like(x) if g is None else self.backend.input_attribution(x.detach(), g)
                for x, g in zip(xs, grads, strict=True)
            )
            logit = y.detach()
        attrs = tuple(a.detach() for a in attrs)
        result = attrs if is_tuple else attrs[0]
        if return_convergence_delta:
            return result, _wide(logit) - _sum_per_sample(attrs)  # type: ignore[return-value]
        return result  # type: ignore[return-value]

    @log_usage()
    def compute_convergence_delta(  # type: ignore[override]
        self,
        attributions: Tensor | tuple[Tensor, ...],
        inputs: Tensor | tuple[Tensor, ...],
        target: TargetLike = None,
        additional_forward_args: Any = None,
    ) -> Tensor:
        """``y_t - sum(attributions)`` per sample, with ``y_t`` from one forward pass.

        Parameters
        ----------
        attributions : Tensor or tuple of Tensor
            From :meth:`attribute` with the same arguments.
        inputs, target, additional_forward_args
            As in :meth:`attribute`.

        Returns
        -------
        Tensor
            Shape ``(B,)``.
        """
        _, xs = format_inputs(inputs)
        with eval_mode(self.model), torch.no_grad():
            output = _forward(
                self.model, xs, format_args(additional_forward_args), "ZennitAttribution"
            )
            y = select_target(output, target)
        attrs = attributions if isinstance(attributions, tuple) else (attributions,)
        return _wide(y) - _sum_per_sample(attrs)


def _layer_name(model: nn.Module, layer: Any) -> tuple[str, nn.Module]:
    if isinstance(layer, str):
        return layer, resolve_layer(model, layer)
    if not isinstance(layer, nn.Module):
        raise ArgumentTypeError(
            f"layer must be a submodule of the model or its dotted name, got {type(layer).__name__}"
        )
    for name, module in model.named_modules():
        if module is layer and name:
            return name, module
    raise UnknownLayerError(
        f"the layer {type(layer).__name__} is not a submodule of {type(model).__name__} (pass "
        "the model's own module, e.g. model.layer4[1].conv2, or its name 'layer4.1.conv2')"
    )


class LayerZennitAttribution(LayerAttribution, GradientAttribution):
    """Relevance of a layer's output from Zennit LRP, as a Captum ``LayerAttribution``.

    Parameters
    ----------
    model : nn.Module
        The model (split or not).
    layer : nn.Module or str
        Any submodule, or its dotted name; e.g. a split layer's ``.subunits`` (one channel per
        stored row) or the split layer itself (the merged units).
    composite, relevance
        As in :class:`ZennitAttribution`.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> m = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    >>> LayerZennitAttribution(m, m[0]).attribute(torch.rand(4, 3), target=0).shape
    torch.Size([4, 5])
    """

    def __init__(
        self,
        model: nn.Module,
        layer: nn.Module | str,
        composite: Any = None,
        *,
        relevance: Any = None,
    ) -> None:
        model = _check_model(model, "LayerZennitAttribution")
        self.layer_name, module = _layer_name(model, layer)
        self.backend = resolve_backend(model, composite, relevance)
        LayerAttribution.__init__(self, model, module)
        GradientAttribution.__init__(self, model)

    @property
    def model(self) -> nn.Module:
        """The model attributions are computed on."""
        return self.forward_func

    @property
    def multiplies_by_inputs(self) -> bool:
        """True: the relevance of a layer contains its activation factor."""
        return True

    @log_usage()
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        target: TargetLike = None,
        additional_forward_args: Any = None,
    ) -> Tensor:
        """Relevance of every element of the layer's output for the target output.

        Parameters
        ----------
        inputs, target, additional_forward_args
            As in :meth:`ZennitAttribution.attribute`.

        Returns
        -------
        Tensor
            The shape of the layer's output (the layer must run once per forward pass).

        Examples
        --------
        >>> import torch
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 2))
        >>> LayerZennitAttribution(m, "0").attribute(torch.rand(2, 1, 4, 4), target=1).shape
        torch.Size([2, 3, 2, 2])
        """
        with _relevance_pass(
            self.model, self.backend, inputs, additional_forward_args, self.layer_name,
            "LayerZennitAttribution",
        ) as (_, output, activation):  # fmt: skip
            activation = typing.cast(Tensor, activation)  # a layer was named: captured
            y = select_target(output, target)
            (grad,) = torch.autograd.grad(
                y, activation, grad_outputs=self.backend.output_seed(y), allow_unused=True
            )
            grad = torch.zeros_like(activation) if grad is None else grad
            relevance = self.backend.relevance(activation.detach(), grad)
        return relevance.detach()
