"""The ``neuronsplit discover`` command: split whole layers without labels (ELUDe).

``neuronsplit discover --model NAME --data DIR --layers LAYER [LAYER ...] --out DIR`` builds
the architecture (``demo`` / ``demo-cnn``, ``demo-vit``, a timm or torchvision model name, see
:mod:`neuronsplit.cli_models`), collects every unit's top-activating samples of the
ImageFolder tree ``--data`` (labels are not read), clusters their input contributions
(:func:`neuronsplit.methods.elude.discover`), splits the units with clear concepts and saves
the split into ``--out`` (:func:`neuronsplit.save`: ``plan.json``, ``plan.safetensors`` and
``weights.safetensors``). The images are resized to 8x8 greyscale for the demo models, and
resized and center-cropped to ``--image-size`` for a timm model given one.

Load the result like any saved split: ``ns.load(out, original_model)``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ._checks import int_in, number_in
from .cli_data import data_option, model_and_data
from .cli_models import add_model_arguments, model_options, run_command
from .errors import InvalidArgumentError

__all__ = [
    "add_discover_parser",
    "add_discover_options",
    "discover_main",
    "discover_plan",
    "discover_summary",
    "saved_command",
]


def add_discover_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``discover`` sub-command; sets ``func=discover_main``.

    Examples
    --------
    >>> sub = argparse.ArgumentParser(prog="neuronsplit").add_subparsers(dest="command")
    >>> discover = add_discover_parser(sub)
    >>> args = discover.parse_args("--model demo-cnn --data d --layers fc1 fc2 --out o".split())
    >>> args.layers, args.max_concepts, args.func is discover_main
    (['fc1', 'fc2'], 4, True)
    """
    p = subparsers.add_parser(
        "discover",
        help="split the polysemantic units of whole layers without labels (ELUDe) and save "
        "the split model",
        description="Collect every unit's top-activating samples of an ImageFolder tree (labels "
        "are not read), cluster their input contributions, split the units with clear concepts "
        "and write plan.json, plan.safetensors and weights.safetensors into --out (load them "
        "with neuronsplit.load(out, model)).",
    )
    add_model_arguments(
        p, model_role="the architecture to split",
        image_size_note="the images are resized and center-cropped to N",
    )  # fmt: skip
    p.add_argument(
        "--data", required=True, metavar="DIR",
        help="ImageFolder tree: one sub-folder per class (labels are not read); or 'digits' "
        "for the demo models",
    )  # fmt: skip
    p.add_argument(
        "--layers", required=True, nargs="+", metavar="LAYER",
        help="Linear / Conv2d layers, e.g. blocks.11.mlp.fc1 blocks.11.mlp.fc2",
    )  # fmt: skip
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    add_discover_options(p)
    p.add_argument("--batch-size", type=int_in(1), default=64, help="images per batch (64)")
    p.add_argument("--max-batches", type=int_in(1), default=None, help="stop after N batches")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=discover_main)
    return p


def add_discover_options(p: argparse.ArgumentParser) -> None:
    """Add the options of :func:`neuronsplit.discover` (``neuronsplit discover`` and
    ``neuronsplit split --unsupervised`` share them).

    Examples
    --------
    >>> p = argparse.ArgumentParser()
    >>> add_discover_options(p)
    >>> p.parse_args([]).max_concepts
    4
    """
    p.add_argument("--max-concepts", type=int_in(2), default=4,
                   help="largest number of concepts K of a unit (default 4)")  # fmt: skip
    p.add_argument(
        "--top-n", type=int_in(2), default=None,
        help="samples kept per unit (default: ns.discover's DEFAULT_TOP_N)",
    )  # fmt: skip
    p.add_argument("--tokens", choices=("all", "cls", "patch"), default="all",
                   help="which tokens of a ViT are samples (default all)")  # fmt: skip
    p.add_argument("--samples", choices=("token", "image"), default="token",
                   help="every token is a sample, or every image at its top token")  # fmt: skip
    p.add_argument(
        "--min-silhouette", type=number_in(-1, 1), default=0.4,
        help="silhouette a clustering must reach for a split, in [-1, 1] (default 0.4)",
    )  # fmt: skip


def discover_main(args: argparse.Namespace) -> int:
    """Run ``neuronsplit discover``; returns the exit code (2 with a message on a user error)."""
    return run_command("discover", _run, args)


def discover_plan(args: argparse.Namespace, model: Any, loader: Any) -> Any:
    """:func:`neuronsplit.discover` with the options of :func:`add_discover_options` and
    ``args.layers``, ``args.max_batches``, ``args.no_progress``; returns the SplitPlan."""
    from .methods.elude import discover

    top_n = {} if args.top_n is None else {"top_n": args.top_n}  # None: discover's default
    return discover(
        model, loader, args.layers, max_concepts=args.max_concepts, **top_n,
        tokens=args.tokens, samples=args.samples, min_silhouette=args.min_silhouette,
        max_batches=args.max_batches, progress=not args.no_progress,
    )  # fmt: skip


def saved_command(args: argparse.Namespace) -> dict[str, Any]:
    """The model and data options of ``args``, stored in the saved split's meta so that
    ``neuronsplit verify`` can rebuild the model and read the data (paths made absolute).

    Examples
    --------
    >>> args = argparse.Namespace(model="demo", weights=None, num_classes=None, image_size=None,
    ...                           data="digits", layers=["fc2"], batch_size=8, max_batches=None)
    >>> saved_command(args)["data"], saved_command(args)["model"]
    ('digits', 'demo')
    """
    options = model_options(args)
    return {
        "model": options.pop("name"), **options, "data": data_option(args.data),
        "layers": list(args.layers), "batch_size": args.batch_size,
        "max_batches": args.max_batches,
    }  # fmt: skip


def discover_summary(plan: Any) -> list[str]:
    """One line per layer of a :func:`neuronsplit.discover` plan and a total line.

    Examples
    --------
    >>> from neuronsplit.plan import SplitPlan
    >>> info = {"split": 1, "examined": 4, "k_histogram": {"2": 1}, "left_alone": {}}
    >>> discover_summary(SplitPlan([], meta={"elude": {"layers": {"fc2": info}}}))
    ['fc2: 1/4 units split (K=2: 1); left alone: none', '1/4 units split in 1 layer(s)']
    """
    layers = plan.meta["elude"]["layers"]
    lines = []
    for name, info in layers.items():
        ks = " ".join(f"K={k}: {n}" for k, n in info["k_histogram"].items()) or "none"
        alone = ", ".join(f"{why} {n}" for why, n in info["left_alone"].items()) or "none"
        lines.append(f"{name}: {info['split']}/{info['examined']} units split ({ks}); "
                     f"left alone: {alone}")  # fmt: skip
    split = sum(v["split"] for v in layers.values())
    examined = sum(v["examined"] for v in layers.values())
    lines.append(f"{split}/{examined} units split in {len(layers)} layer(s)")
    return lines


def _run(args: argparse.Namespace) -> int:
    from .nn import apply_plan, save

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InvalidArgumentError(f"--out {str(out)!r} is a file; give a directory")
    model, _, loader, _ = model_and_data(args)
    plan = discover_plan(args, model, loader)
    command = saved_command(args)
    save(apply_plan(model, plan), out, meta={**plan.meta, "discover_command": command})
    lines = discover_summary(plan)
    lines[-1] += (
        f"; wrote plan.json, plan.safetensors and weights.safetensors to {str(out)!r} (load them "
        "with neuronsplit.load(out, model))"
    )
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    return 0
