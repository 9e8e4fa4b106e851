"""The scan's default tau grid, importable without importing the scan.

The command line builds its parser (``--tau`` choices and help) from it; importing
:mod:`neuronsplit.stats` for it would bring zennit, torchvision and torch's compiler (seconds of
start-up for every ``neuronsplit`` command, and for ``neuronsplit demo`` seconds before its
background training can start). :mod:`neuronsplit.stats` re-exports it.

Examples
--------
>>> DEFAULT_TAU_GRID
(0.01, 0.02, 0.03, 0.05, 0.1)
"""

from __future__ import annotations

__all__ = ["DEFAULT_TAU_GRID"]

#: the relevance-share thresholds a scan keeps class counts for (Hesse et al. use tau = 0.03)
DEFAULT_TAU_GRID: tuple[float, ...] = (0.01, 0.02, 0.03, 0.05, 0.1)
