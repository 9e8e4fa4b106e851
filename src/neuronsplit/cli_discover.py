"""The ``neuronsplit discover`` command: split whole layers without labels (ELUDe).

``neuronsplit discover --model NAME --data DIR --layers LAYER [LAYER ...] --out DIR`` builds
the architecture (``demo`` / ``demo-cnn``, ``demo-vit`` or a timm model name, see
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
from .cli_models import DEMO_IMAGE_SIZE, add_model_arguments, build_model, run_command
from .errors import InvalidArgumentError, MissingFileError, NeuronSplitError

__all__ = ["add_discover_parser", "discover_main"]


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
    p.add_argument("--data", required=True, help="ImageFolder tree: one sub-folder per class")
    p.add_argument(
        "--layers", required=True, nargs="+", metavar="LAYER",
        help="Linear / Conv2d layers, e.g. blocks.11.mlp.fc1 blocks.11.mlp.fc2",
    )  # fmt: skip
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--max-concepts", type=int_in(2), default=4, help="largest K (default 4)")
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
        help="silhouette a clustering must reach for a split (default 0.4)",
    )  # fmt: skip
    p.add_argument("--batch-size", type=int_in(1), default=64, help="images per batch (64)")
    p.add_argument("--max-batches", type=int_in(1), default=None, help="stop after N batches")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=discover_main)
    return p


def discover_main(args: argparse.Namespace) -> int:
    """Run ``neuronsplit discover``; returns the exit code (1 with a message on a user error)."""
    return run_command("discover", _run, args)


def _loader(args: argparse.Namespace, model: Any, is_demo: bool) -> Any:
    """The ``--data`` ImageFolder tree as batches of the images ``model`` takes."""
    from .loading import image_folder_loader

    transform = None
    if is_demo:  # the digits models: one channel, 8x8, values in [0, 1]
        from torchvision import transforms

        size = (DEMO_IMAGE_SIZE, DEMO_IMAGE_SIZE)
        transform = transforms.Compose(
            [transforms.Grayscale(1), transforms.Resize(size), transforms.ToTensor()]
        )
    elif args.image_size is not None:
        from timm.data import create_transform, resolve_data_config

        size = (3, args.image_size, args.image_size)
        transform = create_transform(**resolve_data_config({"input_size": size}, model=model))
    try:
        return image_folder_loader(args.data, model, batch_size=args.batch_size,
                                   transform=transform)  # fmt: skip
    except FileNotFoundError as err:
        if isinstance(err, NeuronSplitError):
            raise
        # torchvision: no class folder, or a class folder without images
        raise MissingFileError(
            f"--data {args.data!r} holds no usable ImageFolder tree: {err}"
        ) from err


def _run(args: argparse.Namespace) -> int:
    from .methods.elude import discover
    from .nn import apply_plan, save

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InvalidArgumentError(f"--out {str(out)!r} is a file; give a directory")
    model, is_demo = build_model(
        args.model, weights=args.weights, num_classes=args.num_classes, cache=args.cache,
        image_size=args.image_size,
    )  # fmt: skip
    loader = _loader(args, model, is_demo)
    top_n = {} if args.top_n is None else {"top_n": args.top_n}  # None: discover's default
    plan = discover(
        model, loader, args.layers, max_concepts=args.max_concepts, **top_n,
        tokens=args.tokens, samples=args.samples, min_silhouette=args.min_silhouette,
        max_batches=args.max_batches, progress=not args.no_progress,
    )  # fmt: skip
    command = {
        "model": args.model, "weights": args.weights, "num_classes": args.num_classes,
        "image_size": args.image_size, "data": str(args.data), "layers": list(args.layers),
        "batch_size": args.batch_size, "max_batches": args.max_batches,
    }  # fmt: skip
    save(apply_plan(model, plan), out, meta={**plan.meta, "discover_command": command})
    layers = plan.meta["elude"]["layers"]
    for name, info in layers.items():
        ks = " ".join(f"K={k}: {n}" for k, n in info["k_histogram"].items()) or "none"
        alone = ", ".join(f"{why} {n}" for why, n in info["left_alone"].items()) or "none"
        sys.stdout.write(
            f"{name}: {info['split']}/{info['examined']} units split ({ks}); left alone: {alone}\n"
        )
    split = sum(v["split"] for v in layers.values())
    examined = sum(v["examined"] for v in layers.values())
    sys.stdout.write(
        f"{split}/{examined} units split in {len(layers)} layer(s); wrote plan.json, "
        f"plan.safetensors and weights.safetensors to {str(out)!r} (load them with "
        "neuronsplit.load(out, model))\n"
    )
    return 0
