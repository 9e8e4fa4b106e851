"""Plots for judging a split by looking (matplotlib, no display needed).

Every function returns a :class:`matplotlib.figure.Figure` on the Agg canvas (pyplot is never
used); :func:`save` writes it as PNG or SVG. One module per family:

* :mod:`~neuronsplit.plots.density` -- Hesse et al.'s Figure 2, per concept the densities of the
  unit and its subunits;
* :mod:`~neuronsplit.plots.grids` -- grids of reference images per unit and subunit;
* :mod:`~neuronsplit.plots.heatmaps` -- Captum heatmaps of subunit attributions;
* :mod:`~neuronsplit.plots.references` -- reference images cropped to where a unit looks;
* :mod:`~neuronsplit.plots.cosines` -- the histogram of candidate pairs' ARV cosines;
* :mod:`~neuronsplit.plots.steering` -- logits as a subunit is scaled from 0 to 2;
* :mod:`~neuronsplit.plots.featurevis` -- feature visualisations of units and their subunits.

Examples
--------
>>> from neuronsplit import plots
>>> fig = plots.cosine_histogram([0.1, 0.8], gamma=0.5)
>>> len(fig.axes)
1
"""

from .cosines import candidate_cosines, cosine_histogram
from .density import ConceptDensity, concept_densities, density_curves, density_figure
from .featurevis import featurevis_figure
from .figures import new_figure, save
from .grids import as_display_image, image_grid, reference_grid
from .heatmaps import heatmap_figure, subunit_heatmaps
from .references import reference_figure
from .steering import steering_curves, steering_logits

__all__ = [
    "save",
    "new_figure",
    "density_figure",
    "density_curves",
    "ConceptDensity",
    "concept_densities",
    "image_grid",
    "reference_grid",
    "as_display_image",
    "heatmap_figure",
    "subunit_heatmaps",
    "reference_figure",
    "candidate_cosines",
    "cosine_histogram",
    "steering_logits",
    "steering_curves",
    "featurevis_figure",
]
