"""The HTML builder: escaping, embedded images, section ids, no external reference."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from neuronsplit.plots import new_figure
from neuronsplit.reporting.html import (
    Raw,
    Section,
    esc,
    figure_img,
    fmt,
    image_strip,
    note,
    render,
    section_id,
    table,
)
from neuronsplit.reporting.sections import heat_tile

EVIL = '<script>alert("x")</script> & <img src=x onerror=1>'


def test_every_text_is_escaped() -> None:
    sec = Section("s", EVIL, [note(EVIL), table([EVIL], [[EVIL, 1.0]])],
                  [Section("c", EVIL, [EVIL])])  # fmt: skip
    doc = render(EVIL, [sec], subtitle=EVIL)
    assert "<script>" not in doc and "onerror=1>" not in doc
    # <title>, <h1>, subtitle, heading, note, header, cell, child heading, child text,
    # and the two entries of the contents
    assert doc.count("&lt;script&gt;") == 11
    assert esc(Raw("<b>x</b>")) == "<b>x</b>"  # fragments built here pass unchanged


def test_document_is_self_contained(external_urls: Any) -> None:
    fig, (ax,) = new_figure()
    ax.plot([0, 1], [1, 0])
    doc = render("t", [Section("a", "A", [figure_img(fig, "a line")])])
    assert external_urls(doc) == []
    assert "<script" not in doc and "<link" not in doc
    assert "Content-Security-Policy" in doc and "default-src 'none'" in doc
    src = doc.split('<img src="', 1)[1].split('"', 1)[0]
    assert src.startswith("data:image/png;base64,")
    img = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
    assert img.format == "PNG" and img.size[0] > 100


def test_sections_and_contents_link_by_id() -> None:
    child = Section("a-b", "B")
    doc = render("t", [Section("a", "A", [], [child]), Section("c", "C")])
    for sid in ("a", "a-b", "c"):
        assert f'<section id="{sid}">' in doc and f'href="#{sid}"' in doc
    assert "<h2>A</h2>" in doc and "<h3>B</h3>" in doc


def test_section_ids_are_clean() -> None:
    assert section_id("vit", "unit", "blocks.0.mlp.fc1", 4) == "vit-unit-blocks-0-mlp-fc1-4"
    assert section_id("", "Summary") == "summary"
    assert section_id("<>") == "section"


@pytest.mark.parametrize(
    ("value", "text"),
    [(0.123456, "0.123"), (float("nan"), "-"), (None, "-"), (True, "yes"), ([0.5, 2], "0.5, 2"),
     (3, "3"), (1e-9, "1e-09")],
)  # fmt: skip
def test_cells_are_formatted(value: object, text: str) -> None:
    assert fmt(value) == text


def test_image_strip_scales_and_spaces_the_images() -> None:
    black = np.zeros((8, 8))
    white_rgb = np.ones((4, 8, 3))
    img = Image.open(io.BytesIO(image_strip([black, white_rgb], height=16, gap=2)))
    # 8x8 -> 16x16, 4x8 -> 16x32, 2 pixels between
    assert img.size == (16 + 2 + 32, 16)
    px = np.asarray(img.convert("RGB"))
    assert (px[:, :16] == 0).all() and (px[:, 18:] == 255).all()


def test_heat_tile_colours_sign_and_leaves_zero_white() -> None:
    attr = torch.zeros(1, 2, 3)
    attr[0, 0, 0], attr[0, 0, 1] = 1.0, -1.0
    tile = heat_tile(attr, outlier_perc=0)
    green, red, white = tile[0, 0], tile[0, 1], tile[1, 2]
    assert green[1] > green[0] and green[1] > green[2]
    assert red[0] > red[1] and red[0] > red[2]
    np.testing.assert_allclose(white, [1.0, 1.0, 1.0], atol=0.01)
    np.testing.assert_allclose(heat_tile(torch.zeros(3, 2, 2)), 1.0, atol=0.01)
