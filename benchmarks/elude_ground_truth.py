"""ELUDe against planted ground truth: does ``discover`` find concepts it is never shown?

Each seed builds ``neuronsplit.evaluation.planted_concepts([2, 3, 4, 1, 1, 1], seed=s)``: a
``Linear -> ReLU`` whose first three units are driven by 2, 3 and 4 planted concepts
(polysemantic) and whose last three by one (monosemantic). ``ns.discover`` runs at its DEFAULT
settings on the unlabelled samples (fed in batches of ``--batch``, so the streaming reservoir is
exercised) and ``recovery`` scores the plan per unit: the adjusted Rand index (ARI) between the
planted concept of each planted input and the subunit the plan routes it to (the shared residual
is one more label), whether ``K`` is right, and exact recovery (ARI 1 with the right ``K``). A
monosemantic unit scores ARI 1 when it is left alone and 0 when it is split.

Printed per planted ``K``: mean ARI, exact-match rate, rate of the right ``K`` (for ``K = 1``:
the rate of correctly leaving the unit alone), the histogram of the ``K`` found; and the mean
ARI over every unit against the target (>= 0.95). The default setting (noise 0.1, 2000 samples)
is the one the target is about; harder settings (more noise, fewer samples) are swept and
printed as they come out, without a target.

Usage::

    python benchmarks/elude_ground_truth.py [--seeds 10] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter

import torch
from _table import Figure, print_table

import neuronsplit as ns
from neuronsplit.evaluation import UnitRecovery, planted_concepts, recovery

#: concepts planted per unit: K = 2, 3, 4 and three monosemantic units
CONCEPTS = [2, 3, 4, 1, 1, 1]
#: (noise, samples); the first is planted_concepts' default and carries the target
SETTINGS: list[tuple[float, int]] = [
    (0.1, 2000),
    (0.2, 2000),
    (0.3, 2000),
    (0.1, 500),
    (0.2, 500),
    (0.3, 500),
]
TARGET_ARI = 0.95


def evaluate(
    noise: float, samples: int, seeds: int, batch: int
) -> tuple[list[UnitRecovery], float]:
    """Every unit of every seed at one setting, and the median discover time per seed."""
    results, times = [], []
    for seed in range(seeds):
        planted = planted_concepts(CONCEPTS, noise=noise, samples=samples, seed=seed)
        loader = list(planted.data.split(batch))
        t0 = time.perf_counter()
        plan = ns.discover(planted.model, loader, ["0"], progress=False)  # DEFAULT settings
        times.append(time.perf_counter() - t0)
        results.extend(recovery(plan, planted))
    return results, statistics.median(times)


def _print_setting(label: str, results: list[UnitRecovery], seconds: float) -> None:
    print(f"\n{label}  (median discover time per seed {seconds * 1e3:.0f} ms)")
    print(f"{'planted K':<11}{'units':>6}{'mean ARI':>10}{'exact':>8}{'K right':>9}  found K")
    for k in sorted({r.planted_k for r in results}):
        rows = [r for r in results if r.planted_k == k]
        hist = dict(sorted(Counter(r.found_k for r in rows).items()))
        right = statistics.mean(r.found_k == k for r in rows)
        name = f"{k} (mono)" if k == 1 else str(k)
        print(
            f"{name:<11}{len(rows):>6}{statistics.mean(r.ari for r in rows):>10.3f}"
            f"{statistics.mean(r.exact for r in rows):>8.3f}{right:>9.3f}  {hist}"
        )
    poly = [r for r in results if r.planted_k > 1]
    print(
        f"{'all':<11}{len(results):>6}{statistics.mean(r.ari for r in results):>10.3f}"
        f"{statistics.mean(r.exact for r in results):>8.3f}"
        f"{statistics.mean(r.found_k == r.planted_k for r in results):>9.3f}"
        f"  (polysemantic only: mean ARI {statistics.mean(r.ari for r in poly):.3f})"
    )


def run(argv: list[str] | None = None) -> list[Figure]:
    """Measure, print, and return the figures (for ``run_all.py``)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=10, help="seeds per setting")
    p.add_argument("--batch", type=int, default=256, help="samples per batch fed to discover")
    p.add_argument("--quick", action="store_true", help="3 seeds: a smoke run")
    args = p.parse_args(argv)
    seeds = 3 if args.quick else args.seeds
    torch.set_num_threads(min(2, torch.get_num_threads()))

    print(
        f"ns.discover at default settings on planted_concepts({CONCEPTS}), {seeds} seeds per "
        f"setting, batches of {args.batch} samples, {torch.get_num_threads()} torch threads"
    )
    figures = []
    for i, (noise, samples) in enumerate(SETTINGS):
        results, seconds = evaluate(noise, samples, seeds, args.batch)
        default = i == 0
        label = f"noise {noise}, {samples} samples" + (
            " (default setting; target: mean ARI >= 0.95)" if default else " (harder; no target)"
        )
        _print_setting(label, results, seconds)
        tag = f"noise {noise}, {samples} samples"
        mean_ari = statistics.mean(r.ari for r in results)
        if default:
            mono = [r for r in results if r.planted_k == 1]
            figures += [
                Figure("elude_ground_truth", f"mean ARI, all units ({tag})", mean_ari,
                       target=f">= {TARGET_ARI}"),
                Figure("elude_ground_truth", f"exact-match rate ({tag})",
                       statistics.mean(r.exact for r in results)),
                Figure("elude_ground_truth", f"K=1 units left alone ({tag})",
                       statistics.mean(r.found_k == 1 for r in mono)),
            ]  # fmt: skip
        else:
            figures.append(Figure("elude_ground_truth", f"mean ARI, all units ({tag})", mean_ari))
    print()
    return figures


if __name__ == "__main__":
    print_table(run())
