"""Inference overhead of split layers on timm ResNet-50 (random init, eval, CPU).

Compares, in interleaved rounds (every model once per round, order rotated each round; each
ratio pairs a model with the original of the same round):

* the original model, and an unsplit deep copy of it as a control (shows the noise floor),
* neuronsplit's split with its rows computed (extra rows in the same conv + index-add merge:
  what Captum hooks, gradients and steering run),
* the official Hesse et al. construction: the conv widened by 2 rows per split channel
  followed by a dense 1x1 merge conv (C + E -> C), ``nn.Sequential(widened, merge)``, and
* neuronsplit's split in unobserved inference (it runs the original weight rebuilt from the
  rows, so this is the noise floor again),

each with 20 split channels (a) all in ``layer4.2.conv3`` and (b) spread over
``layer3.*.conv3`` and ``layer4.*.conv3``.

Where neuronsplit's overhead comes from: the widened conv (a few rows past a multiple of the
kernel's blocking costs about one block, a few % of *that* conv) and one copy of the layer
output in the out-of-place merge. The dense merge conv costs C x (C + E) MACs per pixel.

Usage::

    python benchmarks/split_overhead.py --batch 8 --repeats 15
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import time

import timm
import torch
from _table import Figure
from torch import nn

from neuronsplit.nn import apply_plan, iter_split_layers
from neuronsplit.plan import SplitPlan, UnitSplit

N_CHANNELS = 20


def _split(rng: random.Random, layer: str, unit: int, n_in: int) -> UnitSplit:
    """Hesse-style K=2 overlap split with a random input partition (S1, S2, S0)."""
    slots = [rng.randrange(3) for _ in range(n_in)]
    groups = [[i for i, s in enumerate(slots) if s == g] for g in (0, 1)]
    shared = [i for i, s in enumerate(slots) if s == 2]
    return UnitSplit(layer, unit, groups, shared=shared, merge="overlap")


def make_plan(model: nn.Module, layers: list[str], seed: int) -> SplitPlan:
    """20 channels distributed round-robin over ``layers``."""
    rng = random.Random(seed)
    mods = dict(model.named_modules())
    per_layer = {name: 0 for name in layers}
    for i in range(N_CHANNELS):
        per_layer[layers[i % len(layers)]] += 1
    splits = []
    for name, n in per_layer.items():
        conv = mods[name]
        for unit in rng.sample(range(conv.out_channels), n):
            splits.append(_split(rng, name, unit, conv.in_channels))
    return SplitPlan(splits)


def hesse_model(split_model: nn.Module) -> nn.Module:
    """Replace every split layer by ``Sequential(widened conv, dense 1x1 merge conv)``.

    The official construction has the same shapes (the widened conv, then a dense C + E -> C
    merge); the merge weights here add neuronsplit's disjoint rows (all coefficients 1), so the
    model computes the same function and the timing compares like with like.
    """
    model = copy.deepcopy(split_model)
    for name, layer in list(iter_split_layers(model)):
        c, e = layer.original_out, layer.merge.num_extra
        dtype = layer.subunits.weight.dtype
        merge = nn.Conv2d(c + e, c, 1, bias=False, dtype=dtype)
        with torch.no_grad():
            m = torch.zeros(c, c + e, dtype=dtype)
            m[:, :c] = torch.eye(c, dtype=dtype)
            for j, unit in enumerate(layer.merge.index.tolist()):
                m[unit, c + j] = 1.0
            merge.weight.copy_(m[:, :, None, None])
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, nn.Sequential(layer.subunits, merge))
    return model


def run(argv: list[str] | None = None) -> list[Figure]:
    """Measure, print, and return the figures (for ``run_all.py``)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument(
        "--repeats", type=int, default=15, help="timed rounds (one run of every model each)"
    )
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per model (>= 1)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    orig = timm.create_model("resnet50", pretrained=False).eval()
    _randomize_bn(orig, args.seed)
    layer_sets = {
        "a: layer4.2.conv3": ["layer4.2.conv3"],
        "b: spread": [f"layer3.{i}.conv3" for i in range(6)]
        + [f"layer4.{i}.conv3" for i in range(3)],
    }
    # control: an unsplit deep copy shows the noise floor of the ratio
    models: dict[str, nn.Module] = {"original": orig, "control (plain copy)": copy.deepcopy(orig)}
    for label, layers in layer_sets.items():
        split = apply_plan(orig, make_plan(orig, layers, args.seed)).eval()
        rows = copy.deepcopy(split)
        for _, layer in iter_split_layers(rows):
            layer.force_rows = True  # what hooks, gradients or steering see
        models[f"neuronsplit {label}"] = rows
        models[f"hesse dense {label}"] = hesse_model(split).eval()
        models[f"neuronsplit {label}, unobserved"] = split
    x = torch.randn(args.batch, 3, args.size, args.size)

    times: dict[str, list[float]] = {k: [] for k in models}
    ratios: dict[str, list[float]] = {k: [] for k in models}
    max_rel: dict[str, float] = {}
    names = list(models)
    with torch.inference_mode():
        ref = orig(x)
        for name, model in models.items():
            out = model(x)
            for _ in range(args.warmup - 1):
                model(x)
            max_rel[name] = float((out - ref).abs().max() / ref.abs().max())
        # interleaved rounds, order rotated each round; each ratio pairs a variant with the
        # original of the same round, so drifts in machine load hit both sides alike
        for r in range(args.repeats):
            order = names[r % len(names) :] + names[: r % len(names)]
            round_t = {}
            for name in order:
                t0 = time.perf_counter()
                models[name](x)
                round_t[name] = time.perf_counter() - t0
            for name in names:
                times[name].append(round_t[name])
                ratios[name].append(round_t[name] / round_t["original"])

    print(
        f"timm resnet50, random init (random BN stats), eval, CPU, batch {args.batch} x "
        f"{args.size}px, {torch.get_num_threads()} threads, {args.repeats} interleaved rounds, "
        f"{N_CHANNELS} split channels (K=2 overlap)"
    )
    print(f"{'model':<44}{'median s':>10}{'ratio':>8}{'max|Δ|/max|y|':>15}")
    for name in names:
        med = statistics.median(times[name])
        ratio = statistics.median(ratios[name])
        print(f"{name:<44}{med:>10.4f}{ratio:>8.3f}{max_rel[name]:>15.2e}")
    print("ratio = median over rounds of (time of model / time of original in the same round)")
    figures = []
    for name in names[1:]:
        target = "<= 1.02" if name.startswith("neuronsplit") and "unobserved" not in name else ""
        figures.append(
            Figure("split_overhead", f"resnet50 {name}", statistics.median(ratios[name]),
                   target=target)
        )  # fmt: skip
    return figures


def _randomize_bn(model: nn.Module, seed: int) -> None:
    """timm zero-initialises bn3 of every bottleneck; random stats make max|Δ| meaningful."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


if __name__ == "__main__":
    run()
