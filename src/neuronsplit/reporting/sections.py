"""The section of one split unit: its measures, then one sub-section per view of it.

Each view is a small function ``view(ctx) -> list of HTML fragments`` over a
:class:`UnitContext`: :func:`density_view` (Hesse et al.'s Figure 2), :func:`references_view`
(top images), :func:`featurevis_view` (feature visualisation), :func:`steering_view` (logits as
a subunit is scaled) and :func:`heatmap_view` (Captum heatmaps of the subunits' attributions).
A view that cannot be drawn for a reason the user should know (no labels, a constant subunit,
an error of neuronsplit's own) gives a note instead; other exceptions propagate, and since the
report is written only once every section is built, no half-written file is left.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from matplotlib.colors import LinearSegmentedColormap
from torch import Tensor, nn

from ..attribution import Disentangle
from ..capture import eval_mode
from ..errors import NeuronSplitError
from ..evaluation import Evaluation, EvaluationRow, subunit_values
from ..plots import as_display_image, density_curves
from ..plots.steering import DEFAULT_ALPHAS, steering_logits
from .data import Gathered
from .html import (
    Raw,
    Section,
    fmt,
    image_strip,
    img,
    note,
    para,
    section_id,
    svg_plot,
    table,
)
from .visuals import boxed_image

__all__ = [
    "UnitContext", "VIEWS", "unit_section", "density_view", "references_view",
    "featurevis_view", "steering_view", "heatmap_view", "heat_tile",
]  # fmt: skip

_MAX_STEER_IMAGES = 32  # inputs the steering curves average over
_ALPHAS = DEFAULT_ALPHAS[::2]  # 0, 0.2, .., 2: the curves are smooth, half the passes
_MAX_STEER_CLASSES = 6  # lines per steering panel (legible, and the classes that matter)
_DENSITY_POINTS = 100  # points of each density curve (smooth at the panels' 230 pixels)


@dataclass
class UnitContext:
    """Everything a view of one split unit may use."""

    model: nn.Module
    split: nn.Module
    evaluation: Evaluation
    layer: str
    unit: int
    rows: list[EvaluationRow]
    images: Tensor  # the first images of the loader
    labels: Tensor | None  # their labels (None: evaluated without labels)
    gathered: Gathered  # the top images of every row, by loader position
    concepts: list[list[int]] | None  # the classes of each subunit, from a Hesse plan
    k: int  # images per row of the reference grids
    prefix: str  # id prefix of the report part
    references: dict[str, Any] | None = None  # ReferenceSet by "activation" / "relevance"
    featurevis: Any = None  # FeatureVisualisation of every shown row
    why_not: dict[str, str] = field(default_factory=dict)  # why references / featurevis are None

    @property
    def subunits(self) -> list[EvaluationRow]:
        """The rows of the subunits ``0 .. K-1`` (not the unit, not the residual)."""
        return [r for r in self.rows if r.role == "subunit"]

    def id(self, *what: Any) -> str:
        """The HTML id of this unit's section (or of one of its views)."""
        return section_id(self.prefix, "unit", self.layer, self.unit, *what)


def density_view(ctx: UnitContext) -> list[Raw]:
    """Per concept, the densities of the unit and of each subunit on that concept's images."""
    if ctx.labels is None:
        return [note("densities per concept need labelled images; evaluated without labels")]
    if ctx.concepts is not None:
        concepts, whose = ctx.concepts, "the plan's concepts (the classes each subunit carries)"
    else:  # an unsupervised plan: the classes evaluate found relevant to each subunit
        concepts = [list(r.classes) for r in ctx.subunits if r.classes]
        whose = "the classes evaluate finds relevant to each subunit (labels used only here)"
        if not concepts:
            return [note("no subunit has a relevant class, so there is no concept to plot")]
    values = subunit_values(ctx.split, ctx.layer, ctx.unit, ctx.images)
    curves = density_curves(values, ctx.labels, concepts, points=_DENSITY_POINTS)
    nan = [float("nan")] * len(curves[0].grid)  # a column without a finite value: no line
    # one legend, on the first panel with lines (a concept without images has none)
    legend_at = next((i for i, c in enumerate(curves) if c.lines), None)
    panels, skipped = [], []
    for i, curve in enumerate(curves):
        lines = [(name, d.tolist() if d is not None else curve.constants.get(name, nan))
                 for name, d in curve.lines]  # fmt: skip
        panels.append(svg_plot(curve.grid.tolist(), lines, title=curve.title,
                               legend=i == legend_at, xlabel="value (sum over positions)"))  # fmt: skip
        skipped += [f"{name} on concept {curve.classes}: {n}"
                    for name, n in curve.non_finite.items()]  # fmt: skip
    notes = (
        [note(f"Non-finite values (inf or NaN) left out: {'; '.join(skipped)}.")] if skipped else []
    )
    return [para(f"Concepts: {whose}, on the first {len(ctx.images)} images: Gaussian kernel "
                 "density of the unit's value and of each subunit's on each concept's images "
                 "(Hesse et al.'s Figure 2); a value that never varies is a vertical line.",
                 "muted"),
            *notes, Raw('<div class="figures">'), *panels, Raw("</div>")]  # fmt: skip


def _label(name: str) -> str:
    return "unit" if name.count("/") == 1 else name.rsplit("/", 1)[1]


def _evaluated_tops(ctx: UnitContext) -> list[Raw]:
    """The top images :func:`~neuronsplit.evaluate` found, whole, one row per row."""
    rows = []
    for r in ctx.rows:
        label = _label(r.name)
        if r.purity is not None and r.purity == r.purity:
            label += f" (purity {r.purity:.2f})"
        shown = [as_display_image(ctx.gathered[i]) for i in r.top_indices[: ctx.k]]
        strip = (
            img(image_strip(shown), f"top images of {r.name}")
            if shown
            else note("constant: no top images")
        )
        rows.append([label, strip])
    caption = (f"top {ctx.k} images by activation (the row's largest value over positions), "
               "most active first")  # fmt: skip
    return [para(caption, "muted"), table(["row", "images"], rows, text_columns=2)]


def _reference_table(ctx: UnitContext, by: str) -> list[Raw]:
    refset = ctx.references[by]  # type: ignore[index]
    rows = []
    for r in ctx.rows:
        found = refset[r.name]
        tiles = []
        for ref in found:
            shown = as_display_image(ref.image)
            tiles.append(boxed_image(shown, ref.box, max(1, 72 // max(shown.shape[:2]))))
        cell = (
            img(image_strip(tiles), f"{by} references of {r.name}") if tiles else note("no images")
        )
        why = refset.notes.get(r.name, "")
        rows.append([_label(r.name), cell, why or "-"])
    what = ("the row's largest activation" if by == "activation"
            else f"grad x activation for the {refset.target}")  # fmt: skip
    return [para(f"Top {ctx.k} by {what}; the red box is what the row saw at its maximising "
                 "position (receptive field or patch).", "muted"),
            table(["row", "images", "note"], rows, text_columns=3)]  # fmt: skip


def references_view(ctx: UnitContext) -> list[Raw]:
    """Reference images of the unit, each subunit and the residual: by activation and by
    relevance (:func:`neuronsplit.visual.reference_images`), else evaluate's top images."""
    if ctx.references is None:
        out = [note(ctx.why_not["references"])] if ctx.why_not.get("references") else []
        return out + _evaluated_tops(ctx)
    return [*_reference_table(ctx, "activation"), *_reference_table(ctx, "relevance")]


def _display01(image: Tensor) -> np.ndarray:
    """A ``(C, H, W)`` image already in [0, 1] as ``(H, W)`` or ``(H, W, 3)`` (no rescaling)."""
    arr = np.asarray(image.detach().double().cpu())
    return arr[0] if arr.shape[0] == 1 else arr[:3].transpose(1, 2, 0)


def featurevis_view(ctx: UnitContext) -> list[Raw]:
    """The image that drives the unit, each subunit and the residual most
    (:func:`neuronsplit.visual.visualise`)."""
    fv = ctx.featurevis
    if fv is None:
        return [note(ctx.why_not.get("featurevis") or "feature visualisation left out")]
    names = [r.name for r in ctx.rows]
    cells = [img(image_strip([_display01(fv.images[fv.names.index(n)])], height=96),
                 f"feature visualisation of {n}") for n in names]  # fmt: skip
    values = [fv.activation(n) for n in names]
    return [para(f"{fv.steps} steps of gradient ascent in a decorrelated Fourier "
                 "parameterisation with jitter, zoom and rotation; below each image the "
                 "activation it reaches.", "muted"),
            table([_label(n) for n in names], [cells, values])]  # fmt: skip


def steering_view(ctx: UnitContext) -> list[Raw]:
    """The mean logits of the unit's relevant classes as each subunit is scaled from 0 to 2."""
    inputs = ctx.images[:_MAX_STEER_IMAGES]
    refs = [(ctx.layer, ctx.unit, r.subunit) for r in ctx.rows if r.subunit is not None]
    curves = [steering_logits(ctx.split, inputs, ref, _ALPHAS) for ref in refs]
    unit = ctx.rows[0]
    if unit.classes:
        classes = list(unit.classes)[:_MAX_STEER_CLASSES]
    else:  # the classes the subunits move most
        spread = sum(torch.as_tensor(c).amax(0) - torch.as_tensor(c).amin(0) for c in curves)
        classes = spread.argsort(descending=True)[:_MAX_STEER_CLASSES].tolist()
    # one y range for all panels, from the finite logits (a diverging model gives inf or NaN:
    # svg_plot leaves those points out, and the note says so)
    shown = np.concatenate([np.asarray(c, dtype=np.float64)[:, classes].ravel() for c in curves])
    finite = shown[np.isfinite(shown)]
    ylim = (float(finite.min()), float(finite.max())) if finite.size else None
    panels, blank = [], []
    for i, (ref, logits) in enumerate(zip(refs, curves, strict=True)):
        title = "residual" if ref[2] < 0 else f"subunit {ref[2]}"
        lines = [(f"class {c}", logits[:, c].tolist()) for c in classes]
        blank += [f"{title} class {c}" for c in classes if not np.isfinite(logits[:, c]).any()]
        panels.append(svg_plot(_ALPHAS, lines, title=title, xlabel="alpha", ylim=ylim,
                               vline=1.0, legend=i == 0))  # fmt: skip
    notes = []
    if finite.size < shown.size:
        none = f"; no finite value at all: {', '.join(blank)}" if blank else ""
        notes.append(note(f"Non-finite logits (inf or NaN): {shown.size - finite.size} of "
                          f"{shown.size} points are not drawn{none}."))  # fmt: skip
    return [para(f"Mean logit over {len(inputs)} images of the classes shown, as each row is "
                 "scaled by alpha: 0 ablates it, 1 leaves the model unchanged.", "muted"),
            *notes, Raw('<div class="figures">'), *panels, Raw("</div>")]  # fmt: skip


_RED_WHITE_GREEN = LinearSegmentedColormap.from_list("neg_pos", ["#d7191c", "#ffffff", "#1a9641"])


def heat_tile(attr: Tensor, outlier_perc: float = 2.0) -> np.ndarray:
    """An input attribution ``(C, H, W)`` as an ``(H, W, 3)`` heatmap in [0, 1], the way
    Captum's ``visualize_image_attr(method="heat_map", sign="all")`` draws it: summed over
    channels, scaled by the ``100 - outlier_perc`` percentile of its magnitude, red negative,
    white zero, green positive. An all-zero map is white.

    Examples
    --------
    >>> tile = heat_tile(torch.tensor([[[1.0, -1.0], [0.0, 0.0]]]))
    >>> tile.shape, [round(float(v), 2) for v in tile[1, 0]]
    ((2, 2, 3), [1.0, 1.0, 1.0])
    """
    a = np.asarray(attr.detach().double().cpu())
    a = a.sum(0) if a.ndim == 3 else a
    scale = float(np.percentile(np.abs(a), 100 - outlier_perc)) or float(np.abs(a).max())
    v = np.clip(a / scale, -1, 1) if scale > 0 else np.zeros_like(a)
    return _RED_WHITE_GREEN((v + 1) / 2)[..., :3]


def heatmap_view(ctx: UnitContext) -> list[Raw]:
    """Attributions of each subunit (columns) on the top image of the unit and of each subunit
    (rows), by :class:`~neuronsplit.Disentangle` (Captum), drawn as Captum's heat map."""
    firsts: dict[int | None, str] = {}  # image -> the first row it is the top image of
    for r in ctx.rows:
        if r.top_indices and r.role != "residual":
            firsts.setdefault(r.top_indices[0], r.name.rsplit("/", 1)[-1])
    if not firsts:  # every row constant: any image is as good
        firsts = {None: "no row"}
    refs = [r for r in ctx.rows if r.subunit is not None]
    dis = Disentangle(ctx.split)
    rows, zero = [], set()
    for index, name in firsts.items():
        image = ctx.images[0] if index is None else ctx.gathered[index]
        x = image[None].to(ctx.images.dtype)
        with eval_mode(ctx.split), torch.no_grad():
            target = int(ctx.split(x).argmax(1))
        cells: list[Any] = [f"{name}: image {index or 0}, class {target}",
                            img(image_strip([as_display_image(image)]), "input")]  # fmt: skip
        for r in refs:
            attr = dis.attribute(x, target=target, subunit=(ctx.layer, ctx.unit, r.subunit))[0]
            if not bool(attr.abs().amax() > 0):
                zero.add(r.name)
            cells.append(img(image_strip([heat_tile(attr)]), f"attribution of {r.name}"))
        rows.append(cells)
    heads = ["top image of (explained for its predicted class)", "input"]
    heads += [r.name.rsplit("/", 1)[1] for r in refs]
    out = [para("green: evidence for the class, red: against; each map scaled on its own",
                "muted"), table(heads, rows, text_columns=len(heads))]  # fmt: skip
    if zero:
        out.append(note(f"attribution zero everywhere (white): {', '.join(sorted(zero))}"))
    return out


#: the views of a unit, in the order they appear: (id, title, function)
VIEWS: tuple[tuple[str, str, Callable[[UnitContext], list[Raw]]], ...] = (
    ("density", "Concept densities", density_view),
    ("references", "Reference images", references_view),
    ("featurevis", "Feature visualisation", featurevis_view),
    ("steering", "Steering curves", steering_view),
    ("heatmaps", "Attribution heatmaps", heatmap_view),
)


def _measures(rows: Sequence[EvaluationRow], labels: bool) -> Raw:
    headers = ["row", "mean activation", "fraction", "images where it matters"]
    if labels:
        headers += ["purity", "selectivity", "classes"]
    headers.append("note")
    cells = []
    for r in rows:
        row: list[Any] = [r.name, r.mean_activation, r.fraction, r.fraction_images]
        if labels:
            row += [r.purity, r.selectivity, fmt(r.classes)]
        cells.append([*row, r.note or "-"])
    return table(headers, cells, text_columns=1)


def unit_section(
    ctx: UnitContext, views: Sequence[tuple[str, str, Callable[[UnitContext], list[Raw]]]]
) -> Section:
    """The section of one split unit: its measures, its notes and one sub-section per view.

    A :class:`~neuronsplit.errors.NeuronSplitError` raised by a view becomes a note there.
    """
    unit = ctx.rows[0]
    head = f"equivalent: {fmt(unit.exact)}, max rel. deviation {fmt(unit.max_rel_delta)}"
    body = [para(head), _measures(ctx.rows, ctx.evaluation.labels)]
    body += [note(f"{r.name}: {r.note}") for r in ctx.rows if r.note]
    children = []
    for vid, title, view in views:
        try:
            parts = view(ctx)
        except NeuronSplitError as err:
            parts = [note(f"could not draw the {title.lower()}: {err}")]
        children.append(Section(ctx.id(vid), title, [Raw('<div class="figures">'), *parts,
                                                     Raw("</div>")]))  # fmt: skip
    return Section(ctx.id(), f"{ctx.layer} unit {ctx.unit}", body, children)
