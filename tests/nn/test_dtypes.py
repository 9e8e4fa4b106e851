"""Split models under every float dtype, under autocast and on the meta device.

The matrix: dtype (float64, float32, float16, bfloat16) x block (Linear stack, Conv2d stack, a
timm ResNet bottleneck, a timm ViT block) x merge form. Each case splits one layer whole and a
few units of the others (random K in 2..4) and measures, against a float64 reference that has
the *same* (rounded) weights and inputs, the original's own error in the dtype and the split's:

* rows computed (``explicit_rows``): the split may be at most ``FACTOR`` times worse than the
  original, at the model output and at every split layer fed the same input (the layer is
  where the extra roundings are: each row is rounded to the dtype once, then half-precision
  rows are added in float32 and rounded once more; measured worst case 3.0x, see
  docs/design.md, "Precision per dtype"), plus a float64-sized floor for the float64 case,
  where the original *is* the reference;
* rows not computed (unobserved ``no_grad`` inference runs the original weight rebuilt from the
  rows): bitwise the original's output.

Every parameter and buffer keeps the original's dtype and device, and the output dtype is the
original's, also under ``torch.autocast``.
"""

from __future__ import annotations

import copy
import random

import pytest
import torch
from torch import nn

from helpers import layer_sizes, random_split, randomize_norms
from neuronsplit.errors import MetaTensorError, NeuronSplitError
from neuronsplit.nn import (
    apply_plan,
    explicit_rows,
    get_split_layer,
    iter_split_layers,
    verify_equivalence,
)
from neuronsplit.nn.verify import DEFAULT_RTOL
from neuronsplit.plan import SplitPlan

DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
FORMS = ("disjoint", "overlap")
BLOCKS = ("linear", "conv", "resnet", "vit")
FACTOR = 4.0  # the split's error may be at most this many times the original's
FLOOR = 64 * torch.finfo(torch.float64).eps  # relative to max|y|: float64 rounding only


def _block(kind: str) -> tuple[nn.Module, list[str], tuple[int, ...]]:
    """A small float64 model, the layers to split, and an input shape."""
    torch.manual_seed(0)
    if kind == "linear":
        model = nn.Sequential(
            nn.Linear(64, 48), nn.GELU(), nn.Linear(48, 32), nn.GELU(), nn.Linear(32, 10)
        )
        return model.double().eval(), ["0", "2", "4"], (8, 64)
    if kind == "conv":
        model = nn.Sequential(
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
            nn.ReLU(), nn.Conv2d(16, 8, 1),
        )  # fmt: skip
        return model.double().eval(), ["0", "2", "4"], (2, 8, 12, 12)
    pytest.importorskip("timm")
    if kind == "resnet":
        from timm.models.resnet import Bottleneck

        model = randomize_norms(Bottleneck(32, 8))
        return model.double().eval(), ["conv1", "conv2", "conv3"], (2, 32, 8, 8)
    from timm.models.vision_transformer import Block

    model = randomize_norms(Block(dim=32, num_heads=4, init_values=1.0))
    return model.double().eval(), ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"], (2, 17, 32)


def _plan(model: nn.Module, names: list[str], merge: str, seed: int = 0) -> SplitPlan:
    """The first layer split whole, four units of every other one; K random in 2..4."""
    rng = random.Random(seed)
    splits = []
    for i, name in enumerate(names):
        n_in, n_out = layer_sizes(model.get_submodule(name))
        units = range(n_out) if i == 0 else rng.sample(range(n_out), 4)
        splits += [random_split(rng, name, u, n_in, rng.choice([2, 3, 4]), merge) for u in units]
    return SplitPlan(splits)


def _err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref).abs().max())


def _layer_inputs(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        model.get_submodule(n).register_forward_pre_hook(
            lambda _m, args, n=n: seen.__setitem__(n, args[0])
        )
        for n in names
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _check_within(err_split: float, err_orig: float, ref: torch.Tensor, what: str) -> None:
    bound = FACTOR * err_orig + FLOOR * float(ref.abs().max())
    assert err_split <= bound, (
        f"{what}: split error {err_split:.3g} > {bound:.3g} (original {err_orig:.3g})"
    )


def _check_dtype_and_device(original: nn.Module, split: nn.Module, dtype: torch.dtype) -> None:
    """Every floating tensor of the split model has the original's dtype; devices match; the
    modules that were not split have exactly the original's parameters and buffers."""
    device = next(original.parameters()).device
    for name, t in (*split.named_parameters(), *split.named_buffers()):
        assert t.device == device, name
        if t.is_floating_point():
            assert t.dtype == dtype, name
    for name, layer_split in iter_split_layers(split):
        assert layer_split.merge.index.dtype == torch.long
        assert layer_split.merge.row_scale.dtype == layer_split.subunits.weight.dtype, name
    orig_state = dict(original.named_parameters()) | dict(original.named_buffers())
    split_names = {n for n, _ in iter_split_layers(split)}
    for name, t in (*split.named_parameters(), *split.named_buffers()):
        if not any(name.startswith(s + ".") for s in split_names):
            assert orig_state[name].dtype == t.dtype and orig_state[name].shape == t.shape


# --------------------------------------------------------------------------- the matrix
@pytest.mark.parametrize("merge", FORMS)
@pytest.mark.parametrize("kind", BLOCKS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_split_error_is_within_a_factor_of_the_originals(
    dtype: torch.dtype, kind: str, merge: str
) -> None:
    model64, names, shape = _block(kind)
    model = copy.deepcopy(model64).to(dtype)
    reference = copy.deepcopy(model).double()  # the same rounded weights, in float64
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    split = apply_plan(model, _plan(model64, names, merge), fold_layer_scale=False)
    _check_dtype_and_device(model, split, dtype)

    with torch.no_grad():
        ref = reference(x.double())
        y_orig = model(x)
        y_fast = split(x)  # unobserved: the original weight, rebuilt from the rows
        with explicit_rows(split):
            y_rows = split(x)
    assert y_rows.dtype == y_fast.dtype == dtype
    assert torch.equal(y_fast, y_orig), "unobserved inference must be the original, bitwise"
    with torch.enable_grad():
        y_grad = split(x)  # grad enabled computes the rows
    assert torch.equal(y_grad.detach(), y_rows)
    _check_within(_err(y_rows, ref), _err(y_orig, ref), ref, f"{kind} output")

    # layer by layer, on the same input: where the split's roundings are
    inputs = _layer_inputs(model, names, x)
    for name in names:
        original, layer = model.get_submodule(name), get_split_layer(split, name)
        with torch.no_grad(), explicit_rows(split):
            ref = copy.deepcopy(original).double()(inputs[name].double())
            err_orig = _err(original(inputs[name]), ref)
            err_split = _err(layer(inputs[name]), ref)
        _check_within(err_split, err_orig, ref, f"{kind} layer {name}")


@pytest.mark.parametrize("kind", BLOCKS)
def test_autocast_bfloat16_on_a_float32_model(kind: str) -> None:
    """The merge used to fail under autocast (index_add_: self BFloat16, source Float)."""
    model64, names, shape = _block(kind)
    model = copy.deepcopy(model64).float()
    split = apply_plan(model, _plan(model64, names, FORMS[len(kind) % 2]), fold_layer_scale=False)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = copy.deepcopy(model).double()(x.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            y_orig = model(x)
            y_fast = split(x)
            with explicit_rows(split):
                y_rows = split(x)
        y_grad = split(x)  # with grad: rows, and a backward pass through the merge
        y_grad.float().square().sum().backward()
        first = get_split_layer(split, names[0])
        with first.merge.scaled({(0, 1): 0.5}), torch.no_grad():  # steered: scaled rows
            y_steer = split(x)
    assert y_orig.dtype == y_fast.dtype == y_rows.dtype == y_grad.dtype == y_steer.dtype
    assert torch.equal(y_fast, y_orig)
    assert torch.equal(y_grad.detach(), y_rows)
    assert torch.isfinite(y_steer).all() and not torch.equal(y_steer, y_rows)
    assert first.subunits.weight.grad is not None
    assert first.subunits.weight.grad.dtype == torch.float32
    _check_dtype_and_device(model, split, torch.float32)
    _check_within(_err(y_rows, ref), _err(y_orig, ref), ref, f"{kind} under autocast")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision_rows_are_added_in_float32(dtype: torch.dtype) -> None:
    """t0 = 2048, t1 = r = 1 (a conv layout): adding in float16 rounds 2048 + 1 back to 2048,
    twice; in float32 the sum is 2050, which float16 holds exactly (bfloat16: 256 + 1 + 1)."""
    from neuronsplit.nn import IndexMerge

    big = 2048.0 if dtype == torch.float16 else 256.0
    merge = IndexMerge(1, units=[0], num_subunits=[2], dim=-3, dtype=dtype)
    inter = torch.ones(2, 3, 4, 4, dtype=dtype)
    inter[:, 0] = big
    half_sum = inter[:, :1].index_add(-3, merge.index, inter[:, 1:])  # in the half dtype
    assert half_sum.eq(big).all()  # what half arithmetic gives here
    out = merge(inter)
    assert out.dtype == dtype and out.eq(big + 2).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", ["conv", "vit"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_cuda_keeps_device_and_precision(dtype: torch.dtype, kind: str) -> None:
    """The matrix's bound on the GPU, in the dtype and under CUDA autocast (float32 model)."""
    model64, names, shape = _block(kind)
    model = copy.deepcopy(model64).to("cuda", dtype)
    reference = copy.deepcopy(model).double()
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1)).to("cuda", dtype)
    split = apply_plan(model, _plan(model64, names, "overlap"))
    _check_dtype_and_device(model, split, dtype)
    assert get_split_layer(split, names[0]).merge.index.is_cuda
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.float32)
    with torch.no_grad():
        ref = reference(x.double())
    with torch.no_grad(), autocast:
        y_orig = model(x)
        with explicit_rows(split):
            y_rows = split(x)
    assert y_rows.dtype == y_orig.dtype and y_rows.is_cuda
    _check_within(_err(y_rows, ref), _err(y_orig, ref), ref, f"{kind} on CUDA")


# --------------------------------------------------------------------------- verify
@pytest.mark.parametrize("kind", BLOCKS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_verify_equivalence_passes_with_the_default_tolerance(
    dtype: torch.dtype, kind: str
) -> None:
    model64, names, shape = _block(kind)
    model = copy.deepcopy(model64).float()
    split = apply_plan(model, _plan(model64, names, "overlap", seed=1))
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
    report = verify_equivalence(model, split, x, dtype=dtype)
    assert report.passed, str(report)
    (row,) = report.rows
    assert row.dtype == str(dtype).removeprefix("torch.") and row.rtol == DEFAULT_RTOL[dtype]
    # well inside the default: the measured split-vs-original gap is below a quarter of rtol
    assert row.output_rel <= DEFAULT_RTOL[dtype] / 4
    for lay in row.layers:
        assert all(d.max_abs <= DEFAULT_RTOL[dtype] / 4 * lay.max_ref for d in lay.split_units)
    assert next(model.parameters()).dtype == torch.float32  # the user's models are untouched
    assert next(split.parameters()).dtype == torch.float32


# --------------------------------------------------------------------------- meta device
def test_apply_plan_on_the_meta_device_plans_shapes() -> None:
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    rng = random.Random(0)
    splits = [random_split(rng, "layer1.0.conv1", u, 64, 3, "overlap") for u in range(64)]
    splits.append(random_split(rng, "fc", 3, 512, 2, "disjoint"))
    split = apply_plan(model, SplitPlan(splits))
    conv, fc = get_split_layer(split, "layer1.0.conv1"), get_split_layer(split, "fc")
    assert conv.subunits.weight.shape == (64 + 64 * 3, 64, 3, 3)
    assert fc.subunits.weight.shape == (10 + 2, 512) and fc.subunits.bias.shape == (12,)
    for t in (*split.parameters(), *split.buffers()):
        assert t.is_meta
    # the layout is read on the host: no value of a meta buffer is needed
    assert conv.num_subunits(5) == 3 and fc.subunit_index(3, 1) == 10
    assert fc.residual_index(3) == 11 and conv.subunit_channels(0, 1) == ((64, 1.0), (66, 1.0))
    with fc.merge.scaled({(3, 1): 0.5}):
        pass
    out = split(torch.empty(2, 3, 32, 32, device="meta"))
    assert out.shape == (2, 10) and out.is_meta


def test_verify_equivalence_on_meta_raises_a_typed_error() -> None:
    with torch.device("meta"):
        meta_model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))
    plan = SplitPlan([random_split(random.Random(0), "0", 1, 6, 2, "disjoint")])
    meta_split = apply_plan(meta_model, plan)
    torch.manual_seed(0)
    real = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))
    real_split = apply_plan(real, plan)
    cases = [
        (meta_model, meta_split, torch.randn(3, 6), "original model"),
        (real, meta_split, torch.randn(3, 6), "split model"),
        (real, real_split, torch.empty(3, 6, device="meta"), "batch 0 of inputs"),
    ]
    for original, split, x, what in cases:
        with pytest.raises(MetaTensorError, match=f"{what} is on the meta device.*no values"):
            verify_equivalence(original, split, x)
    assert issubclass(MetaTensorError, NeuronSplitError) and issubclass(MetaTensorError, ValueError)


def test_a_model_planned_on_meta_materialises_with_to_empty() -> None:
    """``to_empty`` leaves uninitialised memory; the merge's layout buffers are refilled."""
    torch.manual_seed(0)
    real = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))
    plan = SplitPlan([random_split(random.Random(1), "0", u, 6, 3, "overlap") for u in (0, 2)])
    with torch.device("meta"):
        meta_model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))
    split = apply_plan(meta_model, plan).to_empty(device="cpu")
    split.load_state_dict(apply_plan(real, plan).state_dict())
    merge = get_split_layer(split, "0").merge
    assert merge.index.tolist() == [0, 0, 0, 2, 2, 2]
    assert merge.row_scale.eq(1).all() and merge.coef.eq(1).all()
    assert verify_equivalence(real, split, torch.randn(5, 6)).passed
