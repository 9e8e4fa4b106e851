"""``neuronsplit scan -> detect -> split -> verify`` end to end on one's own model: a
torchvision ResNet-18 with a ``torch.save``'d state dict and a timm ResNet with a safetensors
file, both random-init with 3 classes, on an ImageFolder tree of 32 px PNGs the test writes.
The split saved by the commands loads with ``ns.load`` and computes what the model computes."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchvision
from safetensors.torch import save_file

import neuronsplit as ns
from neuronsplit.loading import load_timm_model
from neuronsplit.plan import SplitPlan

# random weights: a unit counts as relevant to a class at a low bar, every pair that is not
# identical is polysemantic (gamma=1), so the commands have units to split
LOOSE = ["--tau", "0.01", "--p", "0.34", "--gamma", "1"]


def _pipeline(
    run: Callable[..., Any], tmp: Path, images: Path, model: list[str], layer: str,
    scan_extra: list[str] = (),  # type: ignore[assignment]
) -> dict[str, object]:  # fmt: skip
    """scan, detect, split and verify; asserts what every model shares, returns the files."""
    scan_file = tmp / "scan.safetensors"
    r = run("scan", *model, "--image-size", 32, "--data", images, "--layers", layer,
            "--out", scan_file, "--batch-size", 8, "--no-progress", *scan_extra)  # fmt: skip
    assert r.code == 0, r.err
    assert "scanned 18 images of 3 classes at 1 layer(s)" in r.out
    result = ns.ScanResult.load(scan_file)
    assert list(result.layers) == [layer] and result.num_samples == 18
    classes = sorted(p.name for p in images.iterdir())
    assert result.meta["command"]["classes"] == classes
    assert result.meta["command"]["data"] == str(images.resolve())

    r = run("detect", "--scan", scan_file, *LOOSE, "--rows", 2)
    assert r.code == 0, r.err
    doc = json.loads((tmp / "scan.polysemantic.json").read_text())
    expected = ns.find_polysemantic(result, tau=0.01, p=0.34, gamma=1.0)
    assert [(u["layer"], u["unit"]) for u in doc["units"]] == [(u.layer, u.unit) for u in expected]
    assert len(expected) > 3
    top = expected[0]
    names = f"{classes[top.top_pair.class_a]} / {classes[top.top_pair.class_b]}"
    assert re.search(rf"{top.layer}\s+{top.unit}\s+{top.min_cosine:.3f}\s+{names}", r.out), r.out
    assert f"... and {len(expected) - 2} more" in r.out

    out = tmp / "split"
    r = run("split", "--scan", scan_file, *LOOSE, "--top", 3, "--out", out, "--no-progress",
            "--batch-size", 8, "--verify-batches", 3)  # fmt: skip
    assert r.code == 0, r.err
    assert sorted(p.name for p in out.iterdir()) == [
        "plan.json", "plan.safetensors", "weights.safetensors"
    ]  # fmt: skip
    plan = SplitPlan.load(out / "plan.json")
    assert {(s.layer, s.unit) for s in plan.splits} == {(u.layer, u.unit) for u in expected[:3]}
    assert "3 unit(s) split in 1 layer(s)" in r.out and "equivalent on 3 batch(es)" in r.out

    r = run("verify", "--split", out)
    assert r.code == 0, r.err
    assert "equivalent" in r.out and "PASSED" in r.out
    return {"scan": scan_file, "split": out}


def test_torchvision_resnet18_with_a_pth_file(
    run: Callable[..., Any], images: Path, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    source = torchvision.models.resnet18(num_classes=3)
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    model = ["--model", "torchvision:resnet18", "--weights", tmp_path / "r18.pth",
             "--num-classes", 3]  # fmt: skip
    files = _pipeline(run, tmp_path, images, model, "layer4.1.conv2")
    split = ns.load(files["split"], source.eval())
    x = torch.rand(4, 3, 32, 32)
    assert ns.verify_equivalence(source, split, x).passed
    with torch.no_grad():  # the saved split holds the file's weights, not fresh random ones
        torch.testing.assert_close(split(x), source(x), rtol=1e-5, atol=1e-6)

    # verify against other weights: the check runs and fails (exit 1, not a user error)
    torch.manual_seed(1)
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), tmp_path / "other.pth")
    r = run("verify", "--split", files["split"], *model[:2], "--weights", tmp_path / "other.pth",
            "--num-classes", 3, "--data", images)  # fmt: skip
    assert r.code == 1
    assert "is NOT equivalent to 'torchvision:resnet18'" in r.err and "Traceback" not in r.err


def test_timm_resnet_with_safetensors_and_zennit_relevance(
    run: Callable[..., Any], images: Path, tmp_path: Path
) -> None:
    source = load_timm_model("test_resnet", num_classes=3)
    with torch.no_grad():  # timm zero-inits each block's last BN; as trained, its blocks work
        for name, param in source.named_parameters():
            if name.endswith("bn2.weight"):
                param.fill_(1.0)
    weights = tmp_path / "tr.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(weights))
    model = ["--model", "test_resnet", "--weights", weights, "--num-classes", 3]
    files = _pipeline(run, tmp_path, images, model, "layer4.0.conv2",
                      ["--relevance", "EpsilonPlusFlat"])  # fmt: skip
    assert ns.ScanResult.load(files["scan"]).relevance.startswith("zennit:EpsilonPlusFlat")
    split = ns.load(files["split"], source)
    assert ns.verify_equivalence(source, split, torch.rand(4, 3, 32, 32)).passed
    assert ns.nn.plan_of(split).layers == ("layer4.0.conv2",)

    # without labels: split --unsupervised reuses discover, and verify reads its options
    out = tmp_path / "unsupervised"
    r = run("split", "--unsupervised", *model, "--image-size", 32, "--data", images,
            "--layers", "layer2.0.conv1", "--out", out, "--min-silhouette", 0, "--top-n", 16,
            "--no-progress")  # fmt: skip
    assert r.code == 0, r.err
    plan = SplitPlan.load(out / "plan.json")
    assert len(plan) > 0 and plan.layers == ("layer2.0.conv1",), r.out
    assert plan.meta["discover_command"]["weights"] == str(weights.resolve())
    assert "units split in 1 layer(s)" in r.out
    assert run("verify", "--split", out).code == 0
