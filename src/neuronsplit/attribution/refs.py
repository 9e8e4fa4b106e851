"""Subunits as ordinary neurons: references, the hookable layer and the rows of a subunit.

A split layer (:class:`~neuronsplit.SplitConv2d` / :class:`~neuronsplit.SplitLinear`)
computes every original unit and every extra row in its child ``.subunits``, a plain
``nn.Conv2d`` / ``nn.Linear`` that runs exactly once per forward pass. Captum's layer and neuron
methods therefore address subunits through that child; this module translates a
:class:`SubunitRef` into the rows that make up the subunit (the Captum ``neuron_selector`` built
from them is in :mod:`neuronsplit.attribution.selectors`).

The rows are the disjoint parts (``t_k`` and the residual ``r``). In the disjoint form a subunit
*is* one row; in Hesse's overlap form subunit ``k`` is ``t_k + r``.

Examples
--------
>>> import torch
>>> from torch import nn
>>> from neuronsplit.plan import SplitPlan, UnitSplit
>>> from neuronsplit.nn import apply_plan
>>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
>>> plan = SplitPlan([UnitSplit("0", 1, [[0, 1], [2]], shared=[3], merge="disjoint")])
>>> split = apply_plan(model, plan)
>>> ref = SubunitRef("0", 1, "residual")
>>> ref, str(ref), subunit_channel(split, ref)
(SubunitRef(layer='0', unit=1, k=-1), '0/u1/residual', 4)
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..errors import UnknownLayerError, UnknownSubunitError
from ..nn import RESIDUAL, SplitConv2d, SplitLinear, get_split_layer, iter_split_layers

__all__ = [
    "RESIDUAL",
    "SubunitRef",
    "SubunitLike",
    "subunit_channel",
    "subunit_layer",
    "subunit_refs",
    "resolve_subunit",
    "subunit_rows",
]

_PARSE = re.compile(r"^(?P<layer>.+)/u(?P<unit>\d+)/(?:k(?P<k>\d+)|(?P<res>residual))$")


def _as_int(value: Any, what: str, ref: Any) -> int:
    if isinstance(value, bool):
        raise UnknownSubunitError(f"{what} of subunit {ref!r} must be an int, got {value!r}")
    try:
        return operator.index(value)  # int, numpy ints, 0-d integer tensors
    except TypeError:
        raise UnknownSubunitError(
            f"{what} of subunit {ref!r} must be an int, got {type(value).__name__} {value!r}"
        ) from None


@dataclass(frozen=True)
class SubunitRef:
    """One subunit of a split unit: ``(layer, unit, k)``.

    Parameters
    ----------
    layer : str
        Dotted name of the split layer, as in the original model (e.g. ``"fc2"``).
    unit : int
        The original unit (output channel / feature) of that layer.
    k : int or "residual"
        Subunit number ``0 .. K-1``, or ``-1`` (:data:`RESIDUAL`) for the residual. The string
        ``"residual"`` is normalised to ``-1``. For a unit that is *not* split, ``k=0`` refers
        to the unit itself (its own channel), so unsplit units can be addressed the same way.

    Examples
    --------
    >>> SubunitRef("layer4.2.conv3", 1660, 1)
    SubunitRef(layer='layer4.2.conv3', unit=1660, k=1)
    >>> SubunitRef.parse("fc2/u3/residual") == SubunitRef("fc2", 3, -1)
    True
    >>> SubunitRef.coerce(("fc2", 3, 0)).is_residual
    False
    """

    layer: str
    unit: int
    k: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.layer, str) or not self.layer:
            raise UnknownSubunitError(
                f"layer of a SubunitRef must be a non-empty dotted name, got {self.layer!r}"
            )
        unit = _as_int(self.unit, "unit", (self.layer, self.unit, self.k))
        k = RESIDUAL if self.k == "residual" else _as_int(self.k, "k", (self.layer, unit, self.k))
        if unit < 0 or k < RESIDUAL:
            raise UnknownSubunitError(
                f"subunit ({self.layer!r}, unit={unit}, k={k}) is invalid: unit must be >= 0 and "
                "k >= 0, or k = -1 / 'residual' for the residual"
            )
        object.__setattr__(self, "unit", unit)
        object.__setattr__(self, "k", k)

    @property
    def is_residual(self) -> bool:
        """Whether this refers to the residual of the unit."""
        return self.k == RESIDUAL

    def __str__(self) -> str:
        return f"{self.layer}/u{self.unit}/" + ("residual" if self.is_residual else f"k{self.k}")

    @classmethod
    def parse(cls, text: str) -> SubunitRef:
        """Parse the ``str()`` form ``"<layer>/u<unit>/k<k>"`` or ``"<layer>/u<unit>/residual"``.

        Raises
        ------
        UnknownSubunitError
            If ``text`` does not have that form.

        Examples
        --------
        >>> SubunitRef.parse("layer4.2.conv3/u1660/k1")
        SubunitRef(layer='layer4.2.conv3', unit=1660, k=1)
        """
        m = _PARSE.match(text) if isinstance(text, str) else None
        if m is None:
            raise UnknownSubunitError(
                f"cannot parse subunit {text!r}; expected '<layer>/u<unit>/k<k>' or "
                "'<layer>/u<unit>/residual', e.g. 'fc2/u3/k0'"
            )
        k = RESIDUAL if m["res"] else int(m["k"])
        return cls(m["layer"], int(m["unit"]), k)

    @classmethod
    def coerce(cls, value: SubunitLike) -> SubunitRef:
        """Accept a :class:`SubunitRef`, a ``(layer, unit, k)`` tuple or the ``str()`` form.

        Examples
        --------
        >>> SubunitRef.coerce("fc2/u0/k1")
        SubunitRef(layer='fc2', unit=0, k=1)
        """
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        if isinstance(value, tuple) and len(value) == 3:
            return cls(*value)
        raise UnknownSubunitError(
            f"a subunit must be a SubunitRef, a (layer, unit, k) tuple or a string like "
            f"'fc2/u3/k0'; got {type(value).__name__} {value!r}"
        )


SubunitLike = SubunitRef | tuple[str, int, int | str] | str


def _split_layer(model: nn.Module, layer: str) -> SplitConv2d | SplitLinear:
    try:
        return get_split_layer(model, layer)
    except UnknownLayerError as err:
        names = [n for n, _ in iter_split_layers(model)]
        raise UnknownSubunitError(
            f"no split layer {layer!r} in {type(model).__name__}; split layers: "
            f"{names[:10] or 'none (run neuronsplit.apply_plan first)'}"
        ) from err


def resolve_subunit(model: nn.Module, ref: SubunitLike) -> tuple[SplitConv2d | SplitLinear, int]:
    """Return the split layer of ``ref`` and the channel of ``ref`` in its ``.subunits`` output.

    Parameters
    ----------
    model : nn.Module
        A split model (from :func:`neuronsplit.apply_plan`).
    ref : SubunitRef or (layer, unit, k) or str
        The subunit. ``k=0`` of a unit that is not split is the unit's own channel.

    Returns
    -------
    (SplitConv2d or SplitLinear, int)

    Raises
    ------
    UnknownSubunitError
        If the layer is not split, the unit is out of range, or ``k`` does not exist; the
        message lists what does exist.
    """
    ref = SubunitRef.coerce(ref)
    layer = _split_layer(model, ref.layer)
    n_units = layer.original_out
    if ref.unit >= n_units:
        raise UnknownSubunitError(
            f"unit {ref.unit} does not exist in layer {ref.layer!r}, which has {n_units} units "
            f"(valid: 0..{n_units - 1}); split units: {list(layer.split_units)[:20]}"
        )
    if ref.unit not in layer.layer_split:
        if ref.k == 0:
            return layer, ref.unit  # an unsplit unit is its own (only) subunit
        raise UnknownSubunitError(
            f"unit {ref.unit} of layer {ref.layer!r} is not split, so it has no subunit "
            f"k={ref.k} (only k=0, the unit itself); split units: {list(layer.split_units)[:20]}"
        )
    if ref.is_residual:
        return layer, layer.residual_index(ref.unit)
    return layer, layer.subunit_index(ref.unit, ref.k)  # raises UnknownSubunitError for bad k


def subunit_rows(
    model: nn.Module, ref: SubunitLike
) -> tuple[SplitConv2d | SplitLinear, tuple[tuple[int, float], ...], float]:
    """The split layer of ``ref``, the weighted rows that make up the subunit, and its merge
    coefficient.

    The subunit's activation is ``sum_w w * row``; its share of the unit in the merge is
    ``coef * activation`` (``coef = -(K-1)`` for an overlap residual, else 1). An unsplit unit
    (``k=0``) is its own row with coefficient 1.

    Examples
    --------
    >>> from torch import nn
    >>> from neuronsplit.plan import SplitPlan, UnitSplit
    >>> from neuronsplit.nn import apply_plan
    >>> plan = SplitPlan([UnitSplit("0", 2, [[0], [1]], [2], merge="overlap")])
    >>> m = apply_plan(nn.Sequential(nn.Linear(3, 3)), plan)
    >>> subunit_rows(m, ("0", 2, 1))[1:], subunit_rows(m, ("0", 2, -1))[1:]
    ((((3, 1.0), (4, 1.0)), 1.0), (((4, 1.0),), -1.0))
    """
    ref = SubunitRef.coerce(ref)
    layer, channel = resolve_subunit(model, ref)
    if ref.unit not in layer.layer_split:
        return layer, ((channel, 1.0),), 1.0
    return (
        layer,
        layer.subunit_channels(ref.unit, ref.k),
        layer.merge_coefficient(ref.unit, ref.k),
    )


def subunit_channel(model: nn.Module, ref: SubunitLike) -> int:
    """Row of ``ref`` in the output of :func:`subunit_layer`: ``t_k`` (or ``r``) itself.

    In the overlap form the subunit is this row plus the residual row (see
    :func:`subunit_rows` and :func:`subunit_selector`).

    Examples
    --------
    >>> from torch import nn
    >>> from neuronsplit.plan import SplitPlan, UnitSplit
    >>> from neuronsplit.nn import apply_plan
    >>> m = apply_plan(nn.Sequential(nn.Linear(2, 3)), SplitPlan([UnitSplit("0", 2, [[0], [1]])]))
    >>> subunit_channel(m, ("0", 2, 0)), subunit_channel(m, ("0", 2, "residual"))
    (2, 4)
    """
    return resolve_subunit(model, ref)[1]


def subunit_refs(model: nn.Module, layer: str | None = None) -> list[SubunitRef]:
    """Every subunit (``k = 0..K-1``, then the residual) of every split unit, in plan order.

    Parameters
    ----------
    model : nn.Module
        A split model.
    layer : str, optional
        Restrict to this split layer.

    Examples
    --------
    >>> from torch import nn
    >>> from neuronsplit.plan import SplitPlan, UnitSplit
    >>> from neuronsplit.nn import apply_plan
    >>> m = apply_plan(nn.Sequential(nn.Linear(2, 3)), SplitPlan([UnitSplit("0", 2, [[0], [1]])]))
    >>> [str(r) for r in subunit_refs(m)]
    ['0/u2/k0', '0/u2/k1', '0/u2/residual']
    """
    layers = [(layer, _split_layer(model, layer))] if layer else list(iter_split_layers(model))
    refs: list[SubunitRef] = []
    for name, split in layers:
        ls = split.layer_split
        for unit, k_count in zip(ls.units.tolist(), ls.num_subunits.tolist(), strict=True):
            refs.extend(SubunitRef(name, unit, k) for k in range(k_count))
            refs.append(SubunitRef(name, unit, RESIDUAL))
    return refs


def subunit_layer(split_model: nn.Module, layer_name: str) -> nn.Module:
    """The module whose output holds the subunits of split layer ``layer_name`` as channels.

    It is the ``.subunits`` child of the split layer: a plain ``nn.Conv2d`` (channels on
    dim 1) or ``nn.Linear`` (features on the last dim) that runs exactly once per forward
    pass, so every Captum layer and neuron method can take it as ``layer=``. Channels
    ``0..C-1`` are the original units (for a split unit ``u``, channel ``u`` holds subunit 0);
    the other subunits and residuals follow (see :func:`subunit_channel`).

    Parameters
    ----------
    split_model : nn.Module
        A split model.
    layer_name : str
        Dotted name of the split layer, e.g. ``"fc2"``.

    Returns
    -------
    nn.Module

    Raises
    ------
    UnknownSubunitError
        If ``layer_name`` is not a split layer; the message lists the split layers.

    Examples
    --------
    >>> from captum.attr import LayerActivation
    >>> from torch import nn
    >>> import torch
    >>> from neuronsplit.plan import SplitPlan, UnitSplit
    >>> from neuronsplit.nn import apply_plan
    >>> m = apply_plan(nn.Sequential(nn.Linear(2, 3)), SplitPlan([UnitSplit("0", 2, [[0], [1]])]))
    >>> LayerActivation(m, subunit_layer(m, "0")).attribute(torch.ones(1, 2)).shape
    torch.Size([1, 5])
    """
    return _split_layer(split_model, layer_name).subunits
