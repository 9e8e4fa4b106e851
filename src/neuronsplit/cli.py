"""The ``neuronsplit`` command.

``neuronsplit demo`` runs the whole pipeline on the bundled digits models. For one's own model
(a timm or torchvision model name with ``--weights FILE``, and an ImageFolder tree):
``neuronsplit scan`` -> ``neuronsplit detect`` -> ``neuronsplit split`` -> ``neuronsplit
verify`` (:mod:`neuronsplit.cli_scan`, :mod:`neuronsplit.cli_split`); ``neuronsplit discover``
splits whole layers without labels, ``neuronsplit steer`` scales subunits of a saved split and
``neuronsplit insights`` serves Captum Insights. A user error (a bad option, a missing file)
ends in one line on stderr and exit code 2 (``neuronsplit --debug ...`` shows the traceback);
exit code 1 means a check ran and failed (a split that is not equivalent).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence

from ._checks import int_in, number_in
from .cli_models import CHECK_FAILED, run_command

__all__ = ["main", "build_parser"]

#: exit code where the reader of stdout went away (``neuronsplit demo | head``), as 128 + SIGPIPE
BROKEN_PIPE = 141


def _demo_tau(text: str) -> float:
    """``--tau`` of the demo: in (0, 1] and on the demo scan's tau grid (argparse error if not)."""
    import math

    from ._scan_defaults import DEFAULT_TAU_GRID

    value = number_in(0, 1, low_open=True)(text)
    if not any(math.isclose(value, t) for t in DEFAULT_TAU_GRID):
        grid = ", ".join(f"{t:g}" for t in DEFAULT_TAU_GRID)
        raise argparse.ArgumentTypeError(
            f"{value:g} is not on the demo scan's tau grid; pick one of {grid}"
        )
    return value


def _demo_gamma(text: str) -> float:
    """``--gamma`` of the demo: in [-1, 1] and above 0 (pairs need a cosine in [0, gamma))."""
    value = number_in(-1, 1)(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(
            f"{value:g} finds nothing: a pair needs an ARV cosine in [0, gamma); give a gamma "
            "above 0"
        )
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``neuronsplit`` command."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="neuronsplit",
        description="Find polysemantic units and split them into exact, Captum-ready subunits. "
        "Your own model: neuronsplit scan -> detect -> split -> verify.",
    )
    parser.add_argument("--version", action="version", version=f"neuronsplit {__version__}")
    parser.add_argument(
        "--debug", action="store_true",
        help="on an error, show the full traceback instead of the one-line message",
    )  # fmt: skip
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND",
        help="one of the commands below; neuronsplit COMMAND --help lists its options",
    )  # fmt: skip
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
        "--tau", type=_demo_tau, default=0.03,
        help="importance threshold, one of the scan's tau grid 0.01, 0.02, 0.03, 0.05, 0.1 "
        "(default 0.03)",
    )  # fmt: skip
    demo.add_argument(
        "--p", type=number_in(0, 1, low_open=True), default=0.75,
        help="share of a class's images a unit must be important for (default 0.75)",
    )  # fmt: skip
    demo.add_argument(
        "--gamma", type=_demo_gamma, default=0.5,
        help="ARV cosine below which two classes are different concepts (default 0.5)",
    )  # fmt: skip
    demo.add_argument("--json", action="store_true", help="print summary.json instead of the table")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.add_argument(
        "--cnn-only", action="store_true",
        help="only Hesse's split of the CNN (no discover, no ViT: summary without 'vit' and "
        "'cnn_vs_discover')",
    )  # fmt: skip
    demo.add_argument("--no-report", action="store_true",
                      help="do not write report.html (the HTML report of both splits)")  # fmt: skip
    demo.set_defaults(func=_demo)
    from .cli_bench import add_bench_parser
    from .cli_discover import add_discover_parser
    from .cli_report import add_report_parser
    from .cli_scan import add_detect_parser, add_scan_parser
    from .cli_split import add_split_parser, add_verify_parser
    from .cli_steer import add_steer_parser

    add_scan_parser(sub)
    add_detect_parser(sub)
    add_split_parser(sub)
    add_verify_parser(sub)
    add_discover_parser(sub)
    add_bench_parser(sub)
    add_steer_parser(sub)
    add_report_parser(sub)
    from .cli_insights import add_insights_parser  # imports nothing optional (captum on use)

    add_insights_parser(sub)
    return parser


def _demo(args: argparse.Namespace) -> int:
    with _vit_training(args):
        from .demo import format_table, run_demo  # the pipeline: zennit, captum, scikit-learn

        summary = run_demo(
            args.out,
            cache_dir=args.cache,
            top=args.top,
            tau=args.tau,
            p=args.p,
            gamma=args.gamma,
            progress=not args.quiet,
            unsupervised=not args.cnn_only,
            report=not args.no_report,
        )
    print(json.dumps(summary, indent=2) if args.json else format_table(summary))
    if not args.json:
        files = ["summary.json", "plan.json"] + (["plan_vit.json"] if "vit" in summary else [])
        print(f"\nwrote {', '.join(f'{args.out}/{f}' for f in files)}")
    if "report" in summary and not args.json:  # under --json: summary["report"]
        report = summary["report"]
        path = os.path.join(args.out, report["file"])
        print(f"report: {path} (built in {report['seconds']:.1f} s)")
    vit_ok = "vit" not in summary or summary["vit"]["equivalence"]["passed"]
    return 0 if summary["equivalence"]["passed"] and vit_ok else CHECK_FAILED


def _vit_training(args: argparse.Namespace) -> contextlib.AbstractContextManager[None]:
    """Start training the demo ViT in the background (if the cache lacks it) as soon as torch
    and timm are imported: the pipeline's imports (zennit, captum, scikit-learn; seconds) then
    run while it trains instead of before (``run_demo`` finds the job and does not start a
    second one)."""
    if args.cnn_only:
        return contextlib.nullcontext()
    from .demo.vit import demo_vit_in_background

    # forked only: a thread would start before run_demo sets the thread count
    return demo_vit_in_background(args.cache, progress=not args.quiet, fork_only=True)


def _quiet_stdout() -> None:
    """Point stdout at devnull, so that the interpreter's last flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real file descriptor (captured output)
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``neuronsplit`` command.

    Returns
    -------
    int
        The process exit code: 0; 1 where a check failed (a split that is not equivalent);
        2 for a user error (one line on stderr; ``--debug`` raises it with its traceback);
        141 where the reader of stdout went away (``neuronsplit demo | head``); 130 on Ctrl+C.
    """
    try:
        try:
            args = build_parser().parse_args(argv)
            return run_command(args.command, args.func, args)
        finally:
            sys.stdout.flush()  # here, not at exit, so that a closed pipe is caught below
    except BrokenPipeError:
        _quiet_stdout()
        return BROKEN_PIPE
    except KeyboardInterrupt:
        sys.stderr.write("neuronsplit: interrupted\n")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
