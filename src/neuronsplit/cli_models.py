"""What the ``neuronsplit`` sub-commands share: the model named on the command line, and the
report of a user error.

``--model`` names an architecture: ``demo`` or ``demo-cnn`` (the bundled digits CNN),
``demo-vit`` (the bundled digits ViT), both trained and cached on first use, a timm model name
or a torchvision model name (timm first where both know the name; ``timm:NAME`` and
``torchvision:NAME`` pick one). A timm or torchvision model takes a local checkpoint
(``--weights``), the classes of its head (``--num-classes``) and, for a model with an
``img_size`` / ``image_size`` (a ViT), the resolution it is built for (``--image-size``); a
model without one (a ResNet) is built as usual. :func:`build_model` builds it in eval mode;
:func:`add_model_arguments` adds these options to a sub-command. :func:`run_command` turns a
user error into a one-line message and exit code 2 (:data:`USER_ERROR`).
"""

from __future__ import annotations

import argparse
import difflib
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._checks import int_in
from .errors import CorruptFileError, InvalidArgumentError, MissingFileError, NeuronSplitError

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "DEMO_MODELS",
    "DEMO_IMAGE_SIZE",
    "USER_ERROR",
    "CHECK_FAILED",
    "add_model_arguments",
    "build_model",
    "model_options",
    "run_command",
]

#: ``--model`` names of the bundled digits models -> their getter in :mod:`neuronsplit.demo`
DEMO_MODELS = {"demo": "get_demo_model", "demo-cnn": "get_demo_model", "demo-vit": "get_demo_vit"}
#: the side of the demo models' greyscale images
DEMO_IMAGE_SIZE = 8
#: exit code of a user error (a bad option, a missing file), as argparse's own errors
USER_ERROR = 2
#: exit code of a check that ran and failed (a split that is not equivalent)
CHECK_FAILED = 1
_CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
_PREFIXES = ("timm:", "torchvision:")


def add_model_arguments(
    parser: argparse.ArgumentParser, *, model_role: str, image_size_note: str,
    required: bool = True,
) -> None:  # fmt: skip
    """Add ``--model``, ``--weights``, ``--num-classes``, ``--image-size`` and ``--cache``.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The sub-command's parser.
    model_role : str
        What the sub-command does with ``--model``; its help goes on with the names it takes.
    image_size_note : str
        What ``--image-size`` means besides the resolution a ViT is built for.
    required : bool, default True
        Whether ``--model`` must be given (commands that read it from a saved file do not).

    Examples
    --------
    >>> parser = argparse.ArgumentParser()
    >>> add_model_arguments(parser, model_role="the model", image_size_note="n")
    >>> args = parser.parse_args(["--model", "demo-vit"])
    >>> args.model, args.weights, args.num_classes, args.image_size, args.cache
    ('demo-vit', None, None, None, None)
    """
    parser.add_argument(
        "--model", required=required,
        help=f"{model_role}: 'demo' or 'demo-cnn' (the digits CNN), 'demo-vit' (the digits ViT), "
        "both on 8x8 greyscale images, a timm model name (e.g. resnet50, vit_base_patch16_224) "
        "or a torchvision one (e.g. mobilenet_v3_small); timm:NAME / torchvision:NAME pick the "
        "library where both know NAME (plain NAME: timm first)",
    )  # fmt: skip
    parser.add_argument(
        "--weights", default=None, metavar="FILE",
        help="local .safetensors / .pth checkpoint of a timm or torchvision model (no download); "
        "without it the model has random weights",
    )  # fmt: skip
    parser.add_argument(
        "--num-classes", type=int_in(1), default=None, metavar="N",
        help="classes of a timm / torchvision model's head (default: the library's, 1000)",
    )  # fmt: skip
    parser.add_argument(
        "--image-size", type=int_in(1), default=None, metavar="N",
        help=f"input resolution N: models that take an img_size / image_size (ViTs) are built "
        f"for it; {image_size_note}",
    )  # fmt: skip
    parser.add_argument(
        "--cache", default=None, metavar="DIR",
        help="cache dir of the demo models (default $NEURONSPLIT_CACHE or ~/.cache/neuronsplit)",
    )  # fmt: skip


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    """The model options of ``args`` as :func:`build_model` keywords (paths made absolute).

    Examples
    --------
    >>> ns_ = argparse.Namespace(model="demo", weights=None, num_classes=None, image_size=None,
    ...                          cache=None)
    >>> model_options(ns_)
    {'name': 'demo', 'weights': None, 'num_classes': None, 'image_size': None}
    """
    weights = None if args.weights is None else str(Path(args.weights).resolve())
    return {
        "name": args.model, "weights": weights, "num_classes": args.num_classes,
        "image_size": args.image_size,
    }  # fmt: skip


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
        A key of :data:`DEMO_MODELS`, a timm or a torchvision model name (optionally prefixed
        ``timm:`` or ``torchvision:``); never a file.
    weights : str, optional
        Local checkpoint (``.safetensors``, or a torch file holding a state dict).
    num_classes : int, optional
        Classes of the model's head.
    cache : str, optional
        Cache directory of the demo models.
    image_size : int, optional
        Resolution a model with an ``img_size`` / ``image_size`` (a ViT) is built for; ignored
        by models without one. A demo model takes only :data:`DEMO_IMAGE_SIZE`.

    Returns
    -------
    tuple of (torch.nn.Module, bool)
        The model in eval mode, and whether it is a bundled demo model.

    Raises
    ------
    InvalidArgumentError
        Library options for a demo model, a file as ``name``, an unknown name (the message
        lists close matches), or ``weights`` that do not fit the architecture.
    MissingFileError, CorruptFileError
        ``weights`` missing, or not a checkpoint.

    Examples
    --------
    >>> model, is_demo = build_model("demo-cnn")  # doctest: +SKIP
    >>> type(model).__name__, is_demo, model.training  # doctest: +SKIP
    ('DigitsNet', True, False)
    """
    if name in DEMO_MODELS:
        if weights is not None or num_classes is not None:
            raise InvalidArgumentError(
                f"--weights and --num-classes apply to timm / torchvision models, not to {name!r}; "
                "leave them out"
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
            f"--model {name!r} is a file; --model takes the architecture (a timm or torchvision "
            f"model name, or {' / '.join(DEMO_MODELS)}) and --weights the checkpoint file"
        )
    if weights is not None:
        _check_readable(weights, "--weights")
    library, arch = _library(name)
    if library == "timm":
        return _build_timm_model(arch, weights, num_classes, image_size), False
    return _build_torchvision_model(arch, weights, num_classes, image_size), False


def _check_readable(path: str, option: str) -> None:
    """A file that exists and is a file (not a folder)."""
    p = Path(path)
    if not p.exists():
        raise MissingFileError(f"{option} {path!r} does not exist; give the path of a file")
    if not p.is_file():
        raise InvalidArgumentError(f"{option} {path!r} is a folder; give the path of a file")


def _library(name: str) -> tuple[str, str]:
    """``("timm" | "torchvision", architecture)`` for ``name``, or a close-matches error."""
    import timm
    import torchvision

    for prefix in _PREFIXES:
        if name.startswith(prefix):
            arch, library = name[len(prefix) :], prefix[:-1]
            known = (
                timm.is_model(arch) if library == "timm"
                else arch in torchvision.models.list_models()
            )  # fmt: skip
            if not known:
                raise InvalidArgumentError(f"{library} knows no model {arch!r}{_close(arch)}")
            return library, arch
    if timm.is_model(name):
        return "timm", name
    if name in torchvision.models.list_models():
        return "torchvision", name
    raise InvalidArgumentError(
        f"--model {name!r} is neither {' nor '.join(map(repr, DEMO_MODELS))} nor a timm or "
        f"torchvision model name{_close(name)}"
    )


def _close(name: str) -> str:
    """``"; did you mean a, b?"`` over the timm and torchvision names (or how to list them)."""
    import timm
    import torchvision

    names = sorted(set(timm.list_models()) | set(torchvision.models.list_models()))
    close = difflib.get_close_matches(name, [*names, *DEMO_MODELS], n=5, cutoff=0.6)
    if close:
        return f"; did you mean {', '.join(close)}?"
    return "; list the names with timm.list_models() and torchvision.models.list_models()"


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
    except NeuronSplitError:
        raise
    except Exception as err:  # a file that is no checkpoint, or one of another architecture
        if weights is None:
            raise
        if isinstance(err, RuntimeError) and "state_dict" in str(err):
            raise _misfit(weights, name, err) from err
        raise _corrupt(weights, err) from err


def _build_torchvision_model(
    name: str, weights: str | None, num_classes: int | None, image_size: int | None
) -> nn.Module:
    """:func:`build_model` for a torchvision model name: random init, then ``weights``."""
    from torchvision.models import get_model

    kwargs: dict[str, Any] = {"weights": None}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    try:
        sized = {} if image_size is None else {"image_size": image_size}
        model = get_model(name, **kwargs, **sized)
    except TypeError as err:  # no image_size (a ResNet): the images are resized only
        if "image_size" not in str(err):
            raise
        model = get_model(name, **kwargs)
    if weights is not None:
        state = _read_state_dict(weights)
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise _misfit(weights, name, err) from err
    return model.eval()


def _read_state_dict(path: str) -> dict[str, Any]:
    """The tensors of a ``.safetensors`` file or of a torch file (``weights_only``)."""
    import torch

    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state: Any = load_file(path)
        else:
            with warnings.catch_warnings():  # torch's note on a foreign pickle: the error says it
                warnings.simplefilter("ignore", UserWarning)
                state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise _corrupt(path, err) from err
    for key in ("state_dict", "model"):  # training checkpoints wrap the state dict
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise CorruptFileError(
            f"--weights {path!r} holds a {type(state).__name__}, not a state dict; save the "
            "weights with torch.save(model.state_dict(), path)"
        )
    return state


def _corrupt(path: str, err: Exception) -> CorruptFileError:
    detail = " ".join(str(err).split())[:200]
    return CorruptFileError(
        f"--weights {path!r} is not a readable checkpoint ({type(err).__name__}: {detail}); give "
        "a .safetensors file or a torch.save'd state dict"
    )


def _misfit(path: str, name: str, err: Exception) -> InvalidArgumentError:
    detail = " ".join(str(err).split())
    return InvalidArgumentError(
        f"--weights {path!r} does not fit --model {name!r} (as built with --num-classes / "
        f"--image-size): {detail[:300]}{'...' if len(detail) > 300 else ''}"
    )


def run_command(
    command: str, run: Callable[[argparse.Namespace], int], args: argparse.Namespace
) -> int:
    """``run(args)``, with a user error reported on stderr in one line as exit code 2.

    Parameters
    ----------
    command : str
        The sub-command's name, e.g. ``"discover"``, for the message
        ``neuronsplit discover: error: ...``.
    run : callable
        Runs the sub-command; returns its exit code.
    args : argparse.Namespace
        The parsed arguments; ``args.debug`` (``neuronsplit --debug ...``) re-raises instead.

    Returns
    -------
    int
        ``run``'s exit code, or :data:`USER_ERROR` (2) where it raised a
        :class:`~neuronsplit.errors.NeuronSplitError` or an ``OSError`` such as a file that
        cannot be read (other errors propagate).
    """
    try:
        return run(args)
    except BrokenPipeError:
        raise  # the reader went away: neuronsplit.cli.main exits quietly
    except (NeuronSplitError, OSError) as err:
        if getattr(args, "debug", False):
            raise
        message = " ".join(str(err).split())  # one line, whatever the error's layout
        if type(err).__name__ == "UnidentifiedImageError":  # PIL, on a file of --data
            message = f"{message}; remove that file from --data or replace it with an image"
        elif isinstance(err, OSError) and not isinstance(err, NeuronSplitError):
            what = "a file" if err.filename is None else repr(err.filename)
            message = (
                f"cannot use {what}: {err.strerror or message}; check the path and its permissions"
            )
        sys.stderr.write(f"neuronsplit {command}: error: {message}\n")
        return USER_ERROR
