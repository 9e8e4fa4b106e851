"""Registering :class:`~neuronsplit.Disentangle` as a Captum Insights attribution method.

Private module of :mod:`neuronsplit.insights` (public entry point:
:func:`neuronsplit.insights.register`, which checks that Captum Insights is installed first).

Insights constructs methods as ``cls(model)`` and calls ``attribute.__wrapped__``, so the
method is a generated :class:`~neuronsplit.Disentangle` subclass bound to one split model and
its subunit choices, with ``attribute`` decorated by ``captum.log.log_usage``; it goes into
Insights' two method dicts *in place* (rebinding them would have no effect), and
:class:`InsightsRegistration` removes it again.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..attribution import SubunitRef, resolve_subunit, subunit_refs
from ..errors import InvalidArgumentError, PlanError
from ..nn import iter_split_layers

__all__ = ["UNIT_CHOICE", "InsightsRegistration", "register_method"]

UNIT_CHOICE = "unit"  # suffix of the drop-down entry that attributes the whole unit
_UNIT_RE = re.compile(r"^(?P<layer>.+)/u(?P<unit>\d+)/unit$")


def _choices(split_model: nn.Module, refs: Sequence[Any] | None) -> dict[str, Any]:
    """Drop-down entry -> SubunitRef, or ``(layer, unit)`` for the whole unit (plan order).

    Entries are ``str(ref)`` plus the plan's concept label if it has one, e.g.
    ``"fc2/u2/k0 (class 0+4+6)"``; after each unit's subunits comes ``"fc2/u2/unit"``.
    """
    refs = [SubunitRef.coerce(r) for r in (refs if refs is not None else subunit_refs(split_model))]
    if not refs:
        raise PlanError("the model has no split units to show; apply a plan first")
    units: dict[tuple[str, int], list[SubunitRef]] = {}
    for ref in refs:
        units.setdefault((ref.layer, ref.unit), []).append(ref)
    out: dict[str, Any] = {}
    for (layer, unit), members in units.items():
        split, _ = resolve_subunit(split_model, members[0])  # raises for unknown subunits
        labels = split.unit_split(unit).labels if unit in split.split_units else ()
        for ref in members:
            resolve_subunit(split_model, ref)
            label = labels[ref.k] if labels and ref.k >= 0 else ""
            out[f"{ref} ({label})" if label else str(ref)] = ref
        out[f"{layer}/u{unit}/{UNIT_CHOICE}"] = (layer, unit)
    return out


def _lookup(choices: Mapping[str, Any], subunit: Any) -> Any:
    """A drop-down entry, a canonical ``"layer/uN/kK"`` / ``"layer/uN/unit"`` string or a ref."""
    if isinstance(subunit, str):
        if subunit in choices:
            return choices[subunit]
        m = _UNIT_RE.match(subunit)
        if m:
            return (m["layer"], int(m["unit"]))
    return SubunitRef.coerce(subunit)  # raises UnknownSubunitError with the accepted forms


@dataclass
class InsightsRegistration:
    """Handle for a method registered in Captum Insights; :meth:`remove` undoes it.

    Attributes
    ----------
    name : str
        The method name shown in the Insights drop-down.
    method : type
        The registered class (a :class:`~neuronsplit.Disentangle` subclass).
    choices : tuple of str
        The values of its ``subunit`` argument.
    """

    name: str
    method: type
    choices: tuple[str, ...]
    _removed: bool = field(default=False, repr=False)

    def remove(self) -> None:
        """Remove the method from both Insights dicts (idempotent)."""
        if self._removed:
            return
        from captum.insights.attr_vis import config

        if config.ATTRIBUTION_NAMES_TO_METHODS.get(self.name) is self.method:
            del config.ATTRIBUTION_NAMES_TO_METHODS[self.name]
            config.ATTRIBUTION_METHOD_CONFIG.pop(self.name, None)
        self._removed = True

    def __enter__(self) -> InsightsRegistration:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def register_method(
    split_model: nn.Module,
    *,
    name: str,
    subunits: Sequence[SubunitRef] | None,
    relevance: Any,
) -> InsightsRegistration:
    """Build the Insights method class and put it into Insights' method dicts.

    See :func:`neuronsplit.insights.register` (parameters, errors); Captum Insights must be
    importable.

    Returns
    -------
    InsightsRegistration
    """
    from captum.insights.attr_vis import config
    from captum.log import log_usage

    from ..attribution import Disentangle

    if name in config.ATTRIBUTION_NAMES_TO_METHODS or name in config.ATTRIBUTION_METHOD_CONFIG:
        raise InvalidArgumentError(
            f"an Insights method named {name!r} is already registered; remove it first "
            "(registration.remove()) or pass another name="
        )
    bound = Disentangle(split_model, relevance=relevance)  # validates the model once
    choices = _choices(bound.model, subunits)
    default = next(iter(choices))

    class InsightsDisentangle(Disentangle):
        """Disentangle bound to one split model, constructed by Insights as ``cls(model)``."""

        def __init__(self, model: nn.Module | None = None) -> None:
            use = model if model is not None and any(iter_split_layers(model)) else bound.model
            Disentangle.__init__(self, use, relevance=relevance)

        @log_usage()
        def attribute(  # type: ignore[override]
            self,
            inputs: Any,
            target: Any = None,
            additional_forward_args: Any = None,
            *,
            subunit: str = default,
            return_convergence_delta: bool = False,
        ) -> Any:
            choice = _lookup(choices, subunit)
            if isinstance(choice, tuple) and len(choice) == 2:
                res = Disentangle.attribute_unit(
                    self, inputs, target, additional_forward_args, layer=choice[0], unit=choice[1]
                )
                return res.unit
            return Disentangle.attribute.__wrapped__(
                self,
                inputs,
                target,
                additional_forward_args,
                subunit=choice,
                return_convergence_delta=return_convergence_delta,
            )

    InsightsDisentangle.__name__ = InsightsDisentangle.__qualname__ = "Disentangle"
    config.ATTRIBUTION_NAMES_TO_METHODS[name] = InsightsDisentangle
    config.ATTRIBUTION_METHOD_CONFIG[name] = config.ConfigParameters(
        params={"subunit": config.StrEnumConfig(value=default, limit=list(choices))},
        help_info="Input attribution of the relevance flowing through one subunit "
        "(neuronsplit.Disentangle); '.../unit' is the whole unit.",
    )
    return InsightsRegistration(name, InsightsDisentangle, tuple(choices))
