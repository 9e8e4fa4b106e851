"""Steering the demo CNN: ablate one concept's subunit and watch that concept's classes fall.

The demo pipeline (Hesse et al.'s detection and split) splits polysemantic units of the
bottleneck ``fc2`` of the digits CNN into one subunit per concept -- a concept is a set of
digit classes that drive the unit through the same inputs. ``ns.steer`` scales subunits:

* ``with ns.steer(split, {(layer, unit, k): 0.0}):`` ablates subunit ``k`` while the block
  runs and restores the exact model afterwards;
* ``ns.steer(split, scales, permanent=True)`` returns a new model with the scales baked in.

For each concept of one split unit the example prints the mean drop of the true-class logit
(on the test images of each class) for the concept's own classes and for all other classes,
and compares it with ablating the whole unit (every subunit and the residual), which takes the
unit's other concepts down too.

Run::

    python examples/steering.py [--unit N] [--save DIR]
"""

from __future__ import annotations

import argparse

import torch

import neuronsplit as ns
from neuronsplit.demo import demo_plan, get_demo_model, load_digits


def logit_drop(split: torch.nn.Module, scales: dict, x: torch.Tensor, y: torch.Tensor):
    """Mean drop of the logit of class c on the test images of class c, per class c."""
    with torch.no_grad():
        base = split(x)
        with ns.steer(split, scales):
            steered = split(x)
    drop = base - steered
    return torch.stack([drop[y == c, c].mean() for c in range(10)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default=None, help="demo model cache directory")
    parser.add_argument("--unit", type=int, default=None, help="split unit (default: the first)")
    parser.add_argument("--save", default=None, help="save the permanently steered split here")
    args = parser.parse_args(argv)

    model = get_demo_model(args.cache)
    _, _, plan = demo_plan(model)  # scan, detect, plan (a few seconds)
    split = ns.apply_plan(model, plan)
    test = load_digits("test")
    x, y = test.images, test.labels

    infos = {info["unit"]: info for info in plan.meta["units"]}
    unit = args.unit if args.unit is not None else plan.splits[0].unit
    if unit not in infos:
        parser.error(f"unit {unit} is not split; split units: {sorted(infos)}")
    layer, concepts = infos[unit]["layer"], infos[unit]["concepts"]
    n_sub = len(concepts)
    print(f"{layer} unit {unit}: {n_sub} concepts {concepts} ({plan.by_layer()[layer].merge} form)")

    # ---- 1. ablate one concept's subunit at a time ----------------------------------------
    print("\nablate subunit k            mean logit drop: its classes   other classes")
    for k, classes in enumerate(concepts):
        drop = logit_drop(split, {(layer, unit, k): 0.0}, x, y)
        others = [c for c in range(10) if c not in classes]
        inside, outside = drop[list(classes)].mean().item(), drop[others].mean().item()
        print(
            f"  k={k} (classes {'+'.join(map(str, classes)):<5})  {inside:>25.3f}  {outside:>15.3f}"
        )

    # ---- 2. a subunit is not the whole unit ----------------------------------------------
    whole = {(layer, unit, k): 0.0 for k in (*range(n_sub), -1)}  # every subunit + residual
    whole_drop = logit_drop(split, whole, x, y)
    print("\nclasses of the unit's other concepts: mean logit drop")
    for k, classes in enumerate(concepts):
        rest = [c for other in concepts if other != classes for c in other]
        sub = logit_drop(split, {(layer, unit, k): 0.0}, x, y)[rest].mean().item()
        print(
            f"  concept {k}: ablating its subunit {sub:.3f}, the whole unit "
            f"{whole_drop[rest].mean().item():.3f}"
        )

    # ---- 3. bake it in ---------------------------------------------------------------------
    steered = ns.steer(split, {(layer, unit, 0): 0.0}, permanent=True)
    with torch.no_grad(), ns.steer(split, {(layer, unit, 0): 0.0}):
        delta = (steered(x) - split(x)).abs().max().item()
    with torch.no_grad():
        accuracy = {
            "split": (split(x).argmax(1) == y).float().mean().item(),
            "steered": (steered(x).argmax(1) == y).float().mean().item(),
        }
    print(
        f"\npermanent model vs the context: max |delta logit| = {delta:.2e}; test accuracy "
        f"{accuracy['split']:.3f} -> {accuracy['steered']:.3f} with subunit 0 ablated"
    )
    if args.save:
        ns.save(steered, args.save)
        print(f"saved the steered split to {args.save} (ns.load({args.save!r}, model))")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
