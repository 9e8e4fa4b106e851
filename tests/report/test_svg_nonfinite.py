"""Inline SVG plots with inf and NaN values: the points are left out, never written as
coordinates; the steering view says which logits were not finite."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from neuronsplit.reporting import sections
from neuronsplit.reporting.html import svg_plot

INF, NAN = float("inf"), float("nan")


def _coordinates(svg: str) -> list[str]:
    """Every number the SVG places something at (well-formed XML, or this raises)."""
    root = ET.fromstring(svg)
    out = []
    for el in root.iter():
        for name in ("x", "y", "x1", "x2", "y1", "y2", "cx", "cy"):
            if name in el.attrib:
                out.append(el.attrib[name])
        out += re.split(r"[ ,]", el.attrib.get("points", "")) if "points" in el.attrib else []
    return out


def _all_finite(svg: str) -> bool:
    coords = _coordinates(svg)
    return bool(coords) and all(math.isfinite(float(c)) for c in coords)


def _shapes(svg: str) -> list[tuple[str, str]]:
    """(tag, title) of each drawn line or dot."""
    root = ET.fromstring(svg)
    return [(el.tag, el.findtext("title", "")) for el in root.iter() if el.tag in ("polyline", "circle")]  # fmt: skip


@pytest.mark.parametrize("bad", [INF, -INF, NAN])
def test_a_non_finite_point_is_left_out_and_breaks_the_line(bad: float) -> None:
    svg = svg_plot([0, 1, 2, 3], [("a", [1.0, bad, 3.0, 4.0])])
    assert _all_finite(svg) and "inf" not in svg and "nan" not in svg
    # by hand: plot box x 38..224 over 0..3, y 6..152 over the finite values 1..4
    assert 'points="162.0,54.7 224.0,6.0"' in svg
    assert '<circle cx="38.0" cy="152.0"' in svg
    assert _shapes(svg) == [("circle", "a"), ("polyline", "a")]


def test_a_line_without_a_finite_point_is_not_drawn_and_its_legend_says_so() -> None:
    svg = svg_plot([0, 1, 2], [("a", [NAN, INF, -INF]), ("b", [1.0, 2.0, 3.0])])
    assert _all_finite(svg)
    assert _shapes(svg) == [("polyline", "b")]
    assert "a (no finite value)" in svg and "b (no finite value)" not in svg
    # the y range is the finite values': 1 at the bottom, 3 at the top
    assert 'points="38.0,152.0 131.0,79.0 224.0,6.0"' in svg


def test_nothing_finite_at_all_is_an_empty_plot() -> None:
    svg = svg_plot([0, 1], [("a", [NAN, NAN]), ("b", [INF, -INF])], title="t", vline=NAN)
    assert _all_finite(svg) and _shapes(svg) == []
    assert "<line" not in svg  # a NaN vline is not drawn either


@pytest.mark.parametrize("ylim", [(NAN, NAN), (-INF, INF), (0.0, NAN)])
def test_a_non_finite_ylim_is_ignored(ylim: tuple[float, float]) -> None:
    svg = svg_plot([0, 1, 2], [("a", [1.0, 2.0, 3.0])], ylim=ylim)
    assert _all_finite(svg)
    assert 'points="38.0,152.0 131.0,79.0 224.0,6.0"' in svg


def test_non_finite_x_values_are_left_out() -> None:
    svg = svg_plot([0.0, NAN, 2.0, INF], [("a", [1.0, 2.0, 3.0, 4.0])])
    assert _all_finite(svg)
    assert _shapes(svg) == [("circle", "a"), ("circle", "a")]


@pytest.mark.parametrize("ys", [[-1e308, 0.0, 1e308], [1.7976931348623157e308] * 3, [1e20] * 3])
def test_huge_finite_values_give_finite_coordinates(ys: list[float]) -> None:
    # hi - lo overflows (first case) or a +-0.5 band vanishes in rounding (the others)
    svg = svg_plot([0, 1, 2], [("a", ys)])
    assert _all_finite(svg) and _shapes(svg) == [("polyline", "a")]


def _view(monkeypatch: pytest.MonkeyPatch, logits: dict[int, np.ndarray]) -> str:
    """The steering view of a unit with subunits ``logits`` keys, the logits stubbed."""

    def fake(split: Any, inputs: torch.Tensor, ref: Any, alphas: Any) -> np.ndarray:
        assert len(alphas) == len(sections._ALPHAS)
        return logits[ref[2]]

    monkeypatch.setattr(sections, "steering_logits", fake)
    rows = [SimpleNamespace(subunit=None, classes=(0, 2))]
    rows += [SimpleNamespace(subunit=k, classes=()) for k in logits]
    ctx = SimpleNamespace(images=torch.zeros(5, 3, 4, 4), layer="fc", unit=0, rows=rows, split=None)
    return "".join(sections.steering_view(ctx))  # type: ignore[arg-type]


def _logits(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(len(sections._ALPHAS), 3))


def test_steering_view_with_finite_logits_has_no_note(monkeypatch: pytest.MonkeyPatch) -> None:
    html = _view(monkeypatch, {0: _logits(0), -1: _logits(1)})
    assert "Non-finite" not in html and 'class="note"' not in html
    assert html.count("<svg") == 2 and html.count("<polyline") == 4  # 2 classes per panel


def test_steering_view_leaves_non_finite_logits_out_and_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = _logits(0), _logits(1)
    a[3, 0] = INF  # one point of class 0 in subunit 0
    b[:, 2] = NAN  # all of class 2 in the residual
    b[:, 1] = INF  # class 1 is not shown: not counted
    html = _view(monkeypatch, {0: a, -1: b})
    n = len(sections._ALPHAS)
    assert (
        f"Non-finite logits (inf or NaN): {1 + n} of {4 * n} points are not drawn; "
        "no finite value at all: residual class 2." in html
    )
    svgs = re.findall(r"<svg.*?</svg>", html)
    assert len(svgs) == 2 and all(_all_finite(s) for s in svgs)
    assert [t for _, t in _shapes(svgs[0])] == ["class 0", "class 0", "class 2"]
    assert [t for _, t in _shapes(svgs[1])] == ["class 0"]


def test_steering_view_with_no_finite_logit_draws_empty_panels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    html = _view(monkeypatch, {0: np.full((len(sections._ALPHAS), 3), NAN)})
    assert "no finite value at all: subunit 0 class 0, subunit 0 class 2." in html
    svg = re.findall(r"<svg.*?</svg>", html)[0]
    assert _all_finite(svg) and _shapes(svg) == []
    assert "class 0 (no finite value)" in svg
