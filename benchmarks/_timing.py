"""Timing helper shared by the benchmarks: ratios measured in interleaved rounds."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def interleaved_ratio(
    base: Callable[[], Any], other: Callable[[], Any], rounds: int
) -> tuple[float, float, float]:
    """Median of per-round time ratios other/base (order alternating), and both medians."""
    ratios, tb, to = [], [], []
    base(), other()  # warm-up
    for r in range(rounds):
        pair = [("b", base), ("o", other)] if r % 2 == 0 else [("o", other), ("b", base)]
        got = {}
        for key, fn in pair:
            t0 = time.perf_counter()
            fn()
            got[key] = time.perf_counter() - t0
        ratios.append(got["o"] / got["b"])
        tb.append(got["b"])
        to.append(got["o"])
    return statistics.median(ratios), statistics.median(tb), statistics.median(to)
