"""The ``neuronsplit bench`` command: ``neuronsplit bench lrb`` reproduces Table 1 of Tang et al.

``neuronsplit bench lrb [--size small|paper] [--device cpu|cuda] [--seed N] [--steps N]
[--methods NAME ...] [--json FILE]`` trains every sparse dictionary of
:data:`neuronsplit.sdl.lrb.METHODS` on the Linear Representation Bench, with and without
feature anchoring, and prints the measured GT recovery and max inner product beside the
paper's. ``--size small`` runs in minutes on a CPU; ``--size paper`` needs a GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ._checks import int_in
from .cli_models import run_command

__all__ = ["add_bench_parser", "bench_main"]

_METHODS = ["ReLU SAE", "TopK SAE", "BatchTopK SAE", "JumpReLU SAE", "Matryoshka SAE",
            "Transcoder"]  # fmt: skip


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``bench`` sub-command (with its ``lrb`` benchmark); sets ``func=bench_main``.

    Examples
    --------
    >>> sub = argparse.ArgumentParser(prog="neuronsplit").add_subparsers(dest="command")
    >>> bench = add_bench_parser(sub)
    >>> args = bench.parse_args(["lrb", "--steps", "10"])
    >>> args.which, args.size, args.steps, args.func is bench_main
    ('lrb', 'small', 10, True)
    """
    p = subparsers.add_parser(
        "bench",
        help="benchmarks against sparse dictionaries: 'lrb' trains SAEs on the Linear "
        "Representation Bench and prints Table 1 beside the paper's",
        description="Run a benchmark and print its table.",
    )
    which = p.add_subparsers(dest="which", required=True, metavar="BENCHMARK")
    lrb = which.add_parser(
        "lrb",
        help="Linear Representation Bench (Tang et al., arXiv 2512.05534, Table 1)",
        description="Train sparse autoencoders (ReLU, TopK, BatchTopK; with --methods also "
        "JumpReLU, Matryoshka and a transcoder) on the Linear Representation Bench, with and without feature anchoring, and print GT "
        "recovery (tau 0.95) and max inner product of their encoder rows beside the paper's "
        "Table 1. --size small (n=100, n_p=77) runs in minutes on a CPU; --size paper (n=1000, "
        "n_p=768, 16,000 latents) needs a GPU.",
    )
    lrb.add_argument("--size", choices=("small", "paper"), default="small",
                     help="bench and training size (default small)")  # fmt: skip
    lrb.add_argument("--device", default=None,
                     help="torch device to train on, e.g. cpu or cuda (default cpu)")  # fmt: skip
    lrb.add_argument("--seed", type=int_in(0), default=0, help="seed (default 0)")
    lrb.add_argument("--steps", type=int_in(1), default=None,
                     help="training steps per model (default: the size's budget)")  # fmt: skip
    lrb.add_argument(
        "--methods",
        nargs="+",
        choices=_METHODS,
        default=None,
        metavar="METHOD",
        help="rows to run (default: ReLU, TopK and BatchTopK SAEs at --size small, "
        "all at --size paper): " + ", ".join(repr(m) for m in _METHODS),
    )
    lrb.add_argument("--threads", type=int_in(1), default=1,
                     help="torch CPU threads (default 1: on a busy machine more threads wait for "
                     "each other)")  # fmt: skip
    lrb.add_argument("--json", default=None, help="also write the rows to this JSON file")
    lrb.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=bench_main)
    return p


def _run(args: argparse.Namespace) -> int:
    import torch

    from .sdl.lrb import format_table, run_lrb

    previous = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    overrides = {} if args.steps is None else {"steps": args.steps}
    try:
        rows = run_lrb(args.size, device=args.device, seed=args.seed, methods=args.methods,
                       progress=not args.no_progress, **overrides)  # fmt: skip
    finally:
        torch.set_num_threads(previous)  # main() may be called from Python
    settings = rows[0]["settings"] if rows else {}
    sys.stdout.write(
        f"Linear Representation Bench, size {args.size}: n={settings.get('n')}, "
        f"n_p={settings.get('n_p')}, n_q={settings.get('n_q')}, S=0.99, M=0.1, "
        f"k={settings.get('k')}, {settings.get('steps')} steps of {settings.get('batch_size')}, "
        f"{settings.get('anchors')} anchors (weight 0.1), seed {args.seed}\n"
        f"{format_table(rows)}\n"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


def bench_main(args: argparse.Namespace) -> int:
    """Run ``neuronsplit bench``; returns the exit code (2 with a message on a user error)."""
    return run_command("bench", _run, args)
