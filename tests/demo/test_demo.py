"""The embedded demo end to end: `neuronsplit demo` and its summary.json."""

from __future__ import annotations

import json

import pytest

from neuronsplit.cli import main


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("demo")
    import contextlib
    import io

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


def test_demo_subunits_carry_their_concept(demo_run: tuple[dict, str]) -> None:
    """On concept-k test images subunit k carries most of the unit, the others little."""
    summary, _ = demo_run
    for unit in (u for u in summary["units"] if u["split"]):
        assert len(unit["fractions"]) == len(unit["concepts"]) >= 2
        for k, frac in enumerate(unit["fractions"]):
            assert frac["n_images"] > 0
            means = frac["subunit_mean"]
            others = [m for i, m in enumerate(means) if i != k]
            assert means[k] > 0.5, (unit["unit"], k, means)
            assert means[k] > max(others) + 0.3, (unit["unit"], k, means)
            # the merge identity holds per image, hence for the means (overlap form)
            k_count = len(means)
            assert sum(means) - (k_count - 1) * frac["residual_mean"] == pytest.approx(
                1.0, abs=1e-4
            )
