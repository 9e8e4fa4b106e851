"""The embedded demo end to end: `neuronsplit demo` and its summary.json."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from neuronsplit.cli import main


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("demo")
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(["demo", "--out", str(out), "--quiet"])
    assert code == 0
    return json.loads((out / "summary.json").read_text()), buffer.getvalue()


def test_demo_summary_schema_and_equivalence(demo_run: tuple[dict, str]) -> None:
    summary, printed = demo_run
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


def test_demo_concepts_keep_polysemantic_classes_apart(demo_run: tuple[dict, str]) -> None:
    """Complete linkage: two gamma-polysemantic classes (cosine < gamma) never share a concept,
    and the concepts partition the classes that take part in a polysemantic pair."""
    summary, _ = demo_run
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


def test_demo_subunits_carry_their_concept(demo_run: tuple[dict, str]) -> None:
    """On concept-k test images subunit k carries most of the unit, the others little."""
    summary, _ = demo_run
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
