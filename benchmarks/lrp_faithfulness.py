"""LRP faithfulness by pixel flipping on the digits, and the cost of one LRP attribution.

Two demo models, both trained in-process and cached (``neuronsplit.demo``): the ViT
(``get_demo_vit``: timm VisionTransformer, patch 2, width 64, depth 4) and the CNN
(``get_demo_model``). For each attribution method and each test image (explaining the model's
predicted class), the 64 pixels are ranked by attribution and set to the background value 0 in
that order, ``--step`` pixels at a time; the softmax probability of the class is recorded after
each step and averaged over the images. Two orders:

* MoRF, most relevant first: a faithful attribution removes the evidence first, so the
  probability drops early -- **AUC-MoRF, lower is better**;
* LeRF, least relevant first: the evidence stays until the end -- **AUC-LeRF, higher is
  better**;

and their difference **LeRF - MoRF (higher is better)**. The area is the trapezoid rule over
the fraction of flipped pixels in [0, 1], so every AUC is a probability in [0, 1]. Ties (most
of a digit's background has attribution exactly 0 under x-multiplied methods) keep the pixel
order (stable sort); flipping a background pixel changes nothing whatever its rank.

Methods. ViT: ``ns.ZennitAttribution(vit, TimmViTComposite())`` (AttnLRP-style, CP-LRP through
the attention), gradient x input, Captum ``IntegratedGradients`` (zero baseline, 32 steps),
random ranks. CNN: ``ns.ZennitAttribution(cnn, composite)`` with ``EpsilonPlusFlat``,
``EpsilonGammaBox(low=0, high=1)`` and ``EpsilonAlpha2Beta1`` (each with the family's
canonizers), gradient x input, IG, random.

Cost: one ``ZennitAttribution.attribute`` call (session set-up and removal included) against
one plain forward + backward to the input (``torch.autograd.grad`` of the target logits), on a
batch, interleaved rounds, median of the per-round ratios: the target (<= 2) on a randomly
initialised timm ViT-B/16 at 224 x 224 (batch 2, ``--vit-b-rounds``), and for information on the
demo ViT and on ``EpsilonPlusFlat`` on the demo CNN (batch ``--batch``); the ratio of the pass
alone, inside an already open session, is printed too. Everything runs on one torch thread by default
(``--threads``; restored afterwards): the models are tiny, and on a busy 2-core machine two
threads made each pass many times slower.

Usage::

    python benchmarks/lrp_faithfulness.py [--images 397] [--step 4] [--rounds 15] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable
from typing import Any

import torch
from _table import Figure, print_table
from _timing import interleaved_ratio
from torch import Tensor, nn

import neuronsplit as ns
from neuronsplit.demo import get_demo_model, get_demo_vit, load_digits

Method = Callable[[Tensor, Tensor], Tensor]  # (images, targets) -> attribution, images' shape


def methods_for(model: nn.Module, kind: str, seed: int) -> dict[str, Method]:
    """The attribution methods compared on ``model`` (``kind`` is "vit" or "cnn")."""
    from captum.attr import InputXGradient, IntegratedGradients

    if kind == "vit":
        from neuronsplit.relevance.vit import TimmViTComposite

        lrp = {"LRP TimmViTComposite": ns.ZennitAttribution(model, TimmViTComposite())}
    else:
        from zennit.composites import EpsilonAlpha2Beta1, EpsilonGammaBox, EpsilonPlusFlat

        lrp = {
            "LRP EpsilonPlusFlat": ns.ZennitAttribution(model, EpsilonPlusFlat()),
            "LRP EpsilonGammaBox(0, 1)": ns.ZennitAttribution(
                model, EpsilonGammaBox(low=0.0, high=1.0)
            ),
            "LRP EpsilonAlpha2Beta1": ns.ZennitAttribution(model, EpsilonAlpha2Beta1()),
        }
    methods: dict[str, Method] = {
        name: (lambda x, t, a=a: a.attribute(x, target=t)) for name, a in lrp.items()
    }
    ixg, ig = InputXGradient(model), IntegratedGradients(model)
    methods["gradient x input"] = lambda x, t: ixg.attribute(
        x.clone().requires_grad_(True), target=t
    )
    methods["IntegratedGradients (0, 32 steps)"] = lambda x, t: ig.attribute(
        x, baselines=0.0, target=t, n_steps=32, internal_batch_size=len(x) * 8
    )
    gen = torch.Generator().manual_seed(seed)
    methods["random"] = lambda x, t: torch.rand(x.shape, generator=gen)
    return methods


@torch.no_grad()
def flip_curves(
    model: nn.Module, x: Tensor, target: Tensor, scores: Tensor, step: int
) -> dict[str, Tensor]:
    """Summed target probabilities after each flipping step, MoRF and LeRF: ``(steps + 1,)``."""
    n, pixels = len(x), x[0].numel()
    counts = list(range(0, pixels, step)) + [pixels]
    flat_scores = scores.reshape(n, pixels).float()
    curves = {}
    for order, descending in (("MoRF", True), ("LeRF", False)):
        ranks = torch.argsort(flat_scores, dim=1, descending=descending, stable=True)
        # rank_of[i, p]: position of pixel p in image i's order; flipped after k steps if < k
        rank_of = torch.empty_like(ranks).scatter_(1, ranks, torch.arange(pixels).expand(n, pixels))
        keep = torch.stack([(rank_of >= k) for k in counts])  # (S+1, N, P)
        flipped = x.reshape(1, n, pixels) * keep.to(x.dtype)
        probs = model(flipped.reshape(-1, *x.shape[1:])).softmax(-1).reshape(len(counts), n, -1)
        curves[order] = probs.gather(2, target.view(1, n, 1).expand(len(counts), n, 1)).sum((1, 2))
    return curves


def auc(curve: Tensor) -> float:
    """Trapezoid area under a curve sampled at equal steps of [0, 1]."""
    c = curve.double()
    return float((c.sum() - (c[0] + c[-1]) / 2) / (len(c) - 1))


def faithfulness(
    model: nn.Module, kind: str, x: Tensor, batch: int, step: int, seed: int
) -> list[tuple[str, float, float, float, float]]:
    """``(method, AUC-MoRF, AUC-LeRF, difference, seconds per image)`` for every method."""
    with torch.no_grad():
        target = model(x).argmax(1)
    rows = []
    for name, method in methods_for(model, kind, seed).items():
        sums: dict[str, Tensor] = {}
        seconds = 0.0
        for i in range(0, len(x), batch):
            xb, tb = x[i : i + batch], target[i : i + batch]
            t0 = time.perf_counter()
            scores = method(xb, tb).detach()
            seconds += time.perf_counter() - t0
            for order, curve in flip_curves(model, xb, tb, scores, step).items():
                sums[order] = sums.get(order, 0) + curve
        morf, lerf = auc(sums["MoRF"] / len(x)), auc(sums["LeRF"] / len(x))
        rows.append((name, morf, lerf, lerf - morf, seconds / len(x)))
    return rows


def cost_ratios(
    model: nn.Module, attribution: Any, x: Tensor, rounds: int
) -> tuple[float, float, float, float]:
    """LRP / plain forward+backward: whole ``attribute`` call and the pass in an open session.

    Returns ``(ratio of the call, ratio of the pass, plain seconds, call seconds)``.
    """
    with torch.no_grad():
        target = model(x).argmax(1)
    backend = attribution.backend
    reference = copy.deepcopy(model)  # the session's hooks sit on ``model``, never on this

    def plain() -> Tensor:
        xi = x.detach().requires_grad_(True)
        y = reference(xi).gather(1, target[:, None])
        return torch.autograd.grad(y.sum(), xi)[0]

    def call() -> Tensor:
        return attribution.attribute(x, target=target)

    ratio, t_plain, t_call = interleaved_ratio(plain, call, rounds)
    with backend.session(model) as work:

        def in_session() -> Tensor:
            xi = x.detach().requires_grad_(True)
            y = work(xi).gather(1, target[:, None])
            return torch.autograd.grad(y, xi, grad_outputs=backend.output_seed(y))[0]

        pass_ratio, _, _ = interleaved_ratio(plain, in_session, rounds)
    return ratio, pass_ratio, t_plain, t_call


def faithfulness_table(
    models: dict[str, nn.Module], x: Tensor, args: argparse.Namespace
) -> list[Figure]:
    """Print the pixel-flipping table; one figure (LeRF - MoRF) per model and method."""
    figures = []
    head = f"{'model':<6}{'method':<36}{'AUC-MoRF':>10}{'AUC-LeRF':>10}{'LeRF-MoRF':>11}{'ms/image':>10}"
    print(head + "\n" + "-" * len(head))
    for kind, model in models.items():
        rows = faithfulness(model, kind, x, args.batch, args.step, args.seed)
        for name, morf, lerf, diff, sec in rows:
            print(f"{kind:<6}{name:<36}{morf:>10.3f}{lerf:>10.3f}{diff:>11.3f}{sec * 1e3:>10.2f}")
            figures.append(Figure("lrp_faithfulness", f"{kind} {name}: LeRF - MoRF", diff))
    return figures


def cost_table(
    models: dict[str, nn.Module], x: Tensor, rounds: int, vit_b_rounds: int
) -> list[Figure]:
    """Print and return the cost of one LRP attribution against a plain forward + backward.

    The target (LRP at most twice a forward + backward) is set on ViT-B/16 at 224 x 224, the
    size the composite is for. The demo models are printed for information only: 17 tokens of
    width 64 (ViT) or a few 8 x 8 maps (CNN) make each pass so short that the fixed cost of
    hooks and rule functions dominates, and ``EpsilonPlusFlat``'s z+ rule needs a second
    forward with modified weights in every convolution, so the CNN ratio stays near 3.
    """
    import timm
    from zennit.composites import EpsilonPlusFlat

    from neuronsplit.relevance.vit import TimmViTComposite

    figures = []
    vit_b = timm.create_model("vit_base_patch16_224", pretrained=False).eval()
    x_b = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    cases = {
        "ViT-B/16 224 TimmViTComposite": (vit_b, TimmViTComposite(), x_b, vit_b_rounds, "<= 2"),
        "demo ViT TimmViTComposite": (models["vit"], TimmViTComposite(), x, rounds, ""),
        "demo CNN EpsilonPlusFlat": (models["cnn"], EpsilonPlusFlat(), x, rounds, ""),
    }
    print("\none LRP attribution / one plain forward + backward (median of interleaved rounds)")
    for label, (model, composite, inputs, n_rounds, target) in cases.items():
        attribution = ns.ZennitAttribution(model, composite)
        ratio, pass_ratio, t_plain, t_call = cost_ratios(model, attribution, inputs, n_rounds)
        print(
            f"  {label}, batch {len(inputs)}, {n_rounds} rounds: attribute {ratio:.2f}x "
            f"({t_call * 1e3:.1f} ms vs {t_plain * 1e3:.1f} ms), "
            f"pass in an open session {pass_ratio:.2f}x"
        )
        figures.append(
            Figure("lrp_faithfulness", f"{label}: LRP / (fwd + bwd)", ratio, "{:.2f}", target)
        )
        figures.append(
            Figure("lrp_faithfulness", f"  {label}: pass in open session", pass_ratio, "{:.2f}")
        )
    return figures


def run(argv: list[str] | None = None) -> list[Figure]:
    """Measure, print the tables, and return the figures (for ``run_all.py``)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=397, help="test digits used (at most 397)")
    p.add_argument("--step", type=int, default=4, help="pixels flipped per step")
    p.add_argument("--batch", type=int, default=64, help="batch for attributions and timing")
    p.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    p.add_argument("--vit-b-rounds", type=int, default=5, help="timing rounds on ViT-B/16")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: leave as is)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    start = time.perf_counter()
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        test = load_digits("test")
        models = {"vit": get_demo_vit().eval(), "cnn": get_demo_model().eval()}
        with torch.no_grad():
            accuracy = {
                k: float((m(test.images).argmax(1) == test.labels).float().mean())
                for k, m in models.items()
            }
        x = test.images[: args.images]
        print(
            f"pixel flipping on {len(x)} test digits (predicted class), {args.step} pixels per "
            f"step to 0, softmax probability; CPU, {torch.get_num_threads()} threads; test "
            f"accuracy ViT {accuracy['vit']:.3f}, CNN {accuracy['cnn']:.3f}"
        )
        figures = faithfulness_table(models, x, args)
        figures += cost_table(models, test.images[: args.batch], args.rounds, args.vit_b_rounds)
    finally:
        torch.set_num_threads(threads)
    print(f"\n({time.perf_counter() - start:.0f} s)")
    print_table(figures)
    return figures


if __name__ == "__main__":
    run()
