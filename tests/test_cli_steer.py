"""``neuronsplit steer`` end to end on the demo CNN: load a saved split, bake the scales of a
JSON file into it, save it; the saved model equals ``ns.steer(..., permanent=True)``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import neuronsplit as ns
from neuronsplit.cli import main
from neuronsplit.cli_models import build_model
from neuronsplit.demo import get_demo_model, load_digits
from neuronsplit.errors import InvalidArgumentError
from neuronsplit.nn import load_scales
from neuronsplit.plan import SplitPlan, UnitSplit

ROOT = Path(__file__).resolve().parents[1]
PLAN = SplitPlan(
    [
        UnitSplit("fc2", 0, [list(range(0, 20)), list(range(20, 40))], list(range(40, 64))),
        UnitSplit("fc2", 3, [list(range(0, 30)), list(range(30, 60))], list(range(60, 64))),
    ]
)
ENTRIES = [
    {"layer": "fc2", "unit": 0, "k": 1, "alpha": 0.0},
    {"layer": "fc2", "unit": 3, "k": "residual", "alpha": 2.5},
    {"layer": "fc2", "unit": 3, "k": 0, "alpha": 0.5},
]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Any]:
    split = ns.apply_plan(get_demo_model(), PLAN)
    ns.save(split, tmp_path / "split")
    scales = tmp_path / "scales.json"
    scales.write_text(json.dumps(ENTRIES, indent=1))
    return {"split": split, "dir": tmp_path / "split", "scales": scales, "out": tmp_path / "out"}


def _argv(files: dict[str, Any], **over: str) -> list[str]:
    args = {"model": "demo", "split": files["dir"], "scales": files["scales"], "out": files["out"]}
    args.update(over)
    return ["steer"] + [x for k, v in args.items() for x in (f"--{k}", str(v))]


def test_steer_command_saves_the_steered_split(
    files: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_argv(files)) == 0
    assert "steered 3 subunit(s) in 1 layer(s)" in capsys.readouterr().out
    out = files["out"]
    names = sorted(p.name for p in out.iterdir())
    assert names == ["plan.json", "plan.safetensors", "scales.json", "weights.safetensors"]
    assert (out / "scales.json").read_bytes() == files["scales"].read_bytes()
    loaded = ns.load(out, get_demo_model())
    expected = ns.steer(files["split"], load_scales(files["scales"]), permanent=True)
    x = load_digits("test").images
    with torch.no_grad():
        assert torch.equal(loaded(x), expected(x))
        with ns.steer(files["split"], load_scales(files["scales"])):
            torch.testing.assert_close(loaded(x), files["split"](x), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(loaded(x), files["split"](x))
    meta = json.loads((out / "plan.json").read_text())["meta"]
    assert meta["steered"][1] == {"layer": "fc2", "unit": 3, "k": -1, "alpha": 2.5}
    assert ns.nn.plan_of(loaded) == ns.nn.plan_of(files["split"])  # same split, other weights


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"scales": "missing.json"}, "does not exist"),
        ({"scales": "bad"}, "'alpha' must be a finite number"),
        ({"scales": "unknown"}, "unit 1 is not split"),
        ({"out": "same"}, "is the --split directory"),
        ({"split": "nothing"}, "does not exist"),
        (
            {"model": "no_such_model_xyz"},
            "neither 'demo' nor 'demo-cnn' nor 'demo-vit' nor a timm or torchvision",
        ),
        ({"model": "demo-vit"}, "parameter shapes differ"),  # split of another architecture
    ],
)
def test_steer_command_reports_user_errors(
    files: dict[str, Any],
    change: dict[str, str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    key, value = next(iter(change.items()))
    if value in ("bad", "unknown"):
        entry = {"layer": "fc2", "unit": 1 if value == "unknown" else 0, "k": 0, "alpha": "x"}
        entry["alpha"] = 0.0 if value == "unknown" else "x"
        value = str(tmp_path / f"{value}.json")
        Path(value).write_text(json.dumps([entry]))
    elif value == "same":
        value = str(files["dir"])
    elif key != "model":
        value = str(tmp_path / value)
    assert main(_argv(files, **{key: value})) == 2  # a user error
    err = capsys.readouterr().err
    assert err.startswith("neuronsplit steer: error: ") and message in err, err
    assert not files["out"].exists()


def test_build_model_options() -> None:
    assert type(build_model("demo")[0]).__name__ == "DigitsNet"
    assert type(build_model("demo-cnn")[0]).__name__ == "DigitsNet"
    with pytest.raises(InvalidArgumentError, match="apply to timm / torchvision models"):
        build_model("demo", num_classes=3)
    model, is_demo = build_model("test_resnet", num_classes=3)
    assert not is_demo and not model.training and model.get_classifier().out_features == 3


def test_steer_command_as_a_process(files: dict[str, Any]) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    argv = [sys.executable, "-m", "neuronsplit.cli", *_argv(files)]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (files["out"] / "weights.safetensors").is_file()
