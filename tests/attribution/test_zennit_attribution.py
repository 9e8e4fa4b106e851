"""ZennitAttribution / LayerZennitAttribution: the Captum contract, agreement with Zennit's own
Gradient attributor and with gradient x input, Captum's visualisation, the layer variant on a
split layer's ``.subunits`` against Disentangle, and no side effects on the user's model."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from captum.attr import InputXGradient  # noqa: E402
from torch import nn  # noqa: E402
from zennit.composites import EpsilonPlusFlat, LayerMapComposite  # noqa: E402
from zennit.rules import Epsilon, Pass  # noqa: E402
from zennit.types import Activation, Linear  # noqa: E402

import neuronsplit as ns  # noqa: E402
from attribution_models import conv_model, conv_plan, inputs, mlp_model, mlp_plan  # noqa: E402
from helpers import assert_unchanged, hook_counts, randomize_norms, snapshot  # noqa: E402
from neuronsplit.errors import (  # noqa: E402
    ArgumentTypeError,
    InvalidArgumentError,
    InvalidTargetError,
    UnknownLayerError,
)
from neuronsplit.relevance import TorchvisionResNetCanonizer, get_backend  # noqa: E402

DT = torch.float64


def _epsilon(eps: float = 1e-12) -> LayerMapComposite:
    return LayerMapComposite([(Activation, Pass()), (Linear, Epsilon(eps))])


class TwoInputs(nn.Module):
    """``fc(cat(a, b * scale))``: two inputs and an additional forward argument."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 3)

    def forward(self, a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
        return self.fc(torch.cat([a, b * scale], 1))


# ------------------------------------------------------------------------------ Captum contract
def test_tuple_ness_shapes_and_dtype() -> None:
    model = conv_model()
    x = inputs((3, 2, 8, 8))
    lrp = ns.ZennitAttribution(model)
    single = lrp.attribute(x, target=1)
    assert isinstance(single, torch.Tensor) and single.shape == x.shape and single.dtype == DT
    (as_tuple,) = lrp.attribute((x,), target=1)
    torch.testing.assert_close(as_tuple, single, rtol=0, atol=0)
    assert lrp.multiplies_by_inputs and lrp.has_convergence_delta()


def test_two_inputs_and_additional_forward_args() -> None:
    torch.manual_seed(0)
    model = TwoInputs().to(DT)
    a, b = torch.rand(4, 2, dtype=DT), torch.rand(4, 3, dtype=DT)
    lrp = ns.ZennitAttribution(model, relevance=ns.Zennit(_epsilon()))  # not a known family
    ra, rb = lrp.attribute((a, b), target=0, additional_forward_args=2.0)
    assert ra.shape == a.shape and rb.shape == b.shape
    # epsilon rule on fc (output = its input's relevance seed): R_c = c * w for c = cat(a, 2b);
    # the product b * 2 has no rule, so its plain gradient doubles b's share once more
    w = model.fc.weight[0].detach()
    torch.testing.assert_close(ra, a * w[:2])
    torch.testing.assert_close(rb, 2.0 * (2.0 * b) * w[2:])


@pytest.mark.parametrize(
    "target",
    [2, torch.tensor(2), [2, 2, 2], torch.tensor([2, 2, 2]), (2,)],
    ids=["int", "0-d", "list", "1-d", "tuple"],
)
def test_target_forms_agree(target: object) -> None:
    model = mlp_model()
    x = inputs((3, 6))
    lrp = ns.ZennitAttribution(model)
    torch.testing.assert_close(lrp.attribute(x, target=target), lrp.attribute(x, target=2))


def test_per_sample_targets_and_bad_targets() -> None:
    model = mlp_model()
    x = inputs((3, 6))
    lrp = ns.ZennitAttribution(model)
    mixed = lrp.attribute(x, target=[0, 1, 2])
    for i in range(3):
        torch.testing.assert_close(mixed[i], lrp.attribute(x[i : i + 1], target=i)[0])
    with pytest.raises(InvalidTargetError, match="out of range"):
        lrp.attribute(x, target=3)
    with pytest.raises(InvalidTargetError, match="3 samples"):
        lrp.attribute(x, target=[0, 1])


def test_convergence_delta() -> None:
    model = mlp_model(bias=False)
    x = inputs((4, 6))
    lrp = ns.ZennitAttribution(model, _epsilon(1e-15))
    rel, delta = lrp.attribute(x, target=1, return_convergence_delta=True)
    y = model(x)[:, 1].detach()
    torch.testing.assert_close(delta, y - rel.sum(1), rtol=0, atol=1e-14)
    torch.testing.assert_close(lrp.compute_convergence_delta(rel, x, target=1), delta)
    assert delta.abs().max() < 1e-10 * y.abs().max()  # no bias: LRP-0 conserves


# ------------------------------------------------------------------------------ the numbers
@pytest.mark.slow
def test_equals_zennit_gradient_on_torchvision_resnet18() -> None:
    torchvision = pytest.importorskip("torchvision")
    from zennit.attribution import Gradient

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=5)
    model = randomize_norms(model).to(DT).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2), dtype=DT)
    target = torch.tensor([1, 3])
    before = snapshot(model)
    lrp = ns.ZennitAttribution(model)  # torchvision-resnet: EpsilonPlusFlat + ResNet canonizer
    assert lrp.backend.describe() == "zennit:EpsilonPlusFlat[TorchvisionResNetCanonizer]"
    relevance = lrp.attribute(x, target=target)
    assert_unchanged(model, before)

    one_hot = nn.functional.one_hot(target, 5).to(DT)
    composite = EpsilonPlusFlat(canonizers=[TorchvisionResNetCanonizer()])
    with Gradient(model, composite=composite) as attributor:
        _, expected = attributor(x.clone().requires_grad_(True), lambda out: out * one_hot)
    assert expected.abs().max() > 0
    torch.testing.assert_close(relevance, expected, rtol=1e-12, atol=1e-15)


def test_epsilon_composite_equals_gradient_x_input_on_relu_cnn() -> None:
    model = conv_model()  # biases, max-pooling
    x = inputs((3, 2, 8, 8))
    relevance = ns.ZennitAttribution(model, _epsilon(1e-12)).attribute(x, target=2)
    expected = InputXGradient(model).attribute(x.clone().requires_grad_(True), target=2).detach()
    scale = float(expected.abs().max())
    torch.testing.assert_close(relevance, expected, rtol=0, atol=1e-9 * scale)
    # the same through relevance= and the grad-x-act backend
    plain = ns.ZennitAttribution(model, relevance="grad_x_act").attribute(x, target=2)
    torch.testing.assert_close(plain, expected, rtol=1e-12, atol=1e-15)


def test_works_with_captum_visualization() -> None:
    from captum.attr import visualization

    model = conv_model(in_ch=3)
    x = inputs((1, 3, 8, 8))
    relevance = ns.ZennitAttribution(model).attribute(x, target=0)
    image = relevance[0].permute(1, 2, 0).numpy()
    fig, axis = visualization.visualize_image_attr(
        image, x[0].permute(1, 2, 0).numpy(), method="heat_map", sign="all", use_pyplot=False,
    )  # fmt: skip
    # Captum draws the channel-summed relevance, scaled and clipped to [-1, 1]: a
    # non-decreasing function of it with the same signs
    summed = relevance[0].sum(0).numpy().ravel()
    drawn = np.asarray(axis.images[-1].get_array()).ravel()
    assert summed.shape == drawn.shape and np.ptp(summed) > 0
    order = np.argsort(summed, kind="stable")
    assert (np.diff(drawn[order]) >= -1e-7).all()
    assert (np.sign(drawn) == np.sign(summed)).all()


# ------------------------------------------------------------------------------ layer variant
@pytest.mark.parametrize("merge", ["disjoint", "overlap"])
@pytest.mark.parametrize("kind", ["conv", "mlp"])
def test_layer_variant_on_subunits_matches_disentangle(kind: str, merge: str) -> None:
    make, make_plan, layer, shape = {
        "conv": (conv_model, conv_plan, "conv2", (2, 2, 8, 8)),
        "mlp": (mlp_model, mlp_plan, "fc2", (3, 6)),
    }[kind]
    split = ns.apply_plan(make(), make_plan(merge))
    module = split.get_submodule(layer)
    x = inputs(shape)
    before = hook_counts(split)
    layer_lrp = ns.LayerZennitAttribution(split, module.subunits)
    rows = layer_lrp.attribute(x, target=1)
    n_rows = module.subunits.out_channels if kind == "conv" else module.subunits.out_features
    assert rows.shape[:2] == (shape[0], n_rows)  # one column per stored row
    per_row = rows.sum((2, 3)) if kind == "conv" else rows
    dis = ns.Disentangle(split, relevance=layer_lrp)  # the attribution's own backend
    assert dis.backend is layer_lrp.backend
    for unit in module.split_units:
        res = dis.attribute_unit(x, target=1, layer=layer, unit=unit)
        for i, ref in enumerate(res.refs):
            channels = module.subunit_channels(unit, ref.k)
            coef = module.merge_coefficient(unit, ref.k)
            expected = coef * sum(w * per_row[:, c] for c, w in channels)
            torch.testing.assert_close(res.relevance[:, i], expected, rtol=1e-10, atol=1e-12)
        # the merged layer's relevance of the unit, from the layer variant on the split layer
        merged = ns.LayerZennitAttribution(split, layer, relevance=dis).attribute(x, target=1)
        merged = merged.sum((2, 3)) if kind == "conv" else merged
        torch.testing.assert_close(merged[:, unit], res.unit_relevance, rtol=1e-10, atol=1e-12)
    assert hook_counts(split) == before


def test_layer_variant_equals_gradient_x_activation_for_epsilon() -> None:
    from captum.attr import LayerGradientXActivation

    model = conv_model()
    x = inputs((2, 2, 8, 8))
    relevance = ns.LayerZennitAttribution(model, model.conv2, _epsilon()).attribute(x, target=0)
    expected = LayerGradientXActivation(model, model.conv2).attribute(x, target=0).detach()
    torch.testing.assert_close(relevance, expected, rtol=0, atol=1e-9 * float(expected.abs().max()))
    assert not ns.LayerZennitAttribution(model, "conv2").has_convergence_delta()


# ------------------------------------------------------------------------------ arguments
def test_one_backend_object_for_scan_disentangle_and_attribution() -> None:
    model = conv_model()
    lrp = ns.ZennitAttribution(model, EpsilonPlusFlat())
    assert get_backend(lrp) is lrp.backend
    backend = ns.Zennit.for_model(model)
    assert ns.ZennitAttribution(model, relevance=backend).backend is backend
    assert get_backend(EpsilonPlusFlat(), model=model).describe() == lrp.backend.describe()
    x = inputs((5, 2, 8, 8))
    res = ns.scan(model, [(x, torch.arange(5) % 3)], ["conv2"], 3, relevance=lrp, progress=False)
    assert res.relevance == lrp.backend.describe()
    dis = ns.Disentangle(model, conv_plan(), relevance=lrp)
    assert dis.backend is lrp.backend


def test_argument_errors() -> None:
    model = conv_model()
    with pytest.raises(InvalidArgumentError, match="not both"):
        ns.ZennitAttribution(model, EpsilonPlusFlat(), relevance="grad_x_act")
    with pytest.raises(ArgumentTypeError, match="must be a torch.nn.Module"):
        ns.ZennitAttribution("resnet18")
    with pytest.raises(ArgumentTypeError, match="relevance must be"):
        ns.ZennitAttribution(model, relevance=3)
    with pytest.raises(UnknownLayerError, match="not a submodule"):
        ns.LayerZennitAttribution(model, nn.Linear(2, 2))
    with pytest.raises(UnknownLayerError):
        ns.LayerZennitAttribution(model, "conv9")


def test_unknown_family_needs_canonizers_by_hand() -> None:
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.fc(x)

    model = Residual().to(DT)
    with pytest.raises(ns.UnsupportedModelError, match="canonizers=\\[...\\]"):
        ns.ZennitAttribution(model)
    with pytest.raises(ns.UnsupportedModelError):
        ns.ZennitAttribution(model, EpsilonPlusFlat())
    by_hand = ns.ZennitAttribution(model, relevance=ns.Zennit(_epsilon()))
    assert by_hand.attribute(inputs((2, 3)), target=0).shape == (2, 3)


@pytest.mark.parametrize("grad", [True, False])
def test_no_side_effects_also_on_failure(grad: bool) -> None:
    split = ns.apply_plan(conv_model(), conv_plan()).train()
    split.conv1.register_forward_hook(lambda m, i, o: None)  # a user hook stays
    x = inputs((2, 2, 8, 8))
    previous = torch.is_grad_enabled()
    torch.set_grad_enabled(grad)
    try:
        before = snapshot(split)
        ns.ZennitAttribution(split).attribute(x, target=0, return_convergence_delta=True)
        ns.LayerZennitAttribution(split, split.conv2.subunits).attribute(x, target=0)
        with pytest.raises(InvalidTargetError):
            ns.ZennitAttribution(split).attribute(x, target=7)
        with pytest.raises(RuntimeError, match="channels"):  # the model's own error
            ns.LayerZennitAttribution(split, "conv2").attribute(inputs((2, 3, 8, 8)), target=0)
        assert torch.is_grad_enabled() is grad
        assert_unchanged(split, before)
    finally:
        torch.set_grad_enabled(previous)
    assert x.grad is None and not x.requires_grad


class BatchNormNet(nn.Module):
    """A plain chain whose BatchNorms are declared out of order (module order would mis-pair)."""

    def __init__(self) -> None:
        super().__init__()
        self.bn2 = nn.BatchNorm2d(6)
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(6 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.conv1(x)))
        x = self.pool(self.act(self.bn2(self.conv2(x))))
        return self.fc(torch.flatten(x, 1))


def test_split_plain_model_is_explained_like_the_original() -> None:
    torch.manual_seed(0)
    model = randomize_norms(BatchNormNet()).to(DT).eval()
    split = ns.apply_plan(model, conv_plan())  # splits conv2, which a BatchNorm follows
    backend = ns.Zennit.for_model(split)
    assert [type(c).__name__ for c in backend.canonizers] == [
        "ExactNamedMergeBatchNorm", "SplitLayerCanonizer"
    ]  # fmt: skip
    assert backend.canonizers[1].pairs == (("conv2", "bn2"),)
    x = inputs((2, 2, 8, 8))
    original = ns.ZennitAttribution(model).attribute(x, target=1)
    explained = ns.ZennitAttribution(split).attribute(x, target=1)
    assert original.abs().max() > 0
    torch.testing.assert_close(explained, original, rtol=1e-9, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["torchvision", "timm"])
def test_split_resnet_is_explained_like_the_original(family: str) -> None:
    import random

    from helpers import random_split
    from neuronsplit.plan import SplitPlan

    torch.manual_seed(0)
    if family == "torchvision":
        model = pytest.importorskip("torchvision").models.resnet18(weights=None, num_classes=4)
    else:
        model = pytest.importorskip("timm").create_model("resnet18", num_classes=4)
    model = randomize_norms(model).to(DT).eval()
    rng = random.Random(0)
    plan = SplitPlan([random_split(rng, "layer2.0.conv1", u, 64, 3, "disjoint") for u in (1, 5)])
    split = ns.apply_plan(model, plan)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3), dtype=DT)
    original = ns.ZennitAttribution(model).attribute(x, target=2)
    explained = ns.ZennitAttribution(split).attribute(x, target=2)
    torch.testing.assert_close(
        explained, original, rtol=1e-8, atol=1e-10 * float(original.abs().max())
    )
