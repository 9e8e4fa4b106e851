"""The ``neuronsplit`` command: ``neuronsplit demo``, ``neuronsplit discover``,
``neuronsplit steer`` and ``neuronsplit insights``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from ._checks import int_in, number_in

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``neuronsplit`` command."""
    parser = argparse.ArgumentParser(
        prog="neuronsplit",
        description="Find polysemantic units and split them into exact, Captum-ready subunits.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="train (cached) a small CNN and a small ViT on scikit-learn's digits; split the "
        "CNN with Hesse's labelled method and the ViT's MLP layers with ELUDe's discover, "
        "verify and evaluate",
    )
    demo.add_argument("--out", default="demo_out", help="output directory (default: demo_out)")
    demo.add_argument(
        "--cache", default=None, help="model cache dir (default ~/.cache/neuronsplit)"
    )
    demo.add_argument("--top", type=int_in(1), default=3, help="units to split (default 3)")
    demo.add_argument(
        "--tau", type=number_in(0, 1, low_open=True), default=0.03,
        help="importance threshold, one of the scan's tau grid 0.01, 0.02, 0.03, 0.05, 0.1 "
        "(default 0.03)",
    )  # fmt: skip
    demo.add_argument(
        "--p", type=number_in(0, 1, low_open=True), default=0.75,
        help="share of a class's images a unit must be important for (default 0.75)",
    )  # fmt: skip
    demo.add_argument(
        "--gamma", type=number_in(-1, 1), default=0.5,
        help="ARV cosine below which two classes are different concepts (default 0.5)",
    )  # fmt: skip
    demo.add_argument("--json", action="store_true", help="print summary.json instead of the table")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.add_argument(
        "--cnn-only", action="store_true",
        help="only Hesse's split of the CNN (no discover, no ViT: summary without 'vit' and "
        "'cnn_vs_discover')",
    )  # fmt: skip
    from .cli_discover import add_discover_parser
    from .cli_steer import add_steer_parser

    add_discover_parser(sub)
    add_steer_parser(sub)
    try:
        from .insights.cli import add_insights_parser
    except ImportError:  # the module itself imports nothing optional; keep the CLI usable anyway
        add_insights_parser = None
    if add_insights_parser is not None:
        add_insights_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``neuronsplit`` command.

    Returns
    -------
    int
        The process exit code.
    """
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from .demo import format_table, run_demo

        summary = run_demo(
            args.out,
            cache_dir=args.cache,
            top=args.top,
            tau=args.tau,
            p=args.p,
            gamma=args.gamma,
            progress=not args.quiet,
            unsupervised=not args.cnn_only,
        )
        print(json.dumps(summary, indent=2) if args.json else format_table(summary))
        if not args.json:
            files = ["summary.json", "plan.json"] + (["plan_vit.json"] if "vit" in summary else [])
            print(f"\nwrote {', '.join(f'{args.out}/{f}' for f in files)}")
        vit_ok = "vit" not in summary or summary["vit"]["equivalence"]["passed"]
        return 0 if summary["equivalence"]["passed"] and vit_ok else 1
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
