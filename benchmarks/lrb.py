"""Table 1 of Tang et al. (arXiv 2512.05534) on the Linear Representation Bench, measured.

Every sparse dictionary of ``neuronsplit.sdl.lrb.METHODS`` (ReLU, TopK, BatchTopK, JumpReLU and
Matryoshka SAEs, a TopK transcoder) is trained on the bench with and without feature anchoring
(10 % of the GT features as anchors, weight 0.1; anchored features left out of the metrics),
and its encoder rows are scored: GT recovery (share of GT features with a best absolute cosine
above tau = 0.95) and max inner product (the mean best cosine), and the same on the encoder
rows as trained (inner products, not cosines: the paper does not say which it reads). The
decoder-based GT recovery is printed as an extra. The paper's numbers are printed beside ours.

``--size small`` (the default; n = 100, n_p = 77, n_q = 400, S = 0.99, M = 0.1, see
``neuronsplit.sdl.lrb.SIZES``) runs on 2 CPU cores in minutes; ``--size paper`` is the paper's
bench (n = 1000, n_p = 768, n_q = 16,000, batches of 4096) and needs a GPU (``--device cuda``).
``--seeds N`` repeats the table for seeds 0..N-1 and prints mean +- std.

Usage::

    python benchmarks/lrb.py [--size small|paper] [--device cuda] [--seeds 3] [--steps N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from _table import Figure, print_table

from neuronsplit.sdl.lrb import SIZES, format_table, run_lrb


def run(argv: list[str] | None = None) -> list[Figure]:
    """Measure, print, and return the figures (for ``run_all.py``)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="small")
    p.add_argument("--device", default=None)
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 (mean +- std)")
    p.add_argument("--steps", type=int, default=None, help="override the size's step budget")
    p.add_argument(
        "--k",
        type=int,
        default=None,
        help="override the TopK family's k (active latents per sample)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: on a busy machine two threads wait for each other)",
    )
    p.add_argument("--methods", nargs="+", default=None, help="row labels to run")
    p.add_argument("--json", default=None, help="write every row to this file")
    p.add_argument("--quick", action="store_true", help="300 steps, TopK and ReLU only")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    overrides = {} if args.steps is None else {"steps": args.steps}
    if args.k is not None:
        overrides["k"] = args.k
    methods = args.methods
    if args.quick:
        overrides["steps"] = 300
        methods = ["ReLU SAE", "TopK SAE"]
    cfg = {**SIZES[args.size], **overrides}
    print(f"LRB size {args.size}: {cfg}, S=0.99, M=0.1, {torch.get_num_threads()} threads, "
          f"device {args.device or 'cpu'}")  # fmt: skip
    t0 = time.perf_counter()
    tables = []
    for seed in range(args.seeds):
        rows = run_lrb(args.size, device=args.device, seed=seed, methods=methods,
                       progress=False, **overrides)  # fmt: skip
        print(f"\nseed {seed}\n{format_table(rows)}")
        tables.append(rows)
    total = time.perf_counter() - t0
    print(f"\nwhole run: {total:.0f} s")
    figures = []
    for i, row in enumerate(tables[0]):
        for key, label in (("gt", "M_GT %"), ("fa_gt", "+FA M_GT %"), ("ip", "M_IP"),
                           ("fa_ip", "+FA M_IP"), ("raw_gt", "raw M_GT %"),
                           ("fa_raw_gt", "+FA raw M_GT %"), ("raw_ip", "raw M_IP"),
                           ("fa_raw_ip", "+FA raw M_IP")):  # fmt: skip
            values = [t[i][key] for t in tables]
            mean = statistics.mean(values)
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            if len(values) > 1:
                print(f"{row['method']:<16}{label:<16}{mean:8.3f} +- {std:.3f}")
            figures.append(Figure("lrb", f"{row['method']} {label} ({args.size})", mean,
                                  fmt="{:.1f}" if "GT" in label else "{:.3f}"))  # fmt: skip
    figures.append(Figure("lrb", f"whole table, seconds ({args.size})", total, fmt="{:.0f}"))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(tables, fh, indent=2)
    return figures


if __name__ == "__main__":
    print_table(run())
