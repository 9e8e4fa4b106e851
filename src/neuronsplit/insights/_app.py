"""The Insights visualizer object of :func:`neuronsplit.insights.make_visualizer`.

Private module of :mod:`neuronsplit.insights`, which re-exports :class:`InsightsApp`. Holds the
handle returned to the user, an ``AttributionVisualizer`` whose ``visualize()`` is bounded to
one pass over the data (Captum's loops forever when a UI filter matches nothing), the endless
batch cycle, and the default score, baseline and demo plan. Functions that touch Captum
Insights import it lazily; callers check it is installed first.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import PlanError
from ..plan import SplitPlan
from ._register import InsightsRegistration

__all__ = ["InsightsApp"]


def _softmax(outputs: Tensor) -> Tensor:
    return torch.softmax(outputs, dim=-1)


def _zero_baseline(x: Tensor) -> Tensor:
    return torch.zeros_like(x)


def _cycle_batches(images: Tensor, labels: Tensor, batch_size: int) -> Iterator[Any]:
    from captum.insights import Batch

    batches = [
        Batch(inputs=images[i : i + batch_size], labels=labels[i : i + batch_size])
        for i in range(0, len(labels), batch_size)
    ]
    # endless: each "Fetch" in the UI shows new samples instead of Insights' stale cache
    return itertools.cycle(batches)


@dataclass
class InsightsApp:
    """A ready Captum ``AttributionVisualizer`` plus the registration to undo.

    Attributes
    ----------
    visualizer : captum.insights.AttributionVisualizer
        Serve it with :func:`serve`.
    model : nn.Module
        The split model shown (same function as the original).
    plan : SplitPlan
        Its plan.
    registration : InsightsRegistration
        The Disentangle method; :meth:`close` removes it.
    """

    visualizer: Any
    model: nn.Module
    plan: SplitPlan
    registration: InsightsRegistration

    @property
    def method_name(self) -> str:
        """Name of the Disentangle method in the Insights drop-down."""
        return self.registration.name

    @property
    def choices(self) -> tuple[str, ...]:
        """Values of the method's ``subunit`` argument."""
        return self.registration.choices

    def close(self) -> None:
        """Unregister the Disentangle method."""
        self.registration.remove()

    def __enter__(self) -> InsightsApp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _bounded_visualizer_class() -> type:
    from captum.insights import AttributionVisualizer
    from captum.log import log_usage

    class BoundedAttributionVisualizer(AttributionVisualizer):
        """``AttributionVisualizer`` whose ``visualize`` stops after ``max_batches`` batches.

        Captum's loops until it has four examples that pass the UI filters; with a filter no
        example matches (e.g. "correct" when every prediction is wrong, or a class that is
        never predicted) it never returns and the request hangs. This one returns what it
        found, possibly nothing.
        """

        max_batches: int = 1000

        @log_usage()
        def visualize(self) -> list[Any]:
            self._outputs = []
            for _ in range(max(1, int(self.max_batches))):
                if len(self._outputs) >= self._config.num_examples:
                    break
                self._outputs.extend(self._get_outputs())
            return [o[0] for o in self._outputs]

    return BoundedAttributionVisualizer


def _default_plan(model: nn.Module) -> SplitPlan:
    try:
        from ..demo import demo_plan
    except ImportError as err:  # pragma: no cover - demo.py ships with the package
        raise PlanError(
            "no default demo plan available (neuronsplit.demo.demo_plan missing); pass plan="
        ) from err
    return demo_plan(model)[2]
