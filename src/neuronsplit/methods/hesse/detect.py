"""Polysemantic-unit detection after Hesse et al. (CVPRW 2025).

1. A unit is *important* for an image when its relevance reaches ``tau`` times the image's total
   positive relevance at that layer (counted during the scan).
2. It is *relevant* to class ``t`` when it is important for at least a share ``p`` of the class's
   images; a *candidate* when relevant to at least two classes.
3. For each candidate and each relevant class the average relevance vector (ARV) over the layer's
   inputs is computed (signed, unnormalised, every image of the class counted).
4. A pair of relevant classes is *gamma-polysemantic* when ``cos_low <= cos(ARV_a, ARV_b) < gamma``
   (the official code keeps ``cos_low = 0``: negative cosines are dropped unless
   ``include_negative=True``).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..._checks import check_bool, check_int, check_names, check_number
from ...errors import ArgumentTypeError, EmptyClassError, InvalidArgumentError
from ...stats import ScanResult
from .diagnosis import DetectionDiagnosis, PolysemanticUnits, _quantiles

__all__ = [
    "ClassPair",
    "PolysemanticUnit",
    "relevant_classes",
    "find_polysemantic",
    "arv",
    "pairs_table",
    "cosine",
]


@dataclass(frozen=True)
class ClassPair:
    """Two relevant classes of a unit and the cosine similarity of their ARVs."""

    class_a: int
    class_b: int
    cosine: float


@dataclass(frozen=True)
class PolysemanticUnit:
    """A unit with at least one gamma-polysemantic pair of relevant classes.

    Attributes
    ----------
    layer : str
        Dotted layer name.
    unit : int
        Output channel / feature index.
    relevant : tuple of int
        Every class the unit is relevant to (sorted).
    pairs : tuple of ClassPair
        The gamma-polysemantic pairs, lowest cosine first.
    tau, p, gamma : float, optional
        The parameters it was found with (:func:`~neuronsplit.plan_split` uses this ``gamma``
        unless given another); not compared by ``==``.
    include_negative : bool, optional
        Likewise.
    """

    layer: str
    unit: int
    relevant: tuple[int, ...]
    pairs: tuple[ClassPair, ...]
    tau: float | None = field(default=None, compare=False)
    p: float | None = field(default=None, compare=False)
    gamma: float | None = field(default=None, compare=False)
    include_negative: bool | None = field(default=None, compare=False)

    def __repr__(self) -> str:
        found = "" if self.gamma is None else f", tau={self.tau}, p={self.p}, gamma={self.gamma}"
        low = self.min_cosine if self.pairs else float("nan")
        return (
            f"PolysemanticUnit({self.layer!r}, {self.unit}, classes={self.classes}, "
            f"{len(self.pairs)} pairs, min_cosine={low:.4g}{found})"
        )

    @property
    def classes(self) -> tuple[int, ...]:
        """Classes that take part in at least one gamma-polysemantic pair (sorted)."""
        return tuple(sorted({c for p in self.pairs for c in (p.class_a, p.class_b)}))

    @property
    def min_cosine(self) -> float:
        """The lowest ARV cosine among the pairs: the clearest sign of polysemanticity."""
        return min(p.cosine for p in self.pairs)

    @property
    def top_pair(self) -> ClassPair:
        """The pair with the lowest cosine."""
        return self.pairs[0]


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity in float64; NaN when either vector is zero."""
    a, b = a.to(torch.float64), b.to(torch.float64)
    denom = a.norm() * b.norm()
    if denom == 0:
        return float("nan")
    return float((a @ b) / denom)


def arv(result: ScanResult, layer: str, unit: int, cls: int) -> torch.Tensor:
    """Average relevance vector of ``unit`` for class ``cls`` (see :meth:`ScanResult.arv`).

    Examples
    --------
    >>> import neuronsplit as ns  # doctest: +SKIP
    >>> ns.arv(res, "layer4.2.conv3", 1660, 530).shape  # doctest: +SKIP
    torch.Size([512])
    """
    return result.arv(layer, unit, cls)


def relevant_classes(
    result: ScanResult, layer: str, *, tau: float = 0.03, p: float = 0.75
) -> torch.Tensor:
    """Boolean ``(N, C)``: unit ``c`` is relevant to class ``t`` (empty classes never are).

    Examples
    --------
    >>> rel = relevant_classes(res, "fc2")  # doctest: +SKIP
    >>> rel.sum(0)  # number of relevant classes per unit  # doctest: +SKIP
    """
    p = check_number(p, "p", low=0.0, high=1.0, low_open=True)
    counts = result.important_counts(layer, tau).to(torch.float64)
    n = result.class_counts.to(torch.float64).unsqueeze(1)
    # counts are integers: compare with ceil(p * N) so that count == p * N is relevant even when
    # p * N rounds up in floating point (0.55 * 100 == 55.00000000000001)
    needed = torch.ceil(p * n * (1.0 - 1e-12))
    return (counts >= needed) & (n > 0)


def find_polysemantic(
    result: ScanResult,
    layers: str | Sequence[str] | None = None,
    *,
    tau: float = 0.03,
    p: float = 0.75,
    gamma: float = 0.5,
    cos_low: float = 0.0,
    include_negative: bool = False,
    classes: Sequence[int] | None = None,
) -> PolysemanticUnits:
    """Find gamma-polysemantic units, most polysemantic (lowest ARV cosine) first.

    The result carries a :class:`~neuronsplit.methods.hesse.DetectionDiagnosis`
    (``units.diagnosis``: candidate counts, pair-cosine quantiles, images without positive
    relevance, and which parameter to change); a ``UserWarning`` with it is issued when nothing
    is found or when more than 90 % of (at least 10) units are flagged.

    Parameters
    ----------
    result : ScanResult
        Output of :func:`neuronsplit.scan`.
    layers : str or sequence of str, optional
        Layers to search (default: every scanned layer).
    tau : float
        Importance threshold; must be on the scan's ``tau_grid`` (default 0.03, the paper's).
    p : float
        Share of a class's images for which a unit must be important (default 0.75).
    gamma : float
        Upper cosine bound (exclusive) for a polysemantic pair, in [-1, 1] (default 0.5;
        1 keeps every pair whose ARVs do not point exactly the same way).
    cos_low : float
        Lower cosine bound (inclusive); 0.0 as in the official code.
    include_negative : bool
        Drop the lower bound, so pairs with negative cosine count too.
    classes : sequence of int, optional
        Restrict the search to these classes; each must have scanned images.

    Returns
    -------
    PolysemanticUnits
        A list of PolysemanticUnit sorted by lowest pair cosine, then layer order, then unit
        index, with ``.diagnosis``. Pairs whose ARV is the zero vector (cosine undefined) are
        skipped. Each unit remembers ``tau, p, gamma, include_negative``.

    Raises
    ------
    EmptyClassError
        If ``classes`` names a class without images, or the scan saw no images at all.
    UnknownLayerError
        A layer that was not scanned.
    InvalidArgumentError, ArgumentTypeError
        A parameter out of range (tau, p in (0, 1], gamma and cos_low in [-1, 1], cos_low
        below gamma) or of the wrong type.

    Examples
    --------
    >>> import neuronsplit as ns  # doctest: +SKIP
    >>> units = ns.find_polysemantic(res, tau=0.03, p=0.75, gamma=0.5)  # doctest: +SKIP
    >>> units[0].layer, units[0].unit, units[0].top_pair  # doctest: +SKIP
    """
    if not isinstance(result, ScanResult):
        raise ArgumentTypeError(
            f"find_polysemantic needs a ScanResult (from ns.scan or ScanResult.load), got "
            f"{type(result).__name__}"
        )
    names = list(result.layers) if layers is None else check_names(layers, "layers")
    for name in names:
        result.layer(name)  # UnknownLayerError naming the scanned layers
    check_number(tau, "tau", low=0.0, high=1.0, low_open=True)
    check_number(p, "p", low=0.0, high=1.0, low_open=True)
    check_number(gamma, "gamma", low=-1.0, high=1.0)
    check_number(cos_low, "cos_low", low=-1.0, high=1.0)
    check_bool(include_negative, "include_negative")
    if not include_negative and cos_low >= gamma:
        raise InvalidArgumentError(
            f"cos_low={cos_low} is not below gamma={gamma}, so no pair can be found; lower "
            "cos_low or raise gamma"
        )
    if result.num_samples == 0:
        raise EmptyClassError("the scan saw no images; scan a non-empty loader first")
    allowed = None
    if classes is not None:
        allowed = torch.zeros(result.num_classes, dtype=torch.bool)
        for c in classes:
            c = check_int(c, "classes entry", low=0, high=result.num_classes - 1)
            result._class_count(c)  # raises for empty classes
            allowed[c] = True
    found: list[tuple[float, int, int, PolysemanticUnit]] = []
    counts = {"units": 0, "candidates": 0, "single": 0, "undefined": 0}
    cosines: list[float] = []
    max_p, no_positive = 0.0, []
    for layer_pos, layer in enumerate(names):
        relevant = relevant_classes(result, layer, tau=tau, p=p)
        if allowed is not None:
            relevant &= allowed.unsqueeze(1)
        per_unit = relevant.sum(0)
        counts["units"] += relevant.shape[1]
        counts["single"] += int((per_unit == 1).sum())
        max_p = max(max_p, _largest_p(result, layer, tau, allowed))
        blank = result.no_positive_relevance(layer)
        no_positive.append(
            (layer, int(blank[allowed].sum() if allowed is not None else blank.sum()))
        )
        for unit in torch.nonzero(per_unit >= 2).flatten().tolist():
            counts["candidates"] += 1
            rel = torch.nonzero(relevant[:, unit]).flatten().tolist()
            arvs = result.arvs(layer, unit, rel)  # (R, J), closed form
            pairs = []
            for (ia, a), (ib, b) in itertools.combinations(enumerate(rel), 2):
                cos = cosine(arvs[ia], arvs[ib])
                if cos != cos:  # NaN: a zero ARV has no direction
                    counts["undefined"] += 1
                    continue
                cosines.append(cos)
                if cos < gamma and (include_negative or cos >= cos_low):
                    pairs.append(ClassPair(a, b, cos))
            if pairs:
                pairs.sort(key=lambda pair: (pair.cosine, pair.class_a, pair.class_b))
                unit_info = PolysemanticUnit(
                    layer, unit, tuple(rel), tuple(pairs), tau=tau, p=p, gamma=gamma,
                    include_negative=include_negative,
                )  # fmt: skip
                found.append((pairs[0].cosine, layer_pos, unit, unit_info))
    found.sort(key=lambda item: item[:3])
    images = result.class_counts if allowed is None else result.class_counts[allowed]
    diagnosis = DetectionDiagnosis(
        tau=float(tau), p=float(p), gamma=float(gamma), cos_low=float(cos_low),
        include_negative=include_negative, layers=tuple(names), num_units=counts["units"],
        num_found=len(found), num_candidates=counts["candidates"], num_single=counts["single"],
        num_pairs=len(cosines), num_undefined=counts["undefined"],
        cosine_quantiles=_quantiles(cosines) if cosines else (), max_p=max_p,
        num_images=int(images.sum()), num_classes=int((images > 0).sum()),
        no_positive=tuple(no_positive), tau_grid=result.tau_grid,
    )  # fmt: skip
    if diagnosis.problem is not None:
        # stacklevel 2: the warning points at the caller's find_polysemantic line
        warnings.warn(str(diagnosis), UserWarning, stacklevel=2)
    return PolysemanticUnits((item[3] for item in found), diagnosis)


def _largest_p(result: ScanResult, layer: str, tau: float, allowed: torch.Tensor | None) -> float:
    """The largest ``p`` at which some unit of ``layer`` is relevant to two classes at ``tau``.

    A unit is relevant to class ``t`` when its share of important images reaches ``p``, so the
    answer is the largest second-highest share over units.
    """
    n = result.class_counts.to(torch.float64)
    keep = n > 0 if allowed is None else (n > 0) & allowed
    if int(keep.sum()) < 2:
        return 0.0
    shares = result.important_counts(layer, tau).to(torch.float64)[keep] / n[keep].unsqueeze(1)
    return float(shares.topk(2, dim=0).values[1].max())


def pairs_table(units: Sequence[PolysemanticUnit]) -> list[dict[str, object]]:
    """One row per gamma-polysemantic pair, sorted by descending cosine as in the official CSV.

    Returns
    -------
    list of dict
        Keys ``layer, unit, class_a, class_b, cosine``.
    """
    rows = [
        {
            "layer": u.layer,
            "unit": u.unit,
            "class_a": p.class_a,
            "class_b": p.class_b,
            "cosine": p.cosine,
        }
        for u in units
        for p in u.pairs
    ]
    rows.sort(key=lambda r: -float(r["cosine"]))  # type: ignore[arg-type]
    return rows
