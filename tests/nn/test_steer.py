"""``ns.steer``: the context (exact restore, nesting, exceptions), the baked-in model, both
merge forms, residuals, errors, the scales file, and the demo claim (ablating a concept's
subunit lowers the logits of that concept's classes much more than the others')."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import neuronsplit as ns
from helpers import assert_unchanged, snapshot
from neuronsplit.errors import (
    ArgumentTypeError,
    CorruptFileError,
    InvalidArgumentError,
    MissingFileError,
    UnknownLayerError,
    UnknownSubunitError,
)
from neuronsplit.nn import Steering, get_split_layer, iter_split_layers, load_scales
from neuronsplit.plan import SplitPlan, UnitSplit

DT = torch.float64
FORMS = ("disjoint", "overlap")


class Net(nn.Module):
    """conv(2->4) -> ReLU -> flatten -> fc(64->5) -> ReLU -> out(5->3)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.act1 = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, 5)
        self.act2 = nn.ReLU()
        self.out = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.act2(self.fc(self.flatten(self.act1(self.conv(x))))))


#: the splits of the test plan: layer -> [(unit, groups, shared)]
SPLITS: dict[str, list[tuple[int, list[list[int]], list[int]]]] = {
    "conv": [(1, [[0], [1]], [])],
    "fc": [
        (2, [list(range(0, 20)), list(range(20, 30)), list(range(30, 44))], list(range(44, 64))),
        (4, [list(range(0, 40)), list(range(40, 50))], list(range(50, 64))),
    ],
}


def _model() -> Net:
    torch.manual_seed(0)
    return Net().to(DT).eval()


def _plan(form: str) -> SplitPlan:
    return SplitPlan(
        [
            UnitSplit(layer, unit, groups, shared, merge=form)
            for layer, units in SPLITS.items()
            for unit, groups, shared in units
        ]
    )


def _x(n: int = 6) -> torch.Tensor:
    return torch.randn(n, 2, 4, 4, generator=torch.Generator().manual_seed(1), dtype=DT)


def _refs() -> list[tuple[str, int, int]]:
    return [
        (layer, unit, k)
        for layer, units in SPLITS.items()
        for unit, groups, _ in units
        for k in (*range(len(groups)), -1)
    ]


def _run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def _by_hand(form: str, scales: dict[tuple[str, int, int], float]) -> nn.Module:
    """The steered model computed from the *original* weights, without any split layer: each
    input weight of a steered unit (and its bias) is multiplied by the scale of the subunit
    that holds it; in the overlap form the shared inputs and the bias get
    ``sum_k a_k - (K-1) a_r``."""
    model = _model()
    with torch.no_grad():
        for layer, units in SPLITS.items():
            mod = model.get_submodule(layer)
            for unit, groups, shared in units:
                a = [scales.get((layer, unit, k), 1.0) for k in range(len(groups))]
                a_r = scales.get((layer, unit, -1), 1.0)
                c_r = sum(a) - (len(groups) - 1) * a_r if form == "overlap" else a_r
                for k, group in enumerate(groups):
                    mod.weight[unit, group] *= a[k]
                mod.weight[unit, shared] *= c_r
                mod.bias[unit] *= c_r
    return model


@pytest.fixture(params=FORMS)
def form(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def split(form: str) -> nn.Module:
    return ns.apply_plan(_model(), _plan(form))


def _assert_plain(model: nn.Module) -> None:
    """No steering state left on any split layer."""
    for _, layer in iter_split_layers(model):
        merge = layer.merge
        assert not merge.steered and merge.scales == {} and merge._stack == []
        assert torch.equal(merge.row_scale, torch.ones_like(merge.row_scale))
        assert torch.equal(merge.coef, torch.ones_like(merge.coef))


# ---------------------------------------------------------------------------- the context
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_alpha_one_is_bit_identical(split: nn.Module, grad: bool) -> None:
    x = _x()
    with torch.set_grad_enabled(grad):
        base = split(x)
        with ns.steer(split, dict.fromkeys(_refs(), 1.0)) as model:
            assert model is split
            same = split(x)
    assert torch.equal(same, base)


@pytest.mark.parametrize("ref", _refs(), ids=str)
def test_ablation_equals_the_weights_zeroed_by_hand(
    split: nn.Module, form: str, ref: tuple
) -> None:
    x = _x()
    expected = _run(_by_hand(form, {ref: 0.0}), x)
    with ns.steer(split, {ref: 0.0}):
        got = _run(split, x)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(got, _run(split, x))  # it did change something


def test_several_layers_at_once_equal_the_formula(split: nn.Module, form: str) -> None:
    scales = {("conv", 1, 0): 0.0, ("fc", 2, 1): 2.5, ("fc", 2, -1): 0.5, ("fc", 4, 1): -1.0}
    x = _x()
    with ns.steer(split, scales):
        got = _run(split, x)
    torch.testing.assert_close(got, _run(_by_hand(form, scales), x), rtol=1e-12, atol=1e-12)


def test_residual_can_be_named_as_residual(split: nn.Module) -> None:
    x = _x()
    with ns.steer(split, {("fc", 2, -1): 0.0}):
        a = _run(split, x)
    with ns.steer(split, {ns.SubunitRef("fc", 2, "residual"): 0.0}):
        b = _run(split, x)
    with ns.steer(split, {("fc", 2, "residual"): 0.0}) as steering_model:
        c = _run(steering_model, x)
    assert torch.equal(a, b) and torch.equal(a, c)


def test_nesting_multiplies_and_restores_exactly(split: nn.Module, form: str) -> None:
    x = _x()
    base = _run(split, x)
    outer = {("fc", 2, 1): 2.0, ("conv", 1, 1): 0.5}
    inner = {("fc", 2, 1): 3.0, ("fc", 4, -1): 0.0}
    with ns.steer(split, outer):
        first = _run(split, x)
        with ns.steer(split, inner):
            both = _run(split, x)
        assert torch.equal(_run(split, x), first)
    assert torch.equal(_run(split, x), base)
    _assert_plain(split)
    product = {("fc", 2, 1): 6.0, ("conv", 1, 1): 0.5, ("fc", 4, -1): 0.0}
    torch.testing.assert_close(both, _run(_by_hand(form, product), x), rtol=1e-12, atol=1e-12)


def test_one_steering_object_can_be_reused_and_nested_in_itself(split: nn.Module) -> None:
    x = _x()
    base = _run(split, x)
    steering = ns.steer(split, {("fc", 2, 0): 0.5})
    assert isinstance(steering, Steering) and steering.scales == {("fc", 2, 0): 0.5}
    with steering:
        once = _run(split, x)
        with steering:
            twice = _run(split, x)
    with ns.steer(split, {("fc", 2, 0): 0.25}):
        quarter = _run(split, x)
    torch.testing.assert_close(twice, quarter, rtol=1e-12, atol=0)
    with steering:
        assert torch.equal(_run(split, x), once)
    assert torch.equal(_run(split, x), base)


def test_an_exception_inside_restores_everything(split: nn.Module) -> None:
    x = _x()
    base = _run(split, x)
    before = snapshot(split)
    with pytest.raises(RuntimeError, match="inside"):
        with ns.steer(split, {("fc", 2, 0): 0.0, ("conv", 1, -1): 3.0}):
            raise RuntimeError("failure inside the block")
    assert_unchanged(split, before)
    _assert_plain(split)
    assert torch.equal(_run(split, x), base)


def test_steering_a_subunit_is_not_scaling_the_unit(split: nn.Module, form: str) -> None:
    """All subunits and the residual of a unit by alpha = the unit's output times alpha (both
    forms); one subunit by alpha is something else."""
    x, alpha = _x(), 0.3
    whole = {("fc", 2, k): alpha for k in (0, 1, 2, -1)}
    by_hand = _model()
    with torch.no_grad():
        by_hand.fc.weight[2] *= alpha
        by_hand.fc.bias[2] *= alpha
    with ns.steer(split, whole):
        unit_scaled = _run(split, x)
    with ns.steer(split, {("fc", 2, 1): alpha}):
        subunit_scaled = _run(split, x)
    torch.testing.assert_close(unit_scaled, _run(by_hand, x), rtol=1e-12, atol=1e-12)
    assert (unit_scaled - subunit_scaled).abs().max() > 1e-3
    with torch.no_grad():
        hidden = split.fc(split.flatten(split.act1(split.conv(x))))
        with ns.steer(split, whole):
            hidden_whole = split.fc(split.flatten(split.act1(split.conv(x))))
    torch.testing.assert_close(hidden_whole[:, 2], alpha * hidden[:, 2], rtol=1e-12, atol=1e-12)


def test_overlap_ablation_also_removes_the_shared_inputs() -> None:
    """The two readings of the same rows: ablating overlap subunit k drops t_k and r, the
    disjoint subunit k drops only t_k."""
    x = _x()
    out = {}
    for form in FORMS:
        split = ns.apply_plan(_model(), _plan(form))
        with torch.no_grad(), ns.steer(split, {("fc", 2, 0): 0.0}):
            out[form] = split.fc(split.flatten(split.act1(split.conv(x))))[:, 2]
    layer = ns.apply_plan(_model(), _plan("disjoint")).fc
    with torch.no_grad():
        rows = layer.subunits(split.flatten(split.act1(split.conv(x))))
    t1, t2, r = (rows[:, layer.merge.channel(2, k)] for k in (1, 2, -1))
    torch.testing.assert_close(out["disjoint"], t1 + t2 + r, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out["overlap"], t1 + t2, rtol=1e-12, atol=1e-12)


def test_a_layer_registered_twice_is_steered_once() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(3, 3).to(DT)
    model = nn.Sequential(lin, nn.ReLU(), lin)
    split = ns.apply_plan(model, SplitPlan([UnitSplit("0", 1, [[0], [1]], [2])]))
    assert split[0] is split[2]
    with pytest.raises(InvalidArgumentError, match=r"names subunit \('2', 1, 0\) twice"):
        ns.steer(split, {("0", 1, 0): 0.0, ("2", 1, 0): 0.0})
    with ns.steer(split, {("2", 1, 0): 0.0}):
        assert split[0].merge.steered


# ---------------------------------------------------------------------------- permanent
SCALES = {("conv", 1, 1): 0.0, ("fc", 2, 0): 1.7, ("fc", 2, -1): 0.4, ("fc", 4, 1): 0.0}


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_permanent_equals_the_context_and_leaves_the_model(
    split: nn.Module, form: str, grad: bool
) -> None:
    x = _x()
    before = snapshot(split)
    steered = ns.steer(split, SCALES, permanent=True)
    assert_unchanged(split, before)
    assert steered is not split and isinstance(steered, Net)
    _assert_plain(steered)
    with ns.steer(split, SCALES):
        want = _run(split, x)
    with torch.set_grad_enabled(grad):  # grad: the rows; no_grad: the rebuilt plain layer
        got = steered(x).detach()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got, _run(_by_hand(form, SCALES), x), rtol=1e-12, atol=1e-12)
    flags = {k: p.requires_grad for k, p in split.named_parameters()}
    assert {k: p.requires_grad for k, p in steered.named_parameters()} == flags


def test_permanent_with_scales_of_one_keeps_every_weight(split: nn.Module) -> None:
    steered = ns.steer(split, dict.fromkeys(_refs(), 1.0), permanent=True)
    state, new = split.state_dict(), steered.state_dict()
    assert state.keys() == new.keys() and all(torch.equal(state[k], new[k]) for k in state)
    assert torch.equal(_run(steered, _x()), _run(split, _x()))


def test_permanent_inside_a_context_bakes_both(split: nn.Module, form: str) -> None:
    x = _x()
    with ns.steer(split, {("fc", 2, 0): 2.0}):
        steered = ns.steer(split, {("fc", 2, 0): 0.5, ("fc", 4, 0): 0.0}, permanent=True)
    _assert_plain(split)
    _assert_plain(steered)
    want = _run(_by_hand(form, {("fc", 2, 0): 1.0, ("fc", 4, 0): 0.0}), x)
    torch.testing.assert_close(_run(steered, x), want, rtol=1e-12, atol=1e-12)


def test_permanent_model_can_be_steered_again(split: nn.Module) -> None:
    x = _x()
    steered = Steering.permanent(ns.steer(split, {("fc", 4, 0): 0.5}))
    with ns.steer(steered, {("fc", 4, 0): 2.0}):  # disjoint: t_0 back to its original size
        back = _run(steered, x)
    if split.fc.form == "disjoint":
        torch.testing.assert_close(back, _run(split, x), rtol=1e-12, atol=1e-12)
    assert torch.equal(_run(split, x), _run(ns.apply_plan(_model(), _plan(split.fc.form)), x))


def test_permanent_model_survives_save_and_load(split: nn.Module, tmp_path: Path) -> None:
    steered = ns.steer(split, SCALES, permanent=True)
    ns.save(steered, tmp_path / "steered")
    loaded = ns.load(tmp_path / "steered", _model())
    x = _x()
    assert torch.equal(_run(loaded, x), _run(steered, x))
    with torch.enable_grad():
        assert torch.equal(loaded(x), steered(x))


def test_half_precision_rows_are_scaled_in_float32() -> None:
    """The factor is the merge's (a bfloat16 buffer, as the context uses it); the product is
    taken in float32 and rounded once."""
    split = ns.apply_plan(_model().to(torch.bfloat16), _plan("overlap"))
    steered = ns.steer(split, {("fc", 2, 1): 1 / 3}, permanent=True)
    row = split.fc.merge.channel(2, 1)
    factor = torch.tensor(1 / 3, dtype=torch.bfloat16).float()
    want = (split.fc.subunits.weight[row].float() * factor).to(torch.bfloat16)
    assert torch.equal(steered.fc.subunits.weight[row], want)
    assert steered.fc.subunits.weight.dtype == torch.bfloat16


# ---------------------------------------------------------------------------- errors
ERRORS: list[tuple[str, Any, type[Exception], str]] = [
    ("model", lambda s: ns.steer("model", {}), ArgumentTypeError, "split_model must be a torch.nn.Module"),
    ("scales list", lambda s: ns.steer(s, [("fc", 2, 0)]), ArgumentTypeError, "scales must be a mapping"),
    ("key type", lambda s: ns.steer(s, {3: 0.0}), ArgumentTypeError, "SubunitRef or a .* tuple, got int 3"),
    ("unknown layer", lambda s: ns.steer(s, {("nope", 0, 0): 0.0}), UnknownLayerError, "no layer 'nope'"),
    ("layer not split", lambda s: ns.steer(s, {("out", 0, 0): 0.0}), UnknownLayerError, "not a split layer"),
    ("unit not split", lambda s: ns.steer(s, {("fc", 0, 0): 0.0}), UnknownSubunitError, "unit 0 is not split"),
    ("unit out of range", lambda s: ns.steer(s, {("fc", 9, 0): 0.0}), UnknownSubunitError, "unit 9 is not split"),
    ("bad k", lambda s: ns.steer(s, {("fc", 4, 2): 0.0}), UnknownSubunitError, "k=2 does not exist"),
    ("k below -1", lambda s: ns.steer(s, {("fc", 4, -2): 0.0}), UnknownSubunitError, "k=-2 does not exist"),
    ("k bool", lambda s: ns.steer(s, {("fc", 4, True): 0.0}), UnknownSubunitError, "k=True"),
    ("alpha nan", lambda s: ns.steer(s, {("fc", 4, 0): float("nan")}), InvalidArgumentError, "must be finite, got nan"),
    ("alpha inf", lambda s: ns.steer(s, {("fc", 4, 0): float("inf")}, permanent=True), InvalidArgumentError, "must be finite"),
    ("alpha str", lambda s: ns.steer(s, {("fc", 4, 0): "0.5"}), ArgumentTypeError, "must be a number, got str '0.5'"),
    ("alpha bool", lambda s: ns.steer(s, {("fc", 4, 0): True}), ArgumentTypeError, "must be a number, got bool"),
    ("duplicate", lambda s: ns.steer(s, {("fc", 4, -1): 0.0, ("fc", 4, "residual"): 1.0}), InvalidArgumentError, "twice"),
    ("permanent", lambda s: ns.steer(s, {}, permanent="yes"), ArgumentTypeError, "permanent must be True or False"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "call", "error", "pattern"), ERRORS, ids=[e[0] for e in ERRORS])
def test_errors(split: nn.Module, name: str, call: Any, error: type, pattern: str) -> None:
    before = snapshot(split)
    with pytest.raises(error, match=pattern):
        call(split)
    assert_unchanged(split, before)  # nothing was scaled, not even the valid entries
    _assert_plain(split)


def test_numbers_of_other_types_are_accepted(split: nn.Module) -> None:
    import numpy as np

    scales = {("fc", np.int64(4), torch.tensor(0)): np.float32(0.5), ("fc", 2, 1): torch.tensor(2)}
    steering = ns.steer(split, scales)
    assert steering.scales == {("fc", 4, 0): 0.5, ("fc", 2, 1): 2.0}
    assert "Steering(Net" in repr(steering)


def test_empty_scales_change_nothing(split: nn.Module) -> None:
    x = _x()
    with ns.steer(split, {}):
        assert torch.equal(_run(split, x), _run(copy.deepcopy(split), x))


# ---------------------------------------------------------------------------- scales file
def _write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "scales.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_load_scales(tmp_path: Path, split: nn.Module) -> None:
    entries = [
        {"layer": "fc", "unit": 2, "k": 1, "alpha": 0},
        {"layer": "fc", "unit": 2, "k": "residual", "alpha": 1.5},
        {"layer": "conv", "unit": 1, "k": -1, "alpha": -0.25},
    ]
    scales = load_scales(_write(tmp_path, entries))
    assert scales == {("fc", 2, 1): 0.0, ("fc", 2, -1): 1.5, ("conv", 1, -1): -0.25}
    assert all(type(a) is float for a in scales.values())
    assert ns.steer(split, scales).scales == scales


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        ("[{", "not valid JSON"),
        ('{"layer": "fc"}', "must hold a JSON list .* got a dict"),
        ("[3]", r"entry 0 must be an object .* got int"),
        ([{"layer": "fc", "unit": 2, "k": 0}], r"entry 0 .* got \['k', 'layer', 'unit'\]"),
        ([{"layer": "fc", "unit": 2, "k": 0, "scale": 1}], "exactly the fields"),
        ([{"layer": "fc", "unit": 2, "k": 0, "alpha": 1, "x": 1}], "exactly the fields"),
        ([{"layer": "", "unit": 2, "k": 0, "alpha": 1}], "'layer' must be a non-empty"),
        ([{"layer": "fc", "unit": "2", "k": 0, "alpha": 1}], "'unit' must be an int >= 0, got '2'"),
        ([{"layer": "fc", "unit": -1, "k": 0, "alpha": 1}], "'unit' must be an int >= 0"),
        ([{"layer": "fc", "unit": 2, "k": -2, "alpha": 1}], "'k' must be an int >= 0, or -1"),
        ([{"layer": "fc", "unit": 2, "k": 1.0, "alpha": 1}], "'k' must be"),
        ([{"layer": "fc", "unit": 2, "k": 0, "alpha": "0"}], "'alpha' must be a finite number"),
        ([{"layer": "fc", "unit": 2, "k": 0, "alpha": True}], "'alpha' must be a finite number"),
        ('[{"layer": "fc", "unit": 2, "k": 0, "alpha": NaN}]', "'alpha' must be a finite"),
        (
            [
                {"layer": "fc", "unit": 2, "k": -1, "alpha": 1},
                {"layer": "fc", "unit": 2, "k": "residual", "alpha": 0},
            ],
            r"entry 1 lists subunit \('fc', 2, -1\) a second time",
        ),
    ],
)
def test_load_scales_refuses_malformed_files(tmp_path: Path, data: Any, pattern: str) -> None:
    with pytest.raises(CorruptFileError, match=pattern):
        load_scales(_write(tmp_path, data))


def test_load_scales_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match="does not exist"):
        load_scales(tmp_path / "none.json")
    with pytest.raises(MissingFileError):
        load_scales(tmp_path)  # a directory is not a scales file


# ---------------------------------------------------------------------------- the demo claim
@pytest.fixture(scope="module")
def demo() -> dict[str, Any]:
    from neuronsplit.demo import demo_plan, get_demo_model, load_digits

    model = get_demo_model()
    _, _, plan = demo_plan(model)
    test = load_digits("test")
    return {"model": model, "split": ns.apply_plan(model, plan), "plan": plan, "test": test}


def _per_class_drop(split: nn.Module, scales: dict, x: torch.Tensor, y: torch.Tensor):
    """Mean drop of the logit of class c on the test images of class c, for each c."""
    base = _run(split, x)
    with ns.steer(split, scales):
        drop = base - _run(split, x)
    return torch.stack([drop[y == c, c].mean() for c in range(10)])


def test_demo_ablating_a_concept_hits_its_classes(demo: dict[str, Any]) -> None:
    split, test = demo["split"], demo["test"]
    before = snapshot(split)
    concepts = {(i["layer"], i["unit"]): i["concepts"] for i in demo["plan"].meta["units"]}
    ratios, inside_all, outside_all = [], [], []
    lines = ["", "unit  k  concept       drop: its classes  other classes"]
    for s in demo["plan"].splits:
        assert s.labels == tuple(
            "class " + "+".join(map(str, c)) for c in concepts[(s.layer, s.unit)]
        )
        for k, classes in enumerate(concepts[(s.layer, s.unit)]):
            drop = _per_class_drop(split, {(s.layer, s.unit, k): 0.0}, test.images, test.labels)
            others = [c for c in range(10) if c not in classes]
            inside, outside = float(drop[list(classes)].mean()), float(drop[others].mean())
            lines.append(
                f"{s.unit:>4} {k:>2}  {s.labels[k]:<12}  {inside:>17.3f}  {outside:>13.3f}"
            )
            inside_all.append(inside)
            outside_all.append(outside)
            ratios.append(inside / max(outside, 1e-6))
    mean_in, mean_out = sum(inside_all) / len(ratios), sum(outside_all) / len(ratios)
    lines.append(f"mean over {len(ratios)} concepts: {mean_in:.3f} vs {mean_out:.3f}")
    print("\n".join(lines))  # noqa: T201 - the numbers behind the claim (pytest -s)
    assert mean_in > 3 * mean_out  # measured: about 6x
    assert max(ratios) > 20  # the clearest concept (measured: about 40x)
    assert sum(r > 1.5 for r in ratios) >= len(ratios) // 2
    assert_unchanged(split, before)


def test_demo_subunit_versus_whole_unit(demo: dict[str, Any]) -> None:
    """Ablating the whole unit also lowers the other concepts' classes; the subunit spares
    them (the unit's other concepts keep their logits)."""
    split, test, plan = demo["split"], demo["test"], demo["plan"]
    info = plan.meta["units"][0]
    layer, unit, concepts = info["layer"], info["unit"], info["concepts"]
    n = get_split_layer(split, layer).num_subunits(unit)
    whole = {(layer, unit, k): 0.0 for k in (*range(n), -1)}
    whole_drop = _per_class_drop(split, whole, test.images, test.labels)
    for k, classes in enumerate(concepts):
        sub_drop = _per_class_drop(split, {(layer, unit, k): 0.0}, test.images, test.labels)
        rest = [c for other in concepts if other != classes for c in other]
        print(  # noqa: T201 - the numbers behind the claim (pytest -s)
            f"unit {unit} concept {classes}: other concepts' classes drop "
            f"{float(sub_drop[rest].mean()):.3f} (subunit) vs {float(whole_drop[rest].mean()):.3f}"
            " (whole unit)"
        )
        assert float(sub_drop[rest].mean()) < 0.5 * float(whole_drop[rest].mean())
