"""ns.report on a tiny conv net: the sections, the atomic write, and every bad input the issue
names (empty loader, plan without split units, silent unit, constant subunit)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import neuronsplit as ns
from neuronsplit.errors import (
    ArgumentTypeError,
    InputShapeError,
    InvalidArgumentError,
    UnknownSubunitError,
)
from neuronsplit.plan import UnitSplit
from neuronsplit.plots import as_display_image
from neuronsplit.reporting import sections
from neuronsplit.reporting.html import image_strip

VIEWS = ("density", "references", "featurevis", "steering", "heatmaps")


def _report(tiny: dict[str, Any], path: Path, **kw: Any) -> Path:
    kw.setdefault("progress", False)
    return ns.report(tiny["model"], tiny.get("plan"), tiny["loader"], path, **kw)


def test_the_report_has_every_section(tiny: dict, tmp_path: Path, read_page: Any,
                                      external_urls: Any) -> None:  # fmt: skip
    page = read_page(_report(tiny, tmp_path / "r.html", title="Tiny <net>"))
    expected = {"provenance", "summary", "equivalence", "units", "notes", "unit-conv-1"}
    expected |= {f"unit-conv-1-{v}" for v in VIEWS}
    assert expected <= page.ids
    assert "<title>Tiny &lt;net&gt;</title>" in page.html
    assert "verify_equivalence (float32 and float64, first batch): PASSED" in page.text
    # images: density, reference rows (unit, k0, k1, residual), steering, heatmap tiles
    assert len(page.images) >= 7 and all(min(im.size) > 1 for im in page.images)
    assert external_urls(page.html) == []
    assert "1 of 1 split unit(s) shown" in page.text


def test_rows_are_the_evaluation_s(tiny: dict, tmp_path: Path, read_page: Any) -> None:
    ev = ns.evaluate(tiny["model"], None, tiny["loader"], tiny["plan"], k=8, progress=False)
    page = read_page(_report(tiny, tmp_path / "r.html"))
    for row in ev.rows:
        assert row.name in page.text
    unit = ev.row("conv", 1)
    assert f"{unit.purity:.3g}" in page.text


def test_a_failing_section_leaves_no_file(tiny: dict, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    out = tmp_path / "r.html"
    out.write_text("the previous report")

    def broken(ctx: Any) -> list:
        raise RuntimeError("a bug half-way through")

    views = [(v[0], v[1], broken if v[0] == "steering" else v[2]) for v in sections.VIEWS]
    monkeypatch.setattr("neuronsplit.reporting.build.VIEWS", tuple(views))
    with pytest.raises(RuntimeError, match="half-way"):
        _report(tiny, out)
    assert out.read_text() == "the previous report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]  # no temporary file left


def test_a_neuronsplit_error_in_a_view_becomes_a_note(tiny: dict, tmp_path: Path,
                                                      read_page: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    def refuses(ctx: Any) -> list:
        raise InvalidArgumentError("cannot <draw> this")

    views = [(v[0], v[1], refuses if v[0] == "density" else v[2]) for v in sections.VIEWS]
    monkeypatch.setattr("neuronsplit.reporting.build.VIEWS", tuple(views))
    page = read_page(_report(tiny, tmp_path / "r.html"))
    assert "could not draw the concept densities: cannot <draw> this" in page.text
    assert "unit-conv-1-steering" in page.ids


def test_an_empty_loader_fails_before_writing(tiny: dict, tmp_path: Path) -> None:
    empty = DataLoader(TensorDataset(torch.zeros(0, 3, 6, 6), torch.zeros(0, dtype=torch.long)))
    with pytest.raises(InputShapeError, match="no images"):
        _report({**tiny, "loader": empty}, tmp_path / "r.html")
    assert not any(tmp_path.iterdir())


def test_a_plan_without_split_units_gives_a_report_that_says_so(
    tiny: dict, tmp_path: Path, read_page: Any
) -> None:
    plan = ns.SplitPlan([], meta={"elude": {"top_n": 32, "layers": {
        "conv": {"examined": 4, "split": 0, "left_alone": {"low_silhouette": 4}}}}})  # fmt: skip
    page = read_page(_report({**tiny, "plan": plan}, tmp_path / "r.html"))
    assert "The plan splits no unit" in page.text
    assert "low_silhouette 4" in page.text and "ELUDe discover" in page.text
    assert {"provenance", "summary"} <= page.ids and "units" not in page.ids


def test_silent_unit_and_constant_subunit_get_notes(tiny: dict, tmp_path: Path,
                                                    read_page: Any) -> None:  # fmt: skip
    model = tiny["model"]
    with torch.no_grad():  # unit 2: never positive; channels 1, 2 carry nothing (constant k1)
        model.conv.weight[2] = 0.0
        model.conv.weight[2, 0] = -1.0
        model.conv.bias[2] = -0.5
    plan = ns.SplitPlan([UnitSplit("conv", 1, [[0], [1, 2]]),
                         UnitSplit("conv", 2, [[0], [1, 2]])])  # fmt: skip
    page = read_page(_report({**tiny, "plan": plan}, tmp_path / "r.html"))
    assert "conv/u2: the unit never activates" in page.text
    assert "conv/u2/k1: constant (a(x) = 0 on every image)" in page.text
    assert "all shown tie (e.g. a constant row)" in page.text  # beside its reference images
    assert {"unit-conv-2-references", "unit-conv-2-heatmaps"} <= page.ids


def test_max_units_and_units_pick_the_sections(tiny: dict, tmp_path: Path,
                                               read_page: Any) -> None:  # fmt: skip
    plan = ns.SplitPlan([UnitSplit("conv", u, [[0], [1, 2]]) for u in (0, 1, 3)])
    page = read_page(_report({**tiny, "plan": plan}, tmp_path / "a.html", max_units=2,
                             feature_vis=False, steering=False, heatmaps=False))  # fmt: skip
    assert "2 of 3 split unit(s) shown; 1 left out" in page.text
    assert {"unit-conv-0", "unit-conv-1"} <= page.ids and "unit-conv-3" not in page.ids
    assert not {"unit-conv-0-steering", "unit-conv-0-heatmaps", "unit-conv-0-featurevis"} & page.ids
    page = read_page(_report({**tiny, "plan": plan}, tmp_path / "b.html", units=[("conv", 3)]))
    assert "unit-conv-3" in page.ids and "unit-conv-0" not in page.ids
    with pytest.raises(UnknownSubunitError, match="unit 2 of layer 'conv' is not split"):
        _report({**tiny, "plan": plan}, tmp_path / "c.html", units=[("conv", 2)])


def test_without_labels_the_label_columns_are_left_out(tiny: dict, tmp_path: Path,
                                                       read_page: Any) -> None:  # fmt: skip
    page = read_page(_report(tiny, tmp_path / "r.html", labels=False))
    assert "purity unit → subunits" not in page.text
    assert "densities per concept need labelled images" in page.text


@pytest.mark.parametrize(
    ("options", "error", "pattern"),
    [
        ({"out": "r.txt"}, InvalidArgumentError, r"must end in \.html"),
        ({"max_units": 0}, InvalidArgumentError, "max_units must be >= 1"),
        ({"units": "conv"}, ArgumentTypeError, "list of"),
        ({"plan": "plan.json"}, ArgumentTypeError, "plan must be a SplitPlan"),
        ({"steering": "no"}, ArgumentTypeError, "steering must be True or False"),
    ],
)
def test_bad_options_are_refused_before_writing(
    tiny: dict, tmp_path: Path, options: dict, error: type, pattern: str
) -> None:
    world = {**tiny, "plan": options.pop("plan", tiny["plan"])}
    out = tmp_path / options.pop("out", "r.html")
    with pytest.raises(error, match=pattern):
        _report(world, out, **options)
    assert not any(tmp_path.iterdir())


def test_a_plain_list_of_batches_shows_evaluate_s_top_images(
    tiny: dict, tmp_path: Path, read_page: Any
) -> None:
    """No DataLoader, so no dataset for the reference crops: the top images evaluate found are
    fetched by a second pass over the batches and shown whole."""
    batches = [(tiny["x"][i : i + 16], tiny["y"][i : i + 16]) for i in range(0, 48, 16)]
    page = read_page(_report({**tiny, "loader": batches}, tmp_path / "r.html", k=4,
                             feature_vis=False))  # fmt: skip
    assert "reference crops need the dataset of a DataLoader" in page.text
    ev = ns.evaluate(tiny["model"], None, batches, tiny["plan"], k=4, progress=False)
    expected = [image_strip([as_display_image(tiny["x"][i]) for i in ev.row("conv", 1, k).top_indices])
                for k in (None, 0, 1)]  # fmt: skip
    shown = [base64.b64decode(s.split(",", 1)[1]) for s in page.srcs]
    for png in expected:
        assert png in shown


def test_reference_crops_and_feature_visualisation(tiny: dict, tmp_path: Path,
                                                   read_page: Any) -> None:  # fmt: skip
    page = read_page(_report(tiny, tmp_path / "r.html", feature_steps=8))
    assert "Top 8 by the row's largest activation" in page.text
    assert "Top 8 by grad x activation for the label" in page.text
    assert "8 steps of gradient ascent" in page.text
    fv = ns.visual.visualise(ns.apply_plan(tiny["model"], tiny["plan"]),
                             ["conv/u1", "conv/u1/k0", "conv/u1/k1", "conv/u1/residual"],
                             image_shape=(3, 6, 6), steps=8, progress=False)  # fmt: skip
    for name in fv.names:  # the activation each image reaches, as visualise computes it
        assert f"{fv.activation(name):.3g}" in page.text


def test_without_neuronsplit_visual_the_report_says_so(
    tiny: dict, tmp_path: Path, read_page: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("neuronsplit.reporting.visuals.visual_available", lambda name: False)
    page = read_page(_report(tiny, tmp_path / "r.html"))
    assert "feature visualisation needs neuronsplit.visual.featurevis" in page.text
    assert "neuronsplit.visual.references is not installed" in page.text
    assert "top 8 images by activation" in page.text  # evaluate's, instead


def test_the_models_are_left_as_they_were(tiny: dict, tmp_path: Path) -> None:
    from helpers import hook_counts

    model = tiny["model"].train()
    split = ns.apply_plan(model, tiny["plan"]).train()
    state = {k: v.clone() for k, v in {**model.state_dict(), **{
        f"split.{k}": v for k, v in split.state_dict().items()}}.items()}  # fmt: skip
    hooks = (hook_counts(model), hook_counts(split))
    grads = [p.requires_grad for p in split.parameters()]
    with torch.no_grad():
        _report(tiny, tmp_path / "r.html", split=split, feature_steps=4)
        assert not torch.is_grad_enabled()
    assert model.training and split.training
    assert (hook_counts(model), hook_counts(split)) == hooks
    assert [p.requires_grad for p in split.parameters()] == grads
    after = {**model.state_dict(), **{f"split.{k}": v for k, v in split.state_dict().items()}}
    assert all(torch.equal(state[k], after[k]) for k in state)


def test_a_scan_adds_the_histogram_of_candidate_cosines(tiny: dict, tmp_path: Path,
                                                        read_page: Any) -> None:  # fmt: skip
    result = ns.scan(tiny["model"], tiny["loader"], ["conv"], 3, progress=False)
    page = read_page(_report(tiny, tmp_path / "a.html", scan=result, feature_vis=False))
    assert "scan" in page.ids and "ARV cosines of all candidate class pairs" in page.text
    without = read_page(_report(tiny, tmp_path / "b.html", feature_vis=False))
    assert "scan" not in without.ids and len(page.images) == len(without.images) + 1
