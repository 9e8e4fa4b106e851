"""What the report tests share: a tiny conv net with a split, the demo models with a Hesse plan
(labelled) and a discover plan (unsupervised), the two-part demo report, and a reader of the
report's HTML."""

from __future__ import annotations

import base64
import io
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import neuronsplit as ns
from neuronsplit.plan import UnitSplit


class TinyNet(nn.Module):
    """Conv(3->4, 3x3) -> ReLU -> Linear(4*4*4 -> 3) on 3x6x6 (RGB) images."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


@pytest.fixture()
def tiny() -> dict[str, Any]:
    """A TinyNet, a plan splitting conv unit 1 (input channel 0 | 1, 2), data of 3 classes."""
    torch.manual_seed(0)
    model = TinyNet().eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(48, 3, 6, 6, generator=gen)
    y = torch.arange(48) % 3
    plan = ns.SplitPlan([UnitSplit("conv", 1, [[0], [1, 2]])])
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    return {"model": model, "plan": plan, "loader": loader, "x": x, "y": y}


@dataclass
class Page:
    """A report's HTML, its element ids, its images (decoded) and its text."""

    html: str
    ids: set[str]
    images: list[Image.Image]
    srcs: list[str]
    text: str


class _Reader(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.srcs: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(str(a["id"]))
        if tag == "img":
            self.srcs.append(str(a.get("src")))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _read_page(path: Path) -> Page:
    """Parse a written report; every image must be an embedded PNG that decodes."""
    html = path.read_text(encoding="utf-8")
    reader = _Reader()
    reader.feed(html)
    images = []
    for src in reader.srcs:
        assert src.startswith("data:image/png;base64,"), src[:60]
        img = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        img.load()
        images.append(img)
    return Page(html, reader.ids, images, reader.srcs, " ".join(" ".join(reader.text).split()))


def _external_urls(html: str) -> list[str]:
    """Every absolute URL the document names (there must be none)."""
    return re.findall(r"(?:https?|ftp)://[^\s\"'<>)]+|//[a-z0-9.-]+\.[a-z]{2,}/", html)


@pytest.fixture(scope="session")
def read_page() -> Any:
    """``read_page(path) -> Page``: parse a written report (its images must decode)."""
    return _read_page


@pytest.fixture(scope="session")
def external_urls() -> Any:
    """``external_urls(html) -> list``: the absolute URLs a document names."""
    return _external_urls


@pytest.fixture(scope="session")
def digits_test() -> DataLoader:
    from neuronsplit.demo import load_digits

    test = load_digits("test")
    return DataLoader(TensorDataset(test.images, test.labels), batch_size=128)


@pytest.fixture(scope="session")
def cnn_world() -> dict[str, Any]:
    """The demo CNN and Hesse et al.'s plan of its 2 most polysemantic fc2 units."""
    from neuronsplit.demo import demo_plan, get_demo_model

    model = get_demo_model(progress=False)
    _, _, plan = demo_plan(model, top=2)
    return {"model": model, "plan": plan}


@pytest.fixture(scope="session")
def vit_world() -> dict[str, Any]:
    """The demo ViT and ELUDe's discover plan of one MLP layer (no labels read)."""
    from neuronsplit.demo import digits_loader, get_demo_vit

    vit = get_demo_vit(progress=False)
    # bare images: the method sees no label at all
    images = [x for x, _ in digits_loader("train", batch_size=256)][:2]
    plan = ns.discover(vit, images, ["blocks.2.mlp.fc2"], progress=False, n_jobs=1)
    assert len(plan) >= 2
    return {"model": vit, "plan": plan}


@pytest.fixture(scope="session")
def demo_report(
    tmp_path_factory: pytest.TempPathFactory, cnn_world: dict, vit_world: dict,
    digits_test: DataLoader,
) -> Path:  # fmt: skip
    """The two-part report of the demo models: 2 Hesse units of the CNN, 2 discovered of the ViT."""
    from neuronsplit.reporting import report_part, write_report

    parts = [
        report_part(cnn_world["model"], cnn_world["plan"], digits_test, prefix="cnn",
                    title="CNN (Hesse)", max_units=2, progress=False),
        report_part(vit_world["model"], vit_world["plan"], digits_test, prefix="vit",
                    title="ViT (discover)", max_units=2, progress=False),
    ]  # fmt: skip
    return write_report(tmp_path_factory.mktemp("report") / "report.html", parts)
