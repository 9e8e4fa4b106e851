"""Input -> subunit assignment: Hesse et al.'s rho rule, its K-way form, and rho selection.

The rule (official code, ``disentangle_channel.py``), for two concepts with signed ARVs ``a, b``::

    if   rho * a_j > b_j:  j -> S1
    elif rho * b_j > a_j:  j -> S2
    else:                  j -> S0   (shared; seen by the residual)

K-way generalisation used here (identical to the above for K = 2): input ``j`` goes to the
*first* concept ``k`` (in concept order) with ``rho * a_k[j] > a_l[j]`` for every other concept
``l``; if no concept passes, to ``S0``. Strict comparisons, so exact ties fall through to S0, and
concept order breaks the double-pass cases exactly as the official ``elif`` does.
``mode="magnitude"`` applies the same rule to ``|a_k|`` (a documented deviation that treats
negative contributions symmetrically).

rho is chosen from the grid 0.05, 0.10, ..., 1.00 by the official score: for each concept the mean
over its images of ``sum_hw ReLU(s_k) / (sum_{l != k} sum_hw ReLU(s_l) + 1e-5)``, summed over
concepts; the argmax, ties to the smallest rho. A robust score (medians instead of means) is
reported next to it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from .detect import PolysemanticUnit, cosine
from .errors import EmptyClassError, InputShapeError
from .layers import check_supported, eval_mode, resolve_layer
from .plan import SplitPlan, UnitSplit
from .stats import ScanResult

__all__ = ["RHO_GRID", "rho_partition", "concept_groups", "plan_split", "subunit_score"]

RHO_GRID: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 21))
_EPS = 1e-5


def rho_partition(
    arvs: torch.Tensor, rho: float, *, mode: str = "faithful"
) -> tuple[tuple[tuple[int, ...], ...], tuple[int, ...]]:
    """Assign each input to a concept (or to the shared set) with the rho rule.

    Parameters
    ----------
    arvs : torch.Tensor
        ``(K, J)`` concept ARVs (signed), concept order = precedence order.
    rho : float
        Factor in (0, 1]; smaller is stricter for positive entries.
    mode : {"faithful", "magnitude"}
        Signed rule as in the official code, or the same rule on absolute values.

    Returns
    -------
    groups : tuple of tuple of int
        Input indices per concept.
    shared : tuple of int
        Inputs no concept claims (S0).

    Examples
    --------
    >>> a = torch.tensor([[3.0, 1.0, 1.0, -1.0], [1.0, 3.0, 1.0, -2.0]])
    >>> rho_partition(a, 0.5)
    (((0, 3), (1,)), (2,))
    """
    if arvs.dim() != 2 or arvs.shape[0] < 2:
        raise ValueError(f"arvs must be (K >= 2, J), got shape {tuple(arvs.shape)}")
    if not 0.0 < rho <= 1.0:
        raise ValueError(f"rho must be in (0, 1], got {rho}")
    if mode not in ("faithful", "magnitude"):
        raise ValueError(f"mode must be 'faithful' or 'magnitude', got {mode!r}")
    values = arvs.abs() if mode == "magnitude" else arvs
    k_count, j_count = values.shape
    claimed = torch.zeros(j_count, dtype=torch.bool)
    groups: list[tuple[int, ...]] = []
    for k in range(k_count):
        others = torch.cat([values[:k], values[k + 1 :]])
        passes = (rho * values[k]).unsqueeze(0) > others
        wins = passes.all(0) & ~claimed
        claimed |= wins
        groups.append(tuple(torch.nonzero(wins).flatten().tolist()))
    shared = tuple(torch.nonzero(~claimed).flatten().tolist())
    return tuple(groups), shared


def concept_groups(
    result: ScanResult, unit: PolysemanticUnit, *, gamma: float = 0.5
) -> tuple[tuple[int, ...], ...]:
    """Group a unit's polysemantic classes into concepts.

    Classes whose ARVs have cosine >= ``gamma`` describe the same concept; concepts are the
    connected components of that similarity graph over ``unit.classes``, ordered by their
    smallest class. A unit relevant to three mutually dissimilar classes gets three concepts.

    Examples
    --------
    >>> concept_groups(res, units[0])  # doctest: +SKIP
    ((3,), (5,), (8,))
    """
    classes = list(unit.classes)
    arvs = {c: result.arv(unit.layer, unit.unit, c) for c in classes}
    parent = {c: c for c in classes}

    def root(c: int) -> int:
        while parent[c] != c:
            c = parent[c]
        return c

    for i, a in enumerate(classes):
        for b in classes[i + 1 :]:
            if cosine(arvs[a], arvs[b]) >= gamma:
                parent[root(b)] = root(a)
    comps: dict[int, list[int]] = {}
    for c in classes:
        comps.setdefault(root(c), []).append(c)
    return tuple(sorted(tuple(sorted(v)) for v in comps.values()))


def _concept_arvs(
    result: ScanResult, layer: str, unit: int, concepts: Sequence[Sequence[int]]
) -> torch.Tensor:
    """ARV of each concept: the image-weighted mean of its classes' ARVs (all images counted)."""
    stats = result.layer(layer)
    rows = []
    for concept in concepts:
        n = sum(result._class_count(c) for c in concept)
        sums = sum(stats.input_sums[c] for c in concept)
        rows.append((stats.weight[unit] * sums).sum(-1) / n)
    return torch.stack(rows)


def _contributions(module: nn.Module, x: torch.Tensor, unit: int) -> torch.Tensor:
    """Per-input contribution maps of ``unit``: ``(B, J, positions)``, bias excluded."""
    if isinstance(module, nn.Linear):
        w = module.weight[unit]
        if x.dim() == 2:
            return (x * w).unsqueeze(-1)
        flat = x.reshape(x.shape[0], -1, x.shape[-1])  # (B, T, J)
        return (flat * w).transpose(1, 2)
    # one grouped conv computes every input channel's own contribution map to this unit
    weight = module.weight[unit].unsqueeze(1)  # (J, 1, kh, kw)
    maps = F.conv2d(
        x, weight, None, module.stride, module.padding, module.dilation, groups=x.shape[1]
    )
    return maps.flatten(2)


def subunit_score(
    sums: torch.Tensor, concept_of: torch.Tensor, k_count: int
) -> tuple[float, float]:
    """Official and robust rho scores from per-image ReLU-summed subunit activations.

    Parameters
    ----------
    sums : torch.Tensor
        ``(n_images, K)``: ``sum_hw ReLU(s_k)`` per image.
    concept_of : torch.Tensor
        ``(n_images,)`` concept index of each image.
    k_count : int
        Number of concepts K.

    Returns
    -------
    (float, float)
        Sum over concepts of the mean (official) and of the median (robust) ratio.
    """
    official = robust = 0.0
    for k in range(k_count):
        rows = sums[concept_of == k]
        if rows.shape[0] == 0:
            continue
        others = rows.sum(1) - rows[:, k]
        ratio = rows[:, k] / (others + _EPS)
        official += float(ratio.mean())
        robust += float(ratio.median())
    return official, robust


def _collect_sums(
    model: nn.Module,
    loader: Iterable[Any],
    layer: str,
    unit: int,
    concepts: Sequence[Sequence[int]],
    masks: torch.Tensor,
    biases: torch.Tensor,
    max_images: int | None,
    progress: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the concept images and return ReLU-summed subunit activations for every rho."""
    module = resolve_layer(model, layer)
    class_to_concept = {c: k for k, concept in enumerate(concepts) for c in concept}
    seen = [0] * len(concepts)
    captured: list[torch.Tensor] = []
    handle = module.register_forward_pre_hook(lambda m, inputs: captured.append(inputs[0].detach()))
    sums, owners = [], []
    try:
        with eval_mode(model), torch.no_grad():
            for batch in tqdm(
                loader, desc="neuronsplit rho score", unit="batch", disable=not progress
            ):
                if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                    raise InputShapeError("plan_split needs a loader of (inputs, labels) pairs")
                x, y = batch[0], torch.as_tensor(batch[1])
                keep = [i for i, c in enumerate(y.tolist()) if c in class_to_concept]
                if max_images is not None:
                    keep = [i for i in keep if seen[class_to_concept[y[i].item()]] < max_images]
                    for i in keep:
                        seen[class_to_concept[y[i].item()]] += 1
                if not keep:
                    continue
                captured.clear()
                param = next(model.parameters(), None)
                device = param.device if param is not None else torch.device("cpu")
                model(x[keep].to(device))
                contrib = _contributions(module, captured[-1], unit).to(masks.dtype)
                # (B, J, P) x (R, K, J) -> (B, R, K, P): every rho and subunit in one einsum
                acts = torch.einsum("bjp,rkj->brkp", contrib, masks) + biases[None, :, :, None]
                sums.append(acts.clamp(min=0).sum(-1).cpu())
                owners.append(torch.tensor([class_to_concept[y[i].item()] for i in keep]))
    finally:
        handle.remove()
    if not sums:
        raise EmptyClassError(
            f"the loader holds no images of the concept classes {list(concepts)}; pass the "
            "training loader that was scanned"
        )
    return torch.cat(sums), torch.cat(owners)


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
    gamma: float = 0.5,
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
        A fixed factor in (0, 1] or the argmax of the official score over :data:`RHO_GRID`.
    concepts : sequence of sequence of int, optional
        Class sets, one per subunit. Default: :func:`concept_groups` (one concept per group of
        mutually similar polysemantic classes; Hesse et al.'s case is two single classes).
    merge : {"overlap", "partition"}
        Merge form of the split (``"overlap"`` is the paper's).
    mode : {"faithful", "magnitude"}
        Signed official rule or the symmetric magnitude variant.
    gamma : float
        Similarity threshold used to group classes into concepts.
    max_images : int, optional
        Use at most this many images per concept for the rho score.
    progress : bool
        Show a tqdm progress bar for the scoring pass.

    Returns
    -------
    SplitPlan
        One :class:`UnitSplit` per unit; ``meta["units"]`` records per unit the concepts, the
        chosen rho and the official and robust score of every rho on the grid.

    Examples
    --------
    >>> units = ns.find_polysemantic(res)  # doctest: +SKIP
    >>> plan = ns.plan_split(units[0], res, train_loader, model=model)  # doctest: +SKIP
    >>> split = ns.apply_plan(model, plan)  # doctest: +SKIP
    """
    units = [unit] if isinstance(unit, PolysemanticUnit) else list(unit)
    if not units:
        raise ValueError("plan_split needs at least one PolysemanticUnit")
    if rho == "auto" and (loader is None or model is None):
        raise ValueError(
            "rho='auto' scores every rho on the concept images: pass the training loader and "
            "model=..., or give a fixed rho such as rho=0.5"
        )
    if rho != "auto" and not (isinstance(rho, (int, float)) and 0.0 < float(rho) <= 1.0):
        raise ValueError(f"rho must be 'auto' or a number in (0, 1], got {rho!r}")
    if merge not in ("overlap", "partition"):
        raise ValueError(f"merge must be 'overlap' or 'partition', got {merge!r}")
    if concepts is not None and len(units) > 1:
        raise ValueError("concepts=... applies to a single unit; plan units one by one")
    splits, infos = [], []
    for u in units:
        unit_concepts = (
            tuple(tuple(c) for c in concepts)
            if concepts is not None
            else concept_groups(result, u, gamma=gamma)
        )
        if len(unit_concepts) < 2:
            raise ValueError(
                f"unit {u.unit} of {u.layer!r} has a single concept {unit_concepts}; its classes are "
                "mutually similar at this gamma, so there is nothing to split"
            )
        arvs = _concept_arvs(result, u.layer, u.unit, unit_concepts)
        grid = RHO_GRID if rho == "auto" else (float(rho),)
        partitions = [rho_partition(arvs, r, mode=mode) for r in grid]
        scores: list[tuple[float, float]] = []
        if rho == "auto":
            scores = _score_grid(
                model, loader, u, unit_concepts, partitions, merge, max_images, progress
            )
            best = max(range(len(grid)), key=lambda i: (scores[i][0], -i))  # ties -> smallest rho
        else:
            best = 0
        groups, shared = partitions[best]
        labels = tuple("class " + "+".join(str(c) for c in concept) for concept in unit_concepts)
        splits.append(UnitSplit(u.layer, u.unit, groups, shared, merge=merge, labels=labels))
        infos.append(
            {
                "layer": u.layer,
                "unit": u.unit,
                "concepts": [list(c) for c in unit_concepts],
                "rho": grid[best],
                "rho_grid": list(grid),
                "score": [s[0] for s in scores],
                "robust_score": [s[1] for s in scores],
            }
        )
    return SplitPlan(splits, meta={"method": "hesse2025", "mode": mode, "units": infos})


def _score_grid(
    model: nn.Module,
    loader: Iterable[Any],
    unit: PolysemanticUnit,
    concepts: Sequence[Sequence[int]],
    partitions: Sequence[tuple[tuple[tuple[int, ...], ...], tuple[int, ...]]],
    merge: str,
    max_images: int | None,
    progress: bool,
) -> list[tuple[float, float]]:
    module = check_supported(resolve_layer(model, unit.layer), unit.layer)
    n_inputs = module.weight.shape[1]
    k_count = len(concepts)
    dtype = torch.float64 if module.weight.dtype == torch.float64 else torch.float32
    masks = torch.zeros(len(partitions), k_count, n_inputs, dtype=dtype)
    for r, (groups, shared) in enumerate(partitions):
        for k, group in enumerate(groups):
            masks[r, k, list(group)] = 1.0
            if merge == "overlap":
                masks[r, k, list(shared)] = 1.0
    bias = 0.0
    if module.bias is not None and merge == "overlap":
        bias = float(module.bias.detach()[unit.unit])
    biases = torch.full((len(partitions), k_count), bias, dtype=dtype)
    masks = masks.to(module.weight.device)
    biases = biases.to(module.weight.device)
    sums, owners = _collect_sums(
        model, loader, unit.layer, unit.unit, concepts, masks, biases, max_images, progress
    )
    return [subunit_score(sums[:, r], owners, k_count) for r in range(len(partitions))]
