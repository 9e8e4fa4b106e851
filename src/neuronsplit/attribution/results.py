"""Result type of :meth:`~neuronsplit.Disentangle.attribute_unit`."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from .refs import SubunitRef

__all__ = ["UnitAttribution"]


@dataclass(frozen=True)
class UnitAttribution:
    """Per-subunit input attributions of one unit, from :meth:`Disentangle.attribute_unit`.

    Attributes
    ----------
    refs : tuple of SubunitRef
        The subunits in order: ``k = 0..K-1``, then the residual (an unsplit unit: just
        ``k=0``, the unit itself).
    subunits : Tensor or tuple of Tensor
        Stacked attributions, shape ``(S, *input.shape)`` per input (``S = len(refs)``), with
        the inputs' tuple-ness.
    unit : Tensor or tuple of Tensor
        The unit's own conditional attribution, computed at the merged output (equal to the
        unsplit model's); ``subunits.sum(0)`` equals it up to float rounding.
    relevance : Tensor
        ``(B, S)`` relevance of each subunit at the layer.
    unit_relevance : Tensor
        ``(B,)`` relevance of the unit at the layer (``relevance.sum(1)`` up to rounding).
    delta : Tensor
        ``(B, S)``: ``relevance - sum(attributions)`` per subunit (completeness gap).
    """

    refs: tuple[SubunitRef, ...]
    subunits: Tensor | tuple[Tensor, ...]
    unit: Tensor | tuple[Tensor, ...]
    relevance: Tensor
    unit_relevance: Tensor
    delta: Tensor = field(repr=False)
