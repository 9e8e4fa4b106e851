"""The Insights visualizer object of :func:`neuronsplit.insights.make_visualizer`.

Private module of :mod:`neuronsplit.insights`, which re-exports :class:`InsightsApp`. Holds the
handle returned to the user, an ``AttributionVisualizer`` whose ``visualize()`` is bounded to
one pass over the data (Captum's loops forever when a UI filter matches nothing) and shows
each distinct warning once, the repeated fixed batch, and the default score, baseline and demo
plan. Functions that touch Captum Insights import it lazily; callers check it is installed
first.

Why the warnings need help: Captum warns on every attribution call (e.g. "It looks like that
the attribution for a gradient-based method is computed in a `torch.no_grad` block", raised
because Insights' per-sample inputs do not require grad), and Python's once-per-location rule
does not hold it back, because every ``warnings.catch_warnings`` block (matplotlib's figure
code, ours) resets the per-module registries. :class:`WarningsOnce` keeps its own record.
"""

from __future__ import annotations

import itertools
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..capture import eval_mode
from ..errors import PlanError
from ..plan import SplitPlan
from ._register import InsightsRegistration

__all__ = ["InsightsApp", "WarningsOnce"]


def _softmax(outputs: Tensor) -> Tensor:
    return torch.softmax(outputs, dim=-1)


def _zero_baseline(x: Tensor) -> Tensor:
    return torch.zeros_like(x)


def _repeat_batch(images: Tensor, labels: Tensor) -> Iterator[Any]:
    from captum.insights import Batch

    # the same images on every "Fetch": one image compared across methods and subunits
    return itertools.repeat(Batch(inputs=images, labels=labels))


class WarningsOnce:
    """Context manager factory: each distinct warning raised inside is shown once per instance.

    Warnings are recorded inside the block and re-issued (through the caller's filters, so
    ``ignore`` filters and pytest's capture still apply) only the first time their category
    and text are seen. ``warnings.catch_warnings`` changes process-wide state; the visualizer
    serialises its requests with a lock, so blocks do not overlap.

    Examples
    --------
    >>> import warnings
    >>> once = WarningsOnce()
    >>> with warnings.catch_warnings(record=True) as shown:
    ...     warnings.simplefilter("always")
    ...     for _ in range(3):
    ...         with once():
    ...             warnings.warn("slow path")
    >>> [str(w.message) for w in shown]
    ['slow path']
    """

    def __init__(self) -> None:
        self.seen: set[tuple[type, str]] = set()

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        for w in caught:
            key = (w.category, str(w.message))
            if key in self.seen:
                continue
            self.seen.add(key)
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


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
    images, labels : Tensor
        The fixed batch shown on every Fetch, ``(N, C, H, W)`` and ``(N,)``, before the
        feature's input transforms (e.g. without the normalisation).
    indices : tuple of int
        Where these images are in the data.
    """

    visualizer: Any
    model: nn.Module
    plan: SplitPlan
    registration: InsightsRegistration
    images: Tensor | None = None
    labels: Tensor | None = None
    indices: tuple[int, ...] = ()

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
        found, possibly nothing. Requests run one at a time, and each distinct warning of
        the attribution code is shown once (:class:`WarningsOnce`).
        """

        max_batches: int = 1000

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.warnings_once = WarningsOnce()
            self._request_lock = threading.Lock()

        def _models(self) -> list[nn.Module]:
            models = self.models
            return list(models) if isinstance(models, list | tuple) else [models]

        @log_usage()
        def visualize(self) -> list[Any]:
            # eval mode per request (flags restored after): a model left in train mode would
            # update BatchNorm statistics and run dropout on every Fetch
            with self._request_lock, self.warnings_once(), eval_mode(*self._models()):
                self._outputs = []
                for _ in range(max(1, int(self.max_batches))):
                    if len(self._outputs) >= self._config.num_examples:
                        break
                    self._outputs.extend(self._get_outputs())
                return [o[0] for o in self._outputs]

        def _calculate_attribution_from_cache(self, *args: Any, **kwargs: Any) -> Any:
            # the /attribute request (another class of one shown image)
            with self._request_lock, self.warnings_once(), eval_mode(*self._models()):
                return super()._calculate_attribution_from_cache(*args, **kwargs)

    return BoundedAttributionVisualizer


def _default_plan(model: nn.Module) -> SplitPlan:
    try:
        from ..demo import demo_plan
    except ImportError as err:  # pragma: no cover - demo.py ships with the package
        raise PlanError(
            "no default demo plan available (neuronsplit.demo.demo_plan missing); pass plan="
        ) from err
    return demo_plan(model)[2]
