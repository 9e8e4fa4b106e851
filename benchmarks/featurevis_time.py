"""Seconds of feature visualisation for every split unit and subunit of the demo models (CPU).

``neuronsplit.visual.visualise`` on all units, subunits and residuals of the demo CNN's Hesse
plan (fc2) and of the demo ViT's ELUDe plan for ``blocks.1.mlp.fc1`` (discovered here), at the
default 256 steps, in one batch per model. The baseline, measured in the same run and in
interleaved rounds, is ``steps`` plain forward + backward passes of a batch of the same size
(the whole model, the gradient of the summed logits with respect to the images): the ratio says
what the parameterisation, the transformations and the hooks cost on top of the passes the
optimisation cannot avoid (below 1 where the forward pass stops after the visualised layer).

Usage::

    python benchmarks/featurevis_time.py                 # 256 steps, 3 rounds, one thread
    python benchmarks/featurevis_time.py --steps 128 --rounds 1
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import torch
from _table import Figure, print_table
from _timing import interleaved_ratio

import neuronsplit as ns
from neuronsplit.attribution import subunit_refs
from neuronsplit.demo import demo_plan, digits_loader, get_demo_model, get_demo_vit
from neuronsplit.visual import visualise

#: seconds for all units and subunits of a demo plan at 256 steps (the HTML report's budget)
TARGET_SECONDS = 20.0


def _refs(split: torch.nn.Module) -> list[str]:
    subs = [str(r) for r in subunit_refs(split)]
    return list(dict.fromkeys(s.rsplit("/", 1)[0] for s in subs)) + subs


def _passes(model: torch.nn.Module, n: int, steps: int) -> Callable[[], None]:
    """``steps`` forward + backward passes of ``n`` images through the whole model."""
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(0), requires_grad=True)

    def run() -> None:
        for _ in range(steps):
            x.grad = None
            model(x).sum().backward()

    return run


def _measure(name: str, split: torch.nn.Module, steps: int, rounds: int) -> list[Figure]:
    refs = _refs(split)
    split.eval()
    for p in split.parameters():
        p.requires_grad_(False)  # as visualise runs it: gradients for the image only

    def fv() -> None:
        visualise(split, refs, image_shape=(1, 8, 8), steps=steps, progress=False)

    ratio, base, other = interleaved_ratio(_passes(split, len(refs), steps), fv, rounds)
    print(
        f"{name}: {len(refs)} references, {steps} steps: {other:.2f} s "
        f"({other / len(refs):.3f} s per reference), {steps} plain passes {base:.2f} s, "
        f"ratio {ratio:.2f}",
        flush=True,
    )
    bench = "featurevis_time"
    return [
        Figure(bench, f"{name}: s, {len(refs)} refs x {steps} steps", other, "{:.2f}",
               f"<= {TARGET_SECONDS:g}"),
        Figure(bench, f"{name}: s per reference", other / len(refs), "{:.3f}"),
        Figure(bench, f"{name}: / {steps} fwd+bwd passes", ratio, "{:.2f}"),
    ]  # fmt: skip


def run(argv: list[str] | None = None) -> list[Figure]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the demo uses 1)")
    p.add_argument("--no-vit", action="store_true", help="the CNN only")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cnn = get_demo_model()
    _, _, plan = demo_plan(cnn)
    figures = _measure("CNN fc2", ns.apply_plan(cnn, plan), args.steps, args.rounds)
    if not args.no_vit:
        from neuronsplit.methods.elude import discover

        vit = get_demo_vit()
        loader = digits_loader("train", batch_size=256)
        plan = discover(vit, loader, ["blocks.1.mlp.fc1"], max_concepts=4, top_n=8,
                        progress=False)  # fmt: skip
        split = ns.apply_plan(vit, plan)
        figures += _measure("ViT blocks.1.mlp.fc1", split, args.steps, args.rounds)
    return figures


def main() -> int:
    figures = run()
    print()
    print_table(figures)
    return 0 if all(f.ok is not False for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
