"""Why :func:`~neuronsplit.find_polysemantic` found what it found, in numbers and with advice.

Detection has three gates: ``tau`` and ``p`` decide which units are *candidates* (relevant to two
or more classes), ``gamma`` (with ``cos_low``) decides which candidate pairs are polysemantic.
An empty result, or one that flags nearly every unit, says which gate closed (or stood open):
:class:`DetectionDiagnosis` keeps the counts behind each gate, the distribution of the
candidates' pair cosines and the scan's count of images without positive relevance, and its
``str`` names the parameter to change. :func:`find_polysemantic` returns a
:class:`PolysemanticUnits` list carrying it and warns with it when the result is suspicious.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # detect imports this module; the name is for annotations only
    from .detect import PolysemanticUnit

__all__ = ["DetectionDiagnosis", "PolysemanticUnits", "NEARLY_ALL", "QUANTILES"]

#: share of the searched units above which a result counts as "nearly every unit"
NEARLY_ALL = 0.9
#: fewer units than this are never "nearly every unit" (hand-built and toy layers)
_MIN_UNITS_FOR_NEARLY_ALL = 10
#: the quantiles reported for the candidates' pair cosines
QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)


def _quantiles(values: list[float]) -> tuple[float, ...]:
    """Linear-interpolation quantiles (numpy's default) of a non-empty list."""
    ordered = sorted(values)
    out = []
    for q in QUANTILES:
        pos = q * (len(ordered) - 1)
        low = math.floor(pos)
        high = min(low + 1, len(ordered) - 1)
        out.append(ordered[low] + (ordered[high] - ordered[low]) * (pos - low))
    return tuple(out)


@dataclass(frozen=True)
class DetectionDiagnosis:
    """The numbers behind one :func:`~neuronsplit.find_polysemantic` call.

    Attributes
    ----------
    tau, p, gamma, cos_low : float
        The parameters of the call.
    include_negative : bool
        Whether negative cosines counted.
    layers : tuple of str
        The layers searched.
    num_units : int
        Units searched (all layers).
    num_found : int
        Units returned.
    num_candidates : int
        Units relevant to two or more classes at ``tau`` and ``p``.
    num_single : int
        Units relevant to exactly one class.
    num_pairs : int
        Pairs of relevant classes of the candidates with a defined cosine.
    num_undefined : int
        Pairs skipped because an ARV was the zero vector.
    cosine_quantiles : tuple of float
        Min, 25 %, 50 %, 75 % and max of those pair cosines (empty without pairs).
    max_p : float
        The largest ``p`` at which some unit would be a candidate at this ``tau`` (0: no unit is
        important for images of two classes).
    num_images : int
        Images scanned (of the searched classes).
    num_classes : int
        Searched classes with images.
    no_positive : tuple of (str, int)
        Per layer, images whose relevance there had no positive part (counted for no unit).
    tau_grid : tuple of float
        The taus the scan counted (detection can use any of them without rescanning).

    Examples
    --------
    >>> d = DetectionDiagnosis(tau=0.03, p=0.75, gamma=0.5, cos_low=0.0, include_negative=False,
    ...     layers=("fc",), num_units=64, num_found=0, num_candidates=29, num_single=30,
    ...     num_pairs=29, num_undefined=0, cosine_quantiles=(0.9971, 0.998, 0.998, 0.9985, 0.999),
    ...     max_p=1.0, num_images=40, num_classes=4, no_positive=(("fc", 0),), tau_grid=(0.01, 0.03))
    >>> d.problem
    'empty'
    >>> print(d.advice)
    all 29 candidate units have pair cosines >= 0.9971 >= gamma=0.5: raise gamma above 0.9971 (gamma=1.0 keeps every pair that is not identical) or pick other candidates with tau / p
    """

    tau: float
    p: float
    gamma: float
    cos_low: float
    include_negative: bool
    layers: tuple[str, ...]
    num_units: int
    num_found: int
    num_candidates: int
    num_single: int
    num_pairs: int
    num_undefined: int
    cosine_quantiles: tuple[float, ...]
    max_p: float
    num_images: int
    num_classes: int
    no_positive: tuple[tuple[str, int], ...]
    tau_grid: tuple[float, ...] = ()

    @property
    def problem(self) -> str | None:
        """``"empty"``, ``"nearly_all"`` (more than 90 % of at least 10 units) or None."""
        if self.num_found == 0:
            return "empty"
        if self.num_units >= _MIN_UNITS_FOR_NEARLY_ALL and (
            self.num_found > NEARLY_ALL * self.num_units
        ):
            return "nearly_all"
        return None

    def _empty_advice(self) -> str:
        most_blank = max((n for _, n in self.no_positive), default=0)
        blank = (
            f"; {most_blank} of {self.num_images} images had no positive relevance at a "
            "searched layer (an untrained model, or a target whose gradient does not reach it?)"
            if self.num_images and most_blank > self.num_images / 2
            else ""
        )
        if self.num_classes < 2:
            return f"only {self.num_classes} class with images is searched: a pair needs two"
        if self.num_candidates == 0:
            smaller = [t for t in self.tau_grid if t < self.tau]
            lower_tau = f"lower tau (the scan has {smaller})" if smaller else "lower tau (rescan)"
            if self.max_p > 0:
                # rounded down: 2/3 printed as 0.6667 would ask for 3 of 3 images again
                shown = math.floor(self.max_p * 1e4) / 1e4
                return (
                    f"no unit is relevant to 2+ classes at tau={self.tau}, p={self.p}: the "
                    f"largest p that gives a candidate is {shown:g}; lower p to it or "
                    f"{lower_tau}{blank}"
                )
            return (
                f"no unit is important for images of two classes at tau={self.tau}: "
                f"{lower_tau}{blank}"
            )
        if self.num_pairs == 0:
            return (
                f"every candidate pair has a zero ARV ({self.num_undefined} pairs): the "
                f"relevance does not reach this layer's inputs{blank}"
            )
        low = self.cosine_quantiles[0]
        if low >= self.gamma:
            return (
                f"all {self.num_candidates} candidate units have pair cosines >= {low:.4g} >= "
                f"gamma={self.gamma}: raise gamma above {low:.4g} (gamma=1.0 keeps every pair "
                f"that is not identical) or pick other candidates with tau / p{blank}"
            )
        return (
            f"the candidate pairs below gamma={self.gamma} have cosines below "
            f"cos_low={self.cos_low}: pass include_negative=True or lower cos_low{blank}"
        )

    @property
    def advice(self) -> str:
        """Which parameter to change, and to what (empty when nothing looks wrong)."""
        if self.problem == "empty":
            return self._empty_advice()
        if self.problem == "nearly_all":
            q25 = self.cosine_quantiles[1]
            return (
                f"{self.num_found} of {self.num_units} units are flagged: lower gamma (a quarter "
                f"of the pair cosines are below {q25:.4g}) or raise tau / p; on an untrained "
                "model or a model that ignores this layer nearly every unit looks polysemantic"
            )
        return ""

    def __str__(self) -> str:
        where = ", ".join(repr(name) for name in self.layers)
        lines = [
            f"find_polysemantic(tau={self.tau}, p={self.p}, gamma={self.gamma}): "
            f"{self.num_found} of {self.num_units} units in {where}",
            f"  relevant to 2+ classes (candidates): {self.num_candidates}; to one class: "
            f"{self.num_single}; to none: "
            f"{self.num_units - self.num_candidates - self.num_single}",
        ]
        if self.cosine_quantiles:
            q = "  ".join(
                f"{name} {value:.4g}"
                for name, value in zip(
                    ("min", "25%", "50%", "75%", "max"), self.cosine_quantiles, strict=True
                )
            )
            lines.append(f"  candidate pair cosines ({self.num_pairs} pairs): {q}")
        if self.num_undefined:
            lines.append(f"  pairs with a zero ARV (skipped): {self.num_undefined}")
        blank = ", ".join(f"{n} at {name!r}" for name, n in self.no_positive)
        lines.append(f"  images without positive relevance: {blank} (of {self.num_images})")
        if self.advice:
            lines.append(f"  advice: {self.advice}")
        return "\n".join(lines)


class PolysemanticUnits(list["PolysemanticUnit"]):
    """The list :func:`~neuronsplit.find_polysemantic` returns, with its :attr:`diagnosis`.

    An ordinary ``list`` of :class:`~neuronsplit.PolysemanticUnit` (slicing gives plain lists).

    Parameters
    ----------
    units : iterable of PolysemanticUnit
        The units, most polysemantic first.
    diagnosis : DetectionDiagnosis, optional
        The numbers behind the search.

    Examples
    --------
    >>> units = PolysemanticUnits([])
    >>> units == [], units.diagnosis is None
    (True, True)
    """

    def __init__(
        self, units: Iterable[PolysemanticUnit] = (), diagnosis: DetectionDiagnosis | None = None
    ) -> None:
        super().__init__(units)
        self.diagnosis = diagnosis
