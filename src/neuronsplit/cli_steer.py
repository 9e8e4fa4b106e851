"""The ``neuronsplit steer`` command: bake subunit scales into a saved split model.

``neuronsplit steer --model NAME --split DIR --scales FILE.json --out DIR`` builds the original
architecture (``demo`` / ``demo-cnn``, ``demo-vit`` or a timm model name, with ``--weights``,
``--num-classes`` and ``--image-size`` as for ``neuronsplit discover``: see
:mod:`neuronsplit.cli_models`), loads the split saved in ``--split`` (:func:`neuronsplit.load`),
applies :func:`neuronsplit.steer` with ``permanent=True`` and saves the steered split into
``--out`` (:func:`neuronsplit.save`), with a copy of the scales file as ``scales.json``. A timm
ViT split by ``discover --image-size N`` is steered with the same ``--image-size N``: the
architecture must match the saved split's. The scales file is a JSON list (see
:func:`neuronsplit.nn.load_scales`)::

    [{"layer": "fc2", "unit": 0, "k": 1, "alpha": 0.0},
     {"layer": "fc2", "unit": 2, "k": "residual", "alpha": 1.5}]

Load the result like any saved split: ``ns.load(out, original_model)``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

from .cli_models import add_model_arguments, build_model, run_command
from .errors import InvalidArgumentError

__all__ = ["add_steer_parser", "steer_main", "SCALES_FILE"]

SCALES_FILE = "scales.json"


def add_steer_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``steer`` sub-command; sets ``func=steer_main``.

    Examples
    --------
    >>> parser = argparse.ArgumentParser(prog="neuronsplit")
    >>> _ = add_steer_parser(parser.add_subparsers(dest="command"))
    >>> args = parser.parse_args(["steer", "--model", "demo", "--split", "s", "--scales",
    ...                           "a.json", "--out", "o"])
    >>> args.model, args.num_classes
    ('demo', None)
    """
    parser = subparsers.add_parser(
        "steer",
        help="scale subunits of a saved split model and save the steered model",
        description="Load a split saved by neuronsplit.save, multiply the scales of a JSON "
        'file (a list of {"layer": "fc2", "unit": 3, "k": 0, "alpha": 0.0}; k = -1 or '
        '"residual" for the residual) into its subunit rows, and save the steered split.',
    )
    add_model_arguments(
        parser, model_role="the original architecture, whose weights the saved split's replace",
        image_size_note="give the --image-size the split was discovered with",
    )  # fmt: skip
    parser.add_argument("--split", required=True, help="directory written by neuronsplit.save")
    parser.add_argument(
        "--scales", required=True,
        help='JSON list of {"layer", "unit", "k", "alpha"} objects',
    )  # fmt: skip
    parser.add_argument("--out", required=True, help="directory for the steered split")
    parser.set_defaults(func=steer_main)
    return parser


def steer_main(args: argparse.Namespace) -> int:
    """Run ``neuronsplit steer``; returns the exit code (2 with a message on a user error)."""
    return run_command("steer", _run, args)


def _run(args: argparse.Namespace) -> int:
    from .nn import load, load_scales, save, steer

    split_dir, out = Path(args.split), Path(args.out)
    if out.resolve() == split_dir.resolve():
        raise InvalidArgumentError(
            f"--out {str(out)!r} is the --split directory; write the steered split elsewhere "
            "so that the original split stays"
        )
    scales = load_scales(args.scales)
    model, _ = build_model(
        args.model, weights=args.weights, num_classes=args.num_classes, cache=args.cache,
        image_size=args.image_size,
    )  # fmt: skip
    split = load(split_dir, model)
    steered = steer(split, scales, permanent=True)
    entries = [
        {"layer": layer, "unit": u, "k": k, "alpha": a} for (layer, u, k), a in scales.items()
    ]
    save(steered, out, meta={"steered": entries, "steered_from": str(split_dir)})
    shutil.copyfile(args.scales, out / SCALES_FILE)
    layers = len({key[0] for key in scales})
    sys.stdout.write(
        f"steered {len(scales)} subunit(s) in {layers} layer(s); wrote the steered split to "
        f"{str(out)!r} (load it with neuronsplit.load(out, model))\n"
    )
    return 0
