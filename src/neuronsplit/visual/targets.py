"""What a reference names: the one parser of units and subunits for :mod:`neuronsplit.visual`.

:func:`~neuronsplit.visual.reference_images` and :func:`~neuronsplit.visual.visualise` both
read their ``refs`` here, so they accept the same spellings and raise the same errors.

A reference is one of

* a **unit** (the layer's output channel / feature): ``"layer/u3"``, ``"layer/u3/unit"`` (the
  form of the insights drop-down) or ``("layer", 3)``;
* a **subunit** of a split layer (:func:`neuronsplit.apply_plan`): ``"layer/u3/k1"``, the
  **residual** ``"layer/u3/residual"``, a :class:`~neuronsplit.SubunitRef` or
  ``("layer", 3, k)`` (``k`` an int or ``"residual"``). Its rows of the layer's ``.subunits``
  output are those of :func:`~neuronsplit.attribution.subunit_rows`;
* ``k0`` of a unit that is not split (in a split layer or a plain one) is the unit itself, as
  :class:`~neuronsplit.SubunitRef` defines it, so every unit can be named the same way.

``refs`` is one reference or a list of them; a tuple ``("layer", 3)`` or ``("layer", 3, 0)``
is one reference. Units and their numbers must exist, the layer must be a ``Conv2d``, a
``Linear`` or a split layer, and no reference may be given twice.

Examples
--------
>>> from torch import nn
>>> net = nn.Sequential(nn.Linear(3, 2))
>>> resolve_target(net, "0/u1")
Target(name='0/u1', layer='0', unit=1, subunit=None, channels=(), coef=1.0, kind='linear')
>>> [t.name for t in resolve_targets(net, ("0", 1))], resolve_target(net, "0/u1/k0").rows
(['0/u1'], ((1, 1.0),))
"""

from __future__ import annotations

import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..attribution import SubunitRef, subunit_rows
from ..capture import is_split_layer, layer_kind, resolve_layer
from ..errors import (
    ArgumentTypeError,
    InvalidArgumentError,
    UnknownSubunitError,
    UnsupportedLayerError,
)

__all__ = ["Target", "resolve_target", "resolve_targets"]

_UNIT = re.compile(r"^(?P<layer>.+)/u(?P<unit>\d+)(?:/unit)?$")


@dataclass(frozen=True)
class Target:
    """One row of a layer output that a reference names.

    Attributes
    ----------
    name : str
        Its key in the results: ``"layer/u3"`` for a unit (however it was spelled), the
        :class:`~neuronsplit.SubunitRef` string (``"layer/u3/k0"``) for a subunit.
    layer, unit : str, int
        The layer (dotted name in the given model) and the original unit.
    subunit : int or None
        None for the unit itself (the layer's output), ``k`` or ``-1`` (residual) for a subunit.
    channels : tuple of (int, float)
        ``(channel, weight)`` pairs of ``.subunits`` that make up the subunit.
    coef : float
        Its coefficient in the merge (``-(K-1)`` for an overlap residual, else 1).
    kind : {"conv2d", "linear"}
    """

    name: str
    layer: str
    unit: int
    subunit: int | None
    channels: tuple[tuple[int, float], ...]
    coef: float
    kind: str

    @property
    def reads_rows(self) -> bool:
        """Whether the row is read from the split layer's ``.subunits`` output."""
        return self.subunit is not None

    @property
    def rows(self) -> tuple[tuple[int, float], ...]:
        """``(channel, weight)`` pairs of the output it is read from (:meth:`module`)."""
        return self.channels if self.reads_rows else ((self.unit, 1.0),)

    def module(self, model: nn.Module) -> nn.Module:
        """The module whose output holds the row: the layer, or its ``.subunits`` child."""
        layer = resolve_layer(model, self.layer)
        return layer.subunits if self.reads_rows else layer


def _unit_target(model: nn.Module, layer: str, unit: Any, ref: Any, name: str | None) -> Target:
    try:
        if isinstance(unit, bool):
            raise TypeError
        unit = operator.index(unit)  # int, numpy ints, 0-d integer tensors
    except TypeError:
        raise UnknownSubunitError(
            f"the unit of reference {ref!r} must be an int, got {type(unit).__name__}"
        ) from None
    name = name or f"{layer}/u{unit}"
    module = resolve_layer(model, layer)
    if is_split_layer(module):
        units, kind = int(module.original_out), layer_kind(module.subunits)
    elif isinstance(module, nn.Conv2d | nn.Linear):
        units = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
        kind = layer_kind(module)
    else:
        raise UnsupportedLayerError(
            f"layer {layer!r} of reference {name!r} is a {type(module).__name__}; references "
            "name the units of Conv2d and Linear layers (split or not)"
        )
    if not 0 <= unit < units:
        raise UnknownSubunitError(
            f"unit {unit} of reference {name!r} does not exist: layer {layer!r} has {units} "
            f"units (0..{units - 1})"
        )
    return Target(name, layer, int(unit), None, (), 1.0, kind)


def resolve_target(model: nn.Module, ref: Any) -> Target:
    """The :class:`Target` of one reference (the spellings are in the module docstring).

    Raises
    ------
    UnknownSubunitError
        A reference of no known form, a unit out of range, a subunit that does not exist
        (also any ``k != 0`` on a layer or unit that is not split).
    UnknownLayerError, UnsupportedLayerError
        No such layer, or not a Conv2d / Linear / split layer.
    """
    if isinstance(ref, str) and (m := _UNIT.match(ref)):
        return _unit_target(model, m["layer"], int(m["unit"]), ref, None)
    if isinstance(ref, tuple) and len(ref) == 2:
        layer, unit = ref
        if not isinstance(layer, str) or not layer:
            raise UnknownSubunitError(f"the layer of reference {ref!r} must be a dotted name")
        return _unit_target(model, layer, unit, ref, None)
    try:
        sub = SubunitRef.coerce(ref)
    except UnknownSubunitError as err:
        raise UnknownSubunitError(f"{err}; a whole unit is 'layer/u3' or ('layer', 3)") from None
    module = resolve_layer(model, sub.layer)
    if is_split_layer(module) and sub.unit in module.split_units:
        split, channels, coef = subunit_rows(model, sub)
        return Target(
            str(sub), sub.layer, sub.unit, sub.k, channels, coef, layer_kind(split.subunits)
        )
    if sub.k != 0:
        raise UnknownSubunitError(
            f"unit {sub.unit} of layer {sub.layer!r} is not split, so {str(sub)!r} does not "
            f"exist; name the unit itself ('{sub.layer}/u{sub.unit}') or apply a plan that "
            "splits it (ns.apply_plan)"
        )
    return _unit_target(model, sub.layer, sub.unit, ref, str(sub))


def resolve_targets(model: nn.Module, refs: Any) -> list[Target]:
    """One :class:`Target` per reference of ``refs`` (one reference or a list of them).

    Raises
    ------
    ArgumentTypeError
        ``refs`` is neither a reference nor a list of them.
    InvalidArgumentError
        ``refs`` is empty, or names the same row twice under one name.
    UnknownSubunitError, UnknownLayerError, UnsupportedLayerError
        As :func:`resolve_target`.
    """
    # ("fc2", 3) and ("fc2", 3, 0) are one reference each, ("fc2/u3", "fc2/u4") two
    single = isinstance(refs, str | SubunitRef) or (
        isinstance(refs, tuple) and len(refs) in (2, 3) and isinstance(refs[0], str)
        and not isinstance(refs[1], str)
    )  # fmt: skip
    listed = [refs] if single else refs
    if not isinstance(listed, Sequence) or isinstance(listed, bytes):
        raise ArgumentTypeError(
            f"refs must be a reference or a list of them like ['fc2/u3', 'fc2/u3/k0'], got "
            f"{type(refs).__name__}"
        )
    if not listed:
        raise InvalidArgumentError("refs is empty; name at least one unit or subunit")
    targets = [resolve_target(model, r) for r in listed]
    names = [t.name for t in targets]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InvalidArgumentError(f"refs lists {dup} more than once; give each reference once")
    return targets
