"""Whole-layer plans at ViT-B size: build, files, apply, Disentangle, forward latency.

The case: every one of the 768 output units of ``blocks.11.mlp.fc2`` of a timm
``vit_base_patch16_224`` (random init) split four ways (3072 inputs each, K = 4, a random
assignment with about 1/5 of the inputs shared). Printed, each with its target:

* build: ``LayerSplit`` from the assignment tensor plus ``SplitPlan`` (<= 0.2 s); for
  comparison, the same plan through 768 ``UnitSplit`` objects (the one-unit path);
* files: ``plan.save`` (``plan.json`` + ``plan.safetensors``) size (<= 3 MB) and save/load time;
* ``apply_plan`` on the whole ViT-B, deep copy included (<= 2 s);
* ``Disentangle(split)`` and ``Disentangle(split, plan)`` construction (<= 0.1 s);
* forward latency of the split ViT-B against the original, interleaved rounds, median of the
  per-round ratios (<= 1.15): at inference, where nothing observes the subunits and the split
  layer runs its original weight (rebuilt bit for bit from the rows), and with the rows forced
  (``explicit_rows``: what Captum hooks, gradients or steering cost); the ratio of the split
  layer alone with its rows is printed too (it does (K + 1) x the multiply-adds of the original
  layer, so it is not a target).

Usage::

    python benchmarks/plan_scale.py [--batch 2] [--rounds 8]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import timm
import torch
from _table import Figure, print_table
from _timing import interleaved_ratio

import neuronsplit as ns
from neuronsplit.nn import explicit_rows
from neuronsplit.plan import LayerSplit, SplitPlan

LAYER = "blocks.11.mlp.fc2"


def timed(fn: Callable[[], Any], repeats: int = 3) -> tuple[float, Any]:
    """Median wall time of ``fn`` over ``repeats`` calls, and its last result."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def run(argv: list[str] | None = None) -> list[Figure]:
    """Measure, print the table, and return the figures (for ``run_all.py``)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    figures: list[Figure] = []

    def row(name: str, value: float, fmt: str = "{:.3f}", target: str = "") -> None:
        figures.append(Figure("plan_scale", name, value, fmt, target))

    torch.manual_seed(args.seed)
    model = timm.create_model("vit_base_patch16_224", pretrained=False).eval()
    layer = model.get_submodule(LAYER)
    units, inputs = layer.out_features, layer.in_features
    gen = torch.Generator().manual_seed(args.seed)
    # K subunits plus the shared set, uniformly: every subunit non-empty
    assignment = torch.randint(-1, args.k, (units, inputs), generator=gen)
    print(
        f"timm vit_base_patch16_224 (random init), {LAYER}: all {units} units x {inputs} inputs "
        f"split K={args.k}; CPU, {torch.get_num_threads()} threads"
    )

    # build
    t_build, plan = timed(
        lambda: SplitPlan([LayerSplit(LAYER, torch.arange(units), assignment, [args.k] * units)])
    )
    row("build (LayerSplit + SplitPlan), s", t_build, "{:.3f}", "<= 0.2")
    layer_split = plan.layer(LAYER)
    t_units, _ = timed(lambda: SplitPlan(list(layer_split.unit_splits())), repeats=1)
    row("  same plan via 768 UnitSplit objects, s", t_units)

    # files
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "plan.json"
        t_save, _ = timed(lambda: plan.save(path))
        size = sum(f.stat().st_size for f in Path(tmp).iterdir())
        t_load, loaded = timed(lambda: SplitPlan.load(path))
        assert loaded == plan
    row("plan files (plan.json + plan.safetensors), MB", size / 1e6, "{:.2f}", "<= 3")
    row("  save, s", t_save)
    row("  load, s", t_load)
    json_size = len(plan.to_json())
    row("  for comparison: inline JSON, MB", json_size / 1e6, "{:.1f}")

    # apply
    t_apply, split = timed(lambda: ns.apply_plan(model, plan), repeats=2)
    row("apply_plan (whole ViT-B, deep copy incl.), s", t_apply, "{:.3f}", "<= 2")
    t_copy, _ = timed(lambda: copy.deepcopy(model), repeats=2)
    row("  of which the deep copy of the model, s", t_copy)

    # Disentangle
    t_dis, _ = timed(lambda: ns.Disentangle(split))
    row("Disentangle(split), s", t_dis, "{:.4f}", "<= 0.1")
    t_dis_plan, _ = timed(lambda: ns.Disentangle(split, plan))
    row("Disentangle(split, plan), s", t_dis_plan, "{:.4f}", "<= 0.1")

    # latency
    x = torch.randn(args.batch, 3, 224, 224, generator=gen)
    with torch.inference_mode():
        y0, y1 = model(x), split(x)
        with explicit_rows(split):
            y2 = split(x)
        rel = float((y0 - y2).abs().max() / y0.abs().max())
        ratio, t0, t1 = interleaved_ratio(lambda: model(x), lambda: split(x), args.rounds)

        def rows() -> Any:
            with explicit_rows(split):
                return split(x)

        rows_ratio, _, t2 = interleaved_ratio(lambda: model(x), rows, args.rounds)
        tokens = torch.randn(args.batch, 197, inputs, generator=gen)
        split_layer = split.get_submodule(LAYER)

        def layer_rows() -> Any:
            with explicit_rows(split_layer):
                return split_layer(tokens)

        layer_ratio, _, _ = interleaved_ratio(lambda: layer(tokens), layer_rows, args.rounds * 3)
    row(f"ViT-B forward split/original, inference (batch {args.batch})", ratio, "{:.3f}", "<= 1.15")
    row("  original, s", t0)
    row("  split, s", t1)
    row("  split output == original output (1 = bitwise)", float(torch.equal(y0, y1)), "{:.0f}")
    row("  with the rows computed (hooks, gradients)", rows_ratio)
    row("  the split layer alone, rows (not a target)", layer_ratio, "{:.2f}")
    row("  rows: max|delta logit| / max|logit| (fp32)", rel, "{:.1e}")
    print_table(figures)
    return figures


if __name__ == "__main__":
    run()
