"""Grids of images: one row per unit or subunit, its reference images from left to right.

Images are read from a dataset by index (the positions :func:`~neuronsplit.evaluate` reports
in ``top_indices``): a tensor ``(N, C, H, W)`` / ``(N, H, W)``, or anything indexable whose
items are an image or an ``(image, label, ...)`` tuple. Greyscale (``(1, H, W)``, ``(H, W)``,
e.g. the 8x8 digits) is drawn with a grey colormap, RGB (``(3, H, W)`` or ``(H, W, 3)``) as is;
each image is scaled to [0, 1] on its own range for display.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from .._checks import check_int
from ..errors import ArgumentTypeError, InvalidArgumentError
from ..evaluation import Evaluation
from .figures import bare_axes, new_figure

__all__ = ["image_grid", "reference_grid", "as_display_image"]


def as_display_image(image: Any) -> np.ndarray:
    """An image as ``(H, W)`` or ``(H, W, 3)`` floats in [0, 1].

    Examples
    --------
    >>> as_display_image(torch.arange(4.0).reshape(1, 2, 2)).tolist()
    [[0.0, 0.3333333333333333], [0.6666666666666666, 1.0]]
    """
    if isinstance(image, (tuple, list)):
        image = image[0]  # (image, label, ...)
    arr = np.asarray(torch.as_tensor(image).detach().double().cpu())
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(1, 2, 0)  # CHW -> HWC
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3):
        raise InvalidArgumentError(
            f"an image must be (H, W), (1|3, H, W) or (H, W, 1|3), got shape {arr.shape}"
        )
    lo, hi = float(arr.min()), float(arr.max())
    return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)


def image_grid(
    dataset: Any, rows: Mapping[str, Sequence[int]], *, size: float = 1.1,
    title: str | None = None,
) -> Figure:  # fmt: skip
    """One row of images per entry of ``rows`` (``{row title: dataset indices}``).

    Parameters
    ----------
    dataset : Tensor or indexable
        Where the images come from (see the module docstring).
    rows : mapping of str to sequence of int
        Row titles and the indices of their images; rows may differ in length.
    size : float, default 1.1
        Inches per image.
    title : str, optional
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        ``len(rows) x max length`` axes without ticks; unused cells are blank.

    Examples
    --------
    >>> fig = image_grid(torch.rand(6, 1, 8, 8), {"unit": [0, 1, 2], "k0": [3]})
    >>> len(fig.axes), sum(len(ax.images) for ax in fig.axes)
    (6, 4)
    """
    if not isinstance(rows, Mapping) or not rows:
        raise ArgumentTypeError("rows must be a non-empty mapping {row title: image indices}")
    try:
        n = len(dataset)
    except TypeError as err:
        raise ArgumentTypeError(
            f"dataset must be a tensor or an indexable dataset, got {type(dataset).__name__}"
        ) from err
    cols = max(1, max(len(v) for v in rows.values()))
    fig, axes = new_figure(len(rows), cols, size=(size * cols + 0.8, size * len(rows) + 0.3))
    for r, (name, indices) in enumerate(rows.items()):
        for c in range(cols):
            ax = axes[r * cols + c]
            bare_axes(ax)
            if c == 0:
                ax.set_ylabel(str(name), fontsize=8)
            if c >= len(indices):
                continue
            i = check_int(indices[c], "an image index", low=0, high=n - 1)
            img = as_display_image(dataset[i])
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def reference_grid(
    evaluation: Evaluation, dataset: Any, layer: str, unit: int, *, n: int | None = None
) -> Figure:
    """The top images of a split unit, of each of its subunits and of its residual.

    Parameters
    ----------
    evaluation : Evaluation
        From :func:`neuronsplit.evaluate` on a loader over ``dataset`` in order (no shuffle),
        so that its ``top_indices`` are positions in ``dataset``.
    dataset : Tensor or indexable
        The evaluated images.
    layer, unit : str, int
        The split unit.
    n : int, optional
        Images per row (default: all of ``evaluation.k``).

    Returns
    -------
    matplotlib.figure.Figure
        Rows ``unit``, ``k0`` ..., ``residual``, titled with their label purity where known.

    Examples
    --------
    >>> ev = ns.evaluate(model, split, loader, progress=False)  # doctest: +SKIP
    >>> fig = reference_grid(ev, test.images, "fc2", 0, n=8)  # doctest: +SKIP
    """
    if not isinstance(evaluation, Evaluation):
        raise ArgumentTypeError(
            f"evaluation must be an Evaluation, got {type(evaluation).__name__}"
        )
    check_int(n, "n", low=1, optional=True)
    rows = {}
    for row in evaluation.rows:
        if (row.layer, row.unit) != (layer, unit):
            continue
        label = "unit" if row.subunit is None else row.name.rsplit("/", 1)[1]
        if row.purity is not None and row.purity == row.purity:
            label += f"\npurity {row.purity:.2f}"
        if not row.top_indices:
            label += "\n(constant)"
        rows[label] = list(row.top_indices[:n])
    if not rows:
        evaluation.row(layer, unit)  # UnknownSubunitError listing the evaluated units
    return image_grid(dataset, rows, title=f"top images: {layer} unit {unit}")
