"""The ``neuronsplit steer`` command: bake subunit scales into a saved split model.

``neuronsplit steer --model NAME --split DIR --scales FILE.json --out DIR`` builds the original
architecture (``demo`` / ``demo-cnn``, ``demo-vit`` or a timm model name), loads the split
saved in ``--split`` (:func:`neuronsplit.load`), applies :func:`neuronsplit.steer` with ``permanent=True`` and saves
the steered split into ``--out`` (:func:`neuronsplit.save`), with a copy of the scales file as
``scales.json``. The scales file is a JSON list (see :func:`neuronsplit.nn.load_scales`)::

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

from torch import nn

from ._checks import int_in
from .errors import InvalidArgumentError, NeuronSplitError

__all__ = ["add_steer_parser", "steer_main", "build_model", "SCALES_FILE", "DEMO_MODELS"]

SCALES_FILE = "scales.json"
DEMO_MODELS = ("demo", "demo-cnn", "demo-vit")  # demo-cnn: the name ``discover`` uses too


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
    parser.add_argument(
        "--model", required=True,
        help="the original architecture: 'demo' or 'demo-cnn' (the digits CNN), 'demo-vit' (the "
        "digits ViT) "
        "or a timm model name; its weights are replaced by the saved split's",
    )  # fmt: skip
    parser.add_argument(
        "--weights", default=None,
        help="local checkpoint for a timm model (through neuronsplit.load_timm_model)",
    )  # fmt: skip
    parser.add_argument(
        "--num-classes", type=int_in(1), default=None,
        help="classes of a timm model's head (timm's num_classes)",
    )  # fmt: skip
    parser.add_argument("--cache", default=None, help="cache dir of the demo models")
    parser.add_argument("--split", required=True, help="directory written by neuronsplit.save")
    parser.add_argument(
        "--scales", required=True,
        help='JSON list of {"layer", "unit", "k", "alpha"} objects',
    )  # fmt: skip
    parser.add_argument("--out", required=True, help="directory for the steered split")
    parser.set_defaults(func=steer_main)
    return parser


def build_model(
    name: str,
    *,
    weights: str | None = None,
    num_classes: int | None = None,
    cache: str | None = None,
) -> nn.Module:
    """The original architecture named on the command line, in eval mode.

    ``"demo"`` (or ``"demo-cnn"``) and ``"demo-vit"`` are the bundled digits models (trained
    and cached on first use); anything else is a timm model name.
    """
    if name in DEMO_MODELS:
        if weights is not None or num_classes is not None:
            raise InvalidArgumentError(
                f"--weights and --num-classes apply to timm models, not to {name!r}"
            )
        from . import demo

        return (demo.get_demo_vit if name == "demo-vit" else demo.get_demo_model)(cache).eval()
    from .loading import load_timm_model

    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    try:
        return load_timm_model(name, weights=weights, **kwargs)
    except RuntimeError as err:
        if "Unknown model" not in str(err):
            raise
        raise InvalidArgumentError(
            f"--model {name!r} is neither {' nor '.join(map(repr, DEMO_MODELS))} nor a timm model "
            "name (list them with timm.list_models())"
        ) from err


def steer_main(args: argparse.Namespace) -> int:
    """Run ``neuronsplit steer``; returns the exit code (1 with a message on a user error)."""
    try:
        return _run(args)
    except NeuronSplitError as err:
        sys.stderr.write(f"neuronsplit steer: error: {err}\n")
        return 1


def _run(args: argparse.Namespace) -> int:
    from .nn import load, load_scales, save, steer

    split_dir, out = Path(args.split), Path(args.out)
    if out.resolve() == split_dir.resolve():
        raise InvalidArgumentError(
            f"--out {str(out)!r} is the --split directory; write the steered split elsewhere "
            "so that the original split stays"
        )
    scales = load_scales(args.scales)
    model = build_model(
        args.model, weights=args.weights, num_classes=args.num_classes, cache=args.cache
    )
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
