"""The ``neuronsplit insights`` command."""

from __future__ import annotations

import argparse
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .._checks import int_in
from ..plan import SplitPlan
from . import make_visualizer, serve

__all__ = ["add_insights_parser", "insights_main"]


def add_insights_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``insights`` sub-command to the ``neuronsplit`` parser.

    Sets ``func=insights_main`` as the default, so ``args.func(args)`` runs it.

    Examples
    --------
    >>> parser = argparse.ArgumentParser(prog="neuronsplit")
    >>> _ = add_insights_parser(parser.add_subparsers(dest="command"))
    >>> parser.parse_args(["insights", "--port", "8080"]).port
    8080
    """
    parser = subparsers.add_parser(
        "insights",
        help="open Captum Insights on the demo model with subunit attributions (needs the "
        "insights extra)",
        description="Serve Captum Insights for the demo model and its split, with Disentangle "
        "registered next to Captum's own methods.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int_in(0, 65535), default=0, help="port (default 0: a free one)"
    )
    parser.add_argument("--cache", default=None, help="model cache dir")
    parser.add_argument(
        "--plan", default=None, help="plan JSON file (default: neuronsplit.demo.demo_plan)"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="build the visualizer, list the methods and exit without serving",
    )
    parser.set_defaults(func=insights_main)
    return parser


def insights_main(
    args: argparse.Namespace | Mapping[str, Any], *, write: Callable[[str], Any] | None = None
) -> int:
    """Run ``neuronsplit insights``; returns the exit code.

    Parameters
    ----------
    args : argparse.Namespace or mapping
        ``host``, ``port``, ``cache``, ``plan`` (path or None) and ``dry_run``.
    write : callable, optional
        Where messages go (default ``sys.stdout.write``).
    """
    import sys

    write = write or sys.stdout.write
    opts = dict(vars(args) if isinstance(args, argparse.Namespace) else args)
    plan = SplitPlan.from_json(Path(opts["plan"])) if opts.get("plan") else None
    with make_visualizer(plan=plan, cache_dir=opts.get("cache")) as app:
        config = app.visualizer.get_insights_config()
        write(f"methods: {', '.join(config['methods'])}\n")
        write(f"subunits of {app.method_name!r}: {', '.join(app.choices)}\n")
        if opts.get("dry_run"):
            return 0
        host, port = opts.get("host", "127.0.0.1"), int(opts.get("port") or 0)
        with serve(app, host=host, port=port) as server:
            write(f"Captum Insights at {server.url} (Ctrl+C to stop)\n")
            try:
                threading.Event().wait()
            except KeyboardInterrupt:
                write("stopping\n")
    return 0
