"""What ``neuronsplit discover`` and ``neuronsplit steer`` share: the model named on the
command line, and the report of a user error.

``--model`` names an architecture: ``demo`` or ``demo-cnn`` (the bundled digits CNN),
``demo-vit`` (the bundled digits ViT), both trained and cached on first use, or a timm model
name. A timm model takes a local checkpoint (``--weights``), the classes of its head
(``--num-classes``) and, for a model with an ``img_size`` (a ViT), the resolution it is built
for (``--image-size``); a model without one (a ResNet) is built as usual. :func:`build_model`
builds it in eval mode; :func:`add_model_arguments` adds these options to a sub-command.
:func:`run_command` turns a :class:`~neuronsplit.errors.NeuronSplitError` into a message and
exit code 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._checks import int_in
from .errors import InvalidArgumentError, NeuronSplitError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["DEMO_MODELS", "DEMO_IMAGE_SIZE", "add_model_arguments", "build_model", "run_command"]

#: ``--model`` names of the bundled digits models -> their getter in :mod:`neuronsplit.demo`
DEMO_MODELS = {"demo": "get_demo_model", "demo-cnn": "get_demo_model", "demo-vit": "get_demo_vit"}
#: the side of the demo models' greyscale images
DEMO_IMAGE_SIZE = 8
_CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


def add_model_arguments(
    parser: argparse.ArgumentParser, *, model_role: str, image_size_note: str
) -> None:
    """Add ``--model``, ``--weights``, ``--num-classes``, ``--image-size`` and ``--cache``.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The sub-command's parser.
    model_role : str
        What the sub-command does with ``--model``; its help goes on with the names it takes.
    image_size_note : str
        What ``--image-size`` means besides the resolution a timm ViT is built for.

    Examples
    --------
    >>> parser = argparse.ArgumentParser()
    >>> add_model_arguments(parser, model_role="the model", image_size_note="n")
    >>> args = parser.parse_args(["--model", "demo-vit"])
    >>> args.model, args.weights, args.num_classes, args.image_size, args.cache
    ('demo-vit', None, None, None, None)
    """
    parser.add_argument(
        "--model", required=True,
        help=f"{model_role}: 'demo' or 'demo-cnn' (the digits CNN), 'demo-vit' (the digits ViT), "
        "both on 8x8 greyscale images, or a timm model name (e.g. vit_base_patch16_224)",
    )  # fmt: skip
    parser.add_argument(
        "--weights", default=None,
        help="local .safetensors / .pth checkpoint for a timm model (no download needed)",
    )  # fmt: skip
    parser.add_argument(
        "--num-classes", type=int_in(1), default=None,
        help="classes of a timm model's head (timm's num_classes)",
    )  # fmt: skip
    parser.add_argument(
        "--image-size", type=int_in(1), default=None,
        help=f"input resolution N: timm models that take an img_size (ViTs) are built for it; "
        f"{image_size_note}",
    )  # fmt: skip
    parser.add_argument("--cache", default=None, help="cache dir of the demo models")


def build_model(
    name: str,
    *,
    weights: str | None = None,
    num_classes: int | None = None,
    cache: str | None = None,
    image_size: int | None = None,
) -> tuple[nn.Module, bool]:
    """The architecture named on the command line, in eval mode.

    Parameters
    ----------
    name : str
        A key of :data:`DEMO_MODELS` or a timm model name; never a file.
    weights : str, optional
        Local checkpoint of a timm model (:func:`neuronsplit.load_timm_model`).
    num_classes : int, optional
        Classes of a timm model's head.
    cache : str, optional
        Cache directory of the demo models.
    image_size : int, optional
        Resolution a timm model with an ``img_size`` (a ViT) is built for; ignored by timm
        models without one. A demo model takes only :data:`DEMO_IMAGE_SIZE`.

    Returns
    -------
    tuple of (torch.nn.Module, bool)
        The model in eval mode, and whether it is a bundled demo model.

    Raises
    ------
    InvalidArgumentError
        Timm options for a demo model, a file as ``name``, an unknown name, or ``weights``
        that do not fit the architecture.

    Examples
    --------
    >>> model, is_demo = build_model("demo-cnn")  # doctest: +SKIP
    >>> type(model).__name__, is_demo, model.training  # doctest: +SKIP
    ('DigitsNet', True, False)
    """
    if name in DEMO_MODELS:
        if weights is not None or num_classes is not None:
            raise InvalidArgumentError(
                f"--weights and --num-classes apply to timm models, not to {name!r}"
            )
        if image_size not in (None, DEMO_IMAGE_SIZE):
            raise InvalidArgumentError(
                f"{name!r} takes {DEMO_IMAGE_SIZE}x{DEMO_IMAGE_SIZE} images; leave --image-size "
                f"out (got {image_size})"
            )
        from . import demo

        return getattr(demo, DEMO_MODELS[name])(cache).eval(), True
    if Path(name).suffix.lower() in _CHECKPOINT_SUFFIXES or Path(name).is_file():
        raise InvalidArgumentError(
            f"--model {name!r} is a file; --model takes the architecture (a timm model name, "
            f"or {' / '.join(DEMO_MODELS)}) and --weights the checkpoint file"
        )
    return _build_timm_model(name, weights, num_classes, image_size), False


def _build_timm_model(
    name: str, weights: str | None, num_classes: int | None, image_size: int | None
) -> nn.Module:
    """:func:`build_model` for a timm model name, with its errors worded for the options."""
    from .loading import load_timm_model

    kwargs: dict[str, Any] = {}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if image_size is not None:
        kwargs["img_size"] = image_size
    try:
        try:
            return load_timm_model(name, weights=weights, **kwargs)
        except TypeError as err:  # a model without img_size (a ResNet): resize the images only
            if "img_size" not in str(err):
                raise
            kwargs.pop("img_size")
            return load_timm_model(name, weights=weights, **kwargs)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise InvalidArgumentError(
                f"--model {name!r} is neither {' nor '.join(map(repr, DEMO_MODELS))} nor a timm "
                "model name (list them with timm.list_models())"
            ) from err
        if weights is None or "state_dict" not in str(err):
            raise
        detail = " ".join(str(err).split())
        raise InvalidArgumentError(
            f"--weights {weights!r} does not fit --model {name!r} (as built with "
            f"--num-classes / --image-size): {detail[:300]}{'...' if len(detail) > 300 else ''}"
        ) from err


def run_command(
    command: str, run: Callable[[argparse.Namespace], int], args: argparse.Namespace
) -> int:
    """``run(args)``, with a user error reported on stderr as exit code 1.

    Parameters
    ----------
    command : str
        The sub-command's name, e.g. ``"discover"``, for the message
        ``neuronsplit discover: error: ...``.
    run : callable
        Runs the sub-command; returns its exit code.
    args : argparse.Namespace
        The parsed arguments.

    Returns
    -------
    int
        ``run``'s exit code, or 1 where it raised a
        :class:`~neuronsplit.errors.NeuronSplitError` (other errors propagate).
    """
    try:
        return run(args)
    except NeuronSplitError as err:
        sys.stderr.write(f"neuronsplit {command}: error: {err}\n")
        return 1
