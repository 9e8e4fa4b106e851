"""Hesse et al.'s split plan: :func:`plan_split` (concepts, rho rule, rho selection)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from ..._checks import check_bool, check_choice, check_int, check_module, check_number
from ...capture import check_supported, layer_shape, resolve_layer
from ...errors import ArgumentTypeError, InvalidArgumentError, PlanMismatchError
from ...plan import LayerSplit, SplitPlan
from ...plan.forms import normalise_form
from ...stats import ScanResult
from .concepts import concept_groups, concept_labels
from .detect import PolysemanticUnit
from .rho import RHO_GRID, rho_assignment
from .scoring import UnitToScore, score_units

__all__ = ["plan_split"]


def plan_split(
    unit: PolysemanticUnit | Sequence[PolysemanticUnit],
    result: ScanResult,
    loader: Iterable[Any] | None = None,
    *,
    model: nn.Module | None = None,
    rho: str | float = "auto",
    concepts: Sequence[Sequence[int]] | None = None,
    merge: str = "overlap",
    mode: str = "faithful",
    gamma: float | None = None,
    max_images: int | None = None,
    progress: bool = False,
) -> SplitPlan:
    """Plan Hesse et al.'s split of one (or several) polysemantic units.

    Parameters
    ----------
    unit : PolysemanticUnit or sequence of them
        From :func:`neuronsplit.find_polysemantic`.
    result : ScanResult
        The scan the unit was found in (gives the ARVs).
    loader : iterable of (inputs, labels), optional
        Training data; needed for ``rho="auto"`` to score each rho on the concept images.
    model : nn.Module, optional
        The scanned model; needed for ``rho="auto"``. It is not modified.
    rho : "auto" or float
        A fixed factor in (0, 1] or the argmax of the official score over :data:`RHO_GRID`
        (scored on Hesse's subunits whatever ``merge`` is, so both forms get the same rho).
    concepts : sequence of sequence of int, optional
        Class sets, one per subunit. Default: :func:`concept_groups` (complete linkage: no
        two gamma-polysemantic classes share a subunit; Hesse et al.'s case is two classes).
    merge : {"overlap", "disjoint"}
        How the subunits are read (``"overlap"`` is the paper's); the split rows are the same.
    mode : {"faithful", "magnitude"}
        Signed official rule or the symmetric magnitude variant.
    gamma : float, optional
        Similarity threshold used to group classes into concepts. Default: the ``gamma`` each
        unit was found with (:attr:`PolysemanticUnit.gamma`), 0.5 for a unit built by hand.
    max_images : int, optional
        Use at most this many images per concept for the rho score (exactly).
    progress : bool
        Show a tqdm progress bar for the scoring pass (one pass per layer).

    Returns
    -------
    SplitPlan
        ``meta["units"]`` records per unit the concepts, the chosen rho and the official and
        robust score of every rho on the grid.

    Examples
    --------
    >>> units = ns.find_polysemantic(res)  # doctest: +SKIP
    >>> plan = ns.plan_split(units[0], res, train_loader, model=model)  # doctest: +SKIP
    >>> split = ns.apply_plan(model, plan)  # doctest: +SKIP
    """
    units = [unit] if isinstance(unit, PolysemanticUnit) else list(unit)
    if not units or not all(isinstance(u, PolysemanticUnit) for u in units):
        raise ArgumentTypeError(
            "plan_split needs a PolysemanticUnit or a non-empty list of them (from "
            f"ns.find_polysemantic), got {unit!r:.80}"
        )
    if not isinstance(result, ScanResult):
        raise ArgumentTypeError(
            f"result must be the ScanResult the units came from, got {type(result).__name__}"
        )
    if rho == "auto" and (loader is None or model is None):
        raise InvalidArgumentError(
            "rho='auto' scores every rho on the concept images: pass the training loader and "
            "model=..., or give a fixed rho such as rho=0.5"
        )
    if rho != "auto":
        rho = check_number(rho, "rho ('auto' or a number)", low=0.0, high=1.0, low_open=True)
    if model is not None:
        check_module(model, "model")
    form = normalise_form(merge, "plan")  # PlanError (a ValueError) names the valid forms
    check_choice(mode, "mode", ("faithful", "magnitude"))
    if gamma is not None:
        check_number(gamma, "gamma", low=-1.0, high=1.0)
    check_int(max_images, "max_images", low=1, optional=True)
    check_bool(progress, "progress")
    if concepts is not None and len(units) > 1:
        raise InvalidArgumentError("concepts=... applies to a single unit; plan units one by one")
    grid = RHO_GRID if rho == "auto" else (float(rho),)
    rhos = torch.tensor(grid, dtype=torch.float64)
    items: dict[str, list[UnitToScore]] = {}
    gammas: dict[tuple[str, int], float] = {}
    for u in units:
        # an explicit gamma wins, then the one the unit was found with, then the paper's 0.5
        unit_gamma = gamma if gamma is not None else (u.gamma if u.gamma is not None else 0.5)
        gammas[(u.layer, u.unit)] = unit_gamma
        unit_concepts = (
            tuple(tuple(int(c) for c in concept) for concept in concepts)
            if concepts is not None
            else concept_groups(result, u, gamma=unit_gamma)
        )
        if len(unit_concepts) < 2:
            raise InvalidArgumentError(_single_concept(result, u, unit_concepts, unit_gamma, gamma))
        arvs = result.concept_arvs(u.layer, u.unit, unit_concepts)
        assignments = rho_assignment(arvs, rhos, mode=mode)  # (R, J)
        items.setdefault(u.layer, []).append(UnitToScore(u.unit, unit_concepts, assignments))
    scores: dict[tuple[str, int], list[tuple[float, float]]] = {}
    if rho == "auto":
        for layer, layer_items in items.items():
            module = check_supported(resolve_layer(model, layer), layer)  # type: ignore[arg-type]
            scanned = tuple(result.layer(layer).weight.shape[:2])
            if layer_shape(module) != scanned:
                raise PlanMismatchError(
                    f"layer {layer!r} of the given model has {layer_shape(module)[0]} units x "
                    f"{layer_shape(module)[1]} inputs, the scanned one {scanned[0]} x "
                    f"{scanned[1]}; pass the model that was scanned"
                )
            per_unit = score_units(
                model,
                loader,
                layer,
                layer_items,
                max_images=max_images,
                progress=progress,  # type: ignore[arg-type]
            )
            scores.update(
                {(layer, it.unit): s for it, s in zip(layer_items, per_unit, strict=True)}
            )
    splits, infos = [], []
    for layer, layer_items in items.items():
        rows, ks, labels = [], [], {}
        for it in layer_items:
            unit_scores = scores.get((layer, it.unit), [])
            best = (
                max(range(len(grid)), key=lambda i: (unit_scores[i][0], -i)) if unit_scores else 0
            )  # ties -> smallest rho
            rows.append(it.assignments[best])
            ks.append(len(it.concepts))
            labels[it.unit] = concept_labels(it.concepts)
            infos.append(
                {
                    "layer": layer,
                    "unit": it.unit,
                    "concepts": [list(c) for c in it.concepts],
                    "gamma": gammas[(layer, it.unit)],
                    "rho": grid[best],
                    "rho_grid": list(grid),
                    "score": [s[0] for s in unit_scores],
                    "robust_score": [s[1] for s in unit_scores],
                }
            )
        units_of_layer = [it.unit for it in layer_items]
        splits.append(
            LayerSplit(layer, units_of_layer, torch.stack(rows), ks, merge=form, labels=labels)
        )
    infos.sort(key=lambda info: (list(items).index(info["layer"]), info["unit"]))
    return SplitPlan(splits, meta={"method": "hesse2025", "mode": mode, "units": infos})


def _single_concept(
    result: ScanResult,
    unit: PolysemanticUnit,
    concepts: Sequence[Sequence[int]],
    used: float,
    given: float | None,
) -> str:
    """The refusal message: which gamma was used, where it came from, and the one to pass."""
    source = (
        "passed to plan_split" if given is not None
        else "from find_polysemantic" if unit.gamma is not None
        else "the default"
    )  # fmt: skip
    classes = [c for concept in concepts for c in concept]
    lowest = ""
    if len(classes) > 1:
        unit_arvs = torch.nn.functional.normalize(
            result.arvs(unit.layer, unit.unit, classes).to(torch.float64), dim=1
        )
        cos = float((unit_arvs @ unit_arvs.T).min())
        lowest = f" (lowest ARV cosine {cos:.4g}); pass gamma= above {cos:.4g} to plan_split"
    return (
        f"unit {unit.unit} of {unit.layer!r} has a single concept {tuple(concepts)} at "
        f"gamma={used} ({source}): its classes are mutually more similar than gamma, so there "
        f"is nothing to split{lowest or '; pass a higher gamma= to plan_split'}"
    )
