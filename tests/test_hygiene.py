"""No side effects (after Captum's test_hook_removal): every public call, also a failing one,
leaves the user's models exactly as they were and restores the global torch state.

One registry, :data:`CASES`, names every public entry point with its successful and failing
inputs; one parametrised test runs each case on fresh models -- in train mode, with a
BatchNorm whose running statistics must not move, a submodule left in eval mode, a frozen
parameter, a parameter with a ``.grad`` and a user hook -- and compares a snapshot
(:func:`helpers.snapshot`: parameters, buffers, ``.grad``, ``requires_grad``, training flags of
every submodule, module attributes, hooks on every module and the global ones, grad mode,
inference mode, default dtype) before and after, under grad mode on and off.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from captum.attr import (
    LayerActivation,
    LayerGradientXActivation,
    LayerIntegratedGradients,
    NeuronConductance,
    NeuronGradient,
    NeuronIntegratedGradients,
)
from torch import nn

import neuronsplit as ns
from helpers import assert_unchanged, snapshot
from neuronsplit.errors import (
    ArgumentTypeError,
    CorruptFileError,
    InvalidTargetError,
    MissingFileError,
    NonFiniteError,
    NotExactError,
    PlanError,
    PlanMismatchError,
    UnknownLayerError,
    UnknownSubunitError,
)
from neuronsplit.methods.hesse import ClassPair, PolysemanticUnit
from neuronsplit.nn import explicit_rows, get_split_layer
from neuronsplit.plan import SplitPlan, UnitSplit

N_CLASSES = 3


class Tripwire(nn.Module):
    """Identity that raises when armed: a module failing in the middle of the forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.armed:
            raise RuntimeError("tripwire: boom in the middle of the forward pass")
        return x


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)  # running statistics move in any train-mode forward pass
        self.act1 = nn.ReLU()
        self.trip = Tripwire()  # after the split conv: its hooks have fired when this raises
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * 5 * 5, 6)
        self.act2 = nn.ReLU()
        self.out = nn.Linear(6, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.trip(self.act1(self.bn(self.conv(x))))
        return self.out(self.act2(self.fc(self.flatten(x))))


PLAN = SplitPlan(
    [
        UnitSplit("conv", 2, [[0], []], merge="disjoint"),
        UnitSplit(
            "fc",
            1,
            [list(range(50)), list(range(50, 80))],
            shared=list(range(80, 100)),
            merge="overlap",  # subunits of fc read two rows (t_k + r)
        ),
    ]
)
BAD_LAYER_PLAN = SplitPlan([UnitSplit("nope", 0, [[0], [1]])])
BAD_UNIT_PLAN = SplitPlan([UnitSplit("fc", 9, [[0], [1]])])


def _net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    model = Net()
    with torch.no_grad():  # non-trivial running statistics, so that an update shows
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 1.5)
    model.fc.bias.requires_grad_(False)  # a frozen parameter must stay frozen
    model.out.weight.grad = torch.ones_like(model.out.weight)  # a user's .grad stays as it is
    model.act2.register_forward_hook(lambda module, args, out: None)  # a user's hook stays
    model.train()
    model.act2.eval()  # mixed flags: each submodule's own flag must come back
    return model


@dataclass
class World:
    """Fresh models for one case: the user's original and a split of an identical model."""

    original: Net
    split: nn.Module
    tmp: Path

    def arm(self, on: bool) -> None:
        self.original.trip.armed = on
        self.split.trip.armed = on


def _world(tmp: Path, train: bool) -> World:
    original = _net()
    split = ns.apply_plan(_net(), PLAN)
    if not train:
        original.eval()
        split.eval()
    return World(original, split, tmp)


def _x(batch: int = 2, seed: int = 3) -> torch.Tensor:
    return torch.rand(batch, 1, 5, 5, generator=torch.Generator().manual_seed(seed))


def _labels(batch: int = 2) -> torch.Tensor:
    return torch.arange(batch) % N_CLASSES


def _loader(n: int = 12) -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = _x(n, seed=5), _labels(n)
    return [(x[i : i + 4], y[i : i + 4]) for i in range(0, n, 4)]


def _nan_loader() -> list[tuple[torch.Tensor, torch.Tensor]]:
    (x, y), *rest = _loader()
    x = x.clone()
    x[1, 0, 2, 2] = float("nan")
    return [(x, y), *rest]


@functools.cache
def _result() -> ns.ScanResult:
    """A scan of an identical model (computed once; the cases only read it)."""
    return ns.scan(_net().eval(), _loader(), ["conv", "fc"], N_CLASSES, progress=False)


def _unit(layer: str = "fc", unit: int = 1) -> PolysemanticUnit:
    return PolysemanticUnit(layer, unit, (0, 1, 2), (ClassPair(0, 1, 0.1),))


def _saved(tmp: Path) -> Path:
    """A save of a split identical to the case's split model."""
    return ns.save(ns.apply_plan(_net(), PLAN), tmp / "saved")


def _damaged(tmp: Path, name: str, damage: Callable[[bytes], bytes]) -> Path:
    directory = _saved(tmp)
    path = directory / name
    path.write_bytes(damage(path.read_bytes()))
    return directory


def _images(tmp: Path) -> Path:
    from PIL import Image

    root = tmp / "images"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        Image.new("RGB", (6, 6), (10, 200, 30)).save(root / cls / "0.png")
    return root


def _first_batch(loader: Any) -> Any:
    return next(iter(loader))


def _steer(w: World, scales: dict, fail: bool = False) -> Any:
    merge = get_split_layer(w.split, "fc").merge
    with merge.scaled(scales), merge.scaled({(1, 0): 0.5}):
        out = w.split(_x())
        if fail:
            raise RuntimeError("failure inside the steering context")
    return out


def _steer_api(w: World, fail: bool = False) -> Any:
    with ns.steer(w.split, {("fc", 1, 0): 0.0}), ns.steer(w.split, {("conv", 2, 1): 3.0}):
        out = w.split(_x())
        if fail:
            raise RuntimeError("failure inside ns.steer")
    return out


def _rows(w: World, fail: bool = False) -> Any:
    with explicit_rows(w.split):
        out = w.split(_x())
        if fail:
            raise RuntimeError("failure inside explicit_rows")
    return out


def _zennit() -> Any:
    from zennit.composites import EpsilonPlusFlat

    # canonizers named explicitly (none): family detection would trace the armed tripwire
    return ns.Zennit(EpsilonPlusFlat())


def _fractions(w: World, layer: str = "fc", unit: int = 1) -> Any:
    return ns.concept_fractions(
        w.original, w.split, layer, unit, _x(6), _labels(6), [[0], [1]], tau=0.01
    )


def _references(w: World, refs: Any = ("conv/u2/k1", "fc/u1/k0", "fc/u1"), scan: Any = None) -> Any:
    from neuronsplit.visual import reference_images

    data = [(x, y) for xb, yb in _loader() for x, y in zip(xb, yb, strict=True)]
    return reference_images(
        w.split, data, list(refs), by="relevance", k=3, heatmap=True, scan=scan, progress=False
    )


@dataclass(frozen=True)
class Case:
    """One call: ``call(world)``, the exception it must raise (None: it must succeed), whether
    the tripwire is armed, and whether the models are in train mode (Captum's own methods run a
    train-mode model as it is, which moves BatchNorm statistics: not ours to prevent)."""

    call: Callable[[World], Any]
    error: type[BaseException] | tuple[type[BaseException], ...] | None = None
    arm: bool = False
    train: bool = True


def _splice(w: World, layer: str = "fc") -> Any:
    sae = ns.sdl.SparseAutoencoder(6, 12, k=2, seed=0)
    return ns.sdl.spliced_output_change(w.original, layer, sae, _loader())


def _visualise(w: World, refs: list[str]) -> Any:
    from neuronsplit.visual import visualise

    return visualise(w.split, refs, image_shape=(1, 5, 5), steps=2, progress=False)


CASES: dict[str, Case] = {
    # ------------------------------------------------------------------ scan
    "scan": Case(lambda w: ns.scan(w.original, _loader(), ["conv", "fc"], progress=False)),
    "scan_zennit": Case(
        lambda w: ns.scan(w.original, _loader(), "fc", relevance=_zennit(), progress=False)
    ),
    "scan_split_model": Case(lambda w: ns.scan(w.split, _loader(), ["out"], progress=False)),
    "scan_bad_layer": Case(
        lambda w: ns.scan(w.original, _loader(), ["nope"], progress=False), UnknownLayerError
    ),
    "scan_bad_label": Case(
        lambda w: ns.scan(w.original, _loader(), ["fc"], 2, progress=False), InvalidTargetError
    ),
    "scan_nan_input": Case(
        lambda w: ns.scan(w.original, _nan_loader(), ["fc"], progress=False), NonFiniteError
    ),
    "scan_raises_mid_forward": Case(
        lambda w: ns.scan(w.original, _loader(), ["conv"], progress=False), RuntimeError, True
    ),
    "scan_wrong_shape": Case(
        lambda w: ns.scan(
            w.original, [(torch.rand(2, 3, 5, 5), _labels())], ["fc"], progress=False
        ),
        RuntimeError,
    ),
    # ------------------------------------------------------------------ detection
    "find_polysemantic": Case(lambda w: ns.find_polysemantic(_result(), p=0.3, gamma=0.9)),
    "find_polysemantic_bad_layer": Case(
        lambda w: ns.find_polysemantic(_result(), "nope"), UnknownLayerError
    ),
    "find_polysemantic_tau_off_grid": Case(
        lambda w: ns.find_polysemantic(_result(), tau=0.5), ValueError
    ),
    "find_polysemantic_empty_class": Case(
        lambda w: ns.find_polysemantic(_result(), classes=[7]), (ValueError, IndexError)
    ),
    # ------------------------------------------------------------------ planning
    "plan_split_auto": Case(
        lambda w: ns.plan_split(
            _unit(), _result(), _loader(), model=w.original, concepts=[[0], [1]]
        )
    ),
    "plan_split_fixed_rho": Case(
        lambda w: ns.plan_split(_unit(), _result(), rho=0.5, concepts=[[0], [1, 2]])
    ),
    "plan_split_raises_mid_forward": Case(
        lambda w: ns.plan_split(
            _unit(), _result(), _loader(), model=w.original, concepts=[[0], [2]]
        ),
        RuntimeError,
        True,
    ),
    "plan_split_unscanned_layer": Case(
        lambda w: ns.plan_split(_unit("out", 0), _result(), rho=0.5, concepts=[[0], [1]]),
        UnknownLayerError,
    ),
    "plan_split_bad_rho": Case(
        lambda w: ns.plan_split(_unit(), _result(), rho=2.0, concepts=[[0], [1]]), ValueError
    ),
    # ------------------------------------------------------------------ surgery and checks
    "apply_plan": Case(lambda w: ns.apply_plan(w.original, PLAN)),
    "apply_plan_bad_layer": Case(
        lambda w: ns.apply_plan(w.original, BAD_LAYER_PLAN), UnknownLayerError
    ),
    "apply_plan_bad_unit": Case(lambda w: ns.apply_plan(w.original, BAD_UNIT_PLAN), PlanError),
    "apply_plan_twice": Case(lambda w: ns.apply_plan(w.split, PLAN), PlanError),
    "verify_equivalence": Case(
        lambda w: ns.verify_equivalence(w.original, w.split, [_x(), _x(3, 4)], raise_on_fail=True)
    ),
    "verify_raises_mid_forward": Case(  # the model's own error passes through
        lambda w: ns.verify_equivalence(w.original, w.split, _x()), RuntimeError, True
    ),
    "verify_wrong_shape": Case(
        lambda w: ns.verify_equivalence(w.original, w.split, torch.rand(2, 3, 5, 5)),
        RuntimeError,
    ),
    "verify_nan_input": Case(
        lambda w: ns.verify_equivalence(
            w.original, w.split, _nan_loader()[0][0], raise_on_fail=True
        ),
        NotExactError,
    ),
    "verify_other_original": Case(
        lambda w: ns.verify_equivalence(_net(seed=1), w.split, _x(), raise_on_fail=True),
        NotExactError,
    ),
    # contexts around the user's own forward pass (eval mode: a train-mode forward of the
    # user's moves BatchNorm statistics, not ours to prevent)
    "explicit_rows": Case(_rows, train=False),
    "explicit_rows_raises_inside": Case(lambda w: _rows(w, fail=True), RuntimeError, train=False),
    "index_merge_scaled": Case(
        lambda w: _steer(w, {(1, 0): 2.0, (1, "residual"): 0.0}), train=False
    ),
    "index_merge_scaled_raises_inside": Case(
        lambda w: _steer(w, {(1, 1): 3.0}, fail=True), RuntimeError, train=False
    ),
    "index_merge_scaled_unknown_subunit": Case(
        lambda w: _steer(w, {(0, 1): 2.0}), UnknownSubunitError
    ),
    "index_merge_scaled_not_finite": Case(lambda w: _steer(w, {(1, 0): float("nan")}), ValueError),
    # ------------------------------------------------------------------ files
    "save": Case(lambda w: ns.save(w.split, w.tmp / "out", meta={"note": "x"})),
    "save_unsplit": Case(lambda w: ns.save(w.original, w.tmp / "out")),
    "save_not_a_module": Case(lambda w: ns.save(PLAN, w.tmp / "out"), TypeError),
    "save_onto_a_file": Case(
        lambda w: (w.tmp / "file").write_text("x") and ns.save(w.split, w.tmp / "file"), OSError
    ),
    "load": Case(lambda w: ns.load(_saved(w.tmp), w.original)),
    "load_missing": Case(lambda w: ns.load(w.tmp / "nothing", w.original), CorruptFileError),
    "load_wrong_model": Case(
        lambda w: ns.load(_saved(w.tmp), nn.Sequential(nn.Linear(2, 2))), PlanMismatchError
    ),
    "load_truncated_weights": Case(
        lambda w: ns.load(
            _damaged(w.tmp, "weights.safetensors", lambda b: b[: len(b) // 2]), w.original
        ),
        CorruptFileError,
    ),
    "load_garbled_plan": Case(
        lambda w: ns.load(_damaged(w.tmp, "plan.json", lambda b: b[:40]), w.original),
        CorruptFileError,
    ),
    "load_onto_split_model": Case(lambda w: ns.load(_saved(w.tmp), w.split), PlanError),
    # ------------------------------------------------------------------ attribution
    "disentangle_of_split": Case(lambda w: ns.Disentangle(w.split)),
    "disentangle_with_plan": Case(
        lambda w: ns.Disentangle(w.original, PLAN).attribute(_x(), target=0, subunit="fc/u1/k0")
    ),
    "disentangle_bad_plan": Case(
        lambda w: ns.Disentangle(w.original, BAD_LAYER_PLAN), PlanMismatchError
    ),
    "disentangle_no_plan": Case(lambda w: ns.Disentangle(w.original), PlanMismatchError),
    "disentangle_other_plan": Case(
        lambda w: ns.Disentangle(w.split, SplitPlan([UnitSplit("fc", 0, [[0], [1]])])),
        PlanMismatchError,
    ),
    "attribute": Case(
        lambda w: ns.Disentangle(w.split).attribute(_x(), target=1, subunit="conv/u2/k1")
    ),
    "zennit_attribution": Case(
        lambda w: ns.ZennitAttribution(w.original, relevance=_zennit()).attribute(_x(), target=1)
    ),
    "zennit_attribution_split": Case(
        lambda w: ns.ZennitAttribution(w.split, relevance=_zennit()).attribute(
            _x(), target=0, return_convergence_delta=True
        )
    ),
    "layer_zennit_attribution": Case(
        lambda w: ns.LayerZennitAttribution(
            w.split, ns.subunit_layer(w.split, "conv"), relevance=_zennit()
        ).attribute(_x(), target=1)
    ),
    "zennit_attribution_bad_target": Case(
        lambda w: ns.ZennitAttribution(w.original, relevance=_zennit()).attribute(_x(), target=99),
        InvalidTargetError,
    ),
    "zennit_attribution_raises_mid_forward": Case(
        lambda w: ns.ZennitAttribution(w.split, relevance=_zennit()).attribute(_x(), target=0),
        RuntimeError,
        True,
    ),
    "attribute_delta": Case(
        lambda w: ns.Disentangle(w.split).attribute(
            _x(), target=1, subunit="fc/u1/residual", return_convergence_delta=True
        )
    ),
    "attribute_unit": Case(
        lambda w: ns.Disentangle(w.split).attribute_unit(_x(), target=0, layer="fc", unit=1)
    ),
    "compute_convergence_delta": Case(
        lambda w: ns.Disentangle(w.split).compute_convergence_delta(
            _x(), _x(), target=0, subunit="conv/u2/k0"
        )
    ),
    "attribute_nan_input": Case(
        lambda w: ns.Disentangle(w.split).attribute(
            _nan_loader()[0][0], target=0, subunit="conv/u2/k0"
        )
    ),
    "zennit_attribute": Case(
        lambda w: ns.Disentangle(w.split, relevance=_zennit()).attribute(
            _x(), target=2, subunit="conv/u2/k0"
        )
    ),
    "zennit_attribute_unit": Case(
        lambda w: ns.Disentangle(w.split, relevance=_zennit()).attribute_unit(
            _x(), target=2, layer="conv", unit=2
        )
    ),
    "zennit_overlap_attribute": Case(
        lambda w: ns.Disentangle(w.split, relevance=_zennit()).attribute(
            _x(), target=1, subunit="fc/u1/k1"
        )
    ),
    "attribute_invalid_target": Case(
        lambda w: ns.Disentangle(w.split).attribute(_x(), target=3, subunit="conv/u2/k0"),
        InvalidTargetError,
    ),
    "zennit_invalid_target": Case(
        lambda w: ns.Disentangle(w.split, relevance=_zennit()).attribute(
            _x(), target=[0, 7], subunit="conv/u2/k0"
        ),
        InvalidTargetError,
    ),
    "attribute_unknown_subunit": Case(
        lambda w: ns.Disentangle(w.split).attribute(_x(), target=0, subunit="conv/u2/k5"),
        UnknownSubunitError,
    ),
    "attribute_unit_unknown_layer": Case(
        lambda w: ns.Disentangle(w.split).attribute_unit(_x(), target=0, layer="out", unit=0),
        (UnknownSubunitError, UnknownLayerError),
    ),
    "attribute_wrong_shape": Case(  # the model's own error passes through
        lambda w: ns.Disentangle(w.split).attribute(
            torch.rand(2, 3, 5, 5), target=0, subunit="conv/u2/k0"
        ),
        RuntimeError,
    ),
    "zennit_wrong_shape": Case(
        lambda w: ns.Disentangle(w.split, relevance=_zennit()).attribute(
            torch.rand(2, 1, 6, 6), target=0, subunit="fc/u1/k0"
        ),
        RuntimeError,
    ),
    "attribute_raises_mid_forward": Case(
        lambda w: ns.Disentangle(w.split).attribute(_x(), target=0, subunit="conv/u2/k0"),
        RuntimeError,
        True,
    ),
    "zennit_raises_mid_forward": Case(
        lambda w: ns.Disentangle(w.split, relevance=_zennit()).attribute_unit(
            _x(), target=0, layer="conv", unit=2
        ),
        RuntimeError,
        True,
    ),
    "compute_convergence_delta_raises_mid_forward": Case(
        lambda w: ns.Disentangle(w.split).compute_convergence_delta(
            _x(), _x(), target=0, subunit="fc/u1/k0"
        ),
        RuntimeError,
        True,
    ),
    "subunit_selector": Case(lambda w: ns.subunit_selector(w.split, ("fc", 1, "residual"))),
    "subunit_selector_unknown": Case(
        lambda w: ns.subunit_selector(w.split, ("conv", 3, 1)), UnknownSubunitError
    ),
    "subunit_layer": Case(lambda w: ns.subunit_layer(w.split, "conv")),
    "subunit_layer_unsplit": Case(
        lambda w: ns.subunit_layer(w.split, "out"), (UnknownSubunitError, UnknownLayerError)
    ),
    # Captum's own methods on subunits through our helpers (eval mode: see Case)
    "captum_layer_activation": Case(
        lambda w: LayerActivation(w.split, ns.subunit_layer(w.split, "conv")).attribute(_x()),
        train=False,
    ),
    "captum_layer_grad_x_act": Case(
        lambda w: LayerGradientXActivation(w.split, ns.subunit_layer(w.split, "fc")).attribute(
            _x(), target=1
        ),
        train=False,
    ),
    "captum_layer_ig_invalid_target": Case(
        lambda w: LayerIntegratedGradients(w.split, ns.subunit_layer(w.split, "fc")).attribute(
            _x(), target=9, n_steps=4
        ),
        Exception,  # Captum's own error type (IndexError / AssertionError)
        train=False,
    ),
    "captum_neuron_gradient_overlap": Case(
        lambda w: NeuronGradient(w.split, ns.subunit_layer(w.split, "fc")).attribute(
            _x(), ns.subunit_selector(w.split, ("fc", 1, 0))
        ),
        train=False,
    ),
    "captum_neuron_ig": Case(
        lambda w: NeuronIntegratedGradients(w.split, ns.subunit_layer(w.split, "conv")).attribute(
            _x(), ns.subunit_selector(w.split, ("conv", 2, 1)), n_steps=4
        ),
        train=False,
    ),
    "captum_neuron_conductance_raises_mid_forward": Case(
        lambda w: NeuronConductance(w.split, ns.subunit_layer(w.split, "conv")).attribute(
            _x(), ns.subunit_selector(w.split, ("conv", 2, 1)), target=0, n_steps=4
        ),
        RuntimeError,
        True,
        train=False,
    ),
    # ------------------------------------------------------------------ evaluation
    "concept_fractions": Case(_fractions),
    "concept_fractions_raises_mid_forward": Case(_fractions, RuntimeError, True),
    "concept_fractions_unsplit_unit": Case(
        lambda w: _fractions(w, unit=0), (UnknownSubunitError, ValueError, LookupError)
    ),
    "concept_fractions_bad_layer": Case(
        lambda w: _fractions(w, layer="nope"), (UnknownLayerError, LookupError)
    ),
    "top_k_purity": Case(lambda w: ns.top_k_purity(w.original, PLAN, _loader(), k=3)),
    "top_k_purity_raises_mid_forward": Case(
        lambda w: ns.top_k_purity(w.original, PLAN, _loader(), k=3), RuntimeError, True
    ),
    "evaluate": Case(lambda w: ns.evaluate(w.original, w.split, _loader(), k=3, progress=False)),
    "evaluate_raises_mid_forward": Case(
        lambda w: ns.evaluate(w.original, w.split, _loader(), progress=False), RuntimeError, True
    ),
    "evaluate_empty_plan": Case(
        lambda w: ns.evaluate(w.original, None, _loader(), SplitPlan([]), progress=False),
        ValueError,
    ),
    "reference_images": Case(_references),
    "reference_images_from_scan": Case(lambda w: _references(w, ["conv/u2", "fc/u1"], _result())),
    "reference_images_raises_mid_forward": Case(_references, RuntimeError, True),
    "reference_images_unknown_subunit": Case(
        lambda w: _references(w, ["conv/u2/k5"]), UnknownSubunitError
    ),
    # ------------------------------------------------------------------ discovery (ELUDe)
    "discover": Case(
        lambda w: ns.discover(
            w.original, _loader(48), ["conv", "fc"], top_n=8, units="all", progress=False
        )  # fmt: skip
    ),
    "discover_raises_mid_forward": Case(
        lambda w: ns.discover(w.original, _loader(), ["conv"], top_n=8, progress=False),
        RuntimeError,
        True,
    ),
    "discover_nan_input": Case(
        lambda w: ns.discover(w.original, _nan_loader(), ["fc"], top_n=8, progress=False),
        NonFiniteError,
    ),
    "discover_split_layer": Case(
        lambda w: ns.discover(w.split, _loader(), ["fc"], top_n=8, progress=False), PlanError
    ),
    # ------------------------------------------------------------------ sparse dictionaries
    "sdl_layer_outputs": Case(lambda w: ns.sdl.layer_outputs(w.original, "fc", _loader())),
    "sdl_layer_outputs_raises_mid_forward": Case(
        lambda w: ns.sdl.layer_outputs(w.original, "fc", _loader()), RuntimeError, True
    ),
    "sdl_spliced_output_change": Case(lambda w: _splice(w)),
    "sdl_spliced_output_change_raises_mid_forward": Case(lambda w: _splice(w), RuntimeError, True),
    "sdl_spliced_output_change_bad_layer": Case(lambda w: _splice(w, "nope"), UnknownLayerError),
    # ------------------------------------------------------------------ steering
    # the block calls the model itself (train mode would move BatchNorm statistics: the
    # user's call, not ours), so these run in eval mode
    "steer": Case(lambda w: _steer_api(w), train=False),
    "steer_fails_inside": Case(lambda w: _steer_api(w, fail=True), RuntimeError, train=False),
    "steer_permanent": Case(
        lambda w: ns.steer(w.split, {("fc", 1, 0): 0.0, ("conv", 2, -1): 2.0}, permanent=True)
    ),
    "steer_unknown_subunit": Case(
        lambda w: ns.steer(w.split, {("fc", 1, 5): 0.0}, permanent=True), UnknownSubunitError
    ),
    # ------------------------------------------------------------------ loading
    "load_timm_model": Case(lambda w: ns.load_timm_model("test_resnet", num_classes=3)),
    "load_timm_model_missing_weights": Case(
        lambda w: ns.load_timm_model("test_resnet", weights=w.tmp / "none.safetensors"),
        MissingFileError,
    ),
    "load_timm_model_bad_name": Case(lambda w: ns.load_timm_model(""), ArgumentTypeError),
    "load_timm_model_unknown_name": Case(
        lambda w: ns.load_timm_model("no_such_model_xyz"), RuntimeError
    ),
    "image_folder_loader": Case(
        lambda w: _first_batch(ns.image_folder_loader(_images(w.tmp), batch_size=2))
    ),
    "image_folder_loader_missing": Case(
        lambda w: ns.image_folder_loader(w.tmp / "nothing"), MissingFileError
    ),
    "image_folder_loader_bad_batch_size": Case(
        lambda w: ns.image_folder_loader(_images(w.tmp), batch_size=0), ValueError
    ),
    # ------------------------------------------------------------------ feature visualisation
    "visualise": Case(lambda w: _visualise(w, ["conv/u2/k1", "fc/u1/k0", "fc/u1", "out/u0"])),
    "visualise_unknown_subunit": Case(lambda w: _visualise(w, ["fc/u1/k5"]), UnknownSubunitError),
    "visualise_raises_mid_forward": Case(  # wrapped: InputShapeError (a ValueError) names it
        lambda w: _visualise(w, ["fc/u1/k0"]), ValueError, True
    ),
}


@pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")
@pytest.mark.filterwarnings("ignore:.*deprecated:DeprecationWarning")
@pytest.mark.parametrize("grad", [True, False], ids=["grad_on", "grad_off"])
@pytest.mark.parametrize("case", list(CASES))
def test_no_side_effects(case: str, grad: bool, tmp_path: Path) -> None:
    spec = CASES[case]
    world = _world(tmp_path, spec.train)
    previous = torch.is_grad_enabled()
    torch.set_grad_enabled(grad)  # the ambient mode the call must leave as it found it
    try:
        before = {"original": snapshot(world.original), "split": snapshot(world.split)}
        world.arm(spec.arm)
        try:
            if spec.error is None:
                spec.call(world)
            else:
                with pytest.raises(spec.error):
                    spec.call(world)
        finally:
            world.arm(False)
        assert torch.is_grad_enabled() is grad
        assert_unchanged(world.original, before["original"])
        assert_unchanged(world.split, before["split"])
    finally:
        torch.set_grad_enabled(previous)


def test_every_public_entry_point_has_a_success_and_a_failure_case() -> None:
    covered = {
        "scan", "find_polysemantic", "plan_split", "apply_plan", "verify", "explicit_rows",
        "index_merge_scaled", "save", "load", "disentangle", "attribute", "attribute_unit",
        "compute_convergence_delta", "subunit_selector", "subunit_layer", "concept_fractions",
        "load_timm_model", "image_folder_loader", "top_k_purity", "discover", "steer",
        "sdl_layer_outputs", "sdl_spliced_output_change",
        "evaluate", "reference_images", "visualise",
    }  # fmt: skip
    for name in covered:
        mine = [c for n, c in CASES.items() if n == name or n.startswith(f"{name}_")]
        mine += [c for n, c in CASES.items() if n.endswith(f"_{name}") or f"_{name}_" in n]
        assert any(c.error is None for c in mine), f"{name} has no successful case"
        assert any(c.error is not None for c in mine), f"{name} has no failing case"


def test_model_still_works_after_a_failure(tmp_path: Path) -> None:
    world = _world(tmp_path, train=True)
    world.arm(True)
    with pytest.raises(RuntimeError):
        ns.Disentangle(world.split).attribute(_x(), target=1, subunit="conv/u2/k1")
    world.arm(False)
    x = _x()
    torch.testing.assert_close(
        ns.Disentangle(world.split).attribute(x, target=1, subunit="conv/u2/k1"),
        ns.Disentangle(ns.apply_plan(_net(), PLAN)).attribute(x, target=1, subunit="conv/u2/k1"),
    )


def test_attributions_are_computed_in_eval_mode(tmp_path: Path) -> None:
    """A train-mode model is explained as in eval mode (BatchNorm on its running statistics),
    the same as the scan's relevance, and its flags come back."""
    train, evaluated = _world(tmp_path, train=True), _world(tmp_path, train=False)
    x = _x(3)
    for method in ("attribute", "attribute_unit"):
        args: dict[str, Any] = (
            {"subunit": "fc/u1/k0"} if method == "attribute" else {"layer": "fc", "unit": 1}
        )
        got = getattr(ns.Disentangle(train.split), method)(x, target=1, **args)
        want = getattr(ns.Disentangle(evaluated.split), method)(x, target=1, **args)
        if method == "attribute_unit":
            got, want = got.relevance, want.relevance
        torch.testing.assert_close(got, want)
    assert train.split.training and not train.split.act2.training


def test_inputs_untouched() -> None:
    model = ns.apply_plan(_net(), PLAN)
    x = _x()
    x_copy = x.clone()
    ns.Disentangle(model).attribute(x, target=0, subunit="conv/u2/k0")
    assert not x.requires_grad and x.grad is None and torch.equal(x, x_copy)
    y = _x().requires_grad_(True)
    ns.Disentangle(model, relevance=_zennit()).attribute(y, target=0, subunit="conv/u2/k0")
    assert y.requires_grad and y.grad is None


def test_the_package_ships_py_typed() -> None:
    """PEP 561: the marker is in the package and in the package data a wheel ships."""
    import importlib.resources
    import tomllib

    assert importlib.resources.files("neuronsplit").joinpath("py.typed").is_file()
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert "py.typed" in pyproject["tool"]["setuptools"]["package-data"]["neuronsplit"]
