"""Model families for Zennit LRP: detection (split or not), the canonizers each family gets,
exactness of those canonizers, and the error for a model of no known family."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn
from zennit.canonizers import Canonizer, CompositeCanonizer, SequentialMergeBatchNorm
from zennit.composites import EpsilonAlpha2Beta1, EpsilonPlusFlat

import neuronsplit as ns
from helpers import hook_counts, random_split, randomize_norms
from neuronsplit.demo.model import DigitsNet
from neuronsplit.errors import ArgumentTypeError, InvalidArgumentError, NeuronSplitError
from neuronsplit.plan import SplitPlan
from neuronsplit.relevance import (
    ExactNamedMergeBatchNorm,
    ModelFamily,
    TimmResNetCanonizer,
    TorchvisionResNetCanonizer,
    detect_family,
    model_families,
    register_family,
)
from neuronsplit.relevance.families import plain_reason

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

DT = torch.float64


def _split(model: nn.Module, layer: str, n_in: int) -> nn.Module:
    rng = random.Random(0)
    return ns.apply_plan(model, SplitPlan([random_split(rng, layer, 1, n_in, 3, "disjoint")]))


def _torchvision_resnet18() -> nn.Module:
    torch.manual_seed(0)
    return randomize_norms(torchvision.models.resnet18(weights=None, num_classes=5)).to(DT).eval()


def _timm_resnet18() -> nn.Module:
    torch.manual_seed(0)
    return randomize_norms(timm.create_model("resnet18", num_classes=5)).to(DT).eval()


def _tiny_vit(**kwargs: object) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(
        img_size=16, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=5, **kwargs
    )
    return vit.to(DT).eval()


MODELS = {
    "torchvision-resnet": (_torchvision_resnet18, "layer1.0.conv1", 64),
    "timm-resnet": (_timm_resnet18, "layer1.0.conv1", 64),
    "plain": (lambda: DigitsNet().to(DT).eval(), "conv2", 16),
}


@pytest.mark.parametrize("split", [False, True], ids=["unsplit", "split"])
@pytest.mark.parametrize("family", list(MODELS))
def test_family_detection(family: str, split: bool) -> None:
    make, layer, n_in = MODELS[family]
    model = _split(make(), layer, n_in) if split else make()
    assert detect_family(model).name == family
    backend = ns.Zennit.for_model(model)
    assert isinstance(backend.composite, EpsilonPlusFlat)
    kinds = [type(c) for c in backend.canonizers]
    expected = {
        "torchvision-resnet": [TorchvisionResNetCanonizer],
        "timm-resnet": [TimmResNetCanonizer],
        "plain": [],  # DigitsNet has no BatchNorm
    }[family]
    assert kinds == expected


@pytest.mark.slow
@pytest.mark.parametrize("family", ["torchvision-resnet", "timm-resnet"])
def test_resnet_canonizers_are_exact_and_leave_nothing_behind(family: str) -> None:
    model = MODELS[family][0]()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=DT)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = hook_counts(model)
    with torch.no_grad():
        y0 = model(x)
    backend = ns.Zennit.for_model(model)
    with backend.session(model) as work, torch.no_grad():
        assert any(hasattr(m, "canonizer_sum") for m in work.modules())
        assert all(m.eps == 0.5 for m in work.modules() if isinstance(m, nn.BatchNorm2d))
        y1 = work(x)
    torch.testing.assert_close(y1, y0, rtol=1e-12, atol=1e-12 * float(y0.abs().max()))
    assert hook_counts(model) == hooks
    assert not any(hasattr(m, "canonizer_sum") or "forward" in vars(m) for m in model.modules())
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)


def test_timm_resnet_canonizer_is_a_canonizer_class() -> None:
    canonizer = ns.TimmResNetCanonizer()
    assert isinstance(canonizer, (Canonizer, CompositeCanonizer)) and type(canonizer).__name__ == (
        "TimmResNetCanonizer"
    )
    assert isinstance(canonizer.copy(), TimmResNetCanonizer)
    names = [type(c).__name__ for c in canonizer.canonizers]
    assert names == ["ExactSequentialMergeBatchNorm", "TimmResNetBlockCanonizer"]
    assert isinstance(canonizer.canonizers[0], SequentialMergeBatchNorm)
    backend = ns.Zennit(EpsilonPlusFlat(), canonizers=[canonizer])
    assert backend.describe() == "zennit:EpsilonPlusFlat[TimmResNetCanonizer]"


def test_timm_resnet_with_attention_blocks_is_not_a_timm_resnet() -> None:
    model = timm.create_model("seresnet18", num_classes=3)
    with pytest.raises(ns.UnsupportedModelError, match="timm-resnet"):
        ns.Zennit.for_model(model)


@pytest.mark.parametrize("kind", ["vit", "dinov2"])
@pytest.mark.parametrize("split", [False, True], ids=["unsplit", "split"])
def test_timm_vit_family(kind: str, split: bool) -> None:
    from neuronsplit.relevance.vit import TimmViTCanonizer, TimmViTComposite

    extra = {"init_values": 1e-5, "reg_tokens": 4} if kind == "dinov2" else {}
    model = _tiny_vit(**extra)
    if split:
        model = _split(model, "blocks.0.mlp.fc1", 16)
    assert detect_family(model).name == "timm-vit"
    backend = ns.Zennit.for_model(model)
    assert isinstance(backend.composite, TimmViTComposite)
    # the ViT canonizer is applied once: by the backend or by the composite itself
    both = [*backend.canonizers, *backend.composite.canonizers]
    assert [type(c) for c in both] == [TimmViTCanonizer]
    # any other composite would leave LayerNorm, attn @ v and the sums to plain gradients
    with pytest.raises(InvalidArgumentError, match="EpsilonPlusFlat.*TimmViTComposite"):
        ns.Zennit.for_model(model, EpsilonPlusFlat())
    with pytest.raises(InvalidArgumentError, match="canonizers by hand"):
        ns.ZennitAttribution(model, EpsilonPlusFlat())
    chosen = ns.Zennit.for_model(model, TimmViTComposite(gamma=0.25))
    assert [type(c) for c in [*chosen.canonizers, *chosen.composite.canonizers]] == [
        TimmViTCanonizer
    ]
    hooks = hook_counts(model)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0), dtype=DT)
    relevance = ns.ZennitAttribution(model).attribute(x, target=1)
    assert relevance.shape == x.shape and torch.isfinite(relevance).all()
    assert hook_counts(model) == hooks


class Residual(nn.Module):
    """A custom block whose residual add is invisible to module-level canonizers."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.fc(x))


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(4, 1, batch_first=True)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.attn(x, x, x)[0][:, 0])


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        (nn.Sequential(Residual(), nn.Linear(4, 2)), "add()"),
        (Attention(), "MultiheadAttention 'attn'"),
        (nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)), "LayerNorm '1'"),
        (nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.BatchNorm1d(4)), "does not follow"),
    ],
    ids=["residual", "attention", "layernorm", "bn-after-relu"],
)
def test_unknown_family_error_lists_families_and_the_manual_way(model: nn.Module, reason: str):
    hooks = hook_counts(model)
    with pytest.raises(ns.UnsupportedModelError) as info:
        ns.Zennit.for_model(model)
    err = info.value
    assert isinstance(err, NeuronSplitError) and isinstance(err, TypeError)
    text = str(err)
    for family in ("torchvision-resnet", "timm-resnet", "timm-vit", "plain"):
        assert f"* {family}:" in text
    assert "ns.Zennit(zennit.composites.EpsilonPlusFlat(), canonizers=[...])" in text
    assert reason in text
    assert hook_counts(model) == hooks
    # the manual way works
    backend = ns.Zennit(EpsilonPlusFlat(), canonizers=[])
    assert ns.relevance.get_backend(backend, model=model) is backend


def test_plain_batch_norm_folding_is_exact() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bn2 = nn.BatchNorm2d(4)  # declared before its conv: module order would fail
            self.conv1 = nn.Conv2d(2, 3, 3)
            self.conv2 = nn.Conv2d(3, 4, 3)
            self.bn1 = nn.BatchNorm2d(3)
            self.act = nn.ReLU()
            self.pool = nn.AdaptiveMaxPool2d(1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.act(self.bn1(self.conv1(x)))
            x = self.act(self.bn2(self.conv2(x)))
            return self.fc(torch.flatten(self.pool(x), 1))

    model = randomize_norms(Net()).to(DT).eval()
    backend = ns.Zennit.for_model(model)
    assert detect_family(model).name == "plain"
    (canonizer,) = backend.canonizers
    assert isinstance(canonizer, ExactNamedMergeBatchNorm)
    assert sorted(canonizer.name_map) == [(("conv1",), "bn1"), (("conv2",), "bn2")]
    x = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(0), dtype=DT)
    with torch.no_grad():
        y0 = model(x)
        with backend.session(model) as work:
            assert torch.equal(work.bn1.running_var, torch.full((3,), 0.5, dtype=DT))
            y1 = work(x)
    torch.testing.assert_close(y1, y0, rtol=1e-12, atol=1e-13)
    assert model.bn1.eps == 1e-5 and model.conv1.bias is not None


def test_composite_choice_and_family_override() -> None:
    model = DigitsNet()
    assert isinstance(
        ns.Zennit.for_model(model, EpsilonAlpha2Beta1()).composite, EpsilonAlpha2Beta1
    )
    # a composite with its own canonizers is used as it is
    own = EpsilonPlusFlat(canonizers=[TorchvisionResNetCanonizer()])
    assert ns.Zennit.for_model(_torchvision_resnet18(), own).canonizers == ()
    # family= skips detection
    forced = ns.Zennit.for_model(nn.Sequential(Residual()), family="timm-resnet")
    assert [type(c) for c in forced.canonizers] == [TimmResNetCanonizer]
    with pytest.raises(InvalidArgumentError, match="known: "):
        ns.Zennit.for_model(model, family="vgg")
    with pytest.raises(ArgumentTypeError):
        ns.Zennit.for_model("resnet50")


def test_registered_family_is_tried_first() -> None:
    family = ModelFamily(
        "residual-mlp",
        "my residual MLPs",
        lambda m: isinstance(m, Residual),
        lambda m: [],
        EpsilonAlpha2Beta1,
    )
    register_family(family)
    try:
        assert model_families()[0] is family
        backend = ns.Zennit.for_model(Residual())
        assert isinstance(backend.composite, EpsilonAlpha2Beta1)
    finally:
        from neuronsplit.relevance import families as module  # the submodule

        module._USER.remove(family)
    with pytest.raises(ns.UnsupportedModelError):
        ns.Zennit.for_model(Residual())


def test_plain_reason_names_the_first_step_outside_the_chain() -> None:
    class Mean(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x).mean((2, 3))  # uniform, not proportional, redistribution

    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) if x.sum() > 0 else x  # data-dependent: fx cannot trace it

    assert plain_reason(DigitsNet()) is None
    assert plain_reason(Mean()) == "its forward calls the tensor method .mean()"
    assert plain_reason(Branchy()).startswith("torch.fx could not trace its forward (TraceError")
