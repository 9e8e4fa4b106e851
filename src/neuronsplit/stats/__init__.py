"""The scan and its statistics: :func:`scan`, :class:`ScanResult`, the statistic objects, files
and the distributed rule.
"""

from .layer import DEFAULT_TAU_GRID, LayerStats
from .result import ScanResult
from .scanner import scan
from .statistics import (
    ClassCounts,
    ClassSums,
    LayerBatch,
    Statistic,
    TapSums,
    TauCounts,
    TopN,
)

__all__ = [
    "scan",
    "ScanResult",
    "LayerStats",
    "DEFAULT_TAU_GRID",
    "Statistic",
    "LayerBatch",
    "ClassCounts",
    "TauCounts",
    "ClassSums",
    "TapSums",
    "TopN",
]
