"""The ``neuronsplit split`` and ``neuronsplit verify`` commands.

``neuronsplit split --scan scan.safetensors --top 3 --out DIR`` finds the polysemantic units of
a scan (:func:`neuronsplit.find_polysemantic`), plans Hesse et al.'s split of the ``--top``
most polysemantic ones (:func:`neuronsplit.plan_split`), checks that the split model computes
what the model computes (:func:`neuronsplit.verify_equivalence`) and saves it
(:func:`neuronsplit.save`). The model and data options default to those the scan was made with
(``neuronsplit scan`` records them). ``neuronsplit split --unsupervised --layers ...`` splits
whole layers without labels instead (ELUDe, :func:`neuronsplit.discover`, with the options of
``neuronsplit discover``). ``neuronsplit verify --split DIR`` loads a saved split on top of the
model and checks it on the data; exit code 1 where it is not equivalent.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any

from ._checks import int_in, number_in
from .cli_data import add_data_arguments, limit_batches, model_and_data
from .cli_discover import add_discover_options, discover_plan, discover_summary, saved_command
from .cli_models import CHECK_FAILED, add_model_arguments, run_command
from .cli_scan import add_detection_options, find_units
from .errors import CorruptFileError, InvalidArgumentError, MissingFileError

__all__ = ["add_split_parser", "add_verify_parser", "split_main", "verify_main"]

_SAVED = ("model", "weights", "num_classes", "image_size", "data")


def add_split_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``split`` sub-command; sets ``func=split_main``.

    Examples
    --------
    >>> sub = argparse.ArgumentParser(prog="neuronsplit").add_subparsers(dest="command")
    >>> args = add_split_parser(sub).parse_args(["--scan", "s.safetensors", "--out", "o"])
    >>> args.top, args.rho, args.model, args.unsupervised
    (3, 'auto', None, False)
    """
    p = subparsers.add_parser(
        "split",
        help="split the most polysemantic units of a scan (Hesse et al.), or whole layers "
        "without labels (--unsupervised), verify and save the split model",
        description="Plan the split, check that the split model computes what the model "
        "computes, and write plan.json, plan.safetensors and weights.safetensors into --out "
        "(load them with neuronsplit.load(out, model)). The model and data options default to "
        "the scan's.",
    )
    p.add_argument("--scan", default=None, metavar="FILE",
                   help="scan file written by neuronsplit scan (not with --unsupervised)")  # fmt: skip
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--top", type=int_in(1), default=3,
                   help="most polysemantic units to split (default 3)")  # fmt: skip
    add_detection_options(
        p, layers_help="split only units of these scanned layers (default: all); with "
        "--unsupervised the layers to split whole (required)",
    )  # fmt: skip
    p.add_argument(
        "--rho", type=_rho, default="auto",
        help="'auto' (default: the official score picks rho on the data) or a factor in (0, 1]",
    )  # fmt: skip
    p.add_argument("--merge", choices=("overlap", "disjoint"), default="overlap",
                   help="how the subunits are read (default overlap, the paper's)")  # fmt: skip
    p.add_argument("--max-images", type=int_in(1), default=None, metavar="N",
                   help="images per concept that score rho (default: all)")  # fmt: skip
    p.add_argument(
        "--unsupervised", action="store_true",
        help="split the whole --layers without labels (ELUDe's discover, no scan needed)",
    )  # fmt: skip
    group = p.add_argument_group("--unsupervised options (as neuronsplit discover)")
    add_discover_options(group)  # type: ignore[arg-type]
    add_model_arguments(
        p, model_role="the scanned model (default: the scan's)", required=False,
        image_size_note="the images are resized and center-cropped to N (default: the scan's)",
    )  # fmt: skip
    add_data_arguments(p)
    _add_verify_batches(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=split_main)
    return p


def add_verify_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``verify`` sub-command; sets ``func=verify_main``.

    Examples
    --------
    >>> sub = argparse.ArgumentParser(prog="neuronsplit").add_subparsers(dest="command")
    >>> args = add_verify_parser(sub).parse_args(["--split", "d"])
    >>> args.verify_batches, args.model
    (4, None)
    """
    p = subparsers.add_parser(
        "verify",
        help="check that a saved split model computes what the original computes "
        "(exit code 1 if not)",
        description="Load a split saved by neuronsplit split / discover / ns.save on top of the "
        "model, run both on the data in float32 and float64 and compare outputs and split "
        "layers. The model and data options default to those the split was made with.",
    )
    p.add_argument("--split", required=True, metavar="DIR",
                   help="directory written by neuronsplit split (or ns.save)")  # fmt: skip
    add_model_arguments(
        p, model_role="the original model (default: the split's)", required=False,
        image_size_note="the images are resized and center-cropped to N (default: the split's)",
    )  # fmt: skip
    add_data_arguments(p, max_batches=False)
    _add_verify_batches(p, default=4)
    p.set_defaults(func=verify_main)
    return p


def _add_verify_batches(p: argparse.ArgumentParser, default: int = 2) -> None:
    p.add_argument(
        "--verify-batches", type=int_in(1), default=default, metavar="N",
        help=f"batches of --data the equivalence is checked on (default {default})",
    )  # fmt: skip


def _rho(text: str) -> str | float:
    return "auto" if text == "auto" else number_in(0, 1, low_open=True)(text)


def split_main(args: argparse.Namespace) -> int:
    """Run ``neuronsplit split``; exit code 0, 1 (not equivalent) or 2 (a user error)."""
    return run_command("split", _split, args)


def verify_main(args: argparse.Namespace) -> int:
    """Run ``neuronsplit verify``; exit code 0, 1 (not equivalent) or 2 (a user error)."""
    return run_command("verify", _verify, args)


def _fill(args: argparse.Namespace, saved: dict[str, Any], source: str) -> None:
    """Take the model and data options not given from ``saved`` (a scan's or split's)."""
    if args.model is None:
        if not saved.get("model"):
            raise InvalidArgumentError(
                f"{source} does not say which model it belongs to (it was not written by the "
                "neuronsplit command); give --model (and --weights, --num-classes, --data)"
            )
        given = [f"--{k.replace('_', '-')}" for k in _SAVED[1:-1] if getattr(args, k) is not None]
        if given:
            raise InvalidArgumentError(
                f"{', '.join(given)} without --model; give --model too, or leave them out to use "
                f"{source}'s"
            )
        for key in _SAVED[:-1]:
            setattr(args, key, saved.get(key))
    if args.data is None:
        args.data = saved.get("data")


def _first_batches(loader: Any, n: int) -> list[Any]:
    """The first ``n`` input batches (labels dropped)."""
    return [b[0] if isinstance(b, (tuple, list)) else b for b in itertools.islice(loader, n)]


def _split(args: argparse.Namespace) -> int:
    from .methods.hesse import plan_split
    from .nn import apply_plan, save, verify_equivalence
    from .stats import ScanResult

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InvalidArgumentError(f"--out {args.out!r} is a file; give a directory")
    result = None
    if args.unsupervised:
        if args.scan is not None:
            raise InvalidArgumentError(
                "--unsupervised splits without a scan; leave --scan out (or --unsupervised)"
            )
        if not args.layers or args.model is None:
            raise InvalidArgumentError(
                "--unsupervised needs --model and --layers (the layers to split whole)"
            )
    else:
        if args.scan is None:
            raise InvalidArgumentError(
                "give --scan FILE (from neuronsplit scan), or --unsupervised --layers ... to "
                "split without labels"
            )
        result = ScanResult.load(args.scan)
        _fill(args, result.meta.get("command", {}), f"scan file {args.scan!r}")
    model, _, loader, classes = model_and_data(args)
    if result is None:
        plan = discover_plan(args, model, loader)
        lines = discover_summary(plan)
        meta = {**plan.meta, "discover_command": saved_command(args)}
    else:
        units = find_units(result, args, args.scan)
        if not units:
            diagnosis = getattr(units, "diagnosis", None)
            why = f" ({' '.join(str(diagnosis).split())})" if diagnosis is not None else ""
            raise InvalidArgumentError(
                f"no polysemantic units to split in {args.scan!r} at tau={args.tau:g}, "
                f"p={args.p:g}, gamma={args.gamma:g}{why}; raise --gamma, lower --p or pick "
                "another --tau (neuronsplit detect lists the units)"
            )
        plan = plan_split(
            units[: args.top], result, limit_batches(loader, args.max_batches), model=model, rho=args.rho, merge=args.merge,
            gamma=args.gamma, max_images=args.max_images, progress=not args.no_progress,
        )  # fmt: skip
        lines = _hesse_summary(plan, classes)
        command = saved_command(argparse.Namespace(**{**vars(args), "layers": plan.layers}))
        meta = {**plan.meta, "command": {**command, "scan": str(Path(args.scan).resolve())}}
    split = apply_plan(model, plan)
    batches = _first_batches(loader, args.verify_batches)
    report = verify_equivalence(model, split, batches)
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    if not report.passed:
        sys.stderr.write(
            f"neuronsplit split: the split model is NOT equivalent to the model on "
            f"{len(batches)} batch(es): {report.worst()}; nothing written\n"
        )
        return CHECK_FAILED
    save(split, out, meta=meta)
    sys.stdout.write(
        f"equivalent on {len(batches)} batch(es) in float32 and float64; wrote plan.json, "
        f"plan.safetensors and weights.safetensors to {args.out!r}\n"
        f"next: neuronsplit verify --split {args.out}\n"
    )
    return 0


def _hesse_summary(plan: Any, classes: list[str]) -> list[str]:
    """One line per split unit: its concepts (class names) and rho."""

    def name(c: int) -> str:
        return classes[c] if 0 <= c < len(classes) else str(c)

    lines = []
    for info in plan.meta["units"]:
        concepts = " | ".join("+".join(name(c) for c in concept) for concept in info["concepts"])
        lines.append(
            f"{info['layer']} unit {info['unit']}: concepts {concepts}, rho {info['rho']:g}"
        )
    lines.append(f"{len(lines)} unit(s) split in {len(plan.layers)} layer(s)")
    return lines


def _saved_meta(split_dir: Path) -> dict[str, Any]:
    """The options the split in ``split_dir`` was made with (``{}`` where it says none)."""
    path = split_dir / "plan.json"
    if not split_dir.is_dir():
        raise MissingFileError(
            f"--split {str(split_dir)!r} is no directory; give the --out of neuronsplit split"
        )
    if not path.is_file():
        raise MissingFileError(
            f"--split {str(split_dir)!r} has no plan.json; give a directory written by "
            "neuronsplit split, neuronsplit discover or ns.save"
        )
    try:
        meta = json.loads(path.read_text()).get("meta", {})
    except (ValueError, AttributeError) as err:
        raise CorruptFileError(f"{str(path)!r} is not a neuronsplit plan ({err})") from err
    return meta.get("command") or meta.get("discover_command") or {}


def _verify(args: argparse.Namespace) -> int:
    from .nn import load, verify_equivalence

    split_dir = Path(args.split)
    _fill(args, _saved_meta(split_dir), f"--split {args.split!r}")
    model, _, loader, _ = model_and_data(args)
    split = load(split_dir, model)
    batches = _first_batches(loader, args.verify_batches)
    report = verify_equivalence(model, split, batches)
    sys.stdout.write(f"{report}\n")
    if not report.passed:
        sys.stderr.write(
            f"neuronsplit verify: the split model in {args.split!r} is NOT equivalent to "
            f"{args.model!r}: {report.worst()}\n"
        )
        return CHECK_FAILED
    sys.stdout.write(
        f"equivalent: the split model in {args.split!r} computes what {args.model!r} computes "
        f"on {sum(len(b) for b in batches)} images\n"
    )
    return 0
