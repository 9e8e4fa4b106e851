"""Fixtures of the command-line tests: an ImageFolder tree of PNGs and a runner of
``neuronsplit.cli.main`` that returns the exit code with what it printed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from neuronsplit.cli import main

CLASSES = ["cat", "dog", "ship"]


@dataclass
class Run:
    code: int
    out: str
    err: str


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes x 6 RGB PNGs of 40x36 px; each class has its own dominant colour channel, so
    the classes differ for any model."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir()
        for i in range(6):
            base = np.zeros((40, 36, 3))
            base[..., c] = 200
            pixels = base + rng.integers(0, 55, size=base.shape)
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i}.png")
    return root


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Callable[..., Run]:
    """``run("scan", "--model", ...)``: ``main(argv)``, its exit code and what it printed."""

    def call(*argv: object) -> Run:
        capsys.readouterr()
        code = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return call
