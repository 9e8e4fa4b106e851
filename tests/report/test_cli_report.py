"""``neuronsplit report``: from a plan file or a saved split, on the demo models; its errors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

import neuronsplit as ns
from neuronsplit.cli import main


@pytest.fixture()
def run(capsys: pytest.CaptureFixture[str]) -> Any:
    def call(*argv: object) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return call


def test_report_of_a_plan_file_on_the_demo(run: Any, cnn_world: dict, tmp_path: Path,
                                           read_page: Any) -> None:  # fmt: skip
    plan = tmp_path / "plan.json"
    cnn_world["plan"].to_json(plan)
    out = tmp_path / "sub" / "r.html"
    code, stdout, _ = run("report", "--demo", "--plan", plan, "--out", out, "--max-units", 1,
                          "--no-feature-vis", "--quiet")  # fmt: skip
    assert code == 0
    assert re.search(rf"wrote {re.escape(str(out))} \(1 of 2 split unit\(s\) shown\) in "
                     r"[\d.]+ s \(CPU [\d.]+ s\)", stdout)  # fmt: skip
    page = read_page(out)
    assert "featurevis" not in " ".join(page.ids)
    assert "the 397 test digits" in page.text and "demo-cnn" in page.text


def test_report_of_a_saved_split_directory(run: Any, vit_world: dict, tmp_path: Path,
                                           read_page: Any) -> None:  # fmt: skip
    split = ns.apply_plan(vit_world["model"], vit_world["plan"])
    saved = ns.save(split, tmp_path / "split", meta=vit_world["plan"].meta.to_dict())
    code, stdout, err = run("report", "--demo", "--plan", saved, "--out", tmp_path / "r.html",
                            "--max-units", 1, "--max-batches", 1, "--quiet")  # fmt: skip
    assert code == 0, err
    page = read_page(tmp_path / "r.html")
    assert "demo-vit" in page.text and "ELUDe discover" in page.text
    assert "evaluated on 32 images" in page.text  # --max-batches 1 of the default 32
    assert "1 of" in stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--plan", "{tmp}/none.json"], "--plan '{tmp}/none.json' does not exist"),
        (["--plan", "{tmp}/empty"], "is a directory without plan.json"),
        (["--plan", "{plan}", "--out", "{tmp}/r.txt"], r"must end in \.html"),
        (["--plan", "{plan}"], "does not say which model it belongs to"),
        (["--plan", "{plan}", "--demo", "--model", "demo"], "--demo picks the model itself"),
    ],
)
def test_user_errors_exit_2_with_one_line(run: Any, cnn_world: dict, tmp_path: Path,
                                          argv: list[str], message: str) -> None:  # fmt: skip
    plan = tmp_path / "plan.json"
    cnn_world["plan"].to_json(plan)
    (tmp_path / "empty").mkdir()
    argv = [a.format(tmp=tmp_path, plan=plan) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "r.html")]
    code, _, err = run("report", *argv)
    assert code == 2
    assert err.startswith("neuronsplit report: error: ") and err.count("\n") == 1
    assert re.search(message.format(tmp=tmp_path), err)
    assert not (tmp_path / "r.html").exists()
