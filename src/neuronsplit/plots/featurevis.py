"""Feature visualisations side by side: one row per unit, the unit's image then its subunits'.

Draws the result of :func:`neuronsplit.visual.visualise`. The images are shown as they were
optimised, in [0, 1] display space (not rescaled per image, so a washed-out image *is* one that
needed little contrast); greyscale with a grey colormap. Each title names the column
(``unit``, ``k0``, ..., ``residual``) and the activation the image achieved.

Examples
--------
>>> import torch
>>> from types import SimpleNamespace
>>> fv = SimpleNamespace(
...     names=["fc2/u0", "fc2/u0/k0", "fc2/u0/k1", "fc2/u3/k0"],
...     images=torch.rand(4, 1, 8, 8), activations=torch.tensor([3.0, 2.0, 1.5, 0.5]))
>>> fig = featurevis_figure(fv)
>>> len(fig.axes), [ax.get_title() for ax in fig.axes[:3]]
(6, ['unit\\n3.00', 'k0\\n2.00', 'k1\\n1.50'])
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from .._checks import check_number
from ..errors import ArgumentTypeError, InvalidArgumentError
from .figures import bare_axes, new_figure

__all__ = ["featurevis_figure"]

_NAME = re.compile(r"^(?P<unit>.+/u\d+)(?:/(?P<sub>k\d+|residual))?$")


def _rows(names: list[str]) -> dict[str, list[tuple[int, str]]]:
    """``{unit: [(index, column title), ...]}``: the unit first, then its subunits in order."""
    rows: dict[str, list[tuple[int, str]]] = {}
    for i, name in enumerate(names):
        m = _NAME.match(name)
        if m is None:
            raise InvalidArgumentError(
                f"cannot place {name!r}: names must be 'layer/u3' or 'layer/u3/k0' / "
                "'layer/u3/residual'"
            )
        rows.setdefault(m["unit"], []).append((i, m["sub"] or "unit"))
    for cells in rows.values():
        cells.sort(key=lambda cell: cell[1] != "unit")  # stable: subunits keep their order
    return rows


def featurevis_figure(result: Any, *, size: float = 1.2, title: str | None = None) -> Figure:
    """One row per unit: its image (when visualised), then each of its subunits' images.

    Parameters
    ----------
    result : FeatureVisualisation
        From :func:`neuronsplit.visual.visualise` (anything with ``names``, ``images``
        ``(n, C, H, W)`` in [0, 1] and ``activations`` ``(n,)``).
    size : float, default 1.2
        Inches per image.
    title : str, optional
        Figure title (default: "feature visualisation").

    Returns
    -------
    matplotlib.figure.Figure
        ``units x longest row`` axes; each titled with its column and achieved activation, each
        row labelled with its unit; unused cells are blank.
    """
    try:
        names, images, acts = list(result.names), result.images, result.activations
    except AttributeError as err:
        raise ArgumentTypeError(
            "result must be a FeatureVisualisation (from neuronsplit.visual.visualise), got "
            f"{type(result).__name__}"
        ) from err
    images = torch.as_tensor(images).detach().float().cpu()
    if images.dim() != 4 or images.shape[1] not in (1, 3) or len(images) != len(names):
        raise InvalidArgumentError(
            f"result.images must be (n, 1|3, H, W) with one image per name; got shape "
            f"{tuple(images.shape)} for {len(names)} names"
        )
    check_number(size, "size", low=0, low_open=True)
    rows = _rows(names)
    cols = max(len(cells) for cells in rows.values())
    fig, axes = new_figure(len(rows), cols, size=(size * cols + 0.9, (size + 0.35) * len(rows)))
    for r, (unit, cells) in enumerate(rows.items()):
        for c in range(cols):
            ax = axes[r * cols + c]
            bare_axes(ax)
            if c == 0:
                ax.set_ylabel(unit.replace("/u", "\nunit "), fontsize=8)
            if c >= len(cells):
                continue
            i, label = cells[c]
            img = np.asarray(images[i].permute(1, 2, 0).clamp(0, 1))
            gray = img.shape[-1] == 1
            ax.imshow(img[..., 0] if gray else img, cmap="gray" if gray else None, vmin=0, vmax=1)
            ax.set_title(f"{label}\n{float(acts[i]):.2f}", fontsize=8)
    fig.suptitle(title or "feature visualisation", fontsize=10)
    return fig
