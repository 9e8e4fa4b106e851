"""The ``neuronsplit insights`` command: Captum Insights on any model with a plan.

``neuronsplit insights --model NAME --weights FILE --plan PLAN --data DIR`` builds the
architecture (``demo`` / ``demo-cnn``, ``demo-vit`` or a timm model name, see
:mod:`neuronsplit.cli_models`), applies the plan (a file written by ``SplitPlan.save`` or
``neuronsplit discover --out``), draws ``--batch-size`` images of the ImageFolder tree
``--data`` once (seeded by ``--seed``, or the ones at ``--images``) and serves Insights with
Disentangle next to Captum's own methods; every Fetch shows the same images. Without
``--model`` it shows the demo model with its default plan on the digits test split.

The command lives outside :mod:`neuronsplit.insights` so that building the ``neuronsplit``
parser imports neither captum nor the Insights glue.
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ._checks import int_in
from .cli_data import DIGITS, build_loader
from .cli_models import add_model_arguments, build_model, run_command
from .errors import InvalidArgumentError, MissingFileError, PlanMismatchError
from .plan import SplitPlan

__all__ = ["add_insights_parser", "insights_main"]


def add_insights_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``insights`` sub-command to the ``neuronsplit`` parser.

    Sets ``func=insights_main`` as the default, so ``args.func(args)`` runs it.

    Examples
    --------
    >>> parser = argparse.ArgumentParser(prog="neuronsplit")
    >>> _ = add_insights_parser(parser.add_subparsers(dest="command"))
    >>> args = parser.parse_args(["insights", "--port", "8080", "--images", "0", "5"])
    >>> args.port, args.model, args.images, args.seed
    (8080, 'demo', [0, 5], 0)
    """
    parser = subparsers.add_parser(
        "insights",
        help="open Captum Insights on a split model with subunit attributions, the same "
        "images on every Fetch (needs the insights extra)",
        description="Serve Captum Insights for a model and its split (default: the demo model "
        "and its plan on the digits), with Disentangle registered next to Captum's own "
        "methods. The images are drawn once (--seed) or chosen (--images) and every Fetch "
        "shows the same ones.",
    )
    add_model_arguments(
        parser, model_role="the model to show (default demo)", required=False,
        image_size_note="the --data images are resized and center-cropped to N",
    )  # fmt: skip
    parser.set_defaults(model="demo")
    parser.add_argument(
        "--plan", default=None,
        help="plan file (SplitPlan.save, or DIR/plan.json of neuronsplit discover --out); "
        "required except for the demo model",
    )  # fmt: skip
    parser.add_argument(
        "--data", default=None, metavar="DIR",
        help="ImageFolder tree (one sub-folder of images per class, in the order of the model's "
        f"classes); required except for the demo model (default: '{DIGITS}', its test split)",
    )  # fmt: skip
    parser.add_argument(
        "--images", type=int_in(0), nargs="+", default=None, metavar="INDEX",
        help="show these images of the data (indices in sorted file order) instead of a draw",
    )  # fmt: skip
    parser.add_argument(
        "--batch-size", type=int_in(1), default=4, help="images drawn when --images is not given "
        "(default 4)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int_in(0), default=0, help="seed of the draw (default 0)")
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int_in(0, 65535), default=0, help="port (default 0: a free one)"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="build the visualizer, list the methods and images and exit without serving",
    )
    parser.set_defaults(func=insights_main)
    return parser


def insights_main(
    args: argparse.Namespace | Mapping[str, Any], *, write: Callable[[str], Any] | None = None
) -> int:
    """Run ``neuronsplit insights``; returns the exit code.

    A user error (missing or unreadable file, a plan that does not fit the model, an empty
    ImageFolder, ...) is reported in one line on stderr with the exit code of
    :func:`neuronsplit.cli_models.run_command`.

    Parameters
    ----------
    args : argparse.Namespace or mapping
        The options of :func:`add_insights_parser` (missing ones take their defaults).
    write : callable, optional
        Where messages go (default ``sys.stdout.write``).
    """
    import sys

    defaults = {
        "model": "demo", "weights": None, "num_classes": None, "image_size": None,
        "cache": None, "plan": None, "data": None, "images": None, "batch_size": 4, "seed": 0,
        "host": "127.0.0.1", "port": 0, "dry_run": False,
    }  # fmt: skip
    given = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    opts = argparse.Namespace(**{**defaults, **given})
    return run_command("insights", lambda a: _run(a, write or sys.stdout.write), opts)


def _load_plan(path: str | None) -> SplitPlan | None:
    if path is None:
        return None
    if not Path(path).is_file():
        raise MissingFileError(
            f"--plan {path!r} does not exist; give the plan file written by SplitPlan.save or "
            "neuronsplit discover --out (DIR/plan.json)"
        )
    return SplitPlan.load(path)  # CorruptFileError names the file


def _run(args: argparse.Namespace, write: Callable[[str], Any]) -> int:
    # imported here, not at the top: the parser of every ``neuronsplit`` command is built from
    # this module, and Insights brings captum and matplotlib (seconds of start-up)
    from .insights import make_visualizer, serve

    plan = _load_plan(args.plan)
    model, is_demo = build_model(
        args.model, weights=args.weights, num_classes=args.num_classes, cache=args.cache,
        image_size=args.image_size,
    )  # fmt: skip
    if not is_demo and plan is None:
        raise InvalidArgumentError(
            f"--model {args.model!r} needs --plan (a plan file of this model); only the demo "
            "model has a default plan"
        )
    loader = None  # the demo's digits: make_visualizer's default, the test split
    if not (is_demo and args.data in (None, DIGITS)):
        # the images discover and scan read (8x8 grey for the demo); the normalisation of a
        # timm transform is moved by make_visualizer from the picture to the model input
        loader, _ = build_loader(
            args.data, model, is_demo, batch_size=args.batch_size, image_size=args.image_size,
            model_name=args.model,
        )  # fmt: skip
    try:
        app = make_visualizer(
            model, plan, data=loader, indices=args.images, batch_size=args.batch_size,
            seed=args.seed, cache_dir=args.cache,
        )  # fmt: skip
    except PlanMismatchError as err:
        raise PlanMismatchError(
            f"--plan {args.plan!r} does not fit --model {args.model!r}: {err}"
        ) from err
    with app:
        config = app.visualizer.get_insights_config()
        write(f"methods: {', '.join(config['methods'])}\n")
        write(f"subunits of {app.method_name!r}: {', '.join(app.choices)}\n")
        shown = [
            f"{i} ({config['classes'][int(y)]})"
            for i, y in zip(app.indices, app.labels, strict=True)
        ]
        write(f"images (the same on every Fetch): {', '.join(shown)}\n")
        if args.dry_run:
            return 0
        with serve(app, host=args.host, port=int(args.port)) as server:
            write(f"Captum Insights at {server.url} (Ctrl+C to stop)\n")
            try:
                threading.Event().wait()
            except KeyboardInterrupt:
                write("stopping\n")
    return 0
