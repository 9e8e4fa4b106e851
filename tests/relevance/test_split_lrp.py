"""Zennit LRP on split models equals LRP on the original (split_canonizer + the Zennit session).

For EpsilonPlusFlat, EpsilonGammaBox and EpsilonAlpha2Beta1 with the model family's canonizers,
on timm and torchvision ResNets (two split layers: one per merge form) and the demo model:

(a) the input relevance and the relevance of every unit of each split layer equal the unsplit
    model's (1e-6 of the max, float64; measured 1e-15);
(b) the rows of a unit add up to the unit, read at ``.subunits`` (also by ``scan``) and through
    ``Disentangle.attribute_unit`` (both merge forms), whose unit relevance is the unsplit one;
(c) nothing stays behind: no hook, BatchNorms and rows bitwise as before, also when the split
    model is in train mode (Disentangle and the scan explain it in eval mode).

The reference is the unsplit model under the same backend, computed independently of the split
code. With zennit's own ``ResNetCanonizer`` the torchvision BatchNorms get a tiny ``eps``: zennit
0.5.1 leaves ``x / sqrt(1 + eps)`` behind in every BatchNorm it folds, while the split layer's
BatchNorm is folded exactly, which alone differs by 2e-6..1e-5 (``eps = 1e-5``); neuronsplit's
exact ``TorchvisionResNetCanonizer`` needs no such help.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import (
    EpsilonAlpha2Beta1,
    EpsilonGammaBox,
    EpsilonPlusFlat,
    LayerMapComposite,
)
from zennit.rules import AlphaBeta, Epsilon, Flat, Gamma, Norm, Pass, ZPlus
from zennit.types import Activation, Convolution

import neuronsplit as ns
import neuronsplit.relevance as relevance
from helpers import randomize_norms
from neuronsplit.capture import eval_mode
from neuronsplit.errors import InvalidArgumentError
from neuronsplit.nn import apply_plan
from neuronsplit.plan import LayerSplit, SplitPlan
from neuronsplit.relevance import SplitLayerCanonizer, TimmResNetCanonizer

DT = torch.float64
TOL = 1e-6

COMPOSITES = {
    "epsilon_plus_flat": lambda canonizers: EpsilonPlusFlat(canonizers=canonizers),
    "epsilon_gamma_box": lambda canonizers: EpsilonGammaBox(-3.0, 3.0, canonizers=canonizers),
    "epsilon_alpha2_beta1": lambda canonizers: EpsilonAlpha2Beta1(canonizers=canonizers),
}
RESNET_LAYERS = {"layer3.1.conv2": "disjoint", "layer4.0.conv1": "overlap"}


def _timm(name: str) -> tuple[nn.Module, list]:
    timm = pytest.importorskip("timm")
    return timm.create_model(name, pretrained=False), [TimmResNetCanonizer()]


def _torchvision(name: str) -> tuple[nn.Module, list]:
    torchvision = pytest.importorskip("torchvision")
    from zennit.torchvision import ResNetCanonizer

    model = getattr(torchvision.models, name)(weights=None)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eps = 1e-30  # see the module docstring
    return model, [ResNetCanonizer()]


def _torchvision_exact(name: str) -> tuple[nn.Module, list]:
    """Default ``eps``, with neuronsplit's exact torchvision canonizer (where it exists)."""
    torchvision = pytest.importorskip("torchvision")
    return getattr(torchvision.models, name)(weights=None), [relevance.TorchvisionResNetCanonizer()]


def _plan(model: nn.Module, layers: dict[str, str], seed: int) -> SplitPlan:
    """Random splits of three units per layer (K = 2 or 3, some shared inputs)."""
    gen = torch.Generator().manual_seed(seed)
    splits = []
    for name, form in layers.items():
        layer = model.get_submodule(name)
        n_out, n_in = layer.weight.shape[:2]
        units = torch.randperm(n_out, generator=gen)[:3].tolist()
        ks = torch.randint(2, 4, (3,), generator=gen)
        assign = torch.stack([torch.randint(-1, int(k), (n_in,), generator=gen) for k in ks])
        splits.append(LayerSplit(name, units, assign, ks.tolist(), merge=form))
    return SplitPlan(splits)


def _relevances(model: nn.Module, backend: ns.Zennit, x: torch.Tensor, target, layers):
    """Input relevance, per-unit relevance of each layer's output and, for split layers, of each
    ``.subunits`` row, from one LRP pass; the backend's session is left afterwards."""
    store: dict[str, torch.Tensor] = {}
    with torch.enable_grad(), backend.session(model) as work:
        handles = []
        for name in layers:
            module = work.get_submodule(name)
            handles.append(
                module.register_forward_hook(lambda m, i, o, n=name: store.update({n: o}))
            )
            if hasattr(module, "subunits"):
                hook = lambda m, i, o, n=name: store.update({n + "/rows": o})  # noqa: E731
                handles.append(module.subunits.register_forward_hook(hook))
        try:
            xs = x.clone().requires_grad_(True)
            y = work(xs)[torch.arange(len(x)), target]
            keys = list(store)
            grads = torch.autograd.grad(y, [xs] + [store[k] for k in keys], y.detach())
        finally:
            for handle in handles:
                handle.remove()
    # per unit: summed over positions (conv maps) or tokens (B, T, C)
    sums = {4: (2, 3), 3: (1,)}
    per_unit = {
        k: g.sum(sums[g.dim()]) if g.dim() in sums else g
        for k, g in zip(keys, grads[1:], strict=True)
    }
    return grads[0], per_unit


def _close(actual: torch.Tensor, expected: torch.Tensor, what: str, rel: float = TOL) -> float:
    scale = float(expected.abs().max())
    err = float((actual - expected).abs().max()) / scale
    assert scale > 0 and err <= rel, f"{what}: relative error {err:.2e} > {rel:.0e}"
    return err


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}


def _assert_untouched(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict(keep_vars=True)
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key].detach(), value), key
    for name, module in model.named_modules():
        assert not (module._forward_hooks or module._forward_pre_hooks), name
        assert not (module._backward_hooks or module._backward_pre_hooks), name
        assert "forward" not in module.__dict__, name


def _check_split_lrp(model, canonizers, composite, layers, x, target, seed=0) -> None:
    model = model.to(DT).eval()
    split = apply_plan(model, _plan(model, layers, seed))
    in_composite = seed % 2 == 1  # canonizers in the composite or in the backend
    backend = (
        ns.Zennit(composite(canonizers))
        if in_composite
        else ns.Zennit(composite(None), canonizers=canonizers)
    )
    ref_x, ref = _relevances(model, backend, x, target, layers)
    before = _state(split)
    split.train()  # the scan and Disentangle explain it in eval mode
    with eval_mode(split):
        got_x, got = _relevances(split, backend, x, target, layers)
    _close(got_x, ref_x, "input relevance")  # (a)
    for name in layers:
        _close(got[name], ref[name], f"units of {name}")  # (a)
        layer = split.get_submodule(name)
        rows = got[name + "/rows"]
        merged = rows[:, : layer.original_out].index_add(
            1, layer.merge.index, rows[:, layer.original_out :]
        )
        _close(merged, ref[name], f"rows of {name} added up")  # (b)
    dis = ns.Disentangle(split, relevance=backend)
    for name in layers:
        units = list(split.get_submodule(name).split_units)
        unit = max(units, key=lambda u: float(ref[name][:, u].abs().max()))  # not a dead one
        res = dis.attribute_unit(x, target=target, layer=name, unit=unit)
        _close(res.unit_relevance, ref[name][:, unit], f"{name} unit {unit}")  # (b)
        _close(res.relevance.sum(1), res.unit_relevance, f"{name} unit {unit} subunits")
        _close(res.subunits.sum(0), res.unit, f"{name} unit {unit} attributions")
    assert all(m.training for m in split.modules())
    _assert_untouched(split, before)  # (c)


def _images(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


RESNETS = [
    pytest.param(_timm, "resnet18", id="timm-resnet18"),
    pytest.param(_torchvision, "resnet18", id="torchvision-resnet18"),
    pytest.param(_torchvision_exact, "resnet18", id="torchvision-resnet18-exact-bn"),
    pytest.param(_timm, "resnet50", id="timm-resnet50", marks=pytest.mark.slow),
    pytest.param(_torchvision, "resnet50", id="torchvision-resnet50", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("composite", list(COMPOSITES))
@pytest.mark.parametrize(("family", "name"), RESNETS)
def test_split_resnet_explained_as_the_original(family, name: str, composite: str) -> None:
    torch.manual_seed(0)
    model, canonizers = family(name)
    randomize_norms(model, seed=1)  # timm zero-inits the last BatchNorm of each block
    seed = list(COMPOSITES).index(composite)
    x, target = _images((2, 3, 32, 32)), torch.tensor([3, 7])
    _check_split_lrp(model, canonizers, COMPOSITES[composite], RESNET_LAYERS, x, target, seed)


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    from neuronsplit.demo import load_digits

    return load_digits("test").images[:4].to(DT)


@pytest.mark.parametrize("form", ["disjoint", "overlap"])
@pytest.mark.parametrize("composite", list(COMPOSITES))
def test_split_demo_model_explained_as_the_original(digits, composite: str, form: str) -> None:
    from neuronsplit.demo import get_demo_model

    target = torch.tensor([0, 3, 5, 9])
    seed = list(COMPOSITES).index(composite)
    layers = {"fc2": form}
    _check_split_lrp(get_demo_model(), [], COMPOSITES[composite], layers, digits, target, seed)


@pytest.mark.parametrize(
    "rule",
    [ZPlus(), AlphaBeta(2.0, 1.0), Gamma(0.25), Epsilon(1e-3)],
    ids=lambda rule: type(rule).__name__,
)
def test_every_linear_rule_on_a_split_linear_layer(digits, rule) -> None:
    """The demo's split layer is linear, which the composites give Epsilon; here the others."""
    from neuronsplit.demo import get_demo_model

    composite = lambda canonizers: LayerMapComposite(  # noqa: E731
        [(Activation, Pass()), (Convolution, ZPlus()), (nn.Linear, rule)], canonizers=canonizers
    )
    layers = {"fc2": "overlap"}
    _check_split_lrp(get_demo_model(), [], composite, layers, digits, torch.tensor([1, 2, 3, 4]))


def _bn_block() -> nn.Module:
    model = nn.Sequential(nn.Conv2d(3, 5, 3, bias=False), nn.BatchNorm2d(5), nn.ReLU())
    return randomize_norms(model.to(DT), seed=2)


def test_canonizer_folds_exactly_in_train_mode_and_restores_bitwise() -> None:
    model = _bn_block().eval()
    split = apply_plan(model, _plan(model, {"0": "disjoint"}, seed=3)).train()
    before = _state(split)
    x = _images((4, 3, 6, 6))
    handles = SplitLayerCanonizer().apply(split)
    assert len(handles) == 1 and split[0].subunits.bias is not None
    with torch.no_grad():
        folded = split(x)  # train mode: the running statistics are still what is folded
    torch.testing.assert_close(folded, model(x), rtol=0, atol=1e-13)
    for handle in handles:
        handle.remove()
    assert split[0].subunits.bias is None
    _assert_untouched(split, before)  # num_batches_tracked included


def test_canonizer_by_name() -> None:
    model = _bn_block().eval()
    split = apply_plan(model, _plan(model, {"0": "disjoint"}, seed=4))
    before = _state(split)
    handles = SplitLayerCanonizer([("0", "1")]).apply(split)
    assert len(handles) == 1 and "forward" in split[1].__dict__
    for handle in handles:
        handle.remove()
    _assert_untouched(split, before)
    with pytest.raises(InvalidArgumentError, match="not a split layer"):
        SplitLayerCanonizer([("1", "0")]).apply(split)


def test_a_failing_fold_undoes_the_folds_before_it() -> None:
    """Two split conv-BN pairs; the second BatchNorm's statistics are broken (too short)."""
    model = nn.Sequential(*_bn_block(), *_bn_block()).eval()
    model[3] = nn.Conv2d(5, 5, 3, bias=False).to(DT)
    split = apply_plan(model, _plan(model, {"0": "disjoint", "3": "disjoint"}, seed=6))
    split[4].running_var = torch.ones(4, dtype=DT)
    before = _state(split)
    with pytest.raises((IndexError, RuntimeError)):
        SplitLayerCanonizer().apply(split)
    _assert_untouched(split, before)
    assert "forward" not in split[1].__dict__


def test_no_fold_without_a_batch_norm_merge() -> None:
    """Without a BatchNorm-merging canonizer the original's BatchNorm is not folded, so the
    split layer's is not either (the composite's Pass rule goes through both)."""
    first = nn.Conv2d(3, 3, 1).to(DT)
    model = nn.Sequential(first, *_bn_block(), nn.Flatten(), nn.Linear(80, 2).to(DT)).eval()
    split = apply_plan(model, _plan(model, {"1": "overlap"}, seed=4))
    x, target, backend = _images((2, 3, 6, 6)), torch.tensor([0, 1]), ns.Zennit(EpsilonPlusFlat())
    ref_x, ref = _relevances(model, backend, x, target, ["1"])
    got_x, got = _relevances(split, backend, x, target, ["1"])
    _close(got_x, ref_x, "input relevance")
    _close(got["1"], ref["1"], "units")
    folded = ns.Zennit(EpsilonPlusFlat(), canonizers=[SequentialMergeBatchNorm()])
    assert float((_relevances(split, folded, x, target, ["1"])[0] - got_x).abs().max()) > 1e-6


def test_unsupported_rule_falls_back_to_norm_on_the_merge(digits) -> None:
    """Flat ignores the weights, so no pairing reproduces it: the merge keeps the Norm rule."""
    from neuronsplit.demo import get_demo_model

    split = apply_plan(get_demo_model().to(DT), _plan(get_demo_model(), {"fc2": "disjoint"}, 5))
    before = _state(split)
    seen: list[list[str]] = []

    def spy(module, inputs, output) -> None:
        owners = [getattr(h, "__self__", None) for h in module._forward_hooks.values()]
        seen.append([type(o).__name__ for o in owners if o is not None and o is not spy])

    for rule, expected in ((Flat(), Norm.__name__), (Epsilon(), "_MergeHook")):
        composite = LayerMapComposite([(Activation, Pass()), (nn.Linear, rule)])
        handle = split.fc2.merge.register_forward_hook(spy)
        try:
            ns.Disentangle(split, relevance=composite).attribute(
                digits, target=0, subunit=("fc2", split.fc2.split_units[0], 0)
            )
        finally:
            handle.remove()
        assert set(seen.pop()) == {expected}
    _assert_untouched(split, before)


class TokenNet(nn.Module):
    """Linear layers on tokens (B, T, D), a mean over the tokens, then a head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.act = nn.Linear(6, 10), nn.ReLU()
        self.mix, self.act2 = nn.Linear(10, 7), nn.ReLU()
        self.head = nn.Linear(7, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act2(self.mix(self.act(self.embed(x)))).mean(1))


def _alpha_beta_composite(canonizers=None) -> LayerMapComposite:
    layer_map = [(Activation, Pass()), (nn.Linear, AlphaBeta(2.0, 1.0))]
    return LayerMapComposite(layer_map, canonizers=canonizers)


@pytest.mark.parametrize("form", ["disjoint", "overlap"])
def test_split_linear_on_tokens(form: str) -> None:
    torch.manual_seed(0)
    x, target = _images((3, 5, 6)), torch.tensor([0, 2, 3])
    _check_split_lrp(TokenNet(), [], _alpha_beta_composite, {"mix": form}, x, target)


def test_steered_split_layer_is_explained_as_the_edited_original() -> None:
    """Scaling subunit 1 of a unit by 0 (disjoint form) is the original with that group's
    weights zeroed; LRP of the steered split model is LRP of that edited original."""
    torch.manual_seed(0)
    model = TokenNet().to(DT).eval()
    split = apply_plan(model, _plan(model, {"mix": "disjoint"}, seed=6))
    unit = split.mix.split_units[0]
    edited = TokenNet().to(DT).eval()
    edited.load_state_dict(model.state_dict())
    with torch.no_grad():
        edited.mix.weight[unit, split.mix.layer_split.unit_split(unit).groups[1]] = 0.0
    x, target, backend = (
        _images((3, 5, 6)),
        torch.tensor([0, 2, 3]),
        ns.Zennit(_alpha_beta_composite()),
    )
    ref_x, ref = _relevances(edited, backend, x, target, ["mix"])
    with split.mix.merge.scaled({(unit, 1): 0.0}):
        got_x, got = _relevances(split, backend, x, target, ["mix"])
    _close(got_x, ref_x, "input relevance")
    _close(got["mix"], ref["mix"], "units")
    assert got["mix/rows"][:, split.mix.subunit_index(unit, 1)].abs().max() == 0


def test_scan_of_the_rows_reads_the_split_rule(digits) -> None:
    """``scan`` on ``.subunits`` gets the rows' relevance; a unit's rows add up to the unsplit
    model's scan of the layer."""
    from neuronsplit.demo import get_demo_model, load_digits

    data = load_digits("test")
    first = [int((data.labels == c).nonzero()[0]) for c in range(10)]
    loader = [(data.images[first].to(DT), torch.arange(10))]  # one image per class
    model = get_demo_model().to(DT)
    split = apply_plan(model, _plan(model, {"fc2": "overlap"}, seed=7))
    backend = ns.Zennit(EpsilonPlusFlat())
    ref = ns.scan(model, loader, ["fc2"], 10, relevance=backend, progress=False)
    res = ns.scan(split, loader, ["fc2.subunits"], 10, relevance=backend, progress=False)
    rows = res.layer("fc2.subunits").relevance_sum
    _, direct = _relevances(split, backend, *loader[0], ["fc2"])
    _close(rows, direct["fc2/rows"], "scan of the rows")
    merged = rows[:, :6].index_add(1, split.fc2.merge.index, rows[:, 6:])
    _close(merged, ref.layer("fc2").relevance_sum, "rows added up vs the unsplit scan")
