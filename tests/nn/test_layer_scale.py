"""LayerScale folded into a split ``mlp.fc2`` / ``attn.proj`` of a timm ViT (DINOv2 style).

The expected values come from the original model, computed without any neuronsplit code: its
logits, and the block's residual write ``ls2(fc2(h))`` / ``ls1(proj(h))`` for the input ``h`` the
original layer sees. The subunits of a folded split layer must add up to that write; the split
model must equal the original (float64 1e-12, float32 1e-5) on random images and on digits.
"""

from __future__ import annotations

import copy

import pytest
import torch
from timm.layers import LayerScale
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

import neuronsplit as ns
from helpers import assert_unchanged, rel_err, snapshot
from neuronsplit.demo.data import load_digits
from neuronsplit.errors import ArgumentTypeError, PlanMismatchError
from neuronsplit.nn import apply_plan, get_split_layer, load, save, verify_equivalence
from neuronsplit.nn.io import original_shapes
from neuronsplit.nn.layer_scale import (
    FoldedLayerScale,
    folded_layer_scales,
    layer_scale_pairs,
    with_fold_rounding,
)
from neuronsplit.plan import LayerSplit, SplitPlan

FC2, PROJ = "blocks.0.mlp.fc2", "blocks.1.attn.proj"


def _vit(init_values: float | None = 0.5, dtype=torch.float64, seed: int = 0) -> nn.Module:
    """The tiny DINOv2-like ViT (LayerScale, register tokens) with O(1) weights and random
    gammas of both signs (timm's init would make every activation ~0.02)."""
    torch.manual_seed(seed)
    model = VisionTransformer(
        img_size=8, patch_size=2, in_chans=1, num_classes=5, embed_dim=16, depth=2,
        num_heads=2, init_values=init_values, reg_tokens=2,
    )  # fmt: skip
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.copy_(torch.rand(p.shape) * 2 - 0.5)
            elif p.dim() > 1:
                p.copy_(torch.randn(p.shape) / p[0].numel() ** 0.5)
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape))
            else:  # LayerNorm weights
                p.copy_(1 + 0.1 * torch.randn(p.shape))
    return model.to(dtype).eval()


def _plan(model: nn.Module, seed: int = 1, layers=(FC2, PROJ)) -> SplitPlan:
    """Random units, K in 2..4 and assignments; fc2 disjoint, proj overlap."""
    g = torch.Generator().manual_seed(seed)
    splits = []
    for i, name in enumerate(layers):
        layer = model.get_submodule(name)
        units = torch.randperm(layer.out_features, generator=g)[: 5 - i]
        ks = torch.randint(2, 5, (len(units),), generator=g)
        assign = torch.stack(
            [torch.randint(-1, int(k), (layer.in_features,), generator=g) for k in ks]
        )
        merge = ("disjoint", "overlap")[i % 2]
        splits.append(LayerSplit(name, units, assign, ks, merge=merge))
    return SplitPlan(splits)


def _images(dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return torch.randn(16, 1, 8, 8, generator=g).to(dtype)


def _digits(dtype=torch.float64) -> torch.Tensor:
    return load_digits("test").images[:64].to(dtype)


def _layer_input(model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    seen = []
    handle = model.get_submodule(name).register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen[0]


# --------------------------------------------------------------------------- structure
def test_only_the_planned_layer_scales_are_folded() -> None:
    model = _vit()
    before = snapshot(model)
    split = apply_plan(model, _plan(model))
    assert_unchanged(model, before)
    assert layer_scale_pairs(model) == {
        "blocks.0.attn.proj": "blocks.0.ls1", "blocks.0.mlp.fc2": "blocks.0.ls2",
        "blocks.1.attn.proj": "blocks.1.ls1", "blocks.1.mlp.fc2": "blocks.1.ls2",
    }  # fmt: skip
    for name in ("blocks.0.ls2", "blocks.1.ls1"):
        folded = split.get_submodule(name)
        assert isinstance(folded, FoldedLayerScale) and isinstance(folded, nn.Identity)
        assert folded.dim == 16
    for name in ("blocks.0.ls1", "blocks.1.ls2"):  # their linear is not split: kept
        assert type(split.get_submodule(name)) is LayerScale
        assert torch.equal(split.get_submodule(name).gamma, model.get_submodule(name).gamma)
    assert all(type(b.ls1) is LayerScale and type(b.ls2) is LayerScale for b in model.blocks)
    assert folded_layer_scales(split) == {FC2: "blocks.0.ls2", PROJ: "blocks.1.ls1"}
    keys = split.state_dict().keys()
    assert "blocks.0.ls2.gamma" not in keys and "blocks.1.ls1.gamma" not in keys
    assert "blocks.0.ls1.gamma" in keys and "blocks.1.ls2.gamma" in keys
    # every parameter outside the two split layers and the folded scales is the original's
    orig = dict(model.named_parameters())
    for key, p in split.named_parameters():
        if not key.startswith((FC2, PROJ)):
            assert torch.equal(p, orig[key]), key


def test_the_split_rows_are_the_scaled_rows() -> None:
    """Folded rows = gamma x the rows of the unfolded split (bitwise: the same product)."""
    model = _vit()
    plan = _plan(model)
    folded, plain = apply_plan(model, plan), apply_plan(model, plan, fold_layer_scale=False)
    for name, scale in ((FC2, "blocks.0.ls2"), (PROJ, "blocks.1.ls1")):
        a, b = get_split_layer(folded, name), get_split_layer(plain, name)
        gamma = model.get_submodule(scale).gamma.detach()
        rows = torch.cat([gamma, gamma[b.merge.index]])  # an extra row belongs to its unit
        assert torch.equal(a.subunits.weight, b.subunits.weight * rows[:, None])
        assert torch.equal(a.subunits.bias, b.subunits.bias * rows)
        linear = model.get_submodule(name)
        assert torch.equal(a.unsplit().weight, linear.weight * gamma[:, None])
        assert torch.equal(b.unsplit().weight, linear.weight)  # the unfolded split as before
    assert type(plain.blocks[0].ls2) is LayerScale


# --------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("data", [_images, _digits], ids=["random", "digits"])
def test_split_model_equals_the_original(data) -> None:
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        model = _vit(dtype=dtype)
        split = apply_plan(model, _plan(model))
        x = data(dtype)
        with torch.no_grad():
            y = model(x)
            assert y.abs().max() > 0.1  # a degenerate output would hide a wrong fold
            assert rel_err(y, split(x)) <= tol, dtype
        with torch.enable_grad():  # rows computed, gradients through them
            xs = x.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(split(xs)[:, 2].sum(), xs)
            xo = x.clone().requires_grad_(True)
            (ref,) = torch.autograd.grad(model(xo)[:, 2].sum(), xo)
        assert rel_err(ref, grad) <= tol * 10, dtype


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_verify_equivalence_passes_and_catches_a_wrong_fold(dtype) -> None:
    model = _vit(dtype=dtype)
    split = apply_plan(model, _plan(model))
    report = verify_equivalence(model, split, [_images(), _digits()])
    assert report.passed, str(report)
    for row in report.rows:
        assert row.output_rel <= (1e-12 if row.dtype == "float64" else 1e-5), str(report)
        assert {lay.layer for lay in row.layers} == {FC2, PROJ}
        assert all(lay.calls == 2 and lay.max_ref > 0.1 for lay in row.layers)
    # the float64 reference of a float32 model shares the rounding of gamma * W, nothing more:
    wrong = copy.deepcopy(split)
    with torch.no_grad():  # gamma applied twice to the first rows of the fc2 layer
        layer = get_split_layer(wrong, FC2)
        gamma = model.blocks[0].ls2.gamma.detach()
        layer.subunits.weight[:16] *= gamma[:, None]
    assert not verify_equivalence(model, wrong, _images()).passed


def test_fold_rounding_reference_keeps_the_layer_scales() -> None:
    model = _vit(dtype=torch.float32)
    split = apply_plan(model, _plan(model))
    folded = folded_layer_scales(split)
    ref = with_fold_rounding(copy.deepcopy(model).double(), model, folded)
    assert type(ref.blocks[0].ls2) is LayerScale
    x = _images()
    with torch.no_grad():
        assert rel_err(split.double()(x), ref(x)) <= 1e-12
        assert rel_err(copy.deepcopy(model).double()(x), ref(x)) > 1e-12  # the rounding
    same = with_fold_rounding(copy.deepcopy(model), model, folded)  # same dtype: unchanged
    assert all(
        torch.equal(a, b) for a, b in zip(same.parameters(), model.parameters(), strict=True)
    )


def test_subunits_add_up_to_the_residual_write() -> None:
    model = _vit()
    split = apply_plan(model, _plan(model))
    x = _images()
    for name, scale in ((FC2, "blocks.0.ls2"), (PROJ, "blocks.1.ls1")):
        h = _layer_input(model, name, x)
        with torch.no_grad():  # the block's write to the residual stream, in the original
            write = model.get_submodule(scale)(model.get_submodule(name)(h))
            layer = get_split_layer(split, name)
            rows = layer.subunits(h)
        assert rel_err(write, layer.merge(rows)) <= 1e-12
        for unit in layer.split_units:
            k_all = [*range(layer.num_subunits(unit)), -1]
            total = sum(
                layer.merge_coefficient(unit, k)
                * sum(w * rows[..., c] for c, w in layer.subunit_channels(unit, k))
                for k in k_all
            )
            assert rel_err(write[..., unit], total) <= 1e-12, (name, unit)


# --------------------------------------------------------------------------- what is not folded
def test_block_with_layer_scale_but_unsplit_fc2_is_unchanged() -> None:
    model = _vit()
    split = apply_plan(model, _plan(model, layers=(FC2,)))
    assert type(split.blocks[0].ls1) is LayerScale
    for key, p in split.blocks[1].state_dict().items():
        assert torch.equal(p, model.blocks[1].state_dict()[key]), key
    assert type(split.blocks[1].ls2) is LayerScale and type(split.blocks[1].ls1) is LayerScale
    x = _images()
    with torch.no_grad():
        assert rel_err(model(x), split(x)) <= 1e-12


def test_model_without_layer_scale_is_split_as_before() -> None:
    model = _vit(init_values=None)
    assert layer_scale_pairs(model) == {}
    plan = _plan(model)
    split, plain = apply_plan(model, plan), apply_plan(model, plan, fold_layer_scale=False)
    assert not any(isinstance(m, FoldedLayerScale) for m in split.modules())
    assert all(type(b.ls1) is nn.Identity and type(b.ls2) is nn.Identity for b in split.blocks)
    for (k, a), (k2, b) in zip(split.state_dict().items(), plain.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)
    for name in (FC2, PROJ):
        assert torch.equal(get_split_layer(split, name).unsplit().weight,
                           model.get_submodule(name).weight)  # fmt: skip
    assert verify_equivalence(model, split, _images()).passed


def test_shared_modules_and_unknown_blocks_keep_their_layer_scale() -> None:
    x = _images()
    shared_scale = _vit()
    shared_scale.blocks[1].ls2 = shared_scale.blocks[0].ls2  # one LayerScale, two paths
    shared_linear = _vit()
    shared_linear.blocks[1].mlp.fc2 = shared_linear.blocks[0].mlp.fc2

    class OwnForward(Block):
        def forward(self, x, attn_mask=None, is_causal=False):
            return super().forward(x)

    subclass = _vit()
    own = OwnForward(16, 2, qkv_bias=True, init_values=0.5).double().eval()
    own.load_state_dict(subclass.blocks[0].state_dict())
    subclass.blocks[0] = own
    for model in (shared_scale, shared_linear, subclass):
        split = apply_plan(model, _plan(model, layers=(FC2,)))
        assert not any(isinstance(m, FoldedLayerScale) for m in split.modules())
        with torch.no_grad():
            assert rel_err(model(x), split(x)) <= 1e-12


def test_inplace_layer_scale_is_folded() -> None:
    model = _vit()
    for block in model.blocks:
        block.ls1.inplace = block.ls2.inplace = True
    split = apply_plan(model, _plan(model))
    assert isinstance(split.blocks[0].ls2, FoldedLayerScale)
    x = _images()
    with torch.no_grad():
        assert rel_err(model(x), split(x)) <= 1e-12
    assert verify_equivalence(model, split, x).passed


def test_train_mode_and_meta_device() -> None:
    model = _vit().train()
    split = apply_plan(model, _plan(model))
    assert split.training and get_split_layer(split, FC2).training
    with torch.device("meta"):
        meta = VisionTransformer(img_size=8, patch_size=2, in_chans=1, num_classes=5,
                                 embed_dim=16, depth=2, num_heads=2, init_values=0.5)  # fmt: skip
    meta_split = apply_plan(meta, _plan(model))
    assert isinstance(meta_split.blocks[0].ls2, FoldedLayerScale)
    assert get_split_layer(meta_split, FC2).subunits.weight.is_meta


def test_fold_layer_scale_must_be_a_bool() -> None:
    model = _vit()
    with pytest.raises(ArgumentTypeError, match="fold_layer_scale must be True or False"):
        apply_plan(model, _plan(model), fold_layer_scale="yes")


# --------------------------------------------------------------------------- save / load
def test_save_load_round_trip_of_a_folded_model(tmp_path) -> None:
    model = _vit()
    split = apply_plan(model, _plan(model))
    assert original_shapes(split) == original_shapes(model)  # gamma counted, original rows
    save(split, tmp_path)
    meta = SplitPlan.load(tmp_path / "plan.json").meta
    assert meta["folded_layer_scales"] == {FC2: "blocks.0.ls2", PROJ: "blocks.1.ls1"}
    fresh = _vit(seed=3)  # another instance of the architecture: every weight comes from the file
    before = snapshot(fresh)
    loaded = load(tmp_path, fresh)
    assert_unchanged(fresh, before)
    assert isinstance(loaded.blocks[0].ls2, FoldedLayerScale)
    assert type(loaded.blocks[0].ls1) is LayerScale
    state = loaded.state_dict()
    assert state.keys() == split.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in split.state_dict().items())
    x = _images()
    with torch.no_grad():
        assert torch.equal(loaded(x), split(x))
    assert verify_equivalence(model, loaded, x).passed


def test_an_unfolded_save_loads_unfolded(tmp_path) -> None:
    """Files written with the LayerScale kept (neuronsplit 0.2, or fold_layer_scale=False) hold
    its gamma; they load as they were saved."""
    model = _vit()
    plain = apply_plan(model, _plan(model), fold_layer_scale=False)
    save(plain, tmp_path)
    loaded = load(tmp_path, _vit(seed=3))
    assert type(loaded.blocks[0].ls2) is LayerScale
    assert not any(isinstance(m, FoldedLayerScale) for m in loaded.modules())
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in plain.state_dict().items())


def test_load_onto_another_architecture_names_the_difference(tmp_path) -> None:
    model = _vit()
    save(apply_plan(model, _plan(model)), tmp_path)
    other = VisionTransformer(img_size=8, patch_size=2, in_chans=1, num_classes=5,
                              embed_dim=16, depth=2, num_heads=2, init_values=None,
                              reg_tokens=2).double()  # fmt: skip
    with pytest.raises(PlanMismatchError, match="parameter shapes differ") as err:
        load(tmp_path, other)
    for gamma in ("0.ls1", "0.ls2", "1.ls1", "1.ls2"):  # the folded ones included
        assert f'"blocks.{gamma}.gamma"' in str(err.value)


# --------------------------------------------------------------------------- Zennit LRP
def test_lrp_of_the_folded_split_equals_the_original() -> None:
    """The ViT composite folds LayerScale itself on the original; on the split model the
    LayerScale is already an Identity and the split layer is explained as its (scaled)
    unsplit layer. The input relevance agrees (float64; measured 4e-16)."""
    model = _vit(init_values=0.1)
    plan = _plan(model)
    split = apply_plan(model, plan)
    x, target = _images(), torch.arange(16) % 5
    before = snapshot(split)
    relevance = ns.ZennitAttribution(model).attribute(x, target=target)
    split_relevance = ns.ZennitAttribution(split).attribute(x, target=target)
    assert_unchanged(split, before)
    assert relevance.abs().sum() > 0 and torch.isfinite(split_relevance).all()
    assert rel_err(relevance, split_relevance) <= 1e-10
    unfolded = apply_plan(model, plan, fold_layer_scale=False)
    assert rel_err(relevance, ns.ZennitAttribution(unfolded).attribute(x, target=target)) <= 1e-10
