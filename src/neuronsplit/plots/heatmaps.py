"""Heatmaps of subunit attributions, drawn by Captum's own visualiser.

:func:`subunit_heatmaps` computes, for one image, the input attribution of what flows through
each subunit (:class:`~neuronsplit.Disentangle`) and hands each map to
``captum.attr.visualization.visualize_image_attr`` on its own axes (``use_pyplot=False``, so
nothing is shown); :func:`heatmap_figure` does the drawing for attributions computed elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from captum.attr import visualization as viz
from matplotlib.figure import Figure
from torch import Tensor, nn

from ..attribution import Disentangle, SubunitRef, subunit_refs
from ..errors import ArgumentTypeError, InputShapeError, InvalidArgumentError
from .figures import new_figure
from .grids import as_display_image

__all__ = ["heatmap_figure", "subunit_heatmaps"]


def _hwc(t: Any) -> np.ndarray:
    """``(C, H, W)`` or ``(H, W)`` -> ``(H, W, C)`` float64 for Captum's visualiser."""
    arr = np.asarray(torch.as_tensor(t).detach().double().cpu())
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 2:
        return arr[..., None]
    if arr.ndim == 3:
        return arr.transpose(1, 2, 0)
    raise InputShapeError(f"an attribution map must be (C, H, W) or (H, W), got {arr.shape}")


def heatmap_figure(
    attributions: Mapping[str, Tensor | np.ndarray], image: Tensor | np.ndarray | None = None,
    *, method: str = "heat_map", sign: str = "all", outlier_perc: float = 2,
) -> Figure:  # fmt: skip
    """One Captum heatmap per entry of ``attributions`` (after the image, when given).

    Parameters
    ----------
    attributions : mapping of str to array
        Title -> input-shaped attribution ``(C, H, W)`` (or ``(1, C, H, W)``, ``(H, W)``).
    image : array, optional
        The input image, drawn first and under blended methods.
    method, sign, outlier_perc
        Passed to ``captum.attr.visualization.visualize_image_attr``.

    Returns
    -------
    matplotlib.figure.Figure
        ``len(attributions)`` axes, plus one for ``image``.

    Examples
    --------
    >>> maps = {"k0": torch.randn(1, 8, 8), "k1": torch.randn(1, 8, 8)}
    >>> fig = heatmap_figure(maps, torch.rand(1, 8, 8))
    >>> [ax.get_title() for ax in fig.axes]
    ['input', 'k0', 'k1']

    A map with nothing to draw (a bias-only residual's) gets a panel that says so:

    >>> fig = heatmap_figure({"residual": torch.zeros(1, 8, 8)})
    >>> fig.axes[0].texts[0].get_text()
    'zero attribution'
    """
    if not isinstance(attributions, Mapping) or not attributions:
        raise ArgumentTypeError("attributions must be a non-empty mapping {title: map}")
    panels = len(attributions) + (image is not None)
    fig, axes = new_figure(1, panels, size=(2.4 * panels, 2.6))
    axes = list(axes)
    shown = None
    if image is not None:
        shown = as_display_image(image)
        ax = axes.pop(0)
        ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None)
        ax.set_title("input")
        ax.set_xticks([])
        ax.set_yticks([])
    original = None if shown is None else (shown[..., None] if shown.ndim == 2 else shown)
    for ax, (title, attr) in zip(axes, attributions.items(), strict=True):
        attr = _hwc(attr)
        if not _has_signal(attr, sign):
            # Captum cannot normalise a map with nothing of the chosen sign (it asserts): a
            # bias-only residual's map is all zeros, for instance. Say so on the panel instead.
            _empty_panel(ax, str(title), sign)
            continue
        viz.visualize_image_attr(
            attr, original, method=method, sign=sign, plt_fig_axis=(fig, ax),
            outlier_perc=outlier_perc, title=str(title), use_pyplot=False,
        )  # fmt: skip
    return fig


def _has_signal(attr: np.ndarray, sign: str) -> bool:
    """Whether ``attr`` has a nonzero value of the ``sign`` Captum will draw."""
    if sign == "positive":
        return bool((attr > 0).any())
    if sign == "negative":
        return bool((attr < 0).any())
    return bool((attr != 0).any())


def _empty_panel(ax: Any, title: str, sign: str) -> None:
    """A titled panel that says its attribution is zero (for ``sign``)."""
    what = "zero attribution" if sign in ("all", "absolute_value") else f"no {sign} attribution"
    ax.text(0.5, 0.5, what, ha="center", va="center", fontsize=8, transform=ax.transAxes)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])


def subunit_heatmaps(
    split: nn.Module, image: Tensor, target: int, subunits: Sequence[Any] | None = None, *,
    layer: str | None = None, relevance: Any = "grad_x_act", method: str = "heat_map",
    sign: str = "all",
) -> Figure:  # fmt: skip
    """Captum heatmaps of the attributions of subunits of ``split`` for one image.

    Parameters
    ----------
    split : nn.Module
        A model from :func:`neuronsplit.apply_plan`.
    image : Tensor
        One input, ``(C, H, W)`` or ``(1, C, H, W)``.
    target : int
        The output explained.
    subunits : sequence of SubunitRef, (layer, unit, k) or str, optional
        Default: every subunit (and residual) of ``layer``, or of the whole model.
    layer : str, optional
        Restricts the default subunits to one split layer.
    relevance : str or zennit Composite, default "grad_x_act"
        Passed to :class:`~neuronsplit.Disentangle`.
    method, sign : str
        Passed to Captum's ``visualize_image_attr``.

    Returns
    -------
    matplotlib.figure.Figure
        The input, then one heatmap per subunit titled ``layer/u<unit>/k<k>``.

    Examples
    --------
    >>> fig = subunit_heatmaps(split, x_test[0], target=5, layer="fc2")  # doctest: +SKIP
    """
    if not isinstance(image, Tensor):
        raise ArgumentTypeError(f"image must be a Tensor, got {type(image).__name__}")
    x = image.unsqueeze(0) if image.dim() == 3 else image
    if x.dim() != 4 or x.shape[0] != 1:
        raise InputShapeError(
            f"image must be one (C, H, W) or (1, C, H, W) image, got {tuple(image.shape)}"
        )
    dis = Disentangle(split, relevance=relevance)
    if subunits is None:
        refs = subunit_refs(split, layer)
    else:
        refs = [SubunitRef.coerce(s) for s in subunits]
    if not refs:
        raise InvalidArgumentError("no subunits to draw; pass subunits or a split model")
    maps = {str(ref): dis.attribute(x, target=target, subunit=ref)[0] for ref in refs}
    return heatmap_figure(maps, x[0], method=method, sign=sign)
