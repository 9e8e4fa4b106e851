"""The statistics of one scanned layer: :class:`LayerStats`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from .._scan_defaults import DEFAULT_TAU_GRID
from .statistics import ClassSums, NoPositiveCounts, Statistic, TapSums, TauCounts, TopN

__all__ = ["LayerStats", "DEFAULT_TAU_GRID", "layout"]


@dataclass
class LayerStats:
    """The statistics of one scanned layer.

    Attributes
    ----------
    name, kind : str
        Dotted layer name; ``"conv2d"`` or ``"linear"``.
    weight : Tensor
        ``(C, J, K)`` float64: the layer weight with the kernel flattened.
    statistics : dict of str to Statistic
        ``"important"`` (:class:`TauCounts`), ``"no_positive"`` (:class:`NoPositiveCounts`),
        ``"relevance_sum"`` (:class:`ClassSums`), ``"input_sums"`` (:class:`TapSums`) and,
        when the scan kept samples,
        ``"top_activation"`` / ``"top_relevance"`` (:class:`TopN`).
    """

    name: str
    kind: str
    weight: Tensor
    statistics: dict[str, Statistic]

    @property
    def num_units(self) -> int:
        """Number of units (output channels or features)."""
        return int(self.weight.shape[0])

    @property
    def num_inputs(self) -> int:
        """Number of inputs (input channels or features)."""
        return int(self.weight.shape[1])

    @property
    def important(self) -> Tensor:
        """``(T, N, C)`` importance counts on the tau grid."""
        return self.statistics["important"].counts

    @property
    def no_positive(self) -> Tensor:
        """``(N,)`` images per class whose positive relevance at this layer is zero (they are
        important for no unit)."""
        return self.statistics["no_positive"].counts

    @property
    def relevance_sum(self) -> Tensor:
        """``(N, C)`` class sums of the unit relevances."""
        return self.statistics["relevance_sum"].sums

    @property
    def input_sums(self) -> Tensor:
        """``(N, J, K)`` class sums of the input tap sums."""
        return self.statistics["input_sums"].sums

    @property
    def top_activation(self) -> TopN | None:
        """Per unit the samples with the largest activation (None if not kept)."""
        return self.statistics.get("top_activation")  # type: ignore[return-value]

    @property
    def top_relevance(self) -> TopN | None:
        """Per unit the samples with the largest relevance (None if not kept)."""
        return self.statistics.get("top_relevance")  # type: ignore[return-value]

    def tensors(self) -> dict[str, Tensor]:
        """The weight and every statistic's tensors, keyed ``"<statistic>/<field>"``."""
        out = {"weight": self.weight}
        for key, stat in self.statistics.items():
            out.update({f"{key}/{f}": t for f, t in stat.tensors.items()})
        return out

    @classmethod
    def from_tensors(
        cls,
        name: str,
        kind: str,
        weight: Tensor,
        important: Tensor,
        relevance_sum: Tensor,
        input_sums: Tensor,
        *,
        taus: Sequence[float] = DEFAULT_TAU_GRID,
        no_positive: Tensor | None = None,
    ) -> LayerStats:
        """Build the core statistics from plain tensors (e.g. to test detection by hand);
        ``no_positive`` defaults to zeros (every image had some positive relevance)."""
        if no_positive is None:
            no_positive = NoPositiveCounts.zeros(
                int(relevance_sum.shape[0]), relevance_sum.device
            ).counts
        return cls(
            name,
            kind,
            weight,
            {
                "important": TauCounts(counts=important, taus=tuple(taus)),
                "no_positive": NoPositiveCounts(counts=no_positive),
                "relevance_sum": ClassSums(sums=relevance_sum),
                "input_sums": TapSums(sums=input_sums),
            },
        )

    def merge(self, other: LayerStats) -> LayerStats:
        """Both layers' statistics together."""
        stats = {k: s.merge(other.statistics[k]) for k, s in self.statistics.items()}
        return LayerStats(self.name, self.kind, self.weight.clone(), stats)


def layout(stats: LayerStats) -> dict[str, tuple[Any, ...]]:
    """Type, parameters and tensor shapes of every statistic of a layer."""
    return {
        key: (type(s).__name__, s.spec(), {k: tuple(t.shape) for k, t in s.tensors.items()})
        for key, s in stats.statistics.items()
    }
