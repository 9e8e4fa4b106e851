"""``contributions``, ``tap_sums`` and ``contributions_from_taps`` against autograd, in float64.

The reference of ``c_uj`` is gradient x input: ``sum_positions X_j * d z_u / d X_j`` where
``z_u`` is one output position of unit ``u`` (``per_position=True``) or the unit summed over
positions (``per_position=False``); for ``Linear`` also the hand formula ``W[u, j] * x[..., j]``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torch.autograd.functional import jacobian

from neuronsplit.capture import contributions, contributions_from_taps, flat_weight, tap_sums

DT = torch.float64

# torch warns that padding="same" with an even kernel copies the input; that case is on purpose
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")

CONVS: dict[str, Callable[[], nn.Conv2d]] = {
    "1x1": lambda: nn.Conv2d(4, 5, 1),
    "3x3_stride2_pad1": lambda: nn.Conv2d(4, 5, 3, stride=2, padding=1),
    "dilated": lambda: nn.Conv2d(4, 5, 3, dilation=2, padding=1),
    "dilated_rect_stride": lambda: nn.Conv2d(4, 5, (3, 2), stride=(1, 2), dilation=(2, 3)),
    "same_even_kernel": lambda: nn.Conv2d(4, 5, 4, padding="same"),
    "same_even_rect_dilated": lambda: nn.Conv2d(4, 5, (2, 4), padding="same", dilation=(3, 1)),
    "rect_valid_stride": lambda: nn.Conv2d(4, 5, (2, 3), stride=(2, 1)),
    "rect_valid_stride_nobias": lambda: nn.Conv2d(4, 5, (3, 2), stride=2, bias=False),
}
LINEAR_SHAPES: dict[str, tuple[int, ...]] = {
    "BJ": (3, 6),
    "BTJ": (3, 5, 6),
    "BT1T2J": (2, 3, 4, 6),
}
UNITS = [3, 0, 4]  # a subset, out of order


def _layer(make: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layer = make().to(DT)
    with torch.no_grad():
        if getattr(layer, "bias", None) is not None:
            layer.bias.normal_()  # a visible bias, so "bias excluded" is tested
    return layer


def _conv_input(seed: int = 1) -> Tensor:
    return torch.randn(2, 4, 9, 8, generator=torch.Generator().manual_seed(seed), dtype=DT)


def _linear_input(shape: tuple[int, ...], seed: int = 2) -> Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


def _positions_last(out: Tensor, conv: bool) -> Tensor:
    """Layer output as ``(B, U, P)``: conv pixels ``h * W + w`` / tokens in row-major order."""
    if conv:
        return out.flatten(2)
    flat = out.reshape(out.shape[0], -1, out.shape[-1])  # (B, P, U)
    return flat.transpose(1, 2)


def _inputs_last(x: Tensor, conv: bool) -> Tensor:
    """Layer input as ``(B, J, Q)`` over its own positions."""
    if conv:
        return x.flatten(2)
    return x.reshape(x.shape[0], -1, x.shape[-1]).transpose(1, 2)


def _autograd_per_position(layer: nn.Module, x: Tensor, units: list[int]) -> Tensor:
    """``c[b, u, j, p] = sum_q X[b, j, q] * d out[b, u, p] / d X[b, j, q]`` from the Jacobian."""
    conv = isinstance(layer, nn.Conv2d)
    out_flat = _positions_last(layer(x), conv)
    b, _, p = out_flat.shape
    jac = jacobian(lambda t: _positions_last(layer(t), conv), x)  # (B, U, P, *x.shape)
    if conv:  # input dims (J, H, W) -> (J, Q)
        jac = jac.reshape(b, out_flat.shape[1], p, b, x.shape[1], -1)
    else:  # input dims (T..., J) -> (J, Q)
        jac = jac.reshape(b, out_flat.shape[1], p, b, -1, x.shape[-1]).transpose(-1, -2)
    same = torch.arange(b)
    jac = jac[same, :, :, same]  # (B, U, P, J, Q): samples do not mix
    contrib = (jac * _inputs_last(x, conv)[:, None, None]).sum(-1)  # (B, U, P, J)
    return contrib[:, units].transpose(2, 3)  # (B, U, J, P)


def _autograd_summed(layer: nn.Module, x: Tensor, units: list[int]) -> Tensor:
    """``c[b, u, j] = sum_q X[b, j, q] * d (sum_p out[b, u, p]) / d X[b, j, q]``."""
    conv = isinstance(layer, nn.Conv2d)
    rows = []
    for u in units:
        xd = x.detach().clone().requires_grad_(True)
        z = _positions_last(layer(xd), conv)[:, u].sum()
        (grad,) = torch.autograd.grad(z, xd)
        rows.append(_inputs_last(grad * x, conv).sum(-1))
    return torch.stack(rows, 1)


def _case(name: str) -> tuple[nn.Module, Tensor]:
    if name in CONVS:
        return _layer(CONVS[name]), _conv_input()
    return _layer(lambda: nn.Linear(6, 5)), _linear_input(LINEAR_SHAPES[name])


CASES = [*CONVS, *LINEAR_SHAPES]


@pytest.mark.parametrize("case", CASES)
def test_per_position_contributions_equal_autograd(case: str) -> None:
    layer, x = _case(case)
    got = contributions(layer, x, UNITS, per_position=True)
    expected = _autograd_per_position(layer, x, UNITS)
    assert got.shape == expected.shape
    assert got.dtype == DT
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("case", CASES)
def test_summed_contributions_equal_autograd(case: str) -> None:
    layer, x = _case(case)
    got = contributions(layer, x, UNITS, per_position=False)
    expected = _autograd_summed(layer, x, UNITS)
    assert got.shape == (x.shape[0], len(UNITS), x.shape[1] if case in CONVS else x.shape[-1])
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-13)
    per_pos = contributions(layer, x, UNITS, per_position=True)
    torch.testing.assert_close(per_pos.sum(-1), got, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("case", list(LINEAR_SHAPES))
def test_linear_contributions_are_the_hand_formula(case: str) -> None:
    layer, x = _case(case)
    w = layer.weight.detach()
    got = contributions(layer, x, UNITS, per_position=True)
    for i, u in enumerate(UNITS):
        hand = (w[u] * x).reshape(x.shape[0], -1, x.shape[-1]).transpose(1, 2)  # (B, J, P)
        torch.testing.assert_close(got[:, i], hand, rtol=0, atol=0)
    if x.dim() == 2:
        assert got.shape[-1] == 1


@pytest.mark.parametrize("case", CASES)
def test_sum_over_inputs_plus_bias_is_the_output(case: str) -> None:
    layer, x = _case(case)
    conv = case in CONVS
    with torch.no_grad():
        out = _positions_last(layer(x), conv)[:, UNITS]  # (B, U, P)
    bias = layer.bias[UNITS].detach() if layer.bias is not None else torch.zeros(len(UNITS))
    bias = bias.to(DT)
    per_pos = contributions(layer, x, torch.tensor(UNITS), per_position=True)
    torch.testing.assert_close(per_pos.sum(2) + bias[:, None], out, rtol=1e-12, atol=1e-12)
    summed = contributions(layer, x, UNITS)
    positions = out.shape[-1]
    torch.testing.assert_close(
        summed.sum(2) + bias * positions, out.sum(-1), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("case", CASES)
def test_tap_sums_give_the_summed_contributions(case: str) -> None:
    layer, x = _case(case)
    with torch.no_grad():
        out = layer(x)
    taps = tap_sums(layer, x, out.shape)
    weight = flat_weight(layer).detach()
    assert taps.shape == (x.shape[0], weight.shape[1], weight.shape[2])
    from_taps = contributions_from_taps(weight, taps)[:, UNITS]
    torch.testing.assert_close(from_taps, _autograd_summed(layer, x, UNITS), rtol=1e-12, atol=1e-13)


def test_tap_sums_of_a_large_half_precision_map_stay_finite() -> None:
    conv = nn.Conv2d(3, 2, 3, padding=1).half()
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(2, 3, 112, 112, generator=gen) * 10 + 20).half()  # 20..30, sums ~3e5
    assert torch.isinf(x.sum((-2, -1))).all()  # a naive fp16 sum overflows (max 65504)
    out_shape = (2, 2, 112, 112)
    taps = tap_sums(conv, x, out_shape)
    assert taps.dtype == torch.float32
    assert torch.isfinite(taps).all()
    reference = tap_sums(conv, x.double(), out_shape)
    torch.testing.assert_close(taps.double(), reference, rtol=1e-5, atol=0)
    contrib = contributions(conv, x, [0, 1])
    assert contrib.dtype == torch.float32 and torch.isfinite(contrib).all()
    expected = contributions_from_taps(flat_weight(conv).detach().double(), reference)
    torch.testing.assert_close(contrib.double(), expected, rtol=1e-4, atol=1e-2)


def test_tap_sums_of_half_precision_tokens_stay_finite() -> None:
    fc = nn.Linear(4, 2).half()
    x = torch.full((1, 112 * 112, 4), 25.0, dtype=torch.float16)
    taps = tap_sums(fc, x, (1, 112 * 112, 2))
    assert taps.dtype == torch.float32 and torch.isfinite(taps).all()
    assert torch.equal(taps, torch.full((1, 4, 1), 25.0 * 112 * 112))


def test_bfloat16_tap_sums_are_float32() -> None:
    conv = nn.Conv2d(2, 2, 1)
    x = torch.ones(1, 2, 4, 4, dtype=torch.bfloat16)
    taps = tap_sums(conv, x, (1, 2, 4, 4))
    assert taps.dtype == torch.float32 and torch.equal(taps, torch.full((1, 2, 1), 16.0))


@pytest.mark.parametrize("case", ["3x3_stride2_pad1", "same_even_kernel", "BTJ"])
def test_contributions_from_class_sums(case: str) -> None:
    layer, x = _case(case)
    x = torch.cat([x, 0.5 * x.flip(0), -x], 0)  # 3x the batch
    labels = torch.tensor([0, 2, 1, 2, 0, 2, 1, 0, 2][: x.shape[0]])
    num_classes = 4  # class 3 is empty
    with torch.no_grad():
        out = layer(x)
    taps = tap_sums(layer, x, out.shape)
    class_sums = torch.zeros(num_classes, *taps.shape[1:], dtype=DT).index_add_(0, labels, taps)
    weight = flat_weight(layer).detach()
    got = contributions_from_taps(weight, class_sums)  # (N, U, J)
    per_sample = _autograd_summed(layer, x, list(range(weight.shape[0])))
    expected = torch.zeros(num_classes, *per_sample.shape[1:], dtype=DT)
    expected.index_add_(0, labels, per_sample)
    assert got.shape == (num_classes, weight.shape[0], weight.shape[1])
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(got[3], torch.zeros_like(got[3]))


def test_contributions_from_taps_casts_the_weight_to_the_taps_dtype() -> None:
    weight = torch.randn(2, 3, 4, dtype=torch.float32)
    taps = torch.randn(5, 3, 4, dtype=DT)
    got = contributions_from_taps(weight, taps)
    assert got.dtype == DT
    expected = (weight.double()[None] * taps[:, None]).sum(-1)
    torch.testing.assert_close(got, expected, rtol=1e-14, atol=1e-14)
