"""Exactness on timm models at random init (no downloads): ResNet-50, ViT-B/16, DINOv2."""

from __future__ import annotations

import random

import pytest
import torch

from helpers import assert_unchanged, layer_sizes, random_split, randomize_norms, snapshot
from neuronsplit.nn import apply_plan, get_split_layer, verify_equivalence
from neuronsplit.nn.layer_scale import folded_layer_scales
from neuronsplit.plan import SplitPlan

timm = pytest.importorskip("timm")

pytestmark = pytest.mark.slow


def _plan(model, layers: dict[str, int], seed: int = 0) -> SplitPlan:
    """``layers`` maps name -> number of units to split there (random K and assignment; the
    merge form alternates between layers, one form per layer)."""
    rng = random.Random(seed)
    mods = dict(model.named_modules())
    splits = []
    for i, (name, n_units) in enumerate(layers.items()):
        n_in, n_out = layer_sizes(mods[name])
        merge = ("overlap", "disjoint")[i % 2]
        for unit in rng.sample(range(n_out), n_units):
            splits.append(random_split(rng, name, unit, n_in, rng.choice([2, 3, 4]), merge))
    return SplitPlan(splits)


def _inputs(n_batches: int = 2, batch: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    return [torch.randn(batch, 3, 224, 224, generator=g) for _ in range(n_batches)]


def _check(model, plan: SplitPlan) -> None:
    model = randomize_norms(model).eval()
    snap = snapshot(model)
    split = apply_plan(model, plan)
    report = verify_equivalence(model, split, _inputs())
    assert report.passed, str(report)
    assert [r.dtype for r in report.rows] == ["float32", "float64"]
    for row in report.rows:
        assert row.n_batches == 2
        assert row.output_max_ref > 0.1, "degenerate output would hide a wrong split"
        assert row.output_rel <= (1e-10 if row.dtype == "float64" else 1e-5)
        assert {lay.layer for lay in row.layers} == set(plan.layers)
        for lay in row.layers:
            assert lay.max_ref > 0
            assert len(lay.split_units) == plan.layer(lay.layer).num_units
    assert_unchanged(model, snap)
    folded = folded_layer_scales(split)
    for name, ls in plan.by_layer().items():
        layer = get_split_layer(split, name)
        assert layer.split_units == tuple(sorted(ls.units.tolist()))
        assert layer.form == ls.merge
        back = layer.unsplit()
        original = model.get_submodule(name)
        weight, bias = original.weight, original.bias
        if name in folded:  # LayerScale folded in: the unsplit layer is gamma * the original
            gamma = model.get_submodule(folded[name]).gamma
            weight, bias = weight * gamma[:, None], None if bias is None else bias * gamma
        assert torch.equal(back.weight, weight)
        assert (back.bias is None) == (bias is None)
        if back.bias is not None:
            assert torch.equal(back.bias, bias)
    return split


def test_resnet50_exact() -> None:
    model = timm.create_model("resnet50", pretrained=False)
    plan = _plan(model, {"conv1": 2, "layer1.0.conv2": 2, "layer4.2.conv3": 3, "fc": 2})
    _check(model, plan)


def test_vit_b16_exact() -> None:
    model = timm.create_model("vit_base_patch16_224", pretrained=False)
    layers = {
        "blocks.3.mlp.fc1": 2,
        "blocks.3.mlp.fc2": 2,
        "blocks.3.attn.proj": 2,
        "blocks.3.attn.qkv": 3,
    }
    _check(model, _plan(model, layers, seed=1))


def test_dinov2_exact_with_layerscale() -> None:
    model = timm.create_model(
        "vit_base_patch14_dinov2", pretrained=False, img_size=224, num_classes=10
    )
    assert type(model.blocks[5].ls2).__name__ == "LayerScale"
    layers = {"blocks.5.mlp.fc2": 3, "blocks.5.mlp.fc1": 2, "blocks.1.attn.proj": 2}
    split = _check(model, _plan(model, layers, seed=2))
    assert folded_layer_scales(split) == {
        "blocks.5.mlp.fc2": "blocks.5.ls2", "blocks.1.attn.proj": "blocks.1.ls1",
    }  # fmt: skip
