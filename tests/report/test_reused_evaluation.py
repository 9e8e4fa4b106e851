"""report(evaluation=...): an evaluate of the same split reused instead of a second pass, or a
callable that gives one (called last, so it can run in another process meanwhile), checked
against what the report shows."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch

import neuronsplit as ns
from neuronsplit.errors import ArgumentTypeError, InvalidArgumentError, PlanMismatchError
from neuronsplit.plan import UnitSplit
from neuronsplit.reporting import build


def _report(tiny: dict[str, Any], path: Path, **kw: Any) -> Path:
    return ns.report(tiny["model"], tiny["plan"], tiny["loader"], path, progress=False,
                     feature_steps=8, **kw)  # fmt: skip


def _evaluation(tiny: dict[str, Any], plan: Any = None, **kw: Any) -> ns.Evaluation:
    kw.setdefault("k", 8)
    return ns.evaluate(tiny["model"], None, tiny["loader"], plan or tiny["plan"],
                       progress=False, **kw)  # fmt: skip


def _two_units(tiny: dict[str, Any]) -> ns.SplitPlan:
    return ns.SplitPlan([*tiny["plan"].splits, UnitSplit("conv", 2, [[0], [1, 2]])])


def _timeless(page: Any) -> str:
    """The page's HTML without its date and build time."""
    html = re.sub(r"built in [0-9.]+ s", "", page.html)
    return re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", "", html)


def test_a_reused_evaluation_gives_the_same_report_without_a_second_pass(
    tiny: dict, tmp_path: Path, read_page: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = read_page(_report(tiny, tmp_path / "own.html"))
    ev = _evaluation(tiny)

    def no_second_pass(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("evaluate ran although an evaluation was given")

    monkeypatch.setattr(build, "evaluate", no_second_pass)
    reused = read_page(_report(tiny, tmp_path / "reused.html", evaluation=ev))
    assert reused.srcs == own.srcs and len(own.srcs) > 4  # every picture, byte for byte
    assert _timeless(reused) == _timeless(own)  # every table, SVG curve and note
    assert "built in" in own.html and "UTC" in own.html  # what _timeless takes out


def test_a_callable_is_called_after_the_pictures_that_do_not_need_it(
    tiny: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    for name in ("reference_sets", "feature_visualisations"):
        made = getattr(build, name)
        monkeypatch.setattr(build, name, lambda *a, _made=made, _name=name, **k:
                            (calls.append(_name), _made(*a, **k))[1])  # fmt: skip
    ev = _evaluation(tiny)
    part = build.report_part(tiny["model"], tiny["plan"], tiny["loader"], progress=False,
                             feature_steps=8,
                             evaluation=lambda: (calls.append("evaluation"), ev)[1])  # fmt: skip
    assert calls == ["reference_sets", "feature_visualisations", "evaluation"]
    assert part.evaluation is ev


@pytest.mark.parametrize(
    ("given", "options", "error", "pattern"),
    [
        ("k=4", {}, InvalidArgumentError, "measured 4 top images per row .* evaluate with k=8"),
        ("k=12", {}, InvalidArgumentError, "measured 12 top images .* or pass k=12"),
        ("no labels", {}, InvalidArgumentError, "made without labels .* pass labels=False"),
        ("labels", {"labels": False}, InvalidArgumentError, "made with labels .*labels=True"),
        ("longer loader", {}, InvalidArgumentError, "saw 64 images and the loader holds 48"),
        ("other plan", {}, PlanMismatchError, "3 subunit row.* unit 1 of layer 'conv'.* 2"),
        ("fewer units", {"max_units": 1}, PlanMismatchError, "0 subunit row.* unit 2 of layer"),
        ("more units", {}, PlanMismatchError, "does not split, e.g. unit 2 of layer 'conv'"),
        ("a dict", {}, ArgumentTypeError, "evaluation must be an Evaluation .* got dict"),
        ("gives a list", {}, ArgumentTypeError, "evaluation gave a list, not an Evaluation"),
    ],
)
def test_an_evaluation_that_does_not_fit_is_refused(
    tiny: dict, tmp_path: Path, given: str, options: dict, error: type, pattern: str
) -> None:
    evaluation: Any = {
        "k=4": lambda: _evaluation(tiny, k=4),
        "k=12": lambda: _evaluation(tiny, k=12),  # purity over 12 images beside 8 shown
        "labels": lambda: _evaluation(tiny),
        "longer loader": lambda: ns.evaluate(
            tiny["model"],
            None,
            [(x, x[:, 0, 0, 0].long() % 3) for x in torch.rand(4, 16, 3, 6, 6)],
            tiny["plan"],
            k=8,
            progress=False,
        ),
        "more units": lambda: _evaluation(tiny, _two_units(tiny)),
        "no labels": lambda: _evaluation(tiny, labels=False),
        "other plan": lambda: _evaluation(
            tiny, ns.SplitPlan([UnitSplit("conv", 1, [[0], [1], [2]])])
        ),
        "fewer units": lambda: _evaluation(tiny),  # the report's plan also splits unit 2
        "a dict": lambda: {"rows": []},
        "gives a list": lambda: lambda: [],
    }[given]()
    if given == "fewer units":  # the summary table lists every split unit, not only the shown
        tiny = {
            **tiny,
            "plan": ns.SplitPlan([*tiny["plan"].splits, UnitSplit("conv", 2, [[0], [1, 2]])]),
        }
    with pytest.raises(error, match=pattern):
        _report(tiny, tmp_path / "r.html", evaluation=evaluation, **options)
    assert not any(tmp_path.iterdir())


def test_a_label_free_evaluation_serves_a_label_free_report(
    tiny: dict, tmp_path: Path, read_page: Any
) -> None:
    ev = _evaluation(tiny, labels=False)
    page = read_page(_report(tiny, tmp_path / "r.html", evaluation=ev, labels=False))
    assert "purity unit → subunits" not in page.text
    assert "1 of 1 split unit(s) shown" in page.text
