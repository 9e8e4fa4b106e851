"""ELUDe's discover: planted ground truth, the reservoir, exact whole-layer splits, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

import neuronsplit as ns
from neuronsplit.errors import (
    InputShapeError,
    InvalidArgumentError,
    NonFiniteError,
    PlanError,
    UnknownLayerError,
    UnsupportedLayerError,
)
from neuronsplit.evaluation import planted_concepts, recovery
from neuronsplit.methods.elude import TopInputs, span_coordinates

from ..helpers import assert_unchanged, hook_counts, snapshot


def _batches(data: torch.Tensor, size: int = 256) -> list[torch.Tensor]:
    return [data[i : i + size] for i in range(0, len(data), size)]


# ------------------------------------------------------------------ planted ground truth
@pytest.fixture(scope="module")
def recovered() -> list:
    rows = []
    for seed in range(10):
        planted = planted_concepts([2, 3, 4, 1, 1], seed=seed)
        plan = ns.discover(planted.model, _batches(planted.data), ["0"], progress=False, seed=seed)
        rows.extend(recovery(plan, planted))
    return rows


def test_planted_data_is_clean_ground_truth() -> None:
    # precondition of the recovery test: every unit's top samples come from its own concepts
    planted = planted_concepts([2, 3, 4, 1, 1], seed=3)
    acts = planted.model[0](planted.data).detach()
    first = 0
    for unit, groups in enumerate(planted.groups):
        own = set(range(first, first + len(groups)))
        first += len(groups)
        top = planted.concept_of_sample[acts[:, unit].topk(64).indices].tolist()
        assert set(top) <= own
        assert len(set(top)) == len(groups)  # every planted concept is among the top samples


@pytest.mark.parametrize("k", [2, 3, 4])
def test_planted_concepts_are_recovered(recovered: list, k: int) -> None:
    rows = [r for r in recovered if r.planted_k == k]
    aris = [r.ari for r in rows]
    assert len(rows) == 10
    assert np.mean(aris) >= 0.95
    assert np.mean([r.found_k == k for r in rows]) >= 0.9


def test_monosemantic_units_are_left_alone(recovered: list) -> None:
    mono = [r for r in recovered if r.planted_k == 1]
    assert len(mono) == 20
    assert np.mean([r.found_k == 1 for r in mono]) >= 0.95


def test_shuffled_assignment_scores_low() -> None:
    # the ARI is not trivially 1: a plan with the assignment permuted is caught
    planted = planted_concepts([3], seed=0)
    plan = ns.discover(planted.model, _batches(planted.data), ["0"], progress=False)
    split = plan.layer("0")
    row = split.assignment[0].long()
    wrong = ns.LayerSplit("0", [0], row[torch.randperm(row.numel())][None], split.num_subunits)
    assert recovery(ns.SplitPlan([wrong]), planted)[0].ari < 0.5
    assert recovery(plan, planted)[0].ari == 1.0


def test_units_all_forces_a_split_and_a_list_restricts() -> None:
    planted = planted_concepts([2, 1, 1], seed=1)
    batches = _batches(planted.data)
    default = ns.discover(planted.model, batches, ["0"], progress=False)
    forced = ns.discover(planted.model, batches, ["0"], units="all", progress=False)
    only = ns.discover(planted.model, batches, ["0"], units=[1, 2], progress=False)
    assert default.layer("0").units.tolist() == [0]
    assert len(forced.layer("0").units) > 1
    assert "0" not in only.layers  # unit 0, the polysemantic one, was not examined
    assert only.meta["elude"]["layers"]["0"]["examined"] == 2


def test_deterministic_for_a_seed() -> None:
    planted = planted_concepts([2, 3], seed=2)
    batches = _batches(planted.data)
    a = ns.discover(planted.model, batches, ["0"], progress=False, seed=4)
    b = ns.discover(planted.model, batches, ["0"], progress=False, seed=4)
    assert a == b


# ------------------------------------------------------------------ the reservoir
@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("per_image", [False, True])
def test_reservoir_keeps_the_true_top_tokens(per_image: bool, batch: int) -> None:
    torch.manual_seed(0)
    layer = nn.Linear(5, 7)
    x = torch.randn(40, 6, 5)
    top = TopInputs(layer, 8, slice(1, None), per_image=per_image)
    for chunk in x.split(batch):  # one image per batch: rows are freed and reused many times
        top.update(chunk, layer(chunk))
    out = layer(x)[:, 1:].detach()
    flat_x = x[:, 1:].reshape(-1, 5)
    for unit in range(7):
        if per_image:
            values, pos = out[..., unit].max(1)
            best = values.topk(8)
            want = x[:, 1:][best.indices, pos[best.indices]]
        else:
            best = out[..., unit].reshape(-1).topk(8)
            want = flat_x[best.indices]
        assert torch.allclose(top.values[unit].float(), best.values)
        assert torch.equal(top.vectors(unit), want)
    assert top.live <= top.pool.shape[0] <= 7 * 8  # rows are reused, never more than C * n


def test_reservoir_conv_patches_match_the_output() -> None:
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 4, 3, padding=1, stride=2)
    x = torch.randn(10, 3, 9, 9)
    top = TopInputs(conv, 5)
    for chunk in x.split(3):
        top.update(chunk, conv(chunk))
    w = conv.weight.detach().reshape(4, -1)
    for unit in range(4):
        # a kept patch times the unit's weights is the kept activation
        z = top.vectors(unit) @ w[unit] + conv.bias[unit]
        assert torch.allclose(z.double(), top.values[unit], atol=1e-5)
        best = conv(x)[:, unit].detach().flatten(1).amax(1).topk(5).values
        assert torch.allclose(top.values[unit].float(), best, atol=1e-6)


def test_fewer_samples_than_slots() -> None:
    layer = nn.Linear(3, 2)
    top = TopInputs(layer, 10)
    x = torch.randn(4, 3)
    top.update(x, layer(x))
    assert top.kept(0) == 4 and top.vectors(1).shape == (4, 3)


def test_span_coordinates_keep_distances() -> None:
    v = torch.randn(3, 12, 50, dtype=torch.float64)
    c = span_coordinates(v)
    assert torch.allclose(torch.cdist(c, c), torch.cdist(v, v), atol=1e-8)


# ------------------------------------------------------------------ exact whole-layer splits
def _tiny_vit(**kw) -> VisionTransformer:
    torch.manual_seed(0)
    vit = VisionTransformer(
        img_size=8, patch_size=2, in_chans=1, num_classes=5, embed_dim=16, depth=2, num_heads=2,
        mlp_ratio=2.0, **kw,
    )  # fmt: skip
    return vit.eval()


@pytest.mark.parametrize("tokens", ["all", "cls", "patch"])
def test_whole_vit_layers_split_exactly(tokens: str) -> None:
    vit = _tiny_vit(reg_tokens=2)
    images = torch.randn(300, 1, 8, 8)
    layers = ["blocks.0.mlp.fc1", "blocks.0.mlp.fc2", "blocks.1.attn.proj"]
    snap, hooks = snapshot(vit), hook_counts(vit)
    plan = ns.discover(vit, _batches(images, 64), layers, units="all", tokens=tokens,
                       progress=False)  # fmt: skip
    assert_unchanged(vit, snap)
    assert hook_counts(vit) == hooks
    assert set(plan.layers) == set(layers)
    assert len(plan.layer("blocks.0.mlp.fc1").units) > 16  # most of the 32 hidden units
    split = ns.apply_plan(vit, plan)
    report = ns.verify_equivalence(vit, split, images[:32], dtype=(torch.float64, torch.float32))
    assert report.passed, report


def test_conv_layers_are_read_per_image() -> None:
    from neuronsplit.demo import DEMO_LAYER, digits_loader, get_demo_model

    model = get_demo_model()
    conv = next(name for name, m in model.named_modules() if isinstance(m, nn.Conv2d))
    plan = ns.discover(model, digits_loader("train", 256), [conv, DEMO_LAYER], units="all",
                       progress=False)  # fmt: skip
    assert plan.meta["elude"]["layers"][conv]["samples_seen"] == 1400  # images, not positions
    split = ns.apply_plan(model, plan)
    images = next(iter(digits_loader("test", 64)))[0]
    assert ns.verify_equivalence(model, split, images).passed


# ------------------------------------------------------------------ bad input
def test_dead_and_constant_units_are_left_alone() -> None:
    layer = nn.Linear(6, 3)
    with torch.no_grad():
        layer.weight[1] = -1.0  # never active on positive inputs
        layer.bias[1] = -1.0
        layer.weight[2] = 0.0  # constant: every sample looks the same
        layer.bias[2] = 1.0
    model = nn.Sequential(layer, nn.ReLU())
    plan = ns.discover(model, [torch.rand(200, 6)], ["0"], units=[1, 2], progress=False)
    assert plan.meta["elude"]["layers"]["0"]["left_alone"] == {"few_active": 1, "constant": 1}


def test_too_few_samples_gives_k1() -> None:
    planted = planted_concepts([3], seed=0)
    plan = ns.discover(planted.model, [planted.data[:6]], ["0"], progress=False)
    assert len(plan) == 0
    assert plan.meta["elude"]["layers"]["0"]["left_alone"] == {"few_active": 1}


def test_nan_activations_raise() -> None:
    model = nn.Sequential(nn.Linear(3, 2))
    data = torch.randn(10, 3)
    data[4, 1] = float("nan")
    with pytest.raises(NonFiniteError):
        ns.discover(model, [data], ["0"], progress=False)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"layers": ["nope"]}, UnknownLayerError),
        ({"layers": ["1"]}, UnsupportedLayerError),
        ({"tokens": "cls"}, InvalidArgumentError),
        ({"tokens": "tokens"}, InvalidArgumentError),
        ({"units": [7]}, InvalidArgumentError),
        ({"units": "some"}, InvalidArgumentError),
        ({"max_concepts": 1}, InvalidArgumentError),
        ({"top_n": 5}, InvalidArgumentError),
        ({"margin": 1.0}, InvalidArgumentError),
        ({"samples": "pixel"}, InvalidArgumentError),
        ({"loader": []}, InputShapeError),
    ],
)
def test_bad_arguments(kwargs: dict, error: type) -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU())
    args = {"loader": [torch.randn(20, 3)], "layers": ["0"], **kwargs}
    with pytest.raises(error):
        ns.discover(model, args.pop("loader"), args.pop("layers"), progress=False, **args)


def test_cls_without_class_token_raises() -> None:
    vit = _tiny_vit(class_token=False, global_pool="avg")
    with pytest.raises(InvalidArgumentError, match="class token"):
        ns.discover(vit, [torch.randn(4, 1, 8, 8)], ["blocks.0.mlp.fc1"], tokens="cls",
                    progress=False)  # fmt: skip


def test_split_layers_are_refused() -> None:
    planted = planted_concepts([2], seed=0)
    plan = ns.discover(planted.model, _batches(planted.data), ["0"], progress=False)
    split = ns.apply_plan(planted.model, plan)
    with pytest.raises(PlanError, match="already split"):
        ns.discover(split, _batches(planted.data), ["0"], progress=False)


def test_layer_run_twice_is_refused() -> None:
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    with pytest.raises(UnsupportedLayerError, match="2 times"):
        ns.discover(model, [torch.randn(8, 4)], ["0"], progress=False)


def test_layer_scale_sign_sets_the_ranking() -> None:
    layer = nn.Linear(4, 2)
    x = torch.randn(50, 4)
    top = TopInputs(layer, 5, sign=torch.tensor([1.0, -1.0]))
    top.update(x, layer(x))
    z = layer(x).detach()
    assert torch.allclose(top.values[0].float(), z[:, 0].topk(5).values)
    assert torch.allclose(top.values[1].float(), (-z[:, 1]).topk(5).values)  # gamma < 0


def test_dinov2_style_layer_scale_with_negative_gammas() -> None:
    vit = _tiny_vit(reg_tokens=2, init_values=1.0)
    with torch.no_grad():
        for block in vit.blocks:
            block.ls1.gamma.uniform_(-1, 1)
            block.ls2.gamma.uniform_(-1, 1)
    images = torch.randn(300, 1, 8, 8)
    layers = ["blocks.0.mlp.fc2", "blocks.1.attn.proj"]
    plan = ns.discover(vit, _batches(images, 64), layers, units="all", progress=False)
    split = ns.apply_plan(vit, plan)
    assert isinstance(split.blocks[0].ls2, nn.Identity)  # folded: subunits are residual writes
    report = ns.verify_equivalence(vit, split, images[:32], dtype=(torch.float64, torch.float32))
    assert report.passed, report


def test_worker_processes_give_the_same_plan() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 300), nn.ReLU())  # >= 256 units: clustered in workers
    data = torch.randn(400, 12)
    one = ns.discover(model, _batches(data, 100), ["0"], units="all", n_jobs=1, progress=False)
    two = ns.discover(model, _batches(data, 100), ["0"], units="all", n_jobs=2, progress=False)
    assert len(one.layer("0").units) > 100
    assert one == two


@pytest.mark.parametrize("samples", ["token", "image"])
def test_negative_layer_scale_ranks_by_the_write_per_image_too(samples: str) -> None:
    vit = _tiny_vit(init_values=1.0)
    with torch.no_grad():
        vit.blocks[1].ls2.gamma.copy_(torch.where(torch.arange(16) % 2 == 0, -1.0, 1.0))
    images = torch.randn(300, 1, 8, 8)
    plan = ns.discover(vit, _batches(images, 64), ["blocks.1.mlp.fc2"], units="all",
                       samples=samples, progress=False)  # fmt: skip
    units = plan.layer("blocks.1.mlp.fc2").units.tolist()
    assert any(u % 2 == 0 for u in units)  # negative-gamma units are read, not left alone
    assert plan.meta["elude"]["layers"]["blocks.1.mlp.fc2"]["left_alone"].get("few_active", 0) == 0


@pytest.mark.parametrize("padding", ["same", "valid", 1])
def test_conv_string_padding(padding) -> None:
    torch.manual_seed(2)
    conv = nn.Conv2d(3, 4, 4, padding=padding)  # even kernel: asymmetric "same" padding
    x = torch.randn(12, 3, 7, 7)
    top = TopInputs(conv, 4)
    top.update(x, conv(x))
    w = conv.weight.detach().reshape(4, -1)
    for unit in range(4):
        z = top.vectors(unit) @ w[unit] + conv.bias[unit]
        assert torch.allclose(z.double(), top.values[unit], atol=1e-5)
