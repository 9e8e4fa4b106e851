"""The ``neuronsplit report`` command: write the HTML report of a saved split.

``neuronsplit report --plan DIR_OR_PLAN_JSON --out report.html`` rebuilds the model and reads
the data the plan was made with (``neuronsplit split`` and ``neuronsplit discover`` record
them; ``--model`` / ``--data`` ... override or supply them), evaluates the split and writes one
self-contained HTML file (:func:`neuronsplit.report`). ``--demo`` takes the bundled digits
model the plan belongs to (the ViT for ``blocks.*`` layers, else the CNN) and the test digits,
e.g. ``neuronsplit report --demo --plan demo_out/plan_vit.json``. The generation time is
printed; exit code 1 where the split is not equivalent (the report says where).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from ._checks import int_in
from .cli_data import add_data_arguments, limit_batches, model_and_data
from .cli_models import CHECK_FAILED, add_model_arguments, run_command
from .cli_split import _fill
from .errors import InvalidArgumentError, MissingFileError

__all__ = ["add_report_parser", "report_main"]


def add_report_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``report`` sub-command; sets ``func=report_main``.

    Examples
    --------
    >>> sub = argparse.ArgumentParser(prog="neuronsplit").add_subparsers(dest="command")
    >>> args = add_report_parser(sub).parse_args(["--plan", "out", "--demo"])
    >>> args.out, args.max_units, args.no_feature_vis, args.demo
    ('report.html', 8, False, True)
    """
    p = subparsers.add_parser(
        "report",
        help="write one self-contained HTML report of a split: summary, equivalence and per "
        "split unit its plots, reference images and feature visualisation",
        description="Evaluate a saved split on the data and write one HTML file (images "
        "embedded, no network needed to open it). The model and data options default to those "
        "the plan was made with.",
    )
    p.add_argument(
        "--plan", required=True, metavar="PLAN",
        help="a plan file (plan.json, plan_vit.json) or a directory written by neuronsplit "
        "split / discover (its weights.safetensors are loaded too)",
    )  # fmt: skip
    p.add_argument("--out", default="report.html", metavar="FILE",
                   help="the HTML file to write (default report.html)")  # fmt: skip
    p.add_argument(
        "--demo", action="store_true",
        help="use the bundled digits model the plan belongs to (demo-vit for blocks.* layers, "
        "else demo-cnn) and the 397 test digits",
    )  # fmt: skip
    p.add_argument("--scan", default=None, metavar="FILE",
                   help="a scan of neuronsplit scan: adds the histogram of candidate cosines")  # fmt: skip
    p.add_argument("--max-units", type=int_in(1), default=8, metavar="N",
                   help="split units with a section of their own (default 8)")  # fmt: skip
    p.add_argument("--no-feature-vis", action="store_true",
                   help="leave out the feature visualisations (the slowest part)")  # fmt: skip
    p.add_argument("--title", default="neuronsplit report", help="the document's title")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_model_arguments(
        p, model_role="the original model (default: the plan's)", required=False,
        image_size_note="the images are resized and center-cropped to N (default: the plan's)",
    )  # fmt: skip
    add_data_arguments(p)
    p.set_defaults(func=report_main)
    return p


def report_main(args: argparse.Namespace) -> int:
    """Run ``neuronsplit report``; exit code 0, 1 (not equivalent) or 2 (a user error)."""
    return run_command("report", _report, args)


def _plan_files(option: str) -> tuple[Path, Path | None]:
    """The plan file, and the directory of a saved split (with weights) or None."""
    path = Path(option)
    if path.is_dir():
        plan_file = path / "plan.json"
        if not plan_file.is_file():
            raise MissingFileError(
                f"--plan {option!r} is a directory without plan.json; give a plan file or the "
                "--out of neuronsplit split / discover"
            )
        return plan_file, path if (path / "weights.safetensors").is_file() else None
    if not path.is_file():
        raise MissingFileError(
            f"--plan {option!r} does not exist; give a plan file (plan.json) or the --out "
            "directory of neuronsplit split / discover"
        )
    return path, None


def _demo_model(args: argparse.Namespace, layers: tuple[str, ...]) -> None:
    """``--demo``: the digits model the plan's layers belong to, on the test digits."""
    if args.model is not None:
        raise InvalidArgumentError("--demo picks the model itself; leave --model out (or --demo)")
    args.model = "demo-vit" if any(name.startswith("blocks.") for name in layers) else "demo-cnn"


def _report(args: argparse.Namespace) -> int:
    from .nn import load
    from .plan import SplitPlan
    from .reporting import check_out, report_part, write_report

    out = check_out(args.out)
    plan_file, split_dir = _plan_files(args.plan)
    plan = SplitPlan.load(plan_file)
    if args.demo:
        _demo_model(args, plan.layers)
    else:
        meta = plan.meta.to_dict()
        _fill(
            args, meta.get("command") or meta.get("discover_command") or {}, f"--plan {args.plan!r}"
        )
    start, cpu = time.perf_counter(), time.process_time()
    model, _, loader, _ = model_and_data(args)
    data = args.data or "digits"
    if args.demo and args.data is None:
        from .demo import digits_loader

        loader, data = digits_loader("test", batch_size=args.batch_size), "the 397 test digits"
    loader = limit_batches(loader, args.max_batches)
    split = load(split_dir, model) if split_dir is not None else None
    part = report_part(
        model, plan, loader, split=split, max_units=args.max_units,
        feature_vis=not args.no_feature_vis, scan=args.scan, model_name=args.model,
        data=str(data), progress=not args.quiet,
    )  # fmt: skip
    path = write_report(out, [part], title=args.title)
    sys.stdout.write(
        f"wrote {path} ({part.units_shown} of {part.units_total} split unit(s) shown) in "
        f"{time.perf_counter() - start:.1f} s (CPU {time.process_time() - cpu:.1f} s)\n"
    )
    ev = part.evaluation
    if ev is not None and ev.equivalence is not None and not ev.equivalence.passed:
        sys.stderr.write(f"neuronsplit report: the split is NOT equivalent: "
                         f"{ev.equivalence.worst()}\n")  # fmt: skip
        return CHECK_FAILED
    return 0
