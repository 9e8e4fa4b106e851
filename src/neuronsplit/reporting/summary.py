"""The report's overview sections: provenance, the summary table, the equivalence check and the
notes of the evaluation.

Examples
--------
>>> from neuronsplit.plan import SplitPlan
>>> method_of(SplitPlan([], meta={"elude": {"top_n": 32, "layers": {}}}))[0]
'ELUDe discover (unsupervised: no labels used to split)'
"""

from __future__ import annotations

import datetime as _dt
import platform
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from ..errors import ArgumentTypeError, InvalidArgumentError, PlanMismatchError
from ..evaluation import Evaluation, EvaluationRow
from ..plan import SplitPlan
from .html import Raw, Section, esc, fmt, note, para, table

__all__ = [
    "method_of", "provenance_section", "summary_section", "equivalence_section",
    "notes_section", "empty_plan_section", "unit_groups", "reused_evaluation",
]  # fmt: skip

_MAX_NOTES = 60  # notes listed in full; a big unsupervised plan can have thousands


def method_of(plan: SplitPlan) -> tuple[str, dict[str, Any]]:
    """The method that made ``plan`` (from its meta) and the parameters it recorded."""
    meta = plan.meta
    if "elude" in meta:
        params = {k: v for k, v in meta["elude"].items() if k != "layers"}
        return "ELUDe discover (unsupervised: no labels used to split)", params
    if str(meta.get("method", "")).startswith("hesse"):
        units = list(meta.get("units", ()) or ())
        params = {"mode": meta.get("mode")}
        if units:
            params["gamma"] = units[0].get("gamma")
            params["rho"] = {f"{u['layer']}/u{u['unit']}": u.get("rho") for u in units}
        return "Hesse et al. (supervised: concepts from labelled relevance)", params
    return "a given plan (no method recorded in its meta)", {}


def _versions() -> str:
    import torch

    from .. import __version__

    parts = [f"neuronsplit {__version__}", f"torch {torch.__version__}"]
    try:
        import captum

        parts.append(f"captum {captum.__version__}")
    except ImportError:  # captum is a core dependency; keep the report working without it
        pass
    parts.append(f"python {platform.python_version()}")
    return ", ".join(parts)


def provenance_section(
    sid: str, model: nn.Module, plan: SplitPlan, *, model_name: str | None,
    data: str, extra: Mapping[str, Any] | None = None,
) -> Section:  # fmt: skip
    """Model, method and its parameters, plan size, data, versions and date."""
    method, params = method_of(plan)
    n_params = sum(p.numel() for p in model.parameters())
    rows: list[tuple[str, Any]] = [
        ("model", f"{model_name or type(model).__name__} ({n_params:,} parameters)"),
        ("method", method),
        *((f"  {k}", fmt(v) if not isinstance(v, dict) else _short(v)) for k, v in params.items()),
        ("plan", f"{len(plan)} split unit(s) in {len(plan.layers)} layer(s): "
                 f"{', '.join(plan.layers) or '-'}"),
        ("data", data),
        *((k, v) for k, v in (extra or {}).items()),
        ("versions", _versions()),
        ("date", _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")),
    ]  # fmt: skip
    return Section(sid, "Provenance", [table(["", ""], rows, text_columns=2)])


def _short(d: Mapping[str, Any]) -> str:
    return "; ".join(f"{k} {fmt(v)}" for k, v in d.items())


def _mean(values: Sequence[float | None]) -> float:
    vals = [v for v in values if v is not None and v == v]
    return sum(vals) / len(vals) if vals else float("nan")


def unit_groups(evaluation: Evaluation) -> dict[tuple[str, int], list[EvaluationRow]]:
    """The evaluation's rows by split unit: the unit's row, its subunits', its residual's."""
    out: dict[tuple[str, int], list[EvaluationRow]] = {}
    for r in evaluation.rows:
        out.setdefault((r.layer, r.unit), []).append(r)
    return out


def reused_evaluation(
    evaluation: Evaluation | Callable[[], Evaluation], subunits: Mapping[tuple[str, int], int],
    *, labels: bool, k: int, images: int | None = None,
) -> Evaluation:  # fmt: skip
    """``evaluation`` (called first if it is a callable), checked against the report it is for.

    Parameters
    ----------
    evaluation : Evaluation or callable
        An :func:`~neuronsplit.evaluate` result, or a callable returning one.
    subunits : mapping of (layer, unit) to int
        Every split unit of the report's split model and its number of subunits: the
        evaluation must have rows for exactly these units, with as many subunits each.
    labels : bool
        The report's ``labels``: the evaluation must have been made with the same.
    k : int
        The report's top images per row: the evaluation's purity and top class are measured
        over its own ``k`` images, so it must be the same ``k``.
    images : int, optional
        The images the report's loader holds, where known: the evaluation may not name more.

    Returns
    -------
    Evaluation

    Raises
    ------
    ArgumentTypeError
        The callable gave something else than an Evaluation.
    InvalidArgumentError
        Another ``k`` or ``labels``, or more images than the loader holds.
    PlanMismatchError
        Other split units, or another number of subunits for one of them.

    Examples
    --------
    >>> ev = Evaluation([], labels=False, n_images=0, k=8, equivalence=None,
    ...                 max_abs_delta=0.0, notes=[])
    >>> reused_evaluation(lambda: ev, {}, labels=False, k=8) is ev
    True
    """
    if callable(evaluation) and not isinstance(evaluation, Evaluation):
        evaluation = evaluation()
    if not isinstance(evaluation, Evaluation):
        raise ArgumentTypeError(
            f"evaluation gave a {type(evaluation).__name__}, not an Evaluation (ns.evaluate)"
        )
    if evaluation.k != k:
        raise InvalidArgumentError(
            f"the evaluation measured {evaluation.k} top images per row and the report shows "
            f"k={k}; evaluate with k={k} or pass k={evaluation.k}"
        )
    if evaluation.labels != labels:
        made = "without" if labels else "with"
        raise InvalidArgumentError(
            f"the evaluation was made {made} labels and the report has labels={labels}; pass "
            f"labels={not labels} or evaluate with labels={labels}"
        )
    if images is not None and evaluation.n_images > images:
        raise InvalidArgumentError(
            f"the evaluation saw {evaluation.n_images} images and the loader holds {images}; "
            "evaluate the loader the report is given"
        )
    groups = unit_groups(evaluation)
    extra = sorted(set(groups) - set(subunits))
    if extra:
        raise PlanMismatchError(
            f"the evaluation has unit(s) the split model does not split, e.g. unit "
            f"{extra[0][1]} of layer {extra[0][0]!r}; evaluate the same model, split and plan"
        )
    for (layer, unit), count in subunits.items():
        found = sum(r.role == "subunit" for r in groups.get((layer, unit), ()))
        if found != count:
            raise PlanMismatchError(
                f"the evaluation has {found} subunit row(s) for unit {unit} of layer "
                f"{layer!r}, the split model {count}; evaluate the same model, split and plan"
            )
    return evaluation


def summary_section(
    sid: str, evaluation: Evaluation, order: Sequence[tuple[str, int]],
    links: Mapping[tuple[str, int], str],
) -> Section:  # fmt: skip
    """One row per split unit, in ``order``; units with a section of their own link to it."""
    groups = unit_groups(evaluation)
    headers = ["layer", "unit", "K", "equivalent", "max rel. dev.", "fractions d_k/orig",
               "residual r/orig"]  # fmt: skip
    if evaluation.labels:
        headers += ["purity unit → subunits", "selectivity unit → subunits", "classes"]
    headers.append("notes")
    rows, classes = [], []
    for key in order:
        group = groups[key]
        unit = group[0]
        subs = [r for r in group if r.role == "subunit"]
        residual = next((r for r in group if r.role == "residual"), None)
        name = esc(key[1])
        if key in links:
            name = Raw(f'<a href="#{esc(links[key])}">{name}</a>')
        cells: list[Any] = [
            key[0], name, len(subs), unit.exact, unit.max_rel_delta,
            [r.fraction for r in subs], residual.fraction if residual else None,
        ]  # fmt: skip
        if evaluation.labels:
            cells += [
                f"{fmt(unit.purity)} → {fmt(_mean([r.purity for r in subs]))}",
                f"{fmt(unit.selectivity)} → {fmt(_mean([r.selectivity for r in subs]))}",
                " | ".join(fmt(r.classes) for r in subs),
            ]
        cells.append(sum(1 for r in group if r.note))
        rows.append(cells)
        classes.append("fail" if unit.exact is False else "")
    body = [
        para(
            f"{len(order)} split unit(s), evaluated on {evaluation.n_images} images "
            f"(top {evaluation.k} per row). Fractions are Hesse et al.'s d_k/orig over the "
            "images where the unit matters; purity is the label purity of the top images "
            "(subunits: their mean); notes counts the rows with a note below."
        ),
        table(headers, rows, text_columns=1, row_classes=classes),
    ]
    if not evaluation.labels:
        body.insert(1, note("evaluated without labels: purity, selectivity and classes left out"))
    return Section(sid, "Summary", body)


def equivalence_section(sid: str, evaluation: Evaluation) -> Section:
    """:func:`~neuronsplit.verify_equivalence` on the first batch, and the largest output
    deviation over every batch."""
    body: list[Raw] = [
        para(
            f"Largest |split(x) - model(x)| over all {evaluation.n_images} images, in the "
            f"model's dtype: {evaluation.max_abs_delta:.3g}."
        )  # fmt: skip
    ]
    rep = evaluation.equivalence
    if rep is None:
        body.append(note("the equivalence check was switched off"))
        return Section(sid, "Equivalence", body)
    verdict = "PASSED" if rep.passed else "FAILED"
    body.append(para(f"verify_equivalence (float32 and float64, first batch): {verdict}."))
    rows = [[r.dtype, r.n_batches, r.output_max_abs, r.output_max_ref, r.output_rel, r.rtol,
             r.passed] for r in rep.rows]  # fmt: skip
    body.append(table(["dtype", "batches", "max |Δ| output", "max |y|", "rel.", "rtol", "passed"],
                      rows, text_columns=1, row_classes=["" if r.passed else "fail"
                                                         for r in rep.rows]))  # fmt: skip
    if not rep.passed:
        body.append(note(f"not equivalent: {rep.worst()}"))
    return Section(sid, "Equivalence", body)


def notes_section(sid: str, notes: Sequence[str]) -> Section:
    """Every note of the evaluation (what made a measure undefined), the first few in full."""
    if not notes:
        return Section(sid, "Notes", [para("No measure was undefined.")])
    items = "".join(f"<li>{esc(n)}</li>" for n in notes[:_MAX_NOTES])
    more = len(notes) - _MAX_NOTES
    body = [Raw(f"<ul>{items}</ul>")]
    if more > 0:
        body.append(para(f"... and {more} more (Evaluation.notes has them all)", "muted"))
    return Section(sid, "Notes", body)


def empty_plan_section(sid: str, plan: SplitPlan) -> Section:
    """What a report of a plan that splits no unit says instead of a summary."""
    body = [note("The plan splits no unit: there is nothing to evaluate or to show.")]
    layers = plan.meta.get("elude", {}).get("layers", {}) if "elude" in plan.meta else {}
    if layers:
        rows = [[name, v.get("examined"), v.get("split"), _short(v.get("left_alone", {}))]
                for name, v in layers.items()]  # fmt: skip
        body += [para("ELUDe examined these layers and left every unit alone:"),
                 table(["layer", "examined", "split", "left alone (reason: units)"], rows,
                       text_columns=1)]  # fmt: skip
    return Section(sid, "Summary", body)
