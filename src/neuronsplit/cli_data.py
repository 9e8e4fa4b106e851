"""The data of the ``neuronsplit`` sub-commands: an ImageFolder tree or the bundled digits.

``--data DIR`` is an ImageFolder tree (``DIR/<class>/<image>``; classes are indexed in sorted
folder order, the order of the model's logits). ``--data digits`` is scikit-learn's digits as
the demo models see them (8x8 greyscale); it is the default for the demo models and refused for
the others, which need images of their own. The images are resized to 8x8 greyscale for the
demo models, and resized and center-cropped to ``--image-size`` (or the model's timm data
config, 224 px for a torchvision model) and normalised for the others.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path
from typing import Any

from ._checks import int_in
from .cli_models import DEMO_IMAGE_SIZE
from .errors import InvalidArgumentError, MissingFileError, NeuronSplitError

__all__ = [
    "DIGITS",
    "add_data_arguments",
    "build_loader",
    "data_option",
    "limit_batches",
    "model_and_data",
]

#: the ``--data`` value of the bundled digits
DIGITS = "digits"


def add_data_arguments(
    parser: argparse.ArgumentParser, *, batch_size: int = 32, max_batches: bool = True
) -> None:
    """Add ``--data``, ``--batch-size`` and (with ``max_batches``) ``--max-batches``.

    Examples
    --------
    >>> parser = argparse.ArgumentParser()
    >>> add_data_arguments(parser)
    >>> args = parser.parse_args(["--data", "imgs", "--max-batches", "2"])
    >>> args.data, args.batch_size, args.max_batches
    ('imgs', 32, 2)
    """
    parser.add_argument(
        "--data", default=None, metavar="DIR",
        help="ImageFolder tree: one sub-folder of images per class, in the order of the model's "
        f"classes; or '{DIGITS}' (scikit-learn's digits, the default for the demo models)",
    )  # fmt: skip
    parser.add_argument(
        "--batch-size", type=int_in(1), default=batch_size, metavar="N",
        help=f"images per batch (default {batch_size})",
    )  # fmt: skip
    if max_batches:
        parser.add_argument(
            "--max-batches", type=int_in(1), default=None, metavar="N",
            help="use only the first N batches of --data (default: all)",
        )  # fmt: skip


class _Limited:
    """The first ``n`` batches of a loader, as often as it is iterated."""

    def __init__(self, loader: Any, n: int) -> None:
        self.loader, self.n = loader, n

    def __iter__(self) -> Any:
        return itertools.islice(iter(self.loader), self.n)

    def __len__(self) -> int:
        return min(len(self.loader), self.n)


def limit_batches(loader: Any, n: int | None) -> Any:
    """``loader``, or its first ``n`` batches each time it is iterated.

    Examples
    --------
    >>> len(list(limit_batches([1, 2, 3], 2))), limit_batches([1], None)
    (2, [1])
    """
    return loader if n is None else _Limited(loader, n)


def data_option(data: str | None) -> str | None:
    """``--data`` as recorded in saved files: an absolute path, or ``"digits"`` / ``None``.

    Examples
    --------
    >>> data_option("digits"), data_option(None)
    ('digits', None)
    """
    if data is None or data == DIGITS:
        return data
    return str(Path(data).resolve())


def build_loader(
    data: str | None, model: Any, is_demo: bool, *, batch_size: int,
    image_size: int | None = None, model_name: str = "the model",
) -> tuple[Any, list[str]]:  # fmt: skip
    """Batches of ``(images, labels)`` that ``model`` takes, and the class names.

    Parameters
    ----------
    data : str or None
        An ImageFolder directory, ``"digits"``, or ``None`` (the digits, for a demo model).
    model : nn.Module
        The model the images are for.
    is_demo : bool
        Whether ``model`` is a bundled digits model (8x8 greyscale images).
    batch_size : int
        Images per batch.
    image_size : int, optional
        Side the images are resized and center-cropped to (not for a demo model).
    model_name : str
        ``--model`` as given, for the messages.

    Raises
    ------
    InvalidArgumentError
        No ``data`` for a model that is not a demo model, or the digits for one.
    MissingFileError
        ``data`` is no directory, has no class folders, or class folders without images.

    Examples
    --------
    >>> loader, classes = build_loader("digits", None, True, batch_size=4)
    >>> tuple(next(iter(loader))[0].shape), classes[:3]
    ((4, 1, 8, 8), ['0', '1', '2'])
    """
    if data is None or data == DIGITS:
        if not is_demo:
            raise InvalidArgumentError(
                f"--model {model_name!r} needs images of its own: give --data DIR, an ImageFolder "
                f"tree (one sub-folder of images per class); '{DIGITS}' fits the demo models only"
            )
        from .demo import DIGIT_CLASSES, digits_loader

        return digits_loader("train", batch_size=batch_size), list(DIGIT_CLASSES)
    from .loading import image_folder_loader

    transform = None
    if is_demo:  # the digits models: one channel, 8x8, values in [0, 1]
        from torchvision import transforms

        size = (DEMO_IMAGE_SIZE, DEMO_IMAGE_SIZE)
        transform = transforms.Compose(
            [transforms.Grayscale(1), transforms.Resize(size), transforms.ToTensor()]
        )
    elif image_size is not None:
        from timm.data import create_transform, resolve_data_config

        size3 = (3, image_size, image_size)
        transform = create_transform(**resolve_data_config({"input_size": size3}, model=model))
    root = Path(data)
    if root.exists() and not root.is_dir():
        raise InvalidArgumentError(
            f"--data {data!r} is a file; give a folder with one sub-folder of images per class"
        )
    try:
        loader = image_folder_loader(root, model, batch_size=batch_size, transform=transform)
    except FileNotFoundError as err:
        if isinstance(err, NeuronSplitError):
            raise
        # torchvision: no class folder, or class folders without images
        raise MissingFileError(
            f"--data {data!r} holds no usable ImageFolder tree ({err}); put the images "
            "(.png, .jpg, ...) in one sub-folder per class"
        ) from err
    return loader, list(loader.dataset.classes)


def model_and_data(args: argparse.Namespace) -> tuple[Any, bool, Any, list[str]]:
    """The model and the data a sub-command's options name, built in that order.

    ``args`` carries the options of :func:`~neuronsplit.cli_models.add_model_arguments` and
    :func:`add_data_arguments` (``model``, ``weights``, ``num_classes``, ``cache``,
    ``image_size``, ``data``, ``batch_size``).

    Returns
    -------
    tuple of (nn.Module, bool, DataLoader, list of str)
        The model in eval mode, whether it is a demo model, the batches and the class names.

    Examples
    --------
    >>> args = argparse.Namespace(model="demo-cnn", weights=None, num_classes=None, cache=None,
    ...                           image_size=None, data="digits", batch_size=4)
    >>> model, is_demo, loader, classes = model_and_data(args)  # doctest: +SKIP
    >>> is_demo, len(classes)  # doctest: +SKIP
    (True, 10)
    """
    from .cli_models import build_model

    model, is_demo = build_model(
        args.model, weights=args.weights, num_classes=args.num_classes, cache=args.cache,
        image_size=args.image_size,
    )  # fmt: skip
    loader, classes = build_loader(
        args.data, model, is_demo, batch_size=args.batch_size, image_size=args.image_size,
        model_name=args.model,
    )  # fmt: skip
    return model, is_demo, loader, classes
