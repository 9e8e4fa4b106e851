"""Build and write the report: :func:`report` for one model and plan, :func:`report_part` and
:func:`write_report` to put several (the demo's CNN and ViT) into one file."""

from __future__ import annotations

import operator
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from .._checks import check_bool, check_int, check_module
from .._files import atomic_write_text
from .._progress import progress_bar
from ..errors import ArgumentTypeError, InvalidArgumentError, UnknownSubunitError
from ..evaluation import Evaluation, evaluate
from ..nn import apply_plan, get_split_layer, plan_of
from ..plan import SplitPlan
from .data import check_loader, first_images, gather, sequential_dataset
from .html import Section, figure_img, para, render, section_id
from .sections import VIEWS, UnitContext, unit_section
from .summary import (
    empty_plan_section,
    equivalence_section,
    notes_section,
    provenance_section,
    reused_evaluation,
    summary_section,
    unit_groups,
)
from .visuals import feature_visualisations, ref_names, reference_sets

__all__ = ["ReportPart", "report", "report_part", "write_report", "check_out"]


@dataclass
class ReportPart:
    """The sections of one model and plan, ready for :func:`write_report`.

    Attributes
    ----------
    title : str
        Heading of the part (a report of several parts shows one section per part).
    sections : list of Section
        Provenance, summary, equivalence, the split units, notes.
    units_shown, units_total : int
        Split units with a section of their own, and in the plan.
    seconds : float
        Time it took to build.
    notes : list of str
        The evaluation's notes (or why there was nothing to evaluate).
    evaluation : Evaluation or None
        What :func:`~neuronsplit.evaluate` measured (None for a plan that splits no unit).
    prefix : str
        The prefix of its section ids, and the id of its section in a report of several parts.
    """

    title: str
    sections: list[Section]
    units_shown: int = 0
    units_total: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    evaluation: Evaluation | None = None
    prefix: str = ""


def _order(plan: SplitPlan) -> list[tuple[str, int]]:
    """The split units in the plan's own order: a Hesse plan's ``meta["units"]`` (most
    polysemantic first), else the layers taken in turn, units ascending in each, so that the
    first few units of a whole-layer plan come from every layer."""
    by_layer = [[(name, int(u)) for u in ls.units.tolist()] for name, ls in plan.by_layer().items()]
    split = {key for lay in by_layer for key in lay}
    ranked = [(str(u["layer"]), int(u["unit"])) for u in plan.meta.get("units", ()) or ()
              if isinstance(u, Mapping) and "layer" in u and "unit" in u]  # fmt: skip
    ranked = list(dict.fromkeys(key for key in ranked if key in split))
    interleaved = [lay[i] for i in range(max(map(len, by_layer), default=0))
                   for lay in by_layer if i < len(lay)]  # fmt: skip
    seen = set(ranked)
    return ranked + [key for key in interleaved if key not in seen]


def _position(plan: SplitPlan) -> Any:
    """Sort key of a split unit: its layer's place in the plan, then the unit."""
    layers = {name: i for i, name in enumerate(plan.layers)}
    return lambda key: (layers[key[0]], key[1])


def _chosen(order: list[tuple[str, int]], units: Any, max_units: int) -> list[tuple[str, int]]:
    if units is None:
        return order[:max_units]
    if isinstance(units, (str, bytes)) or not isinstance(units, Iterable):
        raise ArgumentTypeError("units must be a list of (layer, unit) pairs, e.g. [('fc2', 0)]")
    picked = []
    for item in units:
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise ArgumentTypeError(f"units must hold (layer, unit) pairs, got {item!r}")
        try:
            unit = operator.index(item[1])  # ints, numpy ints; not "3", 3.0 or True's cousins
        except TypeError:
            raise ArgumentTypeError(f"a unit must be an int, got {item[1]!r} in {item!r}") from None
        key = (str(item[0]), unit)
        if key not in order:
            raise UnknownSubunitError(
                f"unit {key[1]} of layer {key[0]!r} is not split by the plan; pick from "
                f"{order[:8]}{' ...' if len(order) > 8 else ''}"
            )
        picked.append(key)
    return picked[:max_units]


def _concepts(plan: SplitPlan) -> dict[tuple[str, int], list[list[int]]]:
    out = {}
    for info in plan.meta.get("units", ()) or ():
        if isinstance(info, Mapping) and info.get("concepts") is not None:
            out[(info["layer"], int(info["unit"]))] = [list(c) for c in info["concepts"]]
    return out


def report_part(
    model: nn.Module, plan: SplitPlan | None, loader: Iterable[Any], *,
    split: nn.Module | None = None, title: str = "", prefix: str = "", labels: bool = True,
    max_units: int = 8, units: Sequence[tuple[str, int]] | None = None, k: int = 8,
    feature_vis: bool = True, steering: bool = True, heatmaps: bool = True,
    scan: Any = None, model_name: str | None = None, data: str = "the given loader",
    sample: int = 256, feature_steps: int = 256, progress: bool = True,
    evaluation: Evaluation | Callable[[], Evaluation] | None = None,
) -> ReportPart:  # fmt: skip
    """The sections of the report of one model and plan (see :func:`report`).

    ``evaluation`` (also an option of :func:`report`) reuses an :func:`~neuronsplit.evaluate`
    of the same model, split and loader instead of a second pass, made with the same ``k`` and
    ``labels`` (checked, with the split units: :func:`.summary.reused_evaluation`). A callable
    that returns one is called after the reference images and feature visualisations are
    made: an evaluation running in another process (``neuronsplit demo`` runs it beside) is
    then waited for last.
    """
    start = time.perf_counter()
    check_module(model, "model")
    for flag, what in ((labels, "labels"), (feature_vis, "feature_vis"), (steering, "steering"),
                       (heatmaps, "heatmaps"), (progress, "progress")):  # fmt: skip
        check_bool(flag, what)
    check_int(max_units, "max_units", low=1)
    check_int(k, "k", low=1)
    check_int(sample, "sample", low=1)
    check_int(feature_steps, "feature_steps", low=1)
    if plan is None and split is None:
        raise ArgumentTypeError("report needs a plan or a split model (ns.apply_plan(model, plan))")
    if plan is not None and not isinstance(plan, SplitPlan):
        raise ArgumentTypeError(f"plan must be a SplitPlan, got {type(plan).__name__}")
    plan = plan if plan is not None else plan_of(split)
    if evaluation is not None and not (isinstance(evaluation, Evaluation) or callable(evaluation)):
        raise ArgumentTypeError(
            "evaluation must be an Evaluation (ns.evaluate(model, split, loader, plan)) or a "
            f"callable that returns one, got {type(evaluation).__name__}"
        )
    check_loader(loader)
    # every option is checked before the evaluation, not after it
    order = _order(plan)
    chosen = _chosen(order, units, max_units)
    scan = _scan_result(scan)
    # read the first images before anything else: an empty loader fails here, nothing written
    images, image_labels = first_images(loader, sample)
    sid = lambda *p: section_id(prefix, *p)  # noqa: E731
    provenance = provenance_section(sid("provenance"), model, plan, model_name=model_name,
                                    data=data)  # fmt: skip
    if not len(plan):
        sections = [provenance, empty_plan_section(sid("summary"), plan)]
        return ReportPart(title, sections, 0, 0, time.perf_counter() - start,
                          ["the plan splits no unit"], prefix=prefix)  # fmt: skip
    if split is None:
        split = apply_plan(model, plan)
    # of every split unit: the summary table lists them all, a given evaluation must too
    subunits = {key: get_split_layer(split, key[0]).num_subunits(key[1]) for key in order}
    names = ref_names(chosen, subunits)
    ctx_args: dict[str, Any] = {}
    why_not: dict[str, str] = {}
    # all shown rows at once: one pass over the data per ranking, one batch of images to optimise
    ctx_args["references"], why_not["references"] = reference_sets(split, loader, names, k=k,
                                                                   labels=labels)  # fmt: skip
    if feature_vis:
        ctx_args["featurevis"], why_not["featurevis"] = feature_visualisations(
            split, names, tuple(images.shape[1:]), steps=feature_steps, progress=progress
        )
    if evaluation is None:
        evaluation = evaluate(model, split, loader, plan, labels=labels, k=k, progress=progress)
    else:
        dataset = sequential_dataset(loader)
        evaluation = reused_evaluation(evaluation, subunits, labels=labels, k=k,
                                       images=len(dataset) if dataset is not None else None)  # fmt: skip
    groups = unit_groups(evaluation)
    ctx_args.update(model=model, split=split, evaluation=evaluation,
                    images=images, labels=image_labels if labels else None,
                    gathered=gather(loader, [i for key in chosen for r in groups[key]
                                             for i in r.top_indices[:k]], evaluation.n_images),
                    k=k, prefix=prefix, why_not=why_not)  # fmt: skip
    wanted = {"featurevis": feature_vis, "steering": steering, "heatmaps": heatmaps}
    views = [v for v in VIEWS if wanted.get(v[0], True)]
    concepts = _concepts(plan)
    unit_sections = []
    for key in progress_bar(chosen, desc="report", unit="unit", enabled=progress):
        ctx = UnitContext(
            layer=key[0], unit=key[1], rows=groups[key], concepts=concepts.get(key), **ctx_args
        )  # type: ignore[arg-type]
        unit_sections.append(unit_section(ctx, views))
    left = len(order) - len(chosen)
    intro = [para(f"{len(chosen)} of {len(order)} split unit(s) shown"
                  + (f"; {left} left out (raise max_units, or pick them with units=)"
                     if left else "") + ".")]  # fmt: skip
    links = {key: s.id for key, s in zip(chosen, unit_sections, strict=True)}
    sections = [provenance,
                summary_section(sid("summary"), evaluation, sorted(order, key=_position(plan)),
                                links),
                equivalence_section(sid("equivalence"), evaluation)]  # fmt: skip
    if scan is not None:
        sections.append(_scan_section(sid("scan"), scan, plan))
    sections += [Section(sid("units"), "Split units", intro, unit_sections),
                 notes_section(sid("notes"), evaluation.notes)]  # fmt: skip
    return ReportPart(title, sections, len(chosen), len(order), time.perf_counter() - start,
                      list(evaluation.notes), evaluation, prefix)  # fmt: skip


def _scan_result(scan: Any) -> Any:
    """``scan`` as a ScanResult (read from its file), or None."""
    if scan is None:
        return None
    from ..stats import ScanResult

    if isinstance(scan, ScanResult):
        return scan
    if not isinstance(scan, (str, os.PathLike)):
        raise ArgumentTypeError(
            f"scan must be a ScanResult or the path of its file, got {type(scan).__name__}"
        )
    return ScanResult.load(scan)


def _scan_section(sid: str, scan: Any, plan: SplitPlan) -> Section:
    """Hesse et al.'s candidate pairs of the scan: the histogram of their ARV cosines."""
    from ..plots import cosine_histogram

    result = scan
    gamma = next((u.get("gamma") for u in plan.meta.get("units", ()) or ()), None) or 0.5
    layers = [name for name in plan.layers if name in result.layers] or None
    fig = cosine_histogram(result, gamma=float(gamma), layers=layers)
    return Section(sid, "Scan", [figure_img(fig, "ARV cosines of all candidate class pairs")])


def check_out(out: Any) -> Path:
    """``out`` as a Path, if it names an ``.html`` file (checked before any work is done).

    Examples
    --------
    >>> check_out("r.html").name
    'r.html'
    """
    if not isinstance(out, (str, os.PathLike)):
        raise ArgumentTypeError(f"out must be a file path, got {type(out).__name__}")
    path = Path(out)
    if path.suffix.lower() not in (".html", ".htm"):
        raise InvalidArgumentError(f"out {str(path)!r} must end in .html (the report is HTML)")
    if path.is_dir():
        raise InvalidArgumentError(f"out {str(path)!r} is a folder; give a file name")
    return path


def write_report(
    out: str | os.PathLike, parts: Sequence[ReportPart], *, title: str = "neuronsplit report"
) -> Path:
    """Render ``parts`` into one HTML file, written atomically (a temporary file, renamed).

    One part: its sections at the top level; several: one section per part.
    """
    path = check_out(out)
    if not parts:
        raise InvalidArgumentError("no report parts to write; pass at least one")
    if len(parts) == 1:
        sections = parts[0].sections
    else:
        ids = [section_id(p.prefix or p.title or f"part {i}") for i, p in enumerate(parts)]
        if len(set(ids)) < len(ids):
            raise InvalidArgumentError(
                f"the parts' section ids {ids} repeat; give each report_part its own prefix"
            )
        sections = [
            Section(i, p.title or i, [], p.sections) for i, p in zip(ids, parts, strict=True)
        ]
    seconds = sum(p.seconds for p in parts)
    text = render(title, sections, subtitle=f"built in {seconds:.1f} s")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    return path


def report(
    model: nn.Module, plan: SplitPlan | None, loader: Iterable[Any],
    out: str | os.PathLike = "report.html", *, title: str = "neuronsplit report",
    **options: Any,
) -> Path:  # fmt: skip
    """Write one self-contained HTML report of a split: numbers, equivalence and pictures.

    The file embeds every image (PNG ``data:`` URIs) and its style sheet, has no script and
    loads nothing from the network. It holds the provenance (model, method and parameters,
    versions, date), a summary table (one row per split unit: subunits, equivalence,
    Hesse et al.'s fractions, and with labels purity, selectivity, classes), the equivalence
    check, and for each of the first ``max_units`` split units: its measures and notes, the
    concept densities, reference images, feature visualisation, steering curves and Captum
    heatmaps of its subunits.

    Parameters
    ----------
    model : nn.Module
        The original model (not modified).
    plan : SplitPlan or None
        The split (Hesse's, ELUDe's or any); None: the plan of ``split``. A plan that splits
        no unit gives a report that says so.
    loader : iterable
        Batches ``(images, labels)`` in a fixed order (no shuffling), evaluated once by
        :func:`~neuronsplit.evaluate` (unless ``evaluation`` is given); labels are read for
        the evaluation columns only.
    out : path-like, default "report.html"
        The file to write (``.html``); written to a temporary file first, then renamed.
    title : str
        The document title.
    **options
        ``split`` (the split model, default ``apply_plan(model, plan)``), ``labels`` (False:
        label-free measures only), ``max_units`` (8), ``units`` (``[(layer, unit), ...]`` to
        show instead), ``k`` (top images per row, 8), ``feature_vis`` / ``steering`` /
        ``heatmaps`` (False: leave that view out), ``scan`` (a ScanResult or its file: adds the
        histogram of candidate cosines), ``model_name`` and ``data`` (provenance text),
        ``sample`` (images the densities, curves and heatmaps use, 256), ``feature_steps``
        (steps of the feature visualisation, 256), ``progress``, ``evaluation`` (an
        :func:`~neuronsplit.evaluate` of the same model, split and loader to reuse instead
        of a second pass, or a callable returning one: :func:`report_part`).

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    InputShapeError
        An empty loader (before anything is written).
    InvalidArgumentError, ArgumentTypeError, UnknownSubunitError
        Bad options, ``units`` the plan does not split, ``out`` not an ``.html`` file, an
        ``evaluation`` made with another ``k`` or ``labels``.
    PlanMismatchError
        An ``evaluation`` of other split units (or other subunit counts).

    Examples
    --------
    >>> import tempfile, torch
    >>> from torch import nn
    >>> import neuronsplit as ns
    >>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
    >>> plan = ns.SplitPlan([ns.UnitSplit("0", 1, [[0, 1], [2]], shared=[3])])
    >>> data = [(torch.rand(32, 4), torch.arange(32) % 2)]
    >>> path = ns.report(model, plan, data, f"{tempfile.mkdtemp()}/r.html",
    ...                  heatmaps=False, progress=False)
    >>> 'id="unit-0-1-steering"' in path.read_text()
    True
    """
    check_out(out)  # a bad file name fails before the evaluation, not after
    return write_report(out, [report_part(model, plan, loader, **options)], title=title)
