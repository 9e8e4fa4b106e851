"""Display of subunit maps in Captum Insights: greyscale images and all-zero maps.

Private module of :mod:`neuronsplit.insights`, which re-exports ``SubunitImageFeature`` (built
on first access, since it subclasses an Insights class). Callers make sure Captum Insights is
importable first (:func:`neuronsplit.insights.require_insights`).

Insights' ``ImageFeature`` fails on 1-channel images (its ``squeeze().permute(1, 2, 0)``) and
Captum's normalisation raises ``AssertionError`` on an all-zero map -- a subunit that is silent
on an image is the normal case here, so such maps are drawn as an empty heat map instead.
"""

from __future__ import annotations

import base64
import functools
import warnings
from io import BytesIO
from typing import Any

import torch
from torch import Tensor

__all__ = ["feature_class"]


def _to_hwc(t: Tensor) -> Any:
    """``(1, C, H, W)``, ``(C, H, W)`` or ``(H, W)`` -> HWC numpy array with 3 channels."""
    t = t.detach().float().cpu()
    while t.dim() > 3 and t.shape[0] == 1:
        t = t[0]
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3:
        raise ValueError(f"expected an image tensor (C, H, W), got shape {tuple(t.shape)}")
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)  # greyscale: show as RGB
    return t.permute(1, 2, 0).contiguous().numpy()


def _figure_base64(fig: Any) -> str:
    buffer = BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fig.tight_layout()
    fig.savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _plain_figure(image: Any, title: str | None = None) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 6))
    ax = fig.subplots()
    ax.imshow(image, vmin=0, vmax=1, cmap="Greys" if image.ndim == 2 else None)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:  # centred message instead of a heat map
        ax.text(0.5, 0.5, title, ha="center", va="center", fontsize=36, color="0.4",
                transform=ax.transAxes)  # fmt: skip
    else:
        ax.axis("off")
    return fig


def _make_feature_class() -> type:
    from captum.attr import visualization as viz
    from captum.insights.attr_vis.features import FeatureOutput, ImageFeature

    class SubunitImageFeature(ImageFeature):
        """An Insights ``ImageFeature`` that also shows greyscale images and all-zero maps.

        Same constructor as ``captum.insights.attr_vis.features.ImageFeature``. Images and
        attributions may have 1 or 3 channels; 1-channel ones are shown as grey RGB. A map
        without any relevance (all zeros, e.g. a subunit silent on this image) is drawn as an
        empty heat map titled "no relevance" instead of raising ``AssertionError``.
        """

        def visualize(self, attribution: Tensor, data: Tensor, contribution_frac: Any) -> Any:
            if self.visualization_transform:
                data = self.visualization_transform(data)
            image, attr = _to_hwc(data), _to_hwc(attribution)
            image = image.clip(0.0, 1.0) if image.max() <= 1.0 else image / 255.0
            # one way to draw the image whatever the map: the same picture under every method
            orig_fig = _plain_figure(image)
            if not (attr != 0).any() or not torch.isfinite(torch.from_numpy(attr)).all():
                attr_fig = _plain_figure(attr[..., 0] * 0.0, title="no relevance")
            else:
                attr_fig, _ = viz.visualize_image_attr(
                    attr, image, method="heat_map", sign="absolute_value", use_pyplot=False
                )
            return FeatureOutput(
                name=self.name,
                base=_figure_base64(orig_fig),
                modified=_figure_base64(attr_fig),
                type=self.visualization_type(),
                contribution=contribution_frac,
            )

    return SubunitImageFeature


@functools.cache  # one class per process
def feature_class() -> type:
    """The ``SubunitImageFeature`` class, built on the first call (needs Captum Insights)."""
    return _make_feature_class()
