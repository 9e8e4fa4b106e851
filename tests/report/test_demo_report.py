"""The report of the demo models end to end: Hesse's labelled plan of the CNN, ELUDe's
unsupervised plan of the ViT, one file with both; and ``run_demo`` writing it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from torch.utils.data import DataLoader

import neuronsplit as ns

VIEWS = ("density", "references", "featurevis", "steering", "heatmaps")


def _unit_ids(prefix: str, plan: ns.SplitPlan, n: int) -> set[str]:
    return {f"{prefix}-unit-{s.layer.replace('.', '-')}-{s.unit}" for s in list(plan.splits)[:n]}


def test_both_pipelines_in_one_report(demo_report: Path, cnn_world: dict, vit_world: dict,
                                      read_page: Any, external_urls: Any) -> None:  # fmt: skip
    page = read_page(demo_report)
    for prefix in ("cnn", "vit"):
        assert {f"{prefix}-{s}" for s in ("provenance", "summary", "equivalence", "units",
                                          "notes")} <= page.ids  # fmt: skip
    hesse = [(u["layer"], u["unit"]) for u in cnn_world["plan"].meta["units"]]
    for layer, unit in hesse:  # Hesse's plan order: both of its units, every view
        assert {f"cnn-unit-{layer}-{unit}-{v}" for v in VIEWS} <= page.ids
    assert len(_unit_ids("vit", vit_world["plan"], 2) & page.ids) == 2
    assert f"2 of {len(vit_world['plan'])} split unit(s) shown" in page.text
    assert "Hesse et al. (supervised" in page.text and "ELUDe discover (unsupervised" in page.text
    assert page.text.count("verify_equivalence (float32 and float64, first batch): PASSED") == 2
    assert external_urls(page.html) == []
    assert len(page.images) > 20


def test_concepts_come_from_the_plan_or_from_evaluation(demo_report: Path,
                                                        read_page: Any) -> None:  # fmt: skip
    """The CNN's densities are per concept of Hesse's plan; the ViT's per class evaluate finds
    (its plan has no concepts: discover never saw a label)."""
    html = read_page(demo_report).html
    cnn, vit = html.split('id="vit"', 1)
    assert cnn.count("Concepts: the plan&#x27;s concepts") == 2
    assert "evaluate finds relevant" not in cnn
    assert vit.count("Concepts: the classes evaluate finds relevant to each subunit") >= 1
    assert "the plan&#x27;s concepts" not in vit


def test_an_unsupervised_report_without_labels(vit_world: dict, digits_test: DataLoader,
                                               tmp_path: Path, read_page: Any) -> None:  # fmt: skip
    images = [x for x, _ in digits_test]  # no labels anywhere
    path = ns.report(vit_world["model"], vit_world["plan"], images, tmp_path / "r.html",
                     labels=False, max_units=1, progress=False)  # fmt: skip
    page = read_page(path)
    assert "evaluated without labels" in page.text
    assert "densities per concept need labelled images" in page.text
    assert "purity unit → subunits" not in page.text
    assert any(i.endswith("-references") for i in page.ids)


def test_the_cnn_demo_writes_the_report(tmp_path: Path, read_page: Any,
                                        capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    from neuronsplit.cli import main

    assert main(["demo", "--cnn-only", "--out", str(tmp_path / "a"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"report: {tmp_path / 'a' / 'report.html'} (built in " in out
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["report"]["file"] == "report.html" and summary["report"]["seconds"] > 0
    page = read_page(tmp_path / "a" / "report.html")
    assert "cnn-summary" in page.ids and "vit-summary" not in page.ids
    assert main(["demo", "--cnn-only", "--no-report", "--out", str(tmp_path / "b"),
                 "--quiet"]) == 0  # fmt: skip
    assert "report:" not in capsys.readouterr().out
    assert not (tmp_path / "b" / "report.html").exists()
    assert "report" not in json.loads((tmp_path / "b" / "summary.json").read_text())
