"""Judge a split in numbers: :func:`evaluate`, one pass over a loader for every split unit."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_bool, check_int, check_module, check_number
from .._progress import progress_bar
from ..capture import capture, eval_mode, model_device
from ..errors import (
    ArgumentTypeError,
    InputShapeError,
    InvalidArgumentError,
    PlanMismatchError,
    UnknownSubunitError,
)
from ..nn import EquivalenceReport, apply_plan, get_split_layer, plan_of, verify_equivalence
from ..plan import SplitPlan
from ..stats.batches import split_batch, targets_of
from .purity import label_purity
from .result import Evaluation, EvaluationRow, nan_if
from .stream import RowStats, kind_of, unit_rows

__all__ = ["evaluate"]

_CONSTANT_RTOL = 1e-6  # a row whose activation varies less than this (relative) is constant


def _resolve(model: nn.Module, split: nn.Module | None, plan: Any) -> tuple[nn.Module, SplitPlan]:
    """The split model and the plan of the units to evaluate (checked against each other)."""
    if plan is not None and not isinstance(plan, SplitPlan):
        raise ArgumentTypeError(f"plan must be a SplitPlan or None, got {type(plan).__name__}")
    if split is None:
        if plan is None:
            raise ArgumentTypeError(
                "evaluate needs the split model or a plan; pass split=ns.apply_plan(model, plan) "
                "or plan=..."
            )
        return apply_plan(model, plan), plan
    check_module(split, "split")
    if plan is None:
        return split, plan_of(split)
    for s in plan.splits:
        layer = get_split_layer(split, s.layer)
        try:
            have = layer.unit_split(s.unit)
        except UnknownSubunitError as err:
            raise PlanMismatchError(
                f"plan splits unit {s.unit} of layer {s.layer!r}, the split model does not; "
                f"pass the plan the model was split with (or plan=None): {err}"
            ) from err
        if (have.groups, have.shared, have.merge) != (s.groups, s.shared, s.merge):
            raise PlanMismatchError(
                f"unit {s.unit} of layer {s.layer!r} is split differently in the split model "
                "than in plan; pass the plan the model was split with (or plan=None)"
            )
    return split, plan


def _concepts(
    plan: SplitPlan, given: Mapping[Any, Sequence[Sequence[int]]] | None
) -> dict[tuple[str, int], list[list[int]]]:
    """``{(layer, unit): classes of each subunit}`` from ``given`` or Hesse's plan meta."""
    source: dict[tuple[str, int], Any] = {}
    if given is not None:
        if not isinstance(given, Mapping):
            raise ArgumentTypeError(
                f"concepts must map (layer, unit) to class lists per subunit, got "
                f"{type(given).__name__}"
            )
        source = dict(given)
    else:
        for info in plan.meta.get("units", ()) or ():
            if isinstance(info, Mapping) and "concepts" in info:
                source[(info["layer"], int(info["unit"]))] = info["concepts"]
    out = {}
    for key, groups in source.items():
        layer, unit = key
        if layer not in plan.layers or unit not in plan.layer(layer):
            continue
        k = int(plan.layer(layer).num_subunits[plan.layer(layer).position(unit)])
        groups = [[int(c) for c in g] for g in groups]
        if len(groups) != k:
            raise InvalidArgumentError(
                f"concepts of unit {unit} of layer {layer!r} give {len(groups)} class sets for "
                f"{k} subunits; give one class list per subunit"
            )
        out[(layer, unit)] = groups
    return out


def _unit_equivalence(report: EquivalenceReport, layer: str, unit: int) -> tuple[bool, float]:
    """Whether ``unit`` passed in every dtype, and its largest relative deviation."""
    exact, worst = True, 0.0
    for row in report.rows:
        for lay in row.layers:
            if lay.layer != layer:
                continue
            for d in lay.split_units:
                if d.unit == unit:
                    exact &= lay.ran and d.max_abs <= row.atol + row.rtol * lay.max_ref
                    worst = max(worst, d.rel)
    return bool(exact), worst


def _label_measures(
    st: RowStats, i: int, y: Tensor, counts: Tensor, class_share: float | None
) -> tuple[dict[str, Any], list[str]]:
    """Purity, entropy and top class of row ``i``'s top images; selectivity and relevant
    classes from its per-class mean positive activation."""
    notes = []
    top = st.top_idx[i]
    purity, entropy = label_purity(y[top]) if top.numel() else (math.nan, math.nan)
    top_class = int(torch.bincount(y[top]).argmax()) if top.numel() else None
    present = torch.nonzero(counts > 0).flatten()
    mu = st.class_pos[i, present] / counts[present]
    selectivity, preferred, classes = math.nan, None, ()
    if float(mu.sum()) <= 0:
        notes.append("no positive activation on any image: selectivity and classes undefined")
    else:
        best = int(mu.argmax())
        preferred = int(present[best])
        share = mu / mu.sum()
        threshold = 1.0 / len(present) if class_share is None else class_share
        classes = tuple(int(c) for c in present[share >= threshold * (1 - 1e-12)])
        if len(present) < 2:
            notes.append("fewer than two classes in the data: selectivity undefined")
        else:
            rest = (mu.sum() - mu[best]) / (len(present) - 1)
            selectivity = float((mu[best] - rest) / (mu[best] + rest))
    measures = {
        "purity": purity, "entropy": entropy, "top_class": top_class,
        "selectivity": selectivity, "preferred_class": preferred,
        "n_classes": len(classes), "classes": classes,
    }  # fmt: skip
    return measures, notes


def _rows_of(
    name: str, st: RowStats, form: str, y: Tensor | None, class_share: float | None,
    report: EquivalenceReport | None, notes: list[str],
) -> list[EvaluationRow]:  # fmt: skip
    counts = None if y is None else torch.bincount(y, minlength=st.class_pos.shape[1]).double()
    out = []
    for i, (unit, k, _) in enumerate(st.rows):
        why: list[str] = []
        lo, hi = float(st.act_min[i]), float(st.act_max[i])
        constant = hi - lo <= _CONSTANT_RTOL * max(abs(hi), abs(lo))
        if k is None and hi <= 0:
            why.append("the unit never activates (a(x) <= 0 on every image)")
        if constant:
            why.append(f"constant (a(x) = {hi:.6g} on every image): top images are arbitrary")
        n_frac = int(st.frac_n[i])
        if n_frac == 0:
            why.append("the unit matters (relevance >= tau) on no image: fraction undefined")
        own = None
        if st.members is not None and bool(st.members[i].any()):
            own = nan_if(float(st.own_sum[i]) / max(int(st.own_n[i]), 1), int(st.own_n[i]) > 0)
        measures: dict[str, Any] = dict.fromkeys(
            ("purity", "entropy", "top_class", "selectivity", "preferred_class", "n_classes",
             "classes"))  # fmt: skip
        if y is not None:
            measures, label_notes = _label_measures(st, i, y, counts, class_share)
            why += label_notes
            if constant:
                measures.update(purity=math.nan, entropy=math.nan, top_class=None)
        exact = rel = None
        if report is not None and k is None:
            exact, rel = _unit_equivalence(report, name, unit)
        row = EvaluationRow(
            layer=name, unit=unit, subunit=k,
            role="unit" if k is None else ("residual" if k < 0 else "subunit"), form=form,
            n_images=st.count, mean_activation=float(st.act_sum[i]) / st.count,
            fraction=nan_if(float(st.frac_sum[i]) / max(n_frac, 1), n_frac > 0),
            fraction_images=n_frac, fraction_own=own,
            top_indices=() if constant else tuple(st.top_idx[i].tolist()),
            exact=exact, max_rel_delta=rel, note="; ".join(why), **measures,
        )  # fmt: skip
        notes += [f"{row.name}: {w}" for w in why]
        out.append(row)
    return out


def evaluate(
    model: nn.Module, split: nn.Module | None, loader: Iterable[Any], plan: SplitPlan | None = None,
    *, labels: bool = True, k: int = 20, tau: float = 0.03, class_share: float | None = None,
    concepts: Mapping[tuple[str, int], Sequence[Sequence[int]]] | None = None,
    equivalence: bool = True, progress: bool = True,
) -> Evaluation:  # fmt: skip
    """Measure every split unit, subunit and residual in one pass over ``loader``.

    For each row (a split unit, each of its subunits ``k`` in the plan's form, its residual):

    * ``mean_activation``: mean over images of the activation ``a(x)``, the row's largest value
      over positions / tokens (the image's value for a Linear on ``(B, C)``).
    * ``fraction``: Hesse et al.'s ``d_k / orig`` (``r / orig`` for the residual; 1 for the
      unit): the row summed over positions divided by the unit's sum, averaged over the images
      where the unit matters -- its positive relative relevance for the target class
      (``sum relu(A * dy/dA)`` over positions, over the same for all units of the layer) is at
      least ``tau`` and its sum is not 0. The target is the label, or the model's prediction
      with ``labels=False``. ``fraction_images`` counts those images.
    * ``fraction_own`` (labels and concepts): the same on the images of the subunit's own
      concept classes (the residual: of any concept) -- Hesse's diagonal.
    * ``top_indices``: the ``k`` images (positions in the loader's order) with the largest
      ``a(x)``, ties to the earlier image; ``purity`` and ``entropy`` (bits) of their labels and
      their most common label ``top_class`` (:func:`label_purity`).
    * ``selectivity`` (labels): Morcos et al.'s class selectivity index on the positive part,
      ``(mu_max - mu_rest) / (mu_max + mu_rest)``, with ``mu_c`` the mean of ``max(a(x), 0)``
      over class ``c``'s images, ``mu_max`` the largest and ``mu_rest`` the mean of the other
      classes' ``mu_c``; in ``[0, 1]``, 1 = responds to one class only. ``preferred_class``
      is the class of ``mu_max``.
    * ``n_classes`` / ``classes`` (labels): the relevant classes, whose share
      ``mu_c / sum_c mu_c`` is at least ``class_share`` (default ``1 / C``, the even share of
      the ``C`` classes present). Compare a subunit's with its unit's row.
    * ``exact`` / ``max_rel_delta`` (unit rows): the unit passed
      :func:`~neuronsplit.verify_equivalence` (float32 and float64, first batch) and its
      largest relative deviation.

    Classes with no image are left out of the class measures. A constant row (``a(x)`` varies
    by less than 1e-6 relatively), a unit that never activates or matters on no image gets NaN
    where a measure is undefined and a ``note``; nothing raises for them.

    Parameters
    ----------
    model : nn.Module
        The original model (not modified).
    split : nn.Module or None
        ``apply_plan(model, plan)`` (not modified); None: made from ``plan``.
    loader : iterable
        Batches ``(inputs, labels, ...)`` or, with ``labels=False``, also bare inputs.
    plan : SplitPlan, optional
        The units to evaluate (default: every split unit of ``split``); a Hesse plan's
        ``meta["units"][i]["concepts"]`` gives the concept classes of each subunit.
    labels : bool, default True
        Compute the label measures (labels are only read here, never by a method judged).
        False: the label-free measures only (``Evaluation.columns`` leaves the others out).
    k : int, default 20
        Images per top set (fewer if the loader has fewer).
    tau : float, default 0.03
        Relative relevance at which the unit matters on an image.
    class_share : float in (0, 1], optional
        Share of the positive activation that makes a class relevant (default ``1 / C``).
    concepts : mapping, optional
        ``{(layer, unit): [classes of subunit 0, classes of subunit 1, ...]}``; default from the
        plan's meta.
    equivalence : bool, default True
        Run :func:`~neuronsplit.verify_equivalence` on the first batch.
    progress : bool, default True
        Show a progress bar.

    Returns
    -------
    Evaluation

    Raises
    ------
    InvalidArgumentError
        A plan that splits no unit, concepts of the wrong length, an argument out of range.
    InputShapeError
        A loader with no images, a model whose output is not ``(B, classes)``.
    InvalidTargetError
        ``labels=True`` but batches without labels, or labels out of range.
    PlanMismatchError
        A plan whose units are not split (or split differently) in ``split``.

    Examples
    --------
    >>> import neuronsplit as ns
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
    >>> plan = ns.SplitPlan([ns.UnitSplit("0", 1, [[0, 1], [2]], shared=[3])])
    >>> x, y = torch.rand(16, 4), torch.arange(16) % 2
    >>> ev = ns.evaluate(model, None, [(x, y)], plan, k=4, progress=False)
    >>> [r.name for r in ev.rows]
    ['0/u1', '0/u1/k0', '0/u1/k1', '0/u1/residual']
    >>> ev.equivalence.passed, len(ev.row("0", 1, 0).top_indices)
    (True, 4)
    """
    check_module(model, "model")
    for flag, what in ((labels, "labels"), (equivalence, "equivalence"), (progress, "progress")):
        check_bool(flag, what)
    check_int(k, "k", low=1)
    check_number(tau, "tau", low=0.0, high=1.0)
    if class_share is not None:
        check_number(class_share, "class_share", low=0.0, high=1.0, low_open=True)
    split, plan = _resolve(model, split, plan)
    if not len(plan):
        raise InvalidArgumentError(
            "the plan splits no unit, so there is nothing to evaluate; pass a split model "
            "(ns.apply_plan(model, plan)) or a plan with at least one UnitSplit"
        )
    concept_map = _concepts(plan, concepts)
    stats: dict[str, RowStats] = {}
    for name, layer_split in plan.by_layer().items():
        layer = get_split_layer(split, name)
        rows = [r for u in layer_split.units.tolist() for r in unit_rows(layer, u)]
        stats[name] = RowStats(rows, kind_of(layer), k, tau)
    names = list(stats)
    device = model_device(split)
    seen: list[Tensor] = []
    first, offset, max_abs = None, 0, 0.0
    with eval_mode(model, split):
        for i, batch in enumerate(progress_bar(loader, desc="evaluate", enabled=progress)):
            x, y = split_batch(batch)
            x = x.to(device) if device is not None else x
            if x.shape[0] == 0:
                continue
            first = x if first is None else first
            subs = [f"{n}.subunits" for n in names]
            with capture(split, names, grad=True) as cap, capture(split, subs) as sub, \
                    torch.enable_grad():  # fmt: skip
                logits = split(x)
                if logits.dim() != 2:
                    raise InputShapeError(
                        f"evaluate needs a classifier's (batch, classes) output, got shape "
                        f"{tuple(logits.shape)}"
                    )
                if not seen:
                    for n, st in stats.items():
                        st.allocate(logits.shape[1], _unit_concepts(concept_map, n))
                target = targets_of(logits, y if labels else None,
                                    "label" if labels else "prediction", logits.shape[1], i)  # fmt: skip
                outs = [cap.output(n) for n in names]
                grads = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), outs,
                                            allow_unused=True)  # fmt: skip
            with torch.no_grad():
                max_abs = max(max_abs, float((model(x) - logits.detach()).abs().max()))
            for n, out, g in zip(names, outs, grads, strict=True):
                g = torch.zeros_like(out) if g is None else g
                stats[n].update(out, g, sub.output(f"{n}.subunits"),
                                target if labels else None, offset)  # fmt: skip
            seen.append(target.cpu())
            offset += x.shape[0]
    if not offset:
        raise InputShapeError("the loader yielded no images; pass a non-empty loader")
    report = verify_equivalence(model, split, [first], allow_unused=True) if equivalence else None
    y_all = torch.cat(seen) if labels else None
    notes: list[str] = []
    if offset < k:
        notes.append(f"k={k} but the loader gave {offset} images: top sets hold {offset}")
    rows = []
    for name, st in stats.items():
        rows += _rows_of(name, st, plan.layer(name).merge, y_all, class_share, report, notes)
    return Evaluation(rows, labels=labels, n_images=offset, k=k, equivalence=report,
                      max_abs_delta=max_abs, notes=notes)  # fmt: skip


def _unit_concepts(
    concept_map: dict[tuple[str, int], list[list[int]]], layer: str
) -> dict[int, list[list[int]]] | None:
    found = {u: groups for (n, u), groups in concept_map.items() if n == layer}
    return found or None
