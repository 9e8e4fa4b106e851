"""A figure of reference images: one row per unit or subunit, its crops from left to right.

:func:`reference_figure` draws a :class:`~neuronsplit.visual.ReferenceSet` (from
:func:`neuronsplit.visual.reference_images`): each crop titled with its sample index and the
value it was ranked by, each row labelled with the reference's name (and its note, where there
is one). With heatmaps, each crop's grad x input map is laid over it by Captum's own
``captum.attr.visualization.visualize_image_attr`` (``blended_heat_map`` by default).
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from captum.attr import visualization as viz
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .._checks import check_bool, check_int, check_number
from ..errors import ArgumentTypeError, InvalidArgumentError
from .figures import bare_axes, new_figure
from .grids import as_display_image

__all__ = ["reference_figure"]

_NOTE_CHARS = 48  # a row label shows this much of a reference's note


def _display(image: Any) -> np.ndarray:
    """A ``(C, h, w)`` crop as ``(h, w)`` or ``(h, w, 3)`` in [0, 1].

    The layout is known, so a 3x3 greyscale crop is not taken for a 1x3 RGB image (as
    :func:`as_display_image` has to guess); other channel counts are averaged.
    """
    arr = torch.as_tensor(image).detach().double().cpu()
    if arr.dim() == 3 and arr.shape[0] not in (1, 3):
        arr = arr.mean(0, keepdim=True)
    if arr.dim() == 3:
        arr = arr[0] if arr.shape[0] == 1 else arr.permute(1, 2, 0)
    return as_display_image(arr.unsqueeze(-1) if arr.dim() == 2 else arr)


def _draw(ax: Axes, ref: Any, overlay: bool, fig: Figure, opts: dict[str, Any]) -> None:
    shown = _display(ref.image)
    title = f"#{ref.index}  {ref.value:.3g}"
    heat = None if ref.heatmap is None else np.asarray(ref.heatmap.detach().double().cpu())
    if overlay and heat is not None and heat.shape == shown.shape[:2] and np.any(heat != 0):
        original = shown[..., None] if shown.ndim == 2 else shown
        viz.visualize_image_attr(
            heat[..., None], original, plt_fig_axis=(fig, ax), title=title, use_pyplot=False,
            **opts,
        )  # fmt: skip
        ax.title.set_fontsize(7)
    else:  # no map, or an all-zero one (Captum cannot normalise it): the crop alone
        ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0, vmax=1)
        ax.set_title(title, fontsize=7)
    bare_axes(ax)


def reference_figure(
    references: Mapping[str, Any], *, n: int | None = None, heatmap: bool | None = None,
    size: float = 1.2, title: str | None = None, method: str = "blended_heat_map",
    sign: str = "all", alpha: float = 0.5, outlier_perc: float = 2,
) -> Figure:  # fmt: skip
    """Reference images, one row per unit / subunit, optionally under their heatmaps.

    Parameters
    ----------
    references : ReferenceSet
        From :func:`neuronsplit.visual.reference_images` (any mapping of name to a list of
        :class:`~neuronsplit.visual.ReferenceImage` works).
    n : int, optional
        Images per row (default: all).
    heatmap : bool, optional
        Overlay each image's heatmap (default: where the images have one).
    size : float, default 1.2
        Inches per image.
    title : str, optional
        Figure title (default: what the images were ranked by).
    method, sign, alpha, outlier_perc
        Passed to ``captum.attr.visualization.visualize_image_attr`` (``alpha`` as
        ``alpha_overlay``).

    Returns
    -------
    matplotlib.figure.Figure
        ``len(references) x max images`` axes; unused cells are blank.

    Examples
    --------
    >>> import torch
    >>> from neuronsplit.visual import ReferenceImage, ReferenceSet
    >>> img = ReferenceImage(3, 1.5, 0, (0, 0, 2, 2), torch.rand(1, 2, 2), torch.randn(2, 2))
    >>> fig = reference_figure(ReferenceSet({"fc2/u1": [img, img], "fc2/u1/k0": [img]}))
    >>> len(fig.axes), fig.axes[0].get_title()
    (4, '#3  1.5')
    """
    if not isinstance(references, Mapping) or not references:
        raise ArgumentTypeError(
            "references must be a non-empty ReferenceSet (neuronsplit.visual.reference_images), "
            f"got {type(references).__name__}"
        )
    check_int(n, "n", low=1, optional=True)
    if heatmap is not None:
        check_bool(heatmap, "heatmap")
    check_number(size, "size", low=0, low_open=True)
    check_number(alpha, "alpha", low=0, high=1)
    check_number(outlier_perc, "outlier_perc", low=0, high=100)
    rows = {str(name): list(refs)[:n] for name, refs in references.items()}
    for name, refs in rows.items():
        bad = [r for r in refs if not all(hasattr(r, a) for a in ("image", "index", "value"))]
        if bad:
            raise ArgumentTypeError(
                f"references[{name!r}] must hold ReferenceImage entries, got "
                f"{type(bad[0]).__name__}"
            )
    if heatmap is None:
        heatmap = any(r.heatmap is not None for refs in rows.values() for r in refs)
    elif heatmap and not any(r.heatmap is not None for refs in rows.values() for r in refs):
        raise InvalidArgumentError(
            "heatmap=True but no image has a heatmap; call reference_images(..., heatmap=True)"
        )
    cols = max(1, max(len(v) for v in rows.values()))
    fig, axes = new_figure(len(rows), cols, size=(size * cols + 1.0, size * len(rows) + 0.4))
    opts = {"method": method, "sign": sign, "alpha_overlay": alpha, "outlier_perc": outlier_perc}
    notes = getattr(references, "notes", {})
    for r, (name, refs) in enumerate(rows.items()):
        for c in range(cols):
            ax = axes[r * cols + c]
            if c < len(refs):
                _draw(ax, refs[c], heatmap, fig, opts)
            else:
                bare_axes(ax)
            if c == 0:
                note = notes.get(name, "") if isinstance(notes, Mapping) else ""
                if note:  # short and wrapped, so it stays beside its own row
                    note = textwrap.fill(textwrap.shorten(note, _NOTE_CHARS, placeholder="..."), 24)
                label = f"{name}\n{note}" if note else name
                ax.set_ylabel(label, fontsize=7)
    by = getattr(references, "by", None)
    fig.suptitle(title or (f"reference images by {by}" if by else "reference images"), fontsize=9)
    return fig
