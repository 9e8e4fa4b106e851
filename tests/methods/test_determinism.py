"""Same inputs and seed give byte-identical plan files: scan -> find_polysemantic -> plan_split
(rho="auto") -> save, twice in one process. The 1 vs 2 processes comparison runs under torchrun
in ``tests/stats/test_distributed.py``."""

from __future__ import annotations

from pathlib import Path

import torch

import neuronsplit as ns
from neuronsplit.demo import DEMO_LAYER, digits_loader, get_demo_model

FILES = ("plan.json", "plan.safetensors")
SAVED = ("plan.json", "plan.safetensors", "weights.safetensors")


def _pipeline(out: Path) -> dict[str, bytes]:
    torch.manual_seed(0)
    model = get_demo_model()
    loader = digits_loader("train", batch_size=256)
    result = ns.scan(model, loader, [DEMO_LAYER], 10, progress=False)
    units = ns.find_polysemantic(result, DEMO_LAYER)
    plan = ns.plan_split(units[:3], result, loader, model=model)
    plan.save(out / "plan" / "plan.json")
    ns.save(ns.apply_plan(model, plan), out / "model")
    files = {f"plan/{name}": (out / "plan" / name).read_bytes() for name in FILES}
    files.update({f"model/{name}": (out / "model" / name).read_bytes() for name in SAVED})
    return files


def test_two_runs_give_byte_identical_plan_and_model_files(tmp_path: Path) -> None:
    first = _pipeline(tmp_path / "a")
    second = _pipeline(tmp_path / "b")
    assert first.keys() == second.keys()
    for name, data in first.items():
        assert data == second[name], f"{name} differs between two identical runs"
    plan = ns.SplitPlan.load(tmp_path / "a" / "plan" / "plan.json")
    assert len(plan.meta["units"]) == 3 and all(u["score"] for u in plan.meta["units"])
