"""AttnLRP-style Zennit LRP for timm ViTs: conservation, exactness, restoration, bad models.

Expected values come from LRP theory (conservation on a model without biases, prefix tokens or
positional embedding) and from the plain model (outputs, the unsplit model's relevance).
"""

from __future__ import annotations

import pytest
import timm
import torch
from timm.layers import RmsNorm, SwiGLU
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from zennit.attribution import Gradient

import neuronsplit as ns
from helpers import assert_unchanged, snapshot
from neuronsplit.errors import UnsupportedLayerError
from neuronsplit.nn import apply_plan
from neuronsplit.plan import SplitPlan, UnitSplit
from neuronsplit.relevance import TimmViTCanonizer, TimmViTComposite

DT = torch.float64
NUM_CLASSES = 5


def _tiny_vit(seed: int = 0, *, bias: bool = True, dtype=DT, **kwargs) -> VisionTransformer:
    """A 3-block ViT on 16x16 images with O(1) activations (timm's init makes them ~0.02)."""
    args = dict(img_size=16, patch_size=4, embed_dim=16, depth=3, num_heads=2)
    args.update(kwargs)
    model = VisionTransformer(num_classes=NUM_CLASSES, **args).to(dtype).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=gen, dtype=dtype)
            if name.endswith("gamma"):  # LayerScale
                p.copy_(torch.rand(p.shape, generator=gen, dtype=dtype) + 0.5)
            elif name.endswith("bias") or name == "pos_embed":
                p.copy_(0.1 * r if bias else torch.zeros_like(p))
            elif p.dim() == 1:  # LayerNorm weights
                p.copy_(1 + 0.1 * r)
            elif name in ("cls_token", "reg_token"):
                p.copy_(r)
            else:
                p.copy_(r / p[0].numel() ** 0.5)
    return model


def _images(seed: int = 1, n: int = NUM_CLASSES, size: int = 16, dtype=DT) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=gen, dtype=dtype)


def _lrp(model, composite, x, probes=(), target=None, outputs_of=()):
    """Logits, target logits, input relevance, and the relevance at each probe module's input
    and at each ``outputs_of`` module's output (the tensors' gradients in Zennit's graph), the
    output seeded with the target logit (default target: the prediction). Probes must carry
    no rule (a rule's hook hands its module a copy of the input, whose gradient is plain)."""
    seen: dict[int, torch.Tensor] = {}

    def keep(i, output=False):
        def hook(module, inputs, out=None):
            seen[i] = out if output else inputs[0]

        return hook

    with composite.context(model):
        handles = [m.register_forward_pre_hook(keep(i)) for i, m in enumerate(probes)]
        handles += [
            m.register_forward_hook(keep(len(probes) + i, output=True))
            for i, m in enumerate(outputs_of)
        ]
        try:
            xs = x.clone().requires_grad_(True)
            out = model(xs)
            target = out.argmax(1) if target is None else target
            seed = torch.zeros_like(out).scatter(1, target[:, None], 1.0) * out.detach()
            probed = [seen[i] for i in range(len(seen))]
            grads = torch.autograd.grad(out, [xs, *probed], seed)  # no .grad left on the model
        finally:
            for handle in handles:
                handle.remove()
    logit = out.detach().gather(1, target[:, None])[:, 0]
    return out.detach(), logit, grads[0], list(grads[1:])


def _rel(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float(((actual - expected).abs() / expected.abs()).max())


# --------------------------------------------------------------------------- conservation
@pytest.mark.parametrize(
    ("epsilon", "gamma", "tol"),
    [(1e-9, None, 1e-6), (1e-9, 0.25, 1e-6), (1e-6, None, 1e-4)],
    ids=["epsilon", "gamma", "default-epsilon"],
)
def test_conservation_without_prefix_tokens(epsilon, gamma, tol) -> None:
    """No biases, no class token, positional embedding 0, average pooling, LayerScale: the
    input relevance and the relevance at every block's input sum to the target logit (the
    default epsilon, 1e-6, absorbs ~1e-5 of it on this model)."""
    model = _tiny_vit(bias=False, class_token=False, global_pool="avg", init_values=1.0)
    assert model.num_prefix_tokens == 0
    composite = TimmViTComposite(epsilon=epsilon, gamma=gamma)
    out, logit, rel, at_blocks = _lrp(model, composite, _images(), probes=list(model.blocks))
    assert logit.abs().min() > 0.05
    assert _rel(rel.sum((1, 2, 3)), logit) < tol
    for block_rel in at_blocks:
        assert _rel(block_rel.sum((1, 2)), logit) < tol
    assert rel.abs().max() > 0 and torch.isfinite(rel).all()


def test_conservation_with_class_and_register_tokens() -> None:
    """Class token, 2 registers (DINOv2 layout): every block input sums to the logit; the
    input pixels get all of it except what stays on the prefix tokens (parameters)."""
    model = _tiny_vit(bias=False, reg_tokens=2, no_embed_class=True, init_values=1.0)
    composite = TimmViTComposite(epsilon=1e-9)
    out, logit, rel, at_blocks = _lrp(model, composite, _images(), probes=list(model.blocks))
    for block_rel in at_blocks:
        assert _rel(block_rel.sum((1, 2)), logit) < 1e-6
    prefix = at_blocks[0][:, : model.num_prefix_tokens].sum((1, 2))
    assert prefix.abs().min() > 0  # the prefix really holds relevance ...
    assert _rel(rel.sum((1, 2, 3)) + prefix, logit) < 1e-6  # ... and the rest reaches x


def test_biases_and_positional_embedding_absorb_relevance() -> None:
    """With biases and a positional embedding the sum is not the logit (LRP's bias share)."""
    model = _tiny_vit(bias=True, class_token=False, global_pool="avg", init_values=1.0)
    out, logit, rel, at_blocks = _lrp(model, TimmViTComposite(), _images(), list(model.blocks))
    assert torch.isfinite(rel).all()
    assert _rel(rel.sum((1, 2, 3)), logit) > 1e-3


# --------------------------------------------------------------------------- exactness
_CONFIGS = {
    "supervised": dict(),
    "dinov2_registers": dict(reg_tokens=4, no_embed_class=True, init_values=1e-5),
    "avg_pool_layerscale": dict(class_token=False, global_pool="avg", init_values=0.7),
    "dynamic_size_qk_norm": dict(dynamic_img_size=True, qk_norm=True, init_values=0.3),
}


@pytest.mark.parametrize("config", list(_CONFIGS))
def test_outputs_unchanged_while_registered_and_restored_after(config: str) -> None:
    model = _tiny_vit(**_CONFIGS[config])
    x = _images()
    reference = model(x)
    assert all(b.attn.fused_attn for b in model.blocks)  # the plain model runs fused SDPA
    data_ptrs = {k: p.data_ptr() for k, p in model.named_parameters()}
    before = snapshot(model)
    # the canonizer twice (as Zennit.for_model passes it): applied once, undone once
    backend = ns.Zennit(TimmViTComposite(), canonizers=[TimmViTCanonizer()])
    with backend.session(model) as work:
        assert not any(b.attn.fused_attn for b in work.blocks)
        inside = work(x)
    assert (inside - reference).abs().max() <= 1e-12 * reference.abs().max()
    _, _, rel, _ = _lrp(model, TimmViTComposite(), x)
    assert torch.isfinite(rel).all()
    assert_unchanged(model, before)  # forwards, weights, gammas, flags, hooks, submodules
    assert {k: p.data_ptr() for k, p in model.named_parameters()} == data_ptrs
    assert all(b.attn.fused_attn for b in model.blocks)
    assert torch.equal(model(x), reference)


def test_canonizer_alone_folds_layer_scale_exactly() -> None:
    model = _tiny_vit(init_values=0.5)
    block = model.blocks[1]
    gamma, weight = block.ls2.gamma.detach().clone(), block.mlp.fc2.weight.detach().clone()
    instances = TimmViTCanonizer().apply(model)
    assert torch.equal(block.ls2.gamma, torch.ones_like(gamma))
    assert torch.equal(block.mlp.fc2.weight, weight * gamma[:, None])
    for instance in instances:
        instance.remove()
    assert torch.equal(block.ls2.gamma, gamma) and torch.equal(block.mlp.fc2.weight, weight)


# --------------------------------------------------------------------------- timm models
def test_dinov2_with_registers_relevance_is_finite_and_spread() -> None:
    model = timm.create_model(
        "vit_small_patch14_reg4_dinov2", pretrained=False, img_size=224, num_classes=10
    ).eval()
    x = _images(n=1, size=224, dtype=torch.float32)
    reference = model(x)
    out, logit, rel, _ = _lrp(model, TimmViTComposite(), x)
    assert (out - reference).abs().max() <= 1e-5 * reference.abs().max()
    assert torch.isfinite(rel).all() and rel.abs().sum() > 0
    per_patch = rel.abs().sum(1).unfold(1, 14, 14).unfold(2, 14, 14).sum((-1, -2)).flatten(1)
    assert (per_patch > 0).float().mean() > 0.9  # almost every patch gets some relevance
    assert per_patch.max() < 0.1 * per_patch.sum()  # and no patch gets most of it


@pytest.mark.slow
def test_supervised_vit_base_relevance_is_finite() -> None:
    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=10).eval()
    with Gradient(model, TimmViTComposite()) as attributor:
        out, rel = attributor(_images(n=1, size=224, dtype=torch.float32), lambda y: y)
    assert torch.isfinite(rel).all() and rel.abs().sum() > 0


# --------------------------------------------------------------------------- bad models
class SoftmaxAttention(nn.Module):
    """A custom attention the canonizer cannot know (softmax inside its forward)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)

    def forward(self, x, attn_mask=None, is_causal=False):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return torch.softmax(q @ k.transpose(-2, -1), -1) @ v


def _custom_attention(m):
    m.blocks[1].attn = SoftmaxAttention(16).to(DT)
    return "blocks.1.attn"


def _torch_mha(m):
    m.blocks[0].attn = nn.MultiheadAttention(16, 2).to(DT)
    return "blocks.0.attn"


def _rms_norm(m):
    m.norm = RmsNorm(16).to(DT)
    return "'norm'"


def _swiglu(m):
    m.blocks[2].mlp = SwiGLU(16, 32).to(DT)
    return "blocks.2.mlp"


def _gated(m):
    m.blocks[0].attn.gate = nn.Linear(16, 16).to(DT)  # timm's gated attention (sigmoid gate)
    return "blocks.0.attn"


@pytest.mark.parametrize("break_model", [_custom_attention, _torch_mha, _rms_norm, _swiglu, _gated])
def test_unsupported_modules_raise_naming_the_module(break_model) -> None:
    model = _tiny_vit(init_values=0.5)
    name = break_model(model)
    before = snapshot(model)
    with pytest.raises(UnsupportedLayerError, match=name):
        with TimmViTComposite().context(model):
            pass  # pragma: no cover
    assert_unchanged(model, before)  # nothing of a half-done registration stays behind
    with pytest.raises(UnsupportedLayerError, match=name):
        with ns.Zennit(TimmViTComposite()).session(model):
            pass  # pragma: no cover
    assert_unchanged(model, before)


def test_gradient_checkpointing_is_off_inside_and_restored() -> None:
    model = _tiny_vit(init_values=0.5)
    model.set_grad_checkpointing(True)
    x = _images()
    with TimmViTComposite().context(model):
        assert model.grad_checkpointing is False  # a re-run forward would break the rules
    assert model.grad_checkpointing is True
    _, _, rel, _ = _lrp(model, TimmViTComposite(), x)
    assert torch.isfinite(rel).all()


def test_map_head_raises() -> None:
    model = _tiny_vit(global_pool="map")
    with pytest.raises(UnsupportedLayerError, match="attn_pool"):
        TimmViTCanonizer().apply(model)


def test_avgmax_pooling_raises() -> None:
    model = _tiny_vit(global_pool="avgmax")
    hooks = snapshot(model)
    with pytest.raises(UnsupportedLayerError, match="global_pool='avgmax'"):
        TimmViTCanonizer().apply(model)
    assert_unchanged(model, hooks)


# --------------------------------------------------------------------------- split layers
def _fc2_plan(model: VisionTransformer, block: int = 1) -> SplitPlan:
    layer = f"blocks.{block}.mlp.fc2"
    n_in = model.get_submodule(layer).in_features
    inputs = list(range(n_in))
    return SplitPlan(
        [
            UnitSplit(layer, 0, [inputs[:20], inputs[20:40]], shared=inputs[40:]),
            UnitSplit(layer, 3, [inputs[::2], inputs[1::2]]),
        ]
    )


def test_split_fc2_with_layer_scale_matches_the_unsplit_model() -> None:
    model = _tiny_vit(init_values=0.5, bias=False)
    split = apply_plan(model, _fc2_plan(model))
    x = _images()
    composite = TimmViTComposite(epsilon=1e-12)
    out, logit, rel, _ = _lrp(model, composite, x)
    split_out, split_logit, split_rel, _ = _lrp(split, composite, x)
    reference = split(x)
    assert (split_out - reference).abs().max() <= 1e-12 * reference.abs().max()
    assert torch.isfinite(split_rel).all()
    assert float((split_rel - rel).abs().max() / rel.abs().max()) < 1e-6
    assert _rel(split_rel.sum((1, 2, 3)), rel.sum((1, 2, 3))) < 1e-6


def test_scan_and_disentangle_through_the_zennit_backend() -> None:
    model = _tiny_vit(init_values=0.5)
    x = _images()
    labels = torch.arange(NUM_CLASSES)
    backend = ns.Zennit(TimmViTComposite())
    before = snapshot(model)
    res = ns.scan(model, [(x, labels)], ["blocks.1.mlp.fc1"], NUM_CLASSES, relevance=backend,
                  progress=False)  # fmt: skip
    assert_unchanged(model, before)
    # the scan's relevance is the composite's relevance at the layer output, summed over tokens
    fc1 = model.blocks[1].mlp.fc1
    _, _, _, (at_fc1,) = _lrp(model, TimmViTComposite(), x, target=labels, outputs_of=[fc1])
    expected = at_fc1.sum(1)
    got = res.layer("blocks.1.mlp.fc1").relevance_sum[labels]
    assert got.shape == (NUM_CLASSES, fc1.out_features)
    assert float((got - expected).abs().max()) <= 1e-9 * float(expected.abs().max())

    dis = ns.Disentangle(model, _fc2_plan(model), relevance=backend)
    unit = dis.attribute_unit(x, target=labels, layer="blocks.1.mlp.fc2", unit=0)
    assert torch.isfinite(unit.subunits).all() and unit.subunits.abs().sum() > 0
    torch.testing.assert_close(unit.subunits.sum(0), unit.unit, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(unit.relevance.sum(1), unit.unit_relevance, rtol=1e-6, atol=1e-12)
