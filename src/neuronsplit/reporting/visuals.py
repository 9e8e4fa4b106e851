"""The pictures :mod:`neuronsplit.visual` computes for the report, for all shown units at once.

:func:`reference_sets` runs :func:`~neuronsplit.visual.reference_images` twice (by activation
and by relevance) over every unit, subunit and residual shown, one pass each; it needs the
dataset behind the loader (a ``DataLoader`` that does not shuffle) and otherwise returns None,
and the report falls back to the top images :func:`~neuronsplit.evaluate` found.
:func:`feature_visualisations` optimises one image per row in one batch
(:func:`~neuronsplit.visual.visualise`). Both give ``(result, note)``: a
:class:`~neuronsplit.errors.NeuronSplitError` becomes the note, shown where the picture would be.

Examples
--------
>>> ref_names([("fc2", 3)], {("fc2", 3): 2})
['fc2/u3', 'fc2/u3/k0', 'fc2/u3/k1', 'fc2/u3/residual']
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from torch import nn

from ..errors import NeuronSplitError
from .data import sequential_dataset

__all__ = ["ref_names", "reference_sets", "feature_visualisations", "visual_available",
           "boxed_image"]  # fmt: skip

_MAX_FULL_SIDE = 64  # images up to this side are shown whole with the box drawn, larger cropped


def visual_available(name: str) -> bool:
    """Whether ``neuronsplit.visual.<name>`` exists in this installation.

    Examples
    --------
    >>> visual_available("no_such_module")
    False
    """
    return importlib.util.find_spec(f"neuronsplit.visual.{name}") is not None


def ref_names(
    units: Sequence[tuple[str, int]], subunits: Mapping[tuple[str, int], int]
) -> list[str]:
    """The reference names of each unit, its subunits ``k0 ..`` and its residual."""
    out = []
    for layer, unit in units:
        base = f"{layer}/u{unit}"
        out += [base, *(f"{base}/k{k}" for k in range(subunits[(layer, unit)])),
                f"{base}/residual"]  # fmt: skip
    return out


def reference_sets(
    split: nn.Module, loader: Any, names: list[str], *, k: int, labels: bool
) -> tuple[dict[str, Any] | None, str]:
    """``{"activation": ReferenceSet, "relevance": ReferenceSet}`` (whole images, with boxes),
    or None and why not."""
    if not visual_available("references"):
        return None, "neuronsplit.visual.references is not installed"
    dataset = sequential_dataset(loader)
    if dataset is None:
        return None, ("reference crops need the dataset of a DataLoader that does not shuffle; "
                      "showing the top images evaluate found")  # fmt: skip
    from ..visual import reference_images

    target = "label" if labels else "prediction"
    try:
        return {by: reference_images(split, dataset, names, by=by, k=k, crop=False,
                                     target=target, progress=False)
                for by in ("activation", "relevance")}, ""  # fmt: skip
    except NeuronSplitError as err:
        return None, f"reference crops failed ({err}); showing the top images evaluate found"


def feature_visualisations(
    split: nn.Module, names: list[str], image_shape: tuple[int, ...], *, steps: int,
    progress: bool,
) -> tuple[Any | None, str]:  # fmt: skip
    """A :class:`~neuronsplit.visual.FeatureVisualisation` of every row, or None and why not."""
    if not visual_available("featurevis"):
        return None, "feature visualisation needs neuronsplit.visual.featurevis (not installed)"
    from ..visual import visualise

    try:
        return visualise(split, names, image_shape=image_shape, steps=steps,
                         progress=progress), ""  # fmt: skip
    except NeuronSplitError as err:
        return None, f"feature visualisation failed: {err}"


def boxed_image(display: np.ndarray, box: Sequence[int], scale: int) -> np.ndarray:
    """A display image (``(H, W)`` or ``(H, W, 3)`` in [0, 1]) for one reference image: small
    images whole, upscaled ``scale`` times, with the box the row saw drawn in red; large images
    cropped to the box.

    Examples
    --------
    >>> out = boxed_image(np.zeros((4, 4)), (0, 0, 2, 2), 4)
    >>> out.shape, out[0, 0].tolist(), out[15, 15].tolist()
    ((16, 16, 3), [1.0, 0.0, 0.0], [0.0, 0.0, 0.0])
    """
    top, left, bottom, right = (int(v) for v in box)
    h, w = display.shape[:2]
    if max(h, w) > _MAX_FULL_SIDE:
        return display[top:bottom, left:right]
    rgb = np.repeat(display[..., None], 3, axis=2) if display.ndim == 2 else display.copy()
    if (top, left, bottom, right) == (0, 0, h, w):
        return rgb  # the whole image: nothing to mark
    big = rgb.repeat(scale, axis=0).repeat(scale, axis=1)
    t, lf, b, r = top * scale, left * scale, bottom * scale - 1, right * scale - 1
    red = np.array([1.0, 0.0, 0.0])
    big[t, lf : r + 1] = big[b, lf : r + 1] = red
    big[t : b + 1, lf] = big[t : b + 1, r] = red
    return big
