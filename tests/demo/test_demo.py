"""The embedded demo end to end: `neuronsplit demo` and its summary.json (the run is the
``demo_run`` fixture of conftest.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from neuronsplit.plan import SplitPlan

#: the issue's target for the demo ViT (ELUDe, issue 10)
TARGET = {"purity_gain": 0.10, "split_fraction": 0.333}
VIT_LAYERS = [f"blocks.{i}.mlp.{fc}" for i in range(4) for fc in ("fc1", "fc2")]


def test_demo_summary_schema_and_equivalence(demo_run: tuple[dict, str, Path]) -> None:
    summary, printed, _ = demo_run
    for key in ("test_accuracy", "params", "scan", "units", "equivalence", "plan", "test_images"):
        assert key in summary
    assert summary["test_accuracy"] > 0.9
    assert summary["scan"]["images"] == 1400 and summary["test_images"] == 397
    assert summary["equivalence"]["passed"] is True
    assert summary["equivalence"]["max_abs_delta_logit"] < 1e-4
    assert "PASS" in printed and "cosine" in printed
    split_units = [u for u in summary["units"] if u["split"]]
    assert 1 <= len(split_units) <= 3
    for unit in summary["units"]:
        assert unit["pairs"], unit
        for pair in unit["pairs"]:
            assert 0.0 <= pair["cosine"] < 0.5
            assert (
                pair["class_a"] in unit["relevant_classes"]
                and pair["class_b"] in unit["relevant_classes"]
            )


def test_demo_concepts_keep_polysemantic_classes_apart(demo_run: tuple[dict, str, Path]) -> None:
    """Complete linkage: two gamma-polysemantic classes (cosine < gamma) never share a concept,
    and the concepts partition the classes that take part in a polysemantic pair."""
    summary, _, _ = demo_run
    gamma = summary["params"]["gamma"]
    for unit in (u for u in summary["units"] if u["split"]):
        concepts = [set(c) for c in unit["concepts"]]
        in_pairs = {c for p in unit["pairs"] for c in (p["class_a"], p["class_b"])}
        assert sorted(c for concept in concepts for c in concept) == sorted(in_pairs)
        assert in_pairs <= set(unit["relevant_classes"])
        concept_of = {c: i for i, concept in enumerate(concepts) for c in concept}
        for pair in unit["pairs"]:
            assert pair["cosine"] < gamma
            assert concept_of[pair["class_a"]] != concept_of[pair["class_b"]], (unit["unit"], pair)
        assert unit["merge"] in ("overlap", "disjoint")


def test_demo_subunits_carry_their_concept(demo_run: tuple[dict, str, Path]) -> None:
    """On concept-k test images subunit k carries most of the unit, the others little."""
    summary, _, _ = demo_run
    for unit in (u for u in summary["units"] if u["split"]):
        assert len(unit["fractions"]) == len(unit["concepts"]) >= 2
        for k, frac in enumerate(unit["fractions"]):
            assert frac["n_images"] > 0
            assert frac["classes"] == list(unit["concepts"][k])
            means = frac["subunit_mean"]
            others = [m for i, m in enumerate(means) if i != k]
            assert means[k] > 0.5, (unit["unit"], k, means)
            assert means[k] > max(others) + 0.3, (unit["unit"], k, means)
            # the merge identity holds per image, hence for the means, in the plan's form
            k_count = len(means)
            if unit["merge"] == "overlap":  # s_k = t_k + r, z = sum_k s_k - (K-1) r
                total = sum(means) - (k_count - 1) * frac["residual_mean"]
            else:  # z = sum_k t_k + r
                total = sum(means) + frac["residual_mean"]
            assert total == pytest.approx(1.0, abs=1e-4)


def test_demo_vit_section(demo_run: tuple[dict, str, Path]) -> None:
    """ELUDe on the demo ViT: exact, and its subunits' top test images purer than the units'
    by a clear margin over the random control."""
    summary, printed, out = demo_run
    vit = summary["vit"]
    assert list(vit["layers"]) == VIT_LAYERS == vit["params"]["layers"]
    eq = vit["equivalence"]
    assert eq["passed"] is True
    assert eq["max_abs_delta_logit"]["float32"] < 1e-4
    assert eq["max_abs_delta_logit"]["float64"] < 1e-10
    assert {lay["layer"] for row in eq["rows"] for lay in row["layers"]} <= set(VIT_LAYERS)
    split = vit["split"]
    assert split["examined"] == sum(v["examined"] for v in vit["layers"].values()) == 4 * 192
    assert split["split"] == sum(v["split"] for v in vit["layers"].values())
    assert 0 < split["split_fraction"] == split["split"] / split["examined"] <= 1
    assert sum(split["k_histogram"].values()) == split["split"]
    assert 2 <= split["mean_k"] <= vit["params"]["max_concepts"]
    for fc in ("fc1", "fc2"):
        part = vit["by_type"][fc]
        assert part["examined"] == 4 * (128 if fc == "fc1" else 64)
        assert part["purity"]["units"] == part["split"]
    assert sum(vit["by_type"][fc]["split"] for fc in ("fc1", "fc2")) == split["split"]
    purity = vit["purity"]
    assert purity["units"] == split["split"] and purity["k"] == 20
    assert purity["purity_gain"] > purity["random_gain"] + 0.05
    assert purity["entropy_change"] < 0
    assert vit["target"] == TARGET
    met = purity["purity_gain"] >= TARGET["purity_gain"]
    assert vit["met"] is (met and split["split_fraction"] >= TARGET["split_fraction"])
    plan = SplitPlan.from_json(out / vit["plan_file"])
    assert plan.num_units == split["split"] and set(plan.layers) <= set(VIT_LAYERS)
    assert "DigitsViT" in printed and ("NOT MET" in printed) is (not vit["met"])
    assert printed.count("PASS") == 2


def test_vit_checks_run_beside_give_the_same_summary(demo_run: tuple[dict, str, Path]) -> None:
    """The demo runs the ViT's checks in a forked process while it builds the report; run in
    this process they must give the same figures."""
    from neuronsplit.demo.vit_pipeline import run_vit_demo

    summary, _, _ = demo_run
    here = run_vit_demo(None, progress=False)
    assert here["plan_file"] is None and summary["vit"]["plan_file"] == "plan_vit.json"
    assert json.dumps({**here, "plan_file": 0}, sort_keys=True) == json.dumps(
        {**summary["vit"], "plan_file": 0}, sort_keys=True
    )


def test_demo_without_fork_gives_the_same_figures(
    demo_run: tuple[dict, str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the platform cannot fork, the ViT's checks and its report's evaluation run in this
    process (in a thread they would put hooks on the model the report is running): the same
    figures, and the same report but for its dates and times."""
    from neuronsplit.demo import _background, run_demo

    monkeypatch.setattr(_background, "forks", lambda: False)
    summary, _, out = demo_run
    here = run_demo(tmp_path, progress=False)
    for key in ("vit", "equivalence", "units"):
        assert json.dumps(here[key], sort_keys=True) == json.dumps(summary[key], sort_keys=True)

    def timeless(path: Path) -> str:
        html = path.read_text()
        html = re.sub(r"built in [0-9.]+ s", "", html)
        return re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", "", html)

    assert timeless(tmp_path / "report.html") == timeless(out / "report.html")


def test_demo_cnn_discover_beside_hesse(demo_run: tuple[dict, str, Path]) -> None:
    """discover runs on the units Hesse split; both plans are scored on the same test images."""
    summary, printed, _ = demo_run
    c = summary["cnn_vs_discover"]
    hesse_units = {u["unit"]: u for u in summary["units"] if u["split"]}
    assert c["layer"] == summary["layer"]
    assert sorted(row["unit"] for row in c["units"]) == sorted(hesse_units)
    assert c["hesse"]["units"] == len(hesse_units)
    assert c["discover_meta"]["examined"] == len(hesse_units)
    n_found = sum(row["discover"]["k"] >= 2 for row in c["units"])
    assert c["discover_meta"]["split"] == n_found
    assert (c["discover"] is None) is (n_found == 0)
    for row in c["units"]:
        assert row["hesse"]["k"] == len(hesse_units[row["unit"]]["concepts"])
        assert 1 <= row["discover"]["k"] <= 4
        for name in ("hesse", "discover"):
            gain = row[name]["purity_gain"]
            assert (gain is None) is (row[name]["k"] == 1)
            if gain is not None:
                assert -1 <= gain <= 1
                assert gain == pytest.approx(row[name]["subunit_purity"] - row["unit_purity"])
    assert "ELUDe discover (no labels) on the units Hesse split" in printed


def test_demo_summary_round_trips_as_json(demo_run: tuple[dict, str, Path]) -> None:
    summary, _, out = demo_run
    assert json.loads(json.dumps(summary)) == summary
    names = sorted(p.name for p in out.iterdir())
    assert names == ["plan.json", "plan_vit.json", "report.html", "summary.json"]


def test_vit_table_when_a_layer_type_split_nothing() -> None:
    from neuronsplit.demo.pipeline import _vit_lines

    empty = {"units": 0}
    part = {"split": 0, "examined": 4, "split_fraction": 0.0, "mean_k": 1.0, "purity": empty}
    vit = {
        "test_accuracy": 0.9, "layers": {"blocks.0.mlp.fc1": {**part, "k_histogram": {}}},
        "split": {k: v for k, v in part.items() if k != "purity"}, "purity": {**empty, "k": 20},
        "by_type": {"fc1": part, "fc2": part}, "target": {"purity_gain": 0.1, "split_fraction": 0.3},
        "met": False, "equivalence": {"passed": True, "max_abs_delta_logit": {"float32": 0.0}},
    }  # fmt: skip
    text = "\n".join(_vit_lines(vit, 10))
    assert "no unit split" in text and "NOT MET" in text
