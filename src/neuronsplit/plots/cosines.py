"""The histogram of the ARV cosines of all candidate class pairs, with the gamma line.

A *candidate pair* is two classes that are both relevant to one unit (Hesse et al.'s ``tau`` and
``p``, :func:`~neuronsplit.methods.hesse.relevant_classes`); its cosine is that of the two
classes' average relevance vectors (:meth:`~neuronsplit.ScanResult.arvs`,
:func:`~neuronsplit.methods.hesse.cosine`). Pairs left of the gamma line are gamma-polysemantic
(:func:`~neuronsplit.find_polysemantic` also drops negative cosines unless asked not to).
Zero ARVs (undefined cosine) are left out.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from .._checks import check_int, check_names, check_number
from ..errors import ArgumentTypeError, InvalidArgumentError
from ..methods.hesse import cosine, relevant_classes
from ..stats import ScanResult
from .figures import new_figure

__all__ = ["candidate_cosines", "cosine_histogram"]


def candidate_cosines(
    result: ScanResult, layers: str | Sequence[str] | None = None, *, tau: float = 0.03,
    p: float = 0.75,
) -> np.ndarray:  # fmt: skip
    """The ARV cosine of every candidate pair of every unit of ``layers``.

    Parameters
    ----------
    result : ScanResult
        From :func:`neuronsplit.scan`.
    layers : str or sequence of str, optional
        Default: every scanned layer.
    tau, p : float
        Relevance threshold and share of a class's images (as in ``find_polysemantic``).

    Returns
    -------
    numpy.ndarray
        float64, one entry per pair, in layer, unit, class order.

    Examples
    --------
    >>> cos = candidate_cosines(res, "fc2")  # doctest: +SKIP
    """
    if not isinstance(result, ScanResult):
        raise ArgumentTypeError(f"result must be a ScanResult, got {type(result).__name__}")
    names = list(result.layers) if layers is None else check_names(layers, "layers")
    check_number(tau, "tau", low=0.0, high=1.0, low_open=True)
    out = []
    for layer in names:
        relevant = relevant_classes(result, layer, tau=tau, p=p)
        for unit in torch.nonzero(relevant.sum(0) >= 2).flatten().tolist():
            classes = torch.nonzero(relevant[:, unit]).flatten().tolist()
            arvs = result.arvs(layer, unit, classes)
            for a, b in itertools.combinations(range(len(classes)), 2):
                cos = cosine(arvs[a], arvs[b])
                if cos == cos:  # NaN: a zero ARV has no direction
                    out.append(cos)
    return np.asarray(out, dtype=np.float64)


def cosine_histogram(
    cosines: Any, *, gamma: float = 0.5, bins: int = 40, layers: str | Sequence[str] | None = None,
    tau: float = 0.03, p: float = 0.75,
) -> Figure:  # fmt: skip
    """Histogram of candidate pairs' ARV cosines on ``[-1, 1]`` with a vertical line at gamma.

    Parameters
    ----------
    cosines : ScanResult or array-like
        A scan (its candidate pairs are computed with ``layers``, ``tau``, ``p``) or the
        cosines themselves.
    gamma : float, default 0.5
        Hesse et al.'s threshold, drawn as a dashed line.
    bins : int, default 40
        Equal bins over ``[-1, 1]``.
    layers, tau, p
        Passed to :func:`candidate_cosines` for a ScanResult.

    Returns
    -------
    matplotlib.figure.Figure
        One axes: ``bins`` bars and the gamma line (``ax.lines[0]``).

    Examples
    --------
    >>> fig = cosine_histogram([0.1, 0.2, 0.9, 0.95], gamma=0.5, bins=4)
    >>> ax = fig.axes[0]
    >>> [float(b.get_height()) for b in ax.patches], [float(x) for x in ax.lines[0].get_xdata()]
    ([0.0, 0.0, 2.0, 2.0], [0.5, 0.5])
    """
    check_number(gamma, "gamma", low=-1.0, high=1.0)
    check_int(bins, "bins", low=1)
    if isinstance(cosines, ScanResult):
        values = candidate_cosines(cosines, layers, tau=tau, p=p)
    else:
        values = np.asarray(cosines, dtype=np.float64).ravel()
    if values.size and (not np.isfinite(values).all() or np.abs(values).max() > 1 + 1e-9):
        raise InvalidArgumentError("cosines must be finite numbers in [-1, 1]")
    fig, (ax,) = new_figure(1, 1, size=(5.0, 3.2))
    ax.hist(values, bins=np.linspace(-1.0, 1.0, bins + 1), color="C0", alpha=0.8)
    ax.axvline(gamma, color="C3", linestyle="--", label=f"gamma = {gamma:g}")
    below = int((values < gamma).sum())
    ax.set_title(f"{values.size} candidate pairs, {below} below gamma", fontsize=10)
    ax.set_xlabel("cosine of the two classes' ARVs")
    ax.set_ylabel("pairs")
    ax.set_xlim(-1.0, 1.0)
    ax.legend(fontsize=8)
    if not values.size:
        ax.text(0.5, 0.5, "no candidate pairs", ha="center", va="center", transform=ax.transAxes)
    return fig
