"""Captum attribution of what flows through one subunit: :class:`Disentangle`.

Definition (conditional attribution in the sense of concept relevance propagation)
--------------------------------------------------------------------------------------
Let ``A`` be the output of the split layer's ``.subunits`` child (all units, then the extra
rows), ``y`` the target output and ``z_u`` the merged unit. The rows are the disjoint parts
``t_k`` and ``r`` and the merge adds them, so ``dy/dA_row = dy/dz_u`` for every row of ``u``. A
subunit ``s`` is a weighted sum of rows (one row ``t_k`` in the disjoint form, ``t_k + r`` in the
overlap form) with a merge coefficient ``coef_s`` (1, or ``-(K-1)`` for an overlap residual).

* **Relevance of the subunit at the layer** (``relevance="grad_x_act"``, the default):
  ``R_s = coef_s * sum_positions s * dy/dz_u``, its share of the unit's gradient x activation
  relevance ``R_u = z_u * dy/dz_u``. Because the merge is linear, the subunits' relevances add
  up to ``R_u`` in both merge forms.
* **Input attribution**: the gradient at ``A`` is masked to the subunit's rows (for a Conv2d at
  all positions), weighted by ``coef_s``, propagated to the input, and multiplied by the input:
  ``attr = x * d(coef_s * sum_pos s * stopgrad(dy/dz_u)) / dx``. On a ReLU network without biases
  every row is positively homogeneous in ``x``, so ``sum attr = R_s`` exactly (Euler);
  biases and non-homogeneous layers leave a gap, reported by the convergence delta
  ``R_s - sum attr``. The backward starts at ``A``, so relevance never leaks into branches
  that bypass the split layer (zennit-crp's ``exclude_parallel``).
* **Zennit** (``relevance=<zennit Composite>``): the same masked backward runs in Zennit's
  modified graph, seeded with the target logit (``y`` itself, so LRP-0 equals gradient x
  input). The Zennit backend explains a split layer exactly as its original layer
  (:class:`~neuronsplit.relevance.SplitRule`): the BatchNorm after it is folded into its rows
  and the unit's relevance goes to each row in proportion to what the composite's rule gives
  that row's inputs, so the rows of a unit add up to it and the input relevance equals the
  unsplit model's. Hooks and canonizers are registered only for the duration of a call and
  removed in ``finally``.
* **Merge forms.** The rows are the disjoint parts ``t_k`` and ``r``. In the disjoint form a
  subunit is one row. In Hesse's overlap form subunit ``k`` is ``s_k = t_k + r`` (merge
  coefficient 1) and the residual ``r`` enters with ``-(K-1)``; its relevance and its masked
  backward use both rows accordingly.

Sums: the input attributions of all subunits of a unit (including the residual) add up to the
unit's conditional attribution, computed by :meth:`Disentangle.attribute_unit` directly at
the merged output (identical to the unsplit model's), in both merge forms and both backends.
The forward pass and the masked backward live in :mod:`neuronsplit.attribution.masked`.

Examples
--------
>>> import torch
>>> from torch import nn
>>> from neuronsplit.plan import SplitPlan, UnitSplit
>>> torch.manual_seed(0) and None
>>> model = nn.Sequential(nn.Linear(4, 3, bias=False), nn.ReLU(), nn.Linear(3, 2, bias=False))
>>> plan = SplitPlan([UnitSplit("0", 1, [[0, 1], [2]], shared=[3], merge="disjoint")])
>>> dis = Disentangle(model, plan)
>>> x = torch.rand(5, 4)
>>> attr, delta = dis.attribute(x, target=0, subunit=("0", 1, 0), return_convergence_delta=True)
>>> attr.shape, bool(delta.abs().max() < 1e-5)
(torch.Size([5, 4]), True)
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from typing import Any, Literal, TypeVar

import torch
from captum.attr import GradientAttribution
from captum.log import log_usage
from torch import Tensor, nn

from ..errors import (
    ArgumentTypeError,
    InvalidArgumentError,
    PlanMismatchError,
    UnknownLayerError,
    UnsupportedLayerError,
)
from ..nn import SplitConv2d, SplitLinear, apply_plan, iter_split_layers, plan_of
from ..plan import SplitPlan
from ..relevance import get_backend
from .inputs import TargetLike, format_inputs
from .masked import Raw, Subunit, masked_backward
from .refs import RESIDUAL, SubunitLike, SubunitRef, resolve_subunit, subunit_refs, subunit_rows
from .results import UnitAttribution

__all__ = ["Disentangle", "UnitAttribution"]

TensorOrTuple = TypeVar("TensorOrTuple", Tensor, tuple[Tensor, ...])


def _sum_per_sample(tensors: Sequence[Tensor]) -> Tensor:
    return sum(t.reshape(t.shape[0], -1).sum(1) for t in tensors)  # type: ignore[return-value]


def _prepare_model(model: nn.Module, plan: SplitPlan | None) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(
            f"Disentangle needs an nn.Module (a split model, or a model plus a plan), got "
            f"{type(model).__name__}"
        )
    is_split = any(True for _ in iter_split_layers(model))
    if plan is None:
        if not is_split:
            raise PlanMismatchError(
                f"{type(model).__name__} contains no split layers and no plan was given; use "
                "Disentangle(model, plan) or Disentangle(neuronsplit.apply_plan(model, plan))"
            )
        return model
    if not isinstance(plan, SplitPlan):
        raise ArgumentTypeError(f"plan must be a SplitPlan, got {type(plan).__name__}")
    if is_split:
        if plan_of(model).by_layer() != plan.by_layer():
            raise PlanMismatchError(
                f"{type(model).__name__} is already split with a different plan "
                f"({plan_of(model)!r}); pass the unsplit model with the plan, or the split "
                "model without one"
            )
        return model
    try:
        return apply_plan(model, plan)
    except (UnknownLayerError, UnsupportedLayerError) as err:
        raise PlanMismatchError(
            f"the plan does not fit {type(model).__name__} (is it a plan for another model?): {err}"
        ) from err


class Disentangle(GradientAttribution):
    """Input attribution of what flows through one subunit of a split model.

    A ``captum.attr.GradientAttribution``: input-shaped results with the inputs' tuple-ness,
    ``attribute`` decorated with ``captum.log.log_usage``, convergence delta on request. The
    exact definition is in the module docstring; the parameters are those of ``__init__``.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from neuronsplit.plan import SplitPlan, UnitSplit
    >>> model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(),
    ...                       nn.Linear(3 * 4 * 4, 2))
    >>> dis = Disentangle(model, SplitPlan([UnitSplit("0", 1, [[0], [1]])]))
    >>> x = torch.rand(2, 2, 4, 4)
    >>> dis.attribute(x, target=1, subunit=SubunitRef("0", 1, "residual")).shape
    torch.Size([2, 2, 4, 4])
    >>> res = dis.attribute_unit(x, target=1, layer="0", unit=1)
    >>> [str(r) for r in res.refs], torch.allclose(res.subunits.sum(0), res.unit, atol=1e-6)
    (['0/u1/k0', '0/u1/k1', '0/u1/residual'], True)
    """

    def __init__(
        self,
        model: nn.Module,
        plan: SplitPlan | None = None,
        *,
        relevance: Any = "grad_x_act",
    ) -> None:
        """Wrap a split model (or an unsplit one and its plan) for subunit attribution.

        Parameters
        ----------
        model : nn.Module
            A split model (from :func:`neuronsplit.apply_plan`), used as is, or an unsplit model
            together with ``plan`` (then a split deep copy is made; ``model`` is untouched).
            Attributions are computed in eval mode, as the scan's relevances are (BatchNorm uses
            its running statistics and never updates them, dropout is off); every module's
            training flag is restored after each call.
        plan : SplitPlan, optional
            The plan to apply to an unsplit ``model``.
        relevance : "grad_x_act" or zennit Composite or RelevanceBackend, default "grad_x_act"
            Gradient x activation (seeded with 1 at the target, as Captum does) or Zennit LRP
            (seeded with the target logit, so LRP-0 reproduces gradient x activation); the same
            objects ``neuronsplit.scan`` and ``ns.ZennitAttribution`` accept; a bare composite gets
            the model family's canonizers (``ns.Zennit.for_model``).

        Raises
        ------
        PlanMismatchError
            No split layers and no plan, a plan that does not fit ``model``, or a split model with
            a different plan.
        UnsupportedModelError, InvalidArgumentError
            A bare composite on a model of no known family, or a composite its family refuses
            (``Zennit.for_model``); pass ``ns.Zennit(composite, canonizers=[...])`` instead.
        """
        split = _prepare_model(model, plan)
        self.backend = get_backend(relevance, model=split)
        GradientAttribution.__init__(self, split)

    @property
    def model(self) -> nn.Module:
        """The split model attributions are computed on."""
        return self.forward_func

    @property
    def multiplies_by_inputs(self) -> bool:
        """True: gradient x input (LRP relevance likewise contains the input factor)."""
        return True

    def has_convergence_delta(self) -> bool:
        """True: see :meth:`compute_convergence_delta`."""
        return True

    def subunits(self, layer: str | None = None) -> list[SubunitRef]:
        """Every subunit of the split model (or of one split layer), in plan order."""
        return subunit_refs(self.model, layer)

    # ---------------------------------------------------------------------------------------
    def _run(
        self,
        inputs: Any,
        target: TargetLike,
        additional_forward_args: Any,
        refs: Sequence[SubunitRef],
        *,
        unit: int | None = None,
        with_attributions: bool = True,
    ) -> tuple[Raw, SplitConv2d | SplitLinear]:
        """One forward pass with the relevance session, then the masked backward per subunit."""
        if not refs or len({ref.layer for ref in refs}) != 1:
            raise InvalidArgumentError(
                f"one call attributes subunits of one layer, got {list(refs)}"
            )
        subunits = []
        for ref in refs:
            split, rows, coef = subunit_rows(self.model, ref)
            subunits.append(Subunit(rows, coef))
        raw = masked_backward(
            self.model, self.backend, inputs, target, additional_forward_args, split, subunits,
            unit=unit, with_attributions=with_attributions,
        )  # fmt: skip
        return raw, split

    # ---------------------------------------------------------------------------------------
    @typing.overload
    def attribute(
        self,
        inputs: TensorOrTuple,
        target: TargetLike = None,
        additional_forward_args: Any = None,
        *,
        subunit: SubunitLike,
        return_convergence_delta: Literal[False] = False,
    ) -> TensorOrTuple: ...

    @typing.overload
    def attribute(
        self,
        inputs: TensorOrTuple,
        target: TargetLike = None,
        additional_forward_args: Any = None,
        *,
        subunit: SubunitLike,
        return_convergence_delta: Literal[True],
    ) -> tuple[TensorOrTuple, Tensor]: ...

    @log_usage()
    def attribute(
        self,
        inputs: TensorOrTuple,
        target: TargetLike = None,
        additional_forward_args: Any = None,
        *,
        subunit: SubunitLike,
        return_convergence_delta: bool = False,
    ) -> TensorOrTuple | tuple[TensorOrTuple, Tensor]:
        """Input attribution of the relevance that flows through one subunit.

        Parameters
        ----------
        inputs : Tensor or tuple of Tensor
            Batch on dim 0. The result has the same tuple-ness and shapes.
        target : int, tuple, Tensor, list or None
            Captum's target conventions: one output index for all samples (an int or a 0-d
            tensor, as Captum Insights passes it), one per sample (list or 1-d tensor), tuples
            for multi-dimensional outputs, ``None`` for one output per sample.
        additional_forward_args : Any, optional
            Extra positional arguments of the model, appended after the inputs.
        subunit : SubunitRef or (layer, unit, k) or str
            The subunit; ``k=-1`` or ``"residual"`` is the residual, ``k=0`` of an unsplit
            unit the unit itself.
        return_convergence_delta : bool, default False
            Also return ``R_s - sum(attributions)`` per sample.

        Returns
        -------
        Tensor or tuple of Tensor, optionally with the delta ``(B,)``

        Raises
        ------
        UnknownSubunitError
            The subunit does not exist (the message lists the valid ones).
        InvalidTargetError
            The target is out of range or does not fit the batch.
        InputShapeError
            Inputs that are not float tensors with a common batch size. An error of the model
            itself (inputs that do not fit it) passes through unchanged, with a note.

        Examples
        --------
        >>> import torch
        >>> from torch import nn
        >>> from neuronsplit.plan import SplitPlan, UnitSplit
        >>> m = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2))
        >>> dis = Disentangle(m, SplitPlan([UnitSplit("0", 0, [[0], [1]], shared=[2])]))
        >>> attrs = dis.attribute((torch.rand(4, 3),), target=1, subunit="0/u0/k1")
        >>> type(attrs).__name__, attrs[0].shape
        ('tuple', torch.Size([4, 3]))
        """
        is_tuple, _ = format_inputs(inputs)
        ref = SubunitRef.coerce(subunit)
        raw, _ = self._run(inputs, target, additional_forward_args, [ref])
        attrs = raw.attrs[0]
        result = attrs if is_tuple else attrs[0]
        if return_convergence_delta:
            return result, raw.relevance[:, 0] - _sum_per_sample(attrs)  # type: ignore[return-value]
        return result  # type: ignore[return-value]

    @log_usage()
    def attribute_unit(
        self,
        inputs: TensorOrTuple,
        target: TargetLike = None,
        additional_forward_args: Any = None,
        *,
        layer: str,
        unit: int,
    ) -> UnitAttribution:
        """Attributions of every subunit of ``unit`` plus the unit's own, from one forward pass.

        Parameters
        ----------
        inputs, target, additional_forward_args
            As in :meth:`attribute`.
        layer : str
            The split layer.
        unit : int
            The unit; if it is not split, its only "subunit" is the unit itself.

        Returns
        -------
        UnitAttribution

        Examples
        --------
        >>> import torch
        >>> from torch import nn
        >>> from neuronsplit.plan import SplitPlan, UnitSplit
        >>> m = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2))
        >>> plan = SplitPlan([UnitSplit("0", 0, [[0], [1]], shared=[2], merge="disjoint")])
        >>> res = Disentangle(m, plan).attribute_unit(torch.rand(4, 3), target=0, layer="0", unit=0)
        >>> res.subunits.shape, torch.allclose(res.relevance.sum(1), res.unit_relevance, atol=1e-6)
        (torch.Size([3, 4, 3]), True)
        """
        is_tuple, _ = format_inputs(inputs)
        split, _ = resolve_subunit(self.model, SubunitRef(layer, unit, 0))
        if unit in split.layer_split:
            k_count = split.num_subunits(unit)
            refs = tuple(SubunitRef(layer, unit, k) for k in (*range(k_count), RESIDUAL))
        else:
            refs = (SubunitRef(layer, unit, 0),)
        raw, _ = self._run(inputs, target, additional_forward_args, refs, unit=int(unit))
        n_inputs = len(raw.attrs[0])
        stacked = tuple(torch.stack([a[i] for a in raw.attrs]) for i in range(n_inputs))
        sums = torch.stack([_sum_per_sample(a) for a in raw.attrs], 1)
        unit_attr = typing.cast(tuple[Tensor, ...], raw.unit_attr)  # set because unit= was given
        return UnitAttribution(
            refs=refs,
            subunits=stacked if is_tuple else stacked[0],
            unit=unit_attr if is_tuple else unit_attr[0],
            relevance=raw.relevance,
            unit_relevance=typing.cast(Tensor, raw.unit_relevance).detach(),
            delta=raw.relevance - sums,
        )

    @log_usage()
    def compute_convergence_delta(  # type: ignore[override]
        self,
        attributions: Tensor | tuple[Tensor, ...],
        inputs: Tensor | tuple[Tensor, ...],
        target: TargetLike = None,
        additional_forward_args: Any = None,
        *,
        subunit: SubunitLike,
    ) -> Tensor:
        """Completeness gap ``R_s - sum(attributions)`` per sample.

        ``R_s`` is the subunit's relevance at the layer (see the module docstring), recomputed
        with one forward and one backward pass.

        Parameters
        ----------
        attributions : Tensor or tuple of Tensor
            From :meth:`attribute` with the same arguments.
        inputs, target, additional_forward_args, subunit
            As in :meth:`attribute`.

        Returns
        -------
        Tensor
            Shape ``(B,)``; zero up to rounding on ReLU networks without biases.
        """
        ref = SubunitRef.coerce(subunit)
        raw, _ = self._run(inputs, target, additional_forward_args, [ref], with_attributions=False)
        attrs = attributions if isinstance(attributions, tuple) else (attributions,)
        return raw.relevance[:, 0] - _sum_per_sample(attrs)
