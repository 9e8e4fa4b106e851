"""Relevance backends: grad x act against Captum, Zennit composites against LRP theory.

Every expected value is computed independently of neuronsplit: with Captum's
``LayerGradientXActivation``, with plain autograd, or from the LRP conservation law.
Relevances are read from ``ScanResult.layer(name).relevance_sum``; each batch holds every class
exactly once, so ``relevance_sum[label]`` is the per-image relevance of that image.
"""

from __future__ import annotations

import pytest
import torch
from captum.attr import LayerGradientXActivation
from torch import nn
from zennit.composites import (
    EpsilonAlpha2Beta1,
    EpsilonGammaBox,
    EpsilonPlusFlat,
    LayerMapComposite,
)
from zennit.rules import Epsilon, Pass
from zennit.types import Convolution

import neuronsplit as ns
from neuronsplit.demo import get_demo_model, load_digits
from neuronsplit.nn import IndexMerge
from neuronsplit.plan import SplitPlan, UnitSplit

DT = torch.float64
NUM_CLASSES = 5


class SmallCNN(nn.Module):
    """ReLU CNN without BatchNorm: conv -> relu -> conv -> relu -> maxpool -> fc -> relu -> fc."""

    def __init__(self, bias: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1, bias=bias)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1, bias=bias)
        self.act2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(8 * 4 * 4, 16, bias=bias)
        self.act3 = nn.ReLU()
        self.fc2 = nn.Linear(16, NUM_CLASSES, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.act2(self.conv2(self.act1(self.conv1(x)))))
        return self.fc2(self.act3(self.fc1(self.flatten(x))))


class TokenNet(nn.Module):
    """Linear layers applied to tokens (B, T, D), then mean over tokens, then a head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 10)
        self.act = nn.GELU()
        self.mix = nn.Linear(10, 7)
        self.head = nn.Linear(7, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mix(self.act(self.embed(x))).mean(1))


def _init(model: nn.Module, seed: int) -> nn.Module:
    """Deterministic float64 model in eval mode, with biases large enough to matter."""
    gen = torch.Generator().manual_seed(seed)
    model = model.to(DT).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            scale = 0.1 if name.endswith("bias") else 1.0 / max(1, param[0].numel()) ** 0.5
            param.copy_(torch.randn(param.shape, generator=gen, dtype=DT) * scale)
    return model


def _images(seed: int, shape: tuple[int, ...] = (NUM_CLASSES, 3, 8, 8)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


def _one_per_class_loader(x: torch.Tensor, batch: int = NUM_CLASSES):
    """Batches in which every class appears once: image i has label i % NUM_CLASSES."""
    labels = torch.arange(x.shape[0]) % NUM_CLASSES
    return [(x[i : i + batch], labels[i : i + batch]) for i in range(0, x.shape[0], batch)]


def _captum_unit_sums(model: nn.Module, layer: nn.Module, x: torch.Tensor, target) -> torch.Tensor:
    """Captum's gradient x activation at the layer output, summed over space / tokens."""
    attr = LayerGradientXActivation(model, layer).attribute(x, target=target).detach()
    if attr.dim() == 2:
        return attr
    if isinstance(layer, nn.Conv2d):
        return attr.sum(dim=(2, 3))
    return attr.sum(dim=tuple(range(1, attr.dim() - 1)))


def _per_image(res: ns.ScanResult, layer: str, labels: torch.Tensor) -> torch.Tensor:
    """Per-image relevances (B, C), valid because each label occurs once in the scan."""
    assert torch.equal(res.class_counts[labels], torch.ones_like(labels))
    return res.layer(layer).relevance_sum[labels]


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, rel: float) -> None:
    """``|actual - expected| <= rel * max|expected|`` elementwise (scale-aware tolerance)."""
    scale = float(expected.abs().max())
    assert scale > 0
    err = float((actual - expected).abs().max())
    assert err <= rel * scale, f"max abs error {err:.3e} > {rel:.0e} * {scale:.3e}"


# --------------------------------------------------------------------------- grad x act vs Captum


@pytest.mark.parametrize("layer", ["conv1", "conv2", "fc1"])
def test_grad_x_act_matches_captum_on_cnn(layer: str) -> None:
    model = _init(SmallCNN(), seed=0)
    x = _images(1)
    labels = torch.arange(NUM_CLASSES)
    res = ns.scan(model, [(x, labels)], [layer], NUM_CLASSES, progress=False)
    expected = _captum_unit_sums(model, model.get_submodule(layer), x, labels)
    assert expected.abs().max() > 1e-3  # the check is not vacuous
    _assert_close(_per_image(res, layer, labels), expected, rel=1e-12)


@pytest.mark.parametrize("layer", ["embed", "mix"])
def test_grad_x_act_matches_captum_on_token_linear(layer: str) -> None:
    model = _init(TokenNet(), seed=2)
    x = _images(3, (NUM_CLASSES, 9, 6))  # (B, T, D)
    labels = torch.tensor([3, 0, 4, 1, 2])
    res = ns.scan(model, [(x, labels)], [layer], NUM_CLASSES, progress=False)
    expected = _captum_unit_sums(model, model.get_submodule(layer), x, labels)
    assert expected.shape == (NUM_CLASSES, model.get_submodule(layer).out_features)
    _assert_close(_per_image(res, layer, labels), expected, rel=1e-12)


def test_grad_x_act_matches_captum_on_demo_fc2() -> None:
    model = get_demo_model().to(DT).eval()
    data = load_digits("train")
    idx = torch.stack([torch.nonzero(data.labels == c)[0, 0] for c in range(10)])
    x, labels = data.images[idx].to(DT), data.labels[idx]
    res = ns.scan(model, [(x[:5], labels[:5]), (x[5:], labels[5:])], ["fc2"], 10, progress=False)
    expected = _captum_unit_sums(model, model.fc2, x, labels)
    _assert_close(_per_image(res, "fc2", labels), expected, rel=1e-12)


# --------------------------------------------------------------------------- Zennit backends


def _epsilon_composite(eps: float) -> LayerMapComposite:
    return LayerMapComposite(
        [(Convolution, Epsilon(epsilon=eps)), (nn.Linear, Epsilon(epsilon=eps))]
    )


def test_zennit_epsilon_equals_grad_x_act_on_relu_net() -> None:
    """LRP-epsilon with eps -> 0 on every Conv/Linear of a ReLU net is gradient x activation.

    Tolerance: |R_zennit - R_gxa| <= 1e-7 * max|R_gxa| per layer (float64, eps = 1e-12; the
    stabiliser perturbs each unit by a relative eps/|z|).
    """
    model = _init(SmallCNN(bias=True), seed=4)
    x = _images(5, (2 * NUM_CLASSES, 3, 8, 8))
    layers = ["conv1", "conv2", "fc1"]
    loader = _one_per_class_loader(x)
    gxa = ns.scan(model, loader, layers, NUM_CLASSES, progress=False)
    lrp = ns.scan(
        model,
        loader,
        layers,
        NUM_CLASSES,
        relevance=ns.Zennit(_epsilon_composite(1e-12)),
        progress=False,
    )
    assert lrp.relevance.startswith("zennit")
    for layer in layers:
        expected = gxa.layer(layer).relevance_sum
        _assert_close(lrp.layer(layer).relevance_sum, expected, rel=1e-7)
        # importance counts agree too (no unit sits within 1e-7 of a threshold here)
        assert torch.equal(lrp.layer(layer).important, gxa.layer(layer).important)


@pytest.mark.parametrize("backend", ["grad_x_act", "epsilon_plus_flat"])
def test_conservation_on_bias_free_relu_net(backend: str) -> None:
    """Sum over units of a layer's relevance equals the target logit (bias-free ReLU net).

    grad_x_act: exact by Euler's theorem, tolerance 1e-10 * max|logit|.
    EpsilonPlusFlat: z+ and epsilon rules conserve up to their stabilisers (1e-6),
    tolerance 1e-3 * max|logit|.
    """
    model = _init(SmallCNN(bias=False), seed=6)
    x = _images(7).abs()  # non-negative images; first layer is Flat anyway
    labels = torch.arange(NUM_CLASSES)
    relevance = "grad_x_act" if backend == "grad_x_act" else ns.Zennit(EpsilonPlusFlat())
    rel_tol = 1e-10 if backend == "grad_x_act" else 1e-3
    layers = ["conv1", "conv2", "fc1"]
    res = ns.scan(model, [(x, labels)], layers, NUM_CLASSES, relevance=relevance, progress=False)
    with torch.no_grad():
        logits = model(x)[torch.arange(NUM_CLASSES), labels]
    assert logits.abs().max() > 1e-2
    for layer in layers:
        totals = _per_image(res, layer, labels).sum(1)
        _assert_close(totals, logits, rel=rel_tol)


@pytest.mark.parametrize(
    "composite",
    [EpsilonGammaBox(low=-3.0, high=3.0), EpsilonAlpha2Beta1()],
    ids=["EpsilonGammaBox", "EpsilonAlpha2Beta1"],
)
def test_other_composites_run_and_deviate_from_grad_x_act(composite) -> None:
    """z+/gamma/alpha-beta rules on convolutions are a documented deviation from grad x act.

    LRP relevance at a layer's output depends only on the rules of the layers above it. Above
    conv2 there are only Linear layers (epsilon rule) and max-pooling, so at conv2 the composite
    still agrees with grad x act (tolerance 1e-4 * max, from the 1e-6 stabilisers); at conv1 the
    gamma / alpha-beta rule of conv2 makes it differ.
    """
    model = _init(SmallCNN(bias=True), seed=8)
    x = _images(9).clamp(-3, 3)
    labels = torch.arange(NUM_CLASSES)
    layers = ["conv1", "conv2"]
    gxa = ns.scan(model, [(x, labels)], layers, NUM_CLASSES, progress=False)
    lrp = ns.scan(
        model, [(x, labels)], layers, NUM_CLASSES, relevance=ns.Zennit(composite), progress=False
    )
    assert type(composite).__name__ in lrp.relevance
    for layer in layers:
        got = lrp.layer(layer).relevance_sum
        assert torch.isfinite(got).all()
        assert got.abs().max() > 0
    _assert_close(lrp.layer("conv2").relevance_sum, gxa.layer("conv2").relevance_sum, rel=1e-4)
    got, ref = lrp.layer("conv1").relevance_sum, gxa.layer("conv1").relevance_sum
    assert (got - ref).abs().max() > 1e-2 * ref.abs().max()


def _split_cnn() -> tuple[nn.Module, list[IndexMerge]]:
    plan = SplitPlan(
        [
            UnitSplit("conv2", 1, [[0, 1], [2, 3]], shared=[4, 5], merge="overlap"),
            UnitSplit(
                "fc1", 3, [list(range(64)), list(range(64, 100))], shared=list(range(100, 128))
            ),
        ]
    )
    split = ns.apply_plan(_init(SmallCNN(), seed=0), plan)
    merges = [m for m in split.modules() if isinstance(m, IndexMerge)]
    assert len(merges) == 2
    return split, merges


def _rules(module: nn.Module) -> set[type]:
    """Types of the Zennit rules whose hooks sit on ``module``."""
    return {type(h.__self__) for h in module._forward_hooks.values() if hasattr(h, "__self__")}


def _no_hooks(model: nn.Module) -> bool:
    return not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("copy", [False, True])
def test_zennit_session_gives_split_layers_the_split_rule(copy: bool) -> None:
    """The session pairs every split layer's rows and merge (SplitRule: the composite's rule on
    the original weight, relevance split by the rule's own contributions), rules the other
    Linears as the composite says, and removes every hook on exit."""
    from neuronsplit.relevance import SplitRule

    split, merges = _split_cnn()
    backend = ns.Zennit(_epsilon_composite(1e-12), merge_epsilon=1e-7)
    with backend.session(split, copy=copy) as work:
        assert (work is split) is not copy
        for layer in (m for m in work.modules() if hasattr(m, "layer_split")):
            for child in (layer.merge, layer.subunits):
                owners = {
                    type(getattr(h.__self__, "owner", None)) for h in child._forward_hooks.values()
                }
                assert owners == {SplitRule}, child
        plain = [m for m in work.modules() if isinstance(m, nn.Linear)]
        plain = [
            m
            for m in plain
            if not any(m is s.subunits for s in work.modules() if hasattr(s, "layer_split"))
        ]
        assert plain and all(_rules(m) == {Epsilon} for m in plain)
        if copy:
            assert _no_hooks(split)  # the caller's model is never touched
    assert _no_hooks(split)
    assert all(not m._backward_hooks for m in split.modules())


def test_zennit_session_keeps_a_composite_rule_for_the_merge() -> None:
    """A composite that already rules IndexMerge wins over the default Norm rule."""
    split, merges = _split_cnn()
    composite = LayerMapComposite([(IndexMerge, Pass()), (nn.Linear, Epsilon(1e-12))])
    with ns.Zennit(composite).session(split):
        assert all(_rules(m) == {Pass} for m in merges)
    assert _no_hooks(split)


def test_zennit_rejects_non_composite() -> None:
    with pytest.raises(TypeError, match="Composite"):
        ns.Zennit("EpsilonPlusFlat")


def test_unknown_relevance_string_raises() -> None:
    model = _init(SmallCNN(), seed=0)
    with pytest.raises(ValueError, match="grad_x_act"):
        ns.scan(
            model, [(_images(1), torch.arange(5))], ["conv1"], 5, relevance="lrp", progress=False
        )


# --------------------------------------------------------------------------- timm ResNet canonizer


def _randomise_batchnorm(model: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(0.2 * torch.randn(n, generator=gen, dtype=DT))
                module.running_var.copy_(0.5 + torch.rand(n, generator=gen, dtype=DT))
                module.weight.copy_(0.5 + torch.rand(n, generator=gen, dtype=DT))
                module.bias.copy_(0.1 * torch.randn(n, generator=gen, dtype=DT))


def _timm_resnet(name: str) -> nn.Module:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES).to(DT).eval()
    _randomise_batchnorm(model, seed=1)
    return model


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_timm_resnet_canonizer_is_exact_and_removable(name: str) -> None:
    from timm.models.resnet import BasicBlock, Bottleneck

    model = _timm_resnet(name)
    x = _images(11, (2, 3, 64, 64))
    before = _state(model)
    with torch.no_grad():
        y0 = model(x)
    blocks = [m for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck))]
    assert len(blocks) in (8, 16)

    handles = ns.TimmResNetCanonizer().apply(model)
    try:
        assert all(hasattr(b, "canonizer_sum") for b in blocks)
        with torch.no_grad():
            y1 = model(x)
        # merging BN into convs and routing the skip through Sum must not change the function
        torch.testing.assert_close(y1, y0, rtol=1e-10, atol=1e-10 * float(y0.abs().max()))
    finally:
        for handle in handles:
            handle.remove()

    assert not any(hasattr(b, "canonizer_sum") for b in blocks)
    assert not any("forward" in vars(b) for b in blocks)
    after = model.state_dict()
    assert list(after) == list(before)
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    with torch.no_grad():
        assert torch.equal(model(x), y0)


@pytest.mark.slow
def test_scan_timm_resnet_with_canonizer_leaves_model_untouched() -> None:
    model = _timm_resnet("resnet18").float()
    x = _images(12, (2, 3, 64, 64)).float()
    labels = torch.tensor([1, 3])
    before = _state(model)
    backend = ns.Zennit(EpsilonPlusFlat(), canonizers=[ns.TimmResNetCanonizer()])
    layers = ["layer1.0.conv1", "layer4.1.conv2"]
    res = ns.scan(model, [(x, labels)], layers, NUM_CLASSES, relevance=backend, progress=False)

    assert res.relevance == "zennit:EpsilonPlusFlat[TimmResNetCanonizer]"
    assert res.class_counts.tolist() == [0, 1, 0, 1, 0]
    assert res.layer("layer4.1.conv2").relevance_sum.shape == (NUM_CLASSES, 512)
    for layer in layers:
        assert torch.isfinite(res.layer(layer).relevance_sum).all()
        assert res.layer(layer).relevance_sum[labels].abs().sum() > 0
    # the user's model: same parameters/buffers, no canonizer attributes, no hooks
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], v) for k, v in before.items())
    for module in model.modules():
        assert not hasattr(module, "canonizer_sum")
        assert "forward" not in vars(module)
        assert not module._forward_hooks and not module._forward_pre_hooks
        assert not module._backward_hooks and not getattr(module, "_backward_pre_hooks", {})
    assert all(p.grad is None for p in model.parameters())
