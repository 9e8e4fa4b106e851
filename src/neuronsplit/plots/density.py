"""Hesse et al.'s Figure 2: per concept, the density of the original unit's value and of each
subunit's on that concept's images.

A good split shows, on concept ``k``'s images, subunit ``k`` carrying the unit (its density
close to the unit's) and the other subunits near 0. The values are per image, summed over
positions (:func:`~neuronsplit.evaluation.subunit_values`); each density is a Gaussian kernel
density estimate (:class:`scipy.stats.gaussian_kde`), a vertical line where all values are equal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from matplotlib.figure import Figure
from scipy.stats import gaussian_kde
from torch import Tensor, nn

from .._checks import check_bool, check_int
from ..errors import InvalidArgumentError
from ..evaluation import subunit_values
from .figures import new_figure

__all__ = ["density_curves", "ConceptDensity", "density_figure", "concept_densities"]


def _names(n_series: int, residual: bool) -> list[str]:
    k = n_series - 2
    return ["unit", *(f"subunit {i}" for i in range(k)), "residual"][: n_series - (not residual)]


@dataclass
class ConceptDensity:
    """The densities of every column of ``values`` on one concept's images.

    Attributes
    ----------
    classes : list of int
        The concept's classes.
    n_images : int
        Its images among those given.
    grid : numpy.ndarray
        The values at which every density is evaluated (shared by all concepts).
    lines : list of (str, numpy.ndarray or None)
        Per column, its name and its density on ``grid``; None where the column is constant
        on these images (its value is then in ``constants``) or has no finite value.
    constants : dict of str to float
        The value of every constant column.
    non_finite : dict of str to int
        Values left out of a column because they were inf or NaN (a diverging model).
    """

    classes: list[int]
    n_images: int
    grid: np.ndarray
    lines: list[tuple[str, np.ndarray | None]] = field(default_factory=list)
    constants: dict[str, float] = field(default_factory=dict)
    non_finite: dict[str, int] = field(default_factory=dict)

    @property
    def title(self) -> str:
        """``concept [1, 8] (40 images)``."""
        return f"concept {self.classes} ({self.n_images} images)"


def density_curves(
    values: Tensor | np.ndarray, labels: Tensor | np.ndarray, concepts: Sequence[Sequence[int]],
    *, names: Sequence[str] | None = None, points: int = 200,
) -> list[ConceptDensity]:  # fmt: skip
    """The numbers :func:`density_figure` draws: per concept, one density per column.

    Parameters
    ----------
    values, labels, concepts, names, points
        As :func:`density_figure`.

    Returns
    -------
    list of ConceptDensity
        One per concept; a concept without images has no lines.

    Examples
    --------
    >>> v = np.array([[2.0, 2.0, 0.0], [1.0, 0.1, 0.9], [3.0, 2.5, 0.0]])
    >>> first = density_curves(v, np.array([0, 1, 0]), [[0], [1]], names=["u", "k0", "k1"])[0]
    >>> first.title, [name for name, d in first.lines if d is not None], first.constants
    ('concept [0] (2 images)', ['u', 'k0'], {'k1': 0.0})
    """
    values = np.asarray(torch.as_tensor(values).double().cpu())
    labels = np.asarray(torch.as_tensor(labels).cpu())
    if values.ndim != 2 or labels.shape != (values.shape[0],):
        raise InvalidArgumentError(
            f"values must be (N, S) and labels (N,), got {values.shape} and {labels.shape}"
        )
    if not len(concepts):
        raise InvalidArgumentError("concepts is empty; give the classes of at least one concept")
    names = list(names) if names is not None else _names(values.shape[1], True)
    if len(names) != values.shape[1]:
        raise InvalidArgumentError(f"{len(names)} names for {values.shape[1]} columns of values")
    check_int(points, "points", low=2)
    # a diverging model's inf / NaN values are left out (and counted), not fed to the KDE
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    pad = 0.1 * (hi - lo) or 1.0
    grid = np.linspace(lo - pad, hi + pad, points)
    out = []
    for classes in concepts:
        mask = np.isin(labels, list(classes))
        curve = ConceptDensity([int(c) for c in classes], int(mask.sum()), grid)
        if mask.any():
            for column, name in zip(values[mask].T, names, strict=True):
                kept = column[np.isfinite(column)]
                if len(kept) < len(column):
                    curve.non_finite[name] = len(column) - len(kept)
                curve.lines.append((name, _density(kept, grid)))
                if curve.lines[-1][1] is None and len(kept):  # no density: a point mass
                    curve.constants[name] = float(kept[0])
        out.append(curve)
    return out


def _density(column: np.ndarray, grid: np.ndarray) -> np.ndarray | None:
    """The Gaussian KDE of ``column`` on ``grid``, or None for fewer than two distinct values
    (or a spread too small for the kernel's covariance)."""
    if len(column) < 2 or np.ptp(column) == 0:
        return None
    try:
        return gaussian_kde(column)(grid)
    except np.linalg.LinAlgError:  # a variance that underflows: a point mass in effect
        return None


def density_figure(
    values: Tensor | np.ndarray, labels: Tensor | np.ndarray, concepts: Sequence[Sequence[int]],
    *, names: Sequence[str] | None = None, points: int = 200, title: str | None = None,
) -> Figure:  # fmt: skip
    """One axes per concept, one density line per column of ``values``.

    Parameters
    ----------
    values : (N, S) array
        Per image: the unit, then each subunit (and the residual), e.g. from
        :func:`~neuronsplit.evaluation.subunit_values`.
    labels : (N,) int array
        Class of every image.
    concepts : sequence of sequence of int
        Classes of each concept, one axes each.
    names : sequence of str, optional
        Legend entries, one per column (default: unit, subunit 0.., residual).
    points : int, default 200
        Grid points of each density.
    title : str, optional
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        ``len(concepts)`` axes, each with ``S`` lines (none on a concept without images).

    Examples
    --------
    >>> v = np.array([[2.0, 2.0, 0.0], [1.0, 0.1, 0.9], [3.0, 2.5, 0.5]])
    >>> fig = density_figure(v, np.array([0, 1, 0]), [[0], [1]], names=["u", "k0", "k1"])
    >>> [len(ax.lines) for ax in fig.axes]
    [3, 3]
    """
    curves = density_curves(values, labels, concepts, names=names, points=points)
    fig, axes = new_figure(1, len(concepts))
    for ax, curve in zip(axes, curves, strict=True):
        ax.set_title(curve.title, fontsize=9)
        ax.set_xlabel("value (sum over positions)")
        if not curve.n_images:
            ax.text(0.5, 0.5, "no images", ha="center", va="center", transform=ax.transAxes)
            continue
        for i, (name, density) in enumerate(curve.lines):
            if density is None and name in curve.constants:
                ax.axvline(curve.constants[name], label=name, color=f"C{i}")
            elif density is None:  # no finite value
                ax.plot([], [], label=f"{name} (no finite value)", color=f"C{i}")
            else:
                ax.plot(curve.grid, density, label=name, color=f"C{i}")
        ax.set_ylabel("density")
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def concept_densities(
    split: nn.Module, layer: str, unit: int, images: Tensor, labels: Tensor,
    concepts: Sequence[Sequence[int]], *, residual: bool = True,
) -> Figure:  # fmt: skip
    """Hesse et al.'s Figure 2 for one split unit of ``split`` on ``images``.

    Parameters
    ----------
    split : nn.Module
        A model from :func:`neuronsplit.apply_plan`.
    layer : str
        The split layer.
    unit : int
        The split unit.
    images, labels : Tensor
        Held-out images (one batch) and their classes.
    concepts : sequence of sequence of int
        Classes of each subunit's concept (``plan.meta["units"][i]["concepts"]``).
    residual : bool, default True
        Draw the residual's density too.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fig = concept_densities(split, "fc2", 0, x_test, y_test, [[1, 8], [5], [7]])  # doctest: +SKIP
    """
    check_bool(residual, "residual")
    values = subunit_values(split, layer, unit, images)
    names = _names(values.shape[1], residual)
    values = values if residual else values[:, :-1]
    return density_figure(values, labels, concepts, names=names, title=f"{layer} unit {unit}")
