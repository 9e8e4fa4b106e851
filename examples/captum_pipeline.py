"""An ordinary Captum pipeline, turned into a subunit pipeline by a few added lines.

Part 1 is plain Captum: Integrated Gradients for one digit of the demo model, drawn with
``visualize_image_attr_multiple``. Part 2 adds neuronsplit (the lines marked ``# + ns``): split
a polysemantic unit of the bottleneck ``fc2`` into subunits, then ask the same questions about
the subunits -- with :class:`neuronsplit.Disentangle` (what flows through one subunit, per
pixel) and with Captum's own ``LayerIntegratedGradients`` on the subunit layer.

Run::

    python examples/captum_pipeline.py --out captum_pipeline_out

It writes ``ig.png``, ``subunits.png`` and ``layer_ig.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from captum.attr import IntegratedGradients, LayerIntegratedGradients
from captum.attr import visualization as viz
from matplotlib.figure import Figure

import neuronsplit as ns
from neuronsplit.attribution import subunit_channel
from neuronsplit.demo import demo_plan, get_demo_model, load_digits


def hwc(t: torch.Tensor) -> np.ndarray:
    """``(1, C, H, W)`` tensor -> ``(H, W, C)`` array, as Captum's visualizers want it."""
    return t[0].detach().permute(1, 2, 0).numpy()


def draw(attr: torch.Tensor, image: torch.Tensor, fig: Figure, ax, title: str) -> None:
    """One heat map; Captum's normaliser rejects all-zero maps, so those are drawn plainly."""
    if torch.count_nonzero(attr) == 0:
        ax.imshow(hwc(image)[..., 0], cmap="gray")
        ax.set_title(f"{title}\n(no relevance)")
        ax.axis("off")
        return
    viz.visualize_image_attr(
        hwc(attr), hwc(image), method="blended_heat_map", sign="all",
        plt_fig_axis=(fig, ax), title=title, use_pyplot=False,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="captum_pipeline_out", help="output directory")
    parser.add_argument("--plan", default=None, help="plan JSON (default: scan the demo model)")
    parser.add_argument("--cache", default=None, help="demo model cache directory")
    parser.add_argument("--index", type=int, default=0, help="test image for part 1")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    # ---- 1. the ordinary Captum pipeline ----------------------------------------------------
    model = get_demo_model(args.cache)
    test = load_digits("test")
    image = test.images[args.index : args.index + 1]
    target = int(model(image).argmax())

    ig = IntegratedGradients(model)
    attr = ig.attribute(image, baselines=image * 0, target=target, n_steps=32)
    fig, _ = viz.visualize_image_attr_multiple(
        hwc(attr), hwc(image), ["original_image", "blended_heat_map"], ["all", "all"],
        titles=[f"digit {int(test.labels[args.index])}", f"IG for class {target}"], use_pyplot=False,
    )  # fmt: skip
    fig.savefig(out / "ig.png")

    # ---- 2. the same, on subunits: the added lines are marked "# + ns" ---------------------
    if args.plan:
        plan = ns.SplitPlan.from_json(Path(args.plan))  # + ns
    else:
        plan = demo_plan(model)[2]  # + ns: scan, find polysemantic fc2 units, plan their split
    split = ns.apply_plan(model, plan)  # + ns: an exact copy whose split units have subunits
    layer, unit = plan.splits[0].layer, plan.splits[0].unit  # + ns
    dis = ns.Disentangle(split)  # + ns

    # every test image, attributed to its predicted class, through each subunit of the unit
    predicted = split(test.images).argmax(1)
    result = dis.attribute_unit(test.images, target=predicted, layer=layer, unit=unit)  # + ns
    subunits = [i for i, ref in enumerate(result.refs) if not ref.is_residual]
    # the image where subunit k carries the most positive relevance beyond the other subunits
    positive = result.relevance[:, subunits].clamp(min=0)
    tops = [int((2 * positive[:, k] - positive.sum(1)).argmax()) for k in range(len(subunits))]
    columns = ["whole unit", *(str(ref).split("/", 1)[1] for ref in result.refs)]
    fig = Figure(figsize=(2.6 * (len(columns) + 1), 2.8 * len(tops)))
    axes = fig.subplots(len(tops), len(columns) + 1, squeeze=False)
    for row, i in zip(axes, tops, strict=True):
        x = test.images[i : i + 1]
        row[0].imshow(hwc(x)[..., 0], cmap="gray")
        row[0].set_title(f"test #{i}, class {int(predicted[i])}")
        row[0].axis("off")
        maps = [
            result.unit[i : i + 1],
            *(result.subunits[j, i : i + 1] for j in range(len(result.refs))),
        ]
        for ax, title, a in zip(row[1:], columns, maps, strict=True):
            draw(a, x, fig, ax, title)
    labels = ", ".join(f"k{k}: {name}" for k, name in enumerate(plan.splits[0].labels))
    fig.suptitle(f"{layer} unit {unit}, each subunit on its most relevant test image  {labels}")
    fig.tight_layout()
    fig.savefig(out / "subunits.png")

    # Captum's own layer method on the subunit layer: the original units, then the extra rows.
    # The rows are the disjoint parts of a split unit: t_k (its subunit-k inputs) and r (shared
    # inputs and bias); in Hesse's overlap form subunit k reads t_k + r, and its Captum neuron
    # selector (ns.subunit_selector) adds the two rows.
    lig = LayerIntegratedGradients(split, ns.subunit_layer(split, layer))  # + ns
    x, t = test.images[tops[0] : tops[0] + 1], int(predicted[tops[0]])
    layer_attr = lig.attribute(x, baselines=x * 0, target=t, n_steps=32)[0]
    names = [f"u{u}" for u in range(split.get_submodule(layer).original_out)]
    for ref in dis.subunits(layer):
        row = subunit_channel(split, ref)  # + ns: the row that holds t_k (or r)
        name = f"u{ref.unit}/" + ("r" if ref.is_residual else f"t{ref.k}")
        if row >= len(names):
            names.append(name)
        else:
            names[row] = name
    fig = Figure(figsize=(max(6, 0.6 * len(names)), 3.5))
    ax = fig.subplots()
    ax.bar(range(len(names)), layer_attr.detach().numpy())
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_title(f"LayerIntegratedGradients on {layer}.subunits, test #{tops[0]}, class {t}")
    fig.tight_layout()
    fig.savefig(out / "layer_ig.png")

    delta = float((result.subunits.sum(0) - result.unit).abs().max())
    print(
        f"wrote {out}/ig.png, subunits.png, layer_ig.png; subunits sum to the unit (max diff {delta:.1e})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
