"""Figures without a display: every plot is a bare :class:`matplotlib.figure.Figure` on the Agg
canvas (pyplot is never imported, so no window opens and no global figure list grows), and
:func:`save` writes it as PNG or SVG.

Examples
--------
>>> fig, axes = new_figure(1, 2)
>>> len(axes), type(fig.canvas).__name__
(2, 'FigureCanvasAgg')
"""

from __future__ import annotations

import os
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .._checks import check_int
from ..errors import ArgumentTypeError, InvalidArgumentError

__all__ = ["new_figure", "bare_axes", "save", "FORMATS"]

#: file formats :func:`save` writes
FORMATS = (".png", ".svg")


def new_figure(
    nrows: int = 1, ncols: int = 1, *, size: tuple[float, float] | None = None
) -> tuple[Figure, list[Axes]]:
    """A figure on the Agg canvas with an ``nrows x ncols`` grid of axes (row-major list).

    ``size`` defaults to 3.2 x 2.6 inches per axes.
    """
    check_int(nrows, "nrows", low=1)
    check_int(ncols, "ncols", low=1)
    size = size or (3.2 * ncols, 2.6 * nrows)
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def bare_axes(ax: Axes) -> None:
    """Hide the ticks and spines of ``ax``: an image cell of a grid, or an empty one.

    Examples
    --------
    >>> _, (ax,) = new_figure()
    >>> bare_axes(ax)
    >>> list(ax.get_xticks()), any(s.get_visible() for s in ax.spines.values())
    ([], False)
    """
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def save(fig: Figure, path: str | os.PathLike, *, dpi: int = 150) -> Path:
    """Write ``fig`` to ``path`` (``.png`` or ``.svg``; parent folders are created).

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        A figure from any function of :mod:`neuronsplit.plots`.
    path : path-like
        Where to write; the suffix picks the format.
    dpi : int, default 150
        Resolution of PNG files.

    Returns
    -------
    Path
        The written file.

    Examples
    --------
    >>> import tempfile
    >>> fig, _ = new_figure()
    >>> save(fig, Path(tempfile.mkdtemp()) / "empty.svg").stat().st_size > 0
    True
    """
    if not isinstance(fig, Figure):
        raise ArgumentTypeError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise ArgumentTypeError(f"path must be a file path, got {type(path).__name__}")
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise InvalidArgumentError(
            f"cannot save {str(path)!r}: the suffix must be one of {', '.join(FORMATS)}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=check_int(dpi, "dpi", low=1), format=path.suffix.lower()[1:])
    return path
