"""The ``neuronsplit scan`` and ``neuronsplit detect`` commands: Hesse et al.'s statistics of
one's own model, and its polysemantic units.

``neuronsplit scan --model NAME --data DIR --layers LAYER [LAYER ...] --out scan.safetensors``
builds the model (see :mod:`neuronsplit.cli_models`), runs :func:`neuronsplit.scan` over the
ImageFolder tree (see :mod:`neuronsplit.cli_data`) and writes the scan file
(:meth:`neuronsplit.ScanResult.save`); the model and data options and the class names go into
the scan's ``meta["command"]``, so that ``neuronsplit split`` needs only the scan file.
``neuronsplit detect --scan scan.safetensors`` runs :func:`neuronsplit.find_polysemantic`,
prints the table of polysemantic units and writes them as JSON.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any

from ._checks import int_in, number_in
from .cli_data import add_data_arguments, data_option, model_and_data
from .cli_models import add_model_arguments, model_options, run_command
from .errors import InvalidArgumentError

__all__ = [
    "add_scan_parser",
    "add_detect_parser",
    "add_detection_options",
    "scan_main",
    "detect_main",
    "relevance_backend",
    "check_tau",
    "find_units",
    "units_table",
]

_TAU_HELP = "importance threshold; one of the scan's --tau-grid (default 0.03, the paper's)"


def add_scan_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``scan`` sub-command; sets ``func=scan_main``.

    Examples
    --------
    >>> sub = argparse.ArgumentParser(prog="neuronsplit").add_subparsers(dest="command")
    >>> p = add_scan_parser(sub)
    >>> args = p.parse_args("--model demo --layers fc2".split())
    >>> args.out, args.relevance, args.tau_grid
    ('scan.safetensors', 'grad_x_act', [0.01, 0.02, 0.03, 0.05, 0.1])
    """
    from ._scan_defaults import DEFAULT_TAU_GRID

    p = subparsers.add_parser(
        "scan",
        help="scan a model (demo, timm or torchvision) over labelled images: the statistics "
        "detect and split read",
        description="Run the model over an ImageFolder tree (labels from the folders), compute "
        "each unit's relevance and input contributions per class, and write the scan file.",
    )
    add_model_arguments(
        p, model_role="the model to scan",
        image_size_note="the images are resized and center-cropped to N",
    )  # fmt: skip
    add_data_arguments(p)
    p.add_argument(
        "--layers", required=True, nargs="+", metavar="LAYER",
        help="Conv2d / Linear layers to scan, e.g. layer4.1.conv2 (ResNet) or fc2 (demo)",
    )  # fmt: skip
    p.add_argument(
        "--relevance", default="grad_x_act", metavar="NAME",
        help="relevance backend: grad_x_act (default, Hesse et al.), zennit (LRP with the "
        "model family's default composite) or a zennit composite name, e.g. EpsilonPlusFlat",
    )  # fmt: skip
    p.add_argument(
        "--target", choices=("label", "prediction"), default="label",
        help="which logit the relevance explains: the folder's class (default) or the model's "
        "prediction",
    )  # fmt: skip
    p.add_argument(
        "--tau-grid", type=number_in(0, 1, low_open=True), nargs="+",
        default=list(DEFAULT_TAU_GRID), metavar="TAU",
        help="importance thresholds in (0, 1] that detect can use later (default "
        f"{' '.join(f'{t:g}' for t in DEFAULT_TAU_GRID)})",
    )  # fmt: skip
    p.add_argument(
        "--top-n", type=int_in(0), default=32, metavar="N",
        help="top-activating / top-relevant images kept per unit (default 32; 0 keeps none)",
    )  # fmt: skip
    p.add_argument("--out", default="scan.safetensors", metavar="FILE",
                   help="scan file to write (default scan.safetensors)")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=scan_main)
    return p


def add_detection_options(
    p: argparse.ArgumentParser, layers_help: str = "search only these scanned layers (default: all)"
) -> None:
    """Add ``--tau``, ``--p``, ``--gamma`` and ``--layers`` (detect and split share them).

    Examples
    --------
    >>> p = argparse.ArgumentParser()
    >>> add_detection_options(p)
    >>> args = p.parse_args(["--gamma", "0.4"])
    >>> args.tau, args.p, args.gamma, args.layers, args.include_negative
    (0.03, 0.75, 0.4, None, False)
    """
    p.add_argument("--tau", type=number_in(0, 1, low_open=True), default=0.03, help=_TAU_HELP)
    p.add_argument(
        "--p", type=number_in(0, 1, low_open=True), default=0.75,
        help="share of a class's images a unit must be important for, in (0, 1] (default 0.75)",
    )  # fmt: skip
    p.add_argument(
        "--gamma", type=number_in(-1, 1), default=0.5,
        help="ARV cosine below which two classes are different concepts, in [-1, 1] "
        "(default 0.5)",
    )  # fmt: skip
    p.add_argument(
        "--include-negative", action="store_true",
        help="pairs with a negative ARV cosine count too (default: cosines in [0, gamma))",
    )  # fmt: skip
    p.add_argument("--layers", nargs="+", default=None, metavar="LAYER", help=layers_help)


def find_units(result: Any, args: argparse.Namespace, scan_file: str) -> Any:
    """:func:`neuronsplit.find_polysemantic` with the options of :func:`add_detection_options`,
    their errors worded for the command line."""
    from .methods.hesse import find_polysemantic

    check_tau(args.tau, result.tau_grid, scan_file)
    if args.gamma <= 0 and not args.include_negative:
        raise InvalidArgumentError(
            f"--gamma {args.gamma:g} finds nothing: a pair needs an ARV cosine in [0, gamma); "
            "give a --gamma above 0, or add --include-negative"
        )
    with warnings.catch_warnings():  # the diagnosis is printed here and by the commands
        warnings.filterwarnings("ignore", message=r"find_polysemantic\(", category=UserWarning)
        units = find_polysemantic(
            result, args.layers, tau=args.tau, p=args.p, gamma=args.gamma,
            include_negative=args.include_negative,
        )  # fmt: skip
    diagnosis = getattr(units, "diagnosis", None)
    if diagnosis is not None and diagnosis.problem == "nearly_all":
        # the units are still listed and split; the user should know they are suspect
        sys.stderr.write(f"warning: {diagnosis}\n")
    return units


def add_detect_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``detect`` sub-command; sets ``func=detect_main``.

    Examples
    --------
    >>> sub = argparse.ArgumentParser(prog="neuronsplit").add_subparsers(dest="command")
    >>> args = add_detect_parser(sub).parse_args(["--scan", "s.safetensors"])
    >>> args.tau, args.rows, args.out
    (0.03, 20, None)
    """
    p = subparsers.add_parser(
        "detect",
        help="list the polysemantic units of a scan file (Hesse et al.)",
        description="Read a scan file, find the units relevant to classes whose average "
        "relevance vectors differ (cosine below --gamma), print them and write them as JSON.",
    )
    p.add_argument("--scan", required=True, metavar="FILE",
                   help="scan file written by neuronsplit scan")  # fmt: skip
    add_detection_options(p)
    p.add_argument("--rows", type=int_in(1), default=20,
                   help="units printed (default 20; the JSON has all)")  # fmt: skip
    p.add_argument(
        "--out", default=None, metavar="FILE",
        help="JSON file of the units (default: next to the scan, NAME.polysemantic.json)",
    )  # fmt: skip
    p.set_defaults(func=detect_main)
    return p


def scan_main(args: argparse.Namespace) -> int:
    """Run ``neuronsplit scan``; returns the exit code (2 with a message on a user error)."""
    return run_command("scan", _scan, args)


def detect_main(args: argparse.Namespace) -> int:
    """Run ``neuronsplit detect``; returns the exit code (2 with a message on a user error)."""
    return run_command("detect", _detect, args)


def relevance_backend(name: str, model: Any) -> Any:
    """``--relevance`` as :func:`neuronsplit.scan` takes it.

    ``"grad_x_act"``; ``"zennit"`` (:meth:`neuronsplit.Zennit.for_model`'s default composite);
    or a zennit composite, by class name (``EpsilonPlusFlat``) or registry name
    (``epsilon_plus_flat``), with the model family's canonizers.

    Examples
    --------
    >>> from torch import nn
    >>> relevance_backend("grad_x_act", nn.Linear(2, 2))
    'grad_x_act'
    >>> relevance_backend("EpsilonPlus", nn.Sequential(nn.Linear(2, 2))).describe()
    'zennit:EpsilonPlus'
    """
    from zennit import composites

    from .relevance import Zennit

    if name == "grad_x_act":
        return name
    if name == "zennit":
        return Zennit.for_model(model)
    by_name = {c.__name__.lower(): c for c in composites.COMPOSITES.values()}
    by_name.update({k.lower(): c for k, c in composites.COMPOSITES.items()})
    cls = by_name.get(name.lower())
    if cls is None:
        composite_names = sorted(c.__name__ for c in composites.COMPOSITES.values())
        names = ["grad_x_act", "zennit", *composite_names]
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise InvalidArgumentError(
            f"--relevance {name!r} is unknown; {hint}give one of {', '.join(names)}"
        )
    try:
        composite = cls()
    except TypeError as err:
        raise InvalidArgumentError(
            f"--relevance {name!r}: {cls.__name__} needs arguments ({err}); pick another "
            "composite, or scan from Python with ns.Zennit(composite, canonizers=...)"
        ) from err
    return Zennit.for_model(model, composite)


def check_tau(tau: float, tau_grid: Any, scan_file: str) -> None:
    """Refuse a ``--tau`` that the scan counted no importance at, with the CLI's fix.

    Examples
    --------
    >>> check_tau(0.03, (0.01, 0.03), "s.safetensors")
    >>> check_tau(0.04, (0.01, 0.03), "s.safetensors")
    Traceback (most recent call last):
    ...
    neuronsplit.errors.InvalidArgumentError: --tau 0.04 is not on the tau grid of 's.safetensors' (0.01 0.03); pick one of them, or scan again with --tau-grid 0.01 0.03 0.04
    """
    grid = [float(t) for t in tau_grid]
    if not any(math.isclose(t, tau, rel_tol=1e-9, abs_tol=1e-12) for t in grid):
        text = " ".join(f"{t:g}" for t in grid)
        raise InvalidArgumentError(
            f"--tau {tau:g} is not on the tau grid of {scan_file!r} ({text}); pick one of them, "
            f"or scan again with --tau-grid {' '.join(f'{t:g}' for t in sorted([*grid, tau]))}"
        )


def _scan(args: argparse.Namespace) -> int:
    from .stats import scan

    out = Path(args.out)
    if out.is_dir():
        raise InvalidArgumentError(
            f"--out {args.out!r} is a folder; give a file name such as scan.safetensors"
        )
    model, _, loader, classes = model_and_data(args)
    relevance = relevance_backend(args.relevance, model)
    result = scan(
        model, loader, args.layers, relevance=relevance, target=args.target,
        tau_grid=args.tau_grid, top_n=args.top_n, max_batches=args.max_batches,
        progress=not args.no_progress,
    )  # fmt: skip
    options = model_options(args)
    result.meta["command"] = {
        "model": options.pop("name"), **options, "data": data_option(args.data),
        "batch_size": args.batch_size, "max_batches": args.max_batches, "classes": classes,
    }  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    result.save(out)
    sys.stdout.write(
        f"scanned {result.num_samples} images of {result.num_classes} classes at "
        f"{len(result.layers)} layer(s) ({result.relevance}); wrote {str(out)!r}\n"
        f"next: neuronsplit detect --scan {out}\n"
    )
    return 0


def units_table(units: Any, classes: list[str] | None, rows: int) -> str:
    """The table ``neuronsplit detect`` prints: one line per unit, most polysemantic first.

    Examples
    --------
    >>> from neuronsplit.methods.hesse import ClassPair, PolysemanticUnit
    >>> u = PolysemanticUnit("fc2", 3, (0, 1, 2), (ClassPair(0, 2, 0.1),))
    >>> print(units_table([u], ["cat", "dog", "car"], 5))
    layer  unit  cosine  lowest pair  relevant classes
    fc2       3   0.100  cat / car    cat, dog, car
    """

    def name(c: int) -> str:
        return classes[c] if classes and 0 <= c < len(classes) else str(c)

    cells = [
        (u.layer, str(u.unit), f"{u.min_cosine:.3f}",
         f"{name(u.top_pair.class_a)} / {name(u.top_pair.class_b)}",
         ", ".join(name(c) for c in u.relevant))
        for u in list(units)[:rows]
    ]  # fmt: skip
    head = ("layer", "unit", "cosine", "lowest pair", "relevant classes")
    widths = [max(len(r[i]) for r in [head, *cells]) for i in range(len(head))]
    right = (False, True, True, False, False)
    lines = []
    for row in [head, *cells]:
        parts = [
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right, strict=True)
        ]
        lines.append("  ".join(parts).rstrip())
    if len(units) > rows:
        lines.append(f"... and {len(units) - rows} more (see the JSON file)")
    return "\n".join(lines)


def _detect(args: argparse.Namespace) -> int:
    from .stats import ScanResult

    result = ScanResult.load(args.scan)
    units = find_units(result, args, args.scan)
    classes = result.meta.get("command", {}).get("classes")
    diagnosis = getattr(units, "diagnosis", None)
    out = Path(args.out) if args.out else _default_json(args.scan)
    doc = {
        "scan": str(Path(args.scan).resolve()),
        "params": {"tau": args.tau, "p": args.p, "gamma": args.gamma, "layers": args.layers,
                   "include_negative": args.include_negative},
        "classes": classes,
        "units": [
            {"layer": u.layer, "unit": u.unit, "relevant": list(u.relevant),
             "min_cosine": u.min_cosine,
             "pairs": [{"class_a": q.class_a, "class_b": q.class_b, "cosine": q.cosine}
                       for q in u.pairs]}
            for u in units
        ],
        "diagnosis": None if diagnosis is None else str(diagnosis),
    }  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
    params = f"tau={args.tau:g}, p={args.p:g}, gamma={args.gamma:g}"
    if not units:
        why = (
            f"\n{diagnosis}" if diagnosis is not None
            else " (raise --gamma, lower --p, or pick another --tau of the scan's grid)"
        )  # fmt: skip
        sys.stdout.write(
            f"no polysemantic units in {args.scan!r} at {params}{why}\nwrote {str(out)!r}\n"
        )
        return 0
    sys.stdout.write(
        f"{len(units)} polysemantic unit(s) in {args.scan!r} at {params}, most polysemantic "
        f"(lowest ARV cosine) first:\n{units_table(units, classes, args.rows)}\n"
        f"wrote {str(out)!r}\nnext: neuronsplit split --scan {args.scan} --top 3 --out DIR\n"
    )
    return 0


def _default_json(scan_file: str) -> Path:
    path = Path(scan_file)
    return path.with_name(f"{path.stem}.polysemantic.json")
