"""Progress bars for passes over user data (tqdm, notebook-aware)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from tqdm.auto import tqdm

__all__ = ["progress_bar"]

T = TypeVar("T")


def progress_bar(
    iterable: Iterable[T], *, desc: str, unit: str = "batch", total: int | None = None,
    enabled: bool = True,
) -> Iterator[T]:  # fmt: skip
    """Iterate ``iterable`` once with a tqdm bar (``total`` from ``len()`` when it has one).

    ``tqdm.auto`` calls ``iter()`` on what it wraps when it is built and again when it is
    iterated; handing it an iterator keeps a ``DataLoader`` from starting its workers twice.
    """
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    bar: Any = tqdm(iter(iterable), desc=desc, unit=unit, total=total, disable=not enabled)
    return iter(bar)
