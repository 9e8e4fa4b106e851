"""The ``neuronsplit`` command: ``neuronsplit demo``, ``neuronsplit discover``,
``neuronsplit steer`` and ``neuronsplit insights``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._checks import int_in, number_in
from .errors import InvalidArgumentError, NeuronSplitError

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
    _add_discover_parser(sub)
    from .cli_steer import add_steer_parser

    add_steer_parser(sub)
    try:
        from .insights.cli import add_insights_parser
    except ImportError:  # the module itself imports nothing optional; keep the CLI usable anyway
        add_insights_parser = None
    if add_insights_parser is not None:
        add_insights_parser(sub)
    return parser


#: the embedded demo models ``--model`` accepts besides timm names ("demo" as in ``steer``)
DISCOVER_DEMO_MODELS = {"demo-cnn": "get_demo_model", "demo": "get_demo_model",
                        "demo-vit": "get_demo_vit"}  # fmt: skip
_CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


def _add_discover_parser(sub: Any) -> None:
    """The ``discover`` sub-command (ELUDe's unsupervised split of whole layers)."""
    p = sub.add_parser(
        "discover",
        help="split the polysemantic units of whole layers without labels (ELUDe) and save "
        "the split model",
        description="Collect every unit's top-activating samples of an ImageFolder tree (labels "
        "are not read), cluster their input contributions, split the units with clear concepts "
        "and write plan.json, plan.safetensors and weights.safetensors into --out (load them "
        "with neuronsplit.load(out, model)).",
    )
    p.add_argument(
        "--model", required=True,
        help="a timm model name (e.g. vit_base_patch16_224), or demo-cnn / demo-vit for the "
        "embedded digits models (8x8 greyscale images)",
    )  # fmt: skip
    p.add_argument(
        "--weights", default=None,
        help="local .safetensors / .pth checkpoint for the timm model (no download needed)",
    )  # fmt: skip
    p.add_argument("--num-classes", type=int_in(1), default=None, help="timm num_classes")
    p.add_argument(
        "--image-size", type=int_in(1), default=None,
        help="input resolution: the images are resized and center-cropped to N, and timm "
        "models that take an img_size (ViTs) are built for it",
    )  # fmt: skip
    p.add_argument("--cache", default=None, help="cache dir of the demo models")
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


def _discover_model(args: argparse.Namespace) -> tuple[Any, bool]:
    """``(model in eval mode, whether it is an embedded demo model)``."""
    name = args.model
    if name in DISCOVER_DEMO_MODELS:
        if args.weights is not None or args.num_classes is not None:
            raise InvalidArgumentError(
                f"--weights and --num-classes apply to timm models, not to {name!r}"
            )
        if args.image_size not in (None, 8):
            raise InvalidArgumentError(
                f"{name!r} takes 8x8 images; leave --image-size out (got {args.image_size})"
            )
        from . import demo

        return getattr(demo, DISCOVER_DEMO_MODELS[name])(args.cache).eval(), True
    if Path(name).suffix.lower() in _CHECKPOINT_SUFFIXES or Path(name).is_file():
        raise InvalidArgumentError(
            f"--model {name!r} is a file; --model takes the architecture (a timm model name, "
            "or demo-cnn / demo-vit) and --weights the checkpoint file"
        )
    from .loading import load_timm_model

    kwargs: dict[str, Any] = {}
    if args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes
    if args.image_size is not None:
        kwargs["img_size"] = args.image_size
    try:
        try:
            return load_timm_model(name, weights=args.weights, **kwargs), False
        except TypeError as err:  # a model without img_size (a ResNet): resize the images only
            if "img_size" not in str(err):
                raise
            kwargs.pop("img_size")
            return load_timm_model(name, weights=args.weights, **kwargs), False
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise InvalidArgumentError(
                f"--model {name!r} is neither {', '.join(DISCOVER_DEMO_MODELS)} nor a timm model "
                "name (list them with timm.list_models())"
            ) from err
        if args.weights is None or "state_dict" not in str(err):
            raise
        detail = " ".join(str(err).split())
        raise InvalidArgumentError(
            f"--weights {args.weights!r} does not fit --model {name!r} (as built with "
            f"--num-classes / --image-size): {detail[:300]}{'...' if len(detail) > 300 else ''}"
        ) from err


def _discover_loader(args: argparse.Namespace, model: Any, is_demo: bool) -> Any:
    from .errors import MissingFileError
    from .loading import image_folder_loader

    transform = None
    if is_demo:  # the digits models: one channel, 8x8, values in [0, 1]
        from torchvision import transforms

        transform = transforms.Compose(
            [transforms.Grayscale(1), transforms.Resize((8, 8)), transforms.ToTensor()]
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


def discover_main(args: argparse.Namespace) -> int:
    """Run ``neuronsplit discover``; returns the exit code (1 with a message on a user error)."""
    try:
        return _run_discover(args)
    except NeuronSplitError as err:
        sys.stderr.write(f"neuronsplit discover: error: {err}\n")
        return 1


def _run_discover(args: argparse.Namespace) -> int:
    from .methods.elude import discover
    from .nn import apply_plan, save

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InvalidArgumentError(f"--out {str(out)!r} is a file; give a directory")
    model, is_demo = _discover_model(args)
    loader = _discover_loader(args, model, is_demo)
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
        print(f"{name}: {info['split']}/{info['examined']} units split ({ks}); left alone: {alone}")
    split = sum(v["split"] for v in layers.values())
    examined = sum(v["examined"] for v in layers.values())
    print(
        f"{split}/{examined} units split in {len(layers)} layer(s); wrote plan.json, "
        f"plan.safetensors and weights.safetensors to {str(out)!r} (load them with "
        "neuronsplit.load(out, model))"
    )
    return 0


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
