"""SAE versus exact split, side by side: planted concepts and the demo ViT.

**Planted** (``neuronsplit.sdl.studies.planted_study``, ``--seeds`` seeds): ``planted_concepts
([2, 3, 4, 1, 1, 1])`` -- a ``Linear(J, 6) -> ReLU`` whose units sum 2, 3, 4, 1, 1 and 1
planted concepts (12 in all). A TopK SAE (48 latents, k = 1) on the layer's outputs, a TopK
transcoder (48 latents, k = 1) from its inputs to its outputs, and ``ns.discover`` at its
defaults. Per method: the share of the 12 concepts that some feature recovers (its top-20
samples at least 90 % that concept), the mean best purity, the layer's relative reconstruction
error, the relative change of the network's output with the reconstruction spliced in (the
split: ``apply_plan``), and wall time (training, or discover).

**Demo ViT** (``vit_study``): a TopK SAE (1024 latents, k = 16, 2000 steps) on
``blocks.3.mlp.fc1``'s outputs (every token of the 1400 training digits) versus ``ns.discover``
on that layer; features scored by the class purity of their top-20 test images (397 test
digits; labels read only here), the layer's units scored the same way as the baseline; the
logits' relative change and the share of unchanged predictions with the reconstruction spliced
in.

Usage::

    python benchmarks/sdl_bridge.py [--seeds 3] [--quick] [--no-vit]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from _table import Figure, print_table

from neuronsplit.sdl.studies import planted_study, vit_study

_KEYS = [
    ("recovered", "concepts found", "{:.2f}"),
    ("best_purity", "best purity", "{:.3f}"),
    ("layer_relative_error", "layer rel. error", "{:.3f}"),
    ("relative_change", "output rel. change", "{:.3g}"),
    ("seconds", "seconds", "{:.2f}"),
]


def run(argv: list[str] | None = None) -> list[Figure]:
    """Measure, print, and return the figures (for ``run_all.py``)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=1500, help="SAE / transcoder steps (planted)")
    p.add_argument("--vit-steps", type=int, default=2000)
    p.add_argument("--quick", action="store_true", help="1 seed, 300 steps")
    p.add_argument("--no-vit", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    seeds, steps, vit_steps = (1, 300, 300) if args.quick else (args.seeds, args.steps,
                                                                args.vit_steps)  # fmt: skip
    runs = [planted_study(seed=s, steps=steps, progress=False) for s in range(seeds)]
    print(f"planted concepts [2, 3, 4, 1, 1, 1], {seeds} seeds, {steps} training steps, 1 thread")
    print(f"{'method':<12}" + "".join(f"{label:>20}" for _, label, _ in _KEYS))
    figures = []
    for method in ("sae", "transcoder", "split"):
        means = {key: statistics.mean(r[method][key] for r in runs) for key, _, _ in _KEYS}
        print(f"{method:<12}" + "".join(f"{fmt.format(means[k]):>20}" for k, _, fmt in _KEYS))
        figures += [Figure("sdl_bridge", f"planted {method}: {label}", means[key], fmt=fmt)
                    for key, label, fmt in _KEYS]  # fmt: skip
    ari = statistics.mean(r["split"]["ari"] for r in runs)
    print(f"split: mean ARI of the input partition {ari:.3f}")
    if not args.no_vit:
        v = vit_study(steps=vit_steps, progress=False)
        print(
            f"\ndemo ViT blocks.3.mlp.fc1 (units' own top-20 purity "
            f"{v['sae']['unit_purity']:.3f}); SAE: 1024 latents, k=16, {vit_steps} steps"
        )
        print(f"{'method':<8}{'purity':>9}{'features':>10}{'layer err':>11}{'logit change':>14}"
              f"{'same pred':>11}{'seconds':>9}")  # fmt: skip
        for method in ("sae", "split"):
            r = v[method]
            print(f"{method:<8}{r['purity']:>9.3f}{r['features']:>10}"
                  f"{r['layer_relative_error']:>11.3f}{r['relative_change']:>14.3g}"
                  f"{r['agreement']:>11.3f}{r['seconds']:>9.1f}")  # fmt: skip
            figures += [Figure("sdl_bridge", f"ViT {method}: top-20 class purity", r["purity"]),
                        Figure("sdl_bridge", f"ViT {method}: logit rel. change",
                               r["relative_change"], fmt="{:.3g}")]  # fmt: skip
        if "units_split" in v["split"]:
            print(f"(discover split {v['split']['units_split']} of the layer's units)")
    print()
    return figures


if __name__ == "__main__":
    print_table(run())
