"""IndexMerge: layout, and the scales of ``scaled`` (formulas, nesting, exact restore, errors)."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from neuronsplit.errors import UnknownSubunitError
from neuronsplit.nn import IndexMerge, SplitConv2d, SplitLinear, explicit_rows
from neuronsplit.plan import UnitSplit

DT = torch.float64
FORMS = ("disjoint", "overlap")
Scales = dict[tuple[int, int], float]


def _layer(form: str, dtype: torch.dtype = DT) -> SplitLinear:
    """Linear(7, 4): unit 1 split K=3, unit 3 split K=2, in ``form``."""
    torch.manual_seed(0)
    fc = nn.Linear(7, 4, dtype=dtype)
    return SplitLinear(
        fc,
        [
            UnitSplit("fc", 1, [[0, 1], [2], [3, 4]], shared=[5, 6], merge=form),
            UnitSplit("fc", 3, [[0], [1, 2]], shared=[3, 4, 5, 6], merge=form),
        ],
    )


def _x(dtype: torch.dtype = DT) -> torch.Tensor:
    return torch.randn(5, 7, generator=torch.Generator().manual_seed(1), dtype=dtype)


def _expected(layer: SplitLinear, x: torch.Tensor, scales: Scales) -> torch.Tensor:
    """The steered output by hand, from the stored rows ``t_k`` and ``r``.

    Parameters
    ----------
    layer : SplitLinear
        The split layer (its form decides the residual's coefficient).
    x : Tensor
        Input batch.
    scales : dict
        ``(unit, k) -> alpha``; missing entries are 1.

    Returns
    -------
    Tensor
        Disjoint: ``sum_k a_k t_k + a_r r``. Overlap (``s_k = t_k + r`` scaled by ``a_k``,
        ``r`` by ``a_r``): ``sum_k a_k t_k + (sum_k a_k - (K-1) a_r) r``.
    """
    with torch.no_grad():
        inter = layer.subunits(x)
        out = inter[:, : layer.original_out].clone()
        for u in layer.split_units:
            n = layer.num_subunits(u)
            a = [scales.get((u, k), 1.0) for k in range(n)]
            a_r = scales.get((u, -1), 1.0)
            t = [inter[:, layer.merge.channel(u, k)] for k in range(n)]
            r = inter[:, layer.residual_index(u)]
            c_r = sum(a) - (n - 1) * a_r if layer.form == "overlap" else a_r
            out[:, u] = sum(ak * tk for ak, tk in zip(a, t, strict=True)) + c_r * r
    return out


def _run(layer: SplitLinear, x: torch.Tensor) -> torch.Tensor:
    # the rows always run (unobserved inference would run the original layer when unsteered)
    with torch.no_grad(), explicit_rows(layer):
        return layer(x)


def _all_keys(layer: SplitLinear) -> list[tuple[int, int]]:
    return [(u, k) for u in layer.split_units for k in (*range(layer.num_subunits(u)), -1)]


# --------------------------------------------------------------------------- identity
@pytest.mark.parametrize("form", FORMS)
def test_alpha_one_leaves_outputs_bit_identical(form: str) -> None:
    layer, x = _layer(form), _x()
    y0 = _run(layer, x)
    for key in _all_keys(layer):
        with layer.merge.scaled({key: 1.0}):
            assert torch.equal(_run(layer, x), y0), key
        assert not layer.merge.steered
    with layer.merge.scaled(dict.fromkeys(_all_keys(layer), 1.0)):
        assert torch.equal(_run(layer, x), y0)
        assert torch.equal(layer.merge.coef, torch.ones_like(layer.merge.coef))
    assert not layer.merge.steered and layer.merge.scales == {}
    assert torch.equal(_run(layer, x), y0)


def test_alpha_one_is_not_steered() -> None:
    layer = _layer("overlap")
    with layer.merge.scaled({(1, 0): 1.0}):
        assert not layer.merge.steered


# --------------------------------------------------------------------------- formulas
@pytest.mark.parametrize("form", FORMS)
def test_scaled_output_matches_the_formula(form: str) -> None:
    layer, x = _layer(form), _x()
    y0 = _run(layer, x)
    scales = {(1, 0): 0.5, (1, 1): 2.0, (1, 2): -1.0, (1, -1): 3.0}
    with layer.merge.scaled(scales):
        assert layer.merge.steered and layer.merge.scales == scales
        y = _run(layer, x)
        mg = layer.merge
        assert mg.row_scale[1].item() == 0.5
        assert mg.coef[mg.channel(1, 1) - 4].item() == 2.0
        assert mg.coef[mg.channel(1, 2) - 4].item() == -1.0
        residual = mg.coef[mg.channel(1, -1) - 4].item()
        assert residual == (0.5 + 2.0 - 1.0 - 2 * 3.0 if form == "overlap" else 3.0)
        assert mg.coef[mg.offsets[1] - 4 :].tolist() == [1.0, 1.0]  # unit 3 untouched
    torch.testing.assert_close(y, _expected(layer, x, scales), rtol=0, atol=1e-13)
    # the other units, split (3) or not (0, 2), are bit-identical
    assert torch.equal(y[:, [0, 2, 3]], y0[:, [0, 2, 3]])


def test_overlap_formula_by_hand() -> None:
    """z' = sum_k a_k s_k - (K-1) a_r r with Hesse's s_k = t_k + r, from the rows by hand."""
    layer, x = _layer("overlap"), _x()
    inter = layer.subunits(x).detach()
    t0, t1, t2, r = (inter[:, c] for c in (1, 4, 5, 6))  # unit 1: rows 1, 4, 5, residual 6
    s0, s1, s2 = t0 + r, t1 + r, t2 + r
    with layer.merge.scaled({(1, 1): 0.0}):  # ablate concept 1: s_1 goes, r stays counted
        torch.testing.assert_close(_run(layer, x)[:, 1], t0 + t2, rtol=0, atol=1e-13)
        torch.testing.assert_close(_run(layer, x)[:, 1], s0 + s2 - 2 * r, rtol=0, atol=1e-13)
    with layer.merge.scaled({(1, 0): 2.0, (1, 2): 0.5, (1, -1): 0.25}):
        hesse = 2.0 * s0 + s1 + 0.5 * s2 - 2 * 0.25 * r
        torch.testing.assert_close(_run(layer, x)[:, 1], hesse, rtol=0, atol=1e-13)
        manual = 2.0 * t0 + t1 + 0.5 * t2 + (3.5 - 2 * 0.25) * r
        torch.testing.assert_close(_run(layer, x)[:, 1], manual, rtol=0, atol=1e-13)


def test_disjoint_ablation_equals_a_masked_conv() -> None:
    """Independent check on a conv (dim -3): removing t_1 = dropping group 1's weights."""
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 3, 3, padding=1, dtype=DT)
    split = UnitSplit("c", 2, [[0, 1], [2, 4]], shared=[3], merge="disjoint")
    sc = SplitConv2d(conv, [split])
    x = torch.randn(2, 5, 6, 6, dtype=DT)
    w = conv.weight.clone()
    w[2, [2, 4]] = 0
    with torch.no_grad(), sc.merge.scaled({(2, 1): 0.0}):
        torch.testing.assert_close(sc(x), F.conv2d(x, w, conv.bias, padding=1), rtol=0, atol=1e-12)
    w[2] = 0
    with torch.no_grad(), sc.merge.scaled({(2, 0): 0.0, (2, 1): 0.0, (2, -1): 0.0}):
        torch.testing.assert_close(
            sc(x),
            F.conv2d(x, w, conv.bias.where(torch.arange(3) != 2, 0), padding=1),
            rtol=0,
            atol=1e-12,
        )


def test_float32_and_numeric_alpha_types() -> None:
    layer, x = _layer("overlap", torch.float32), _x(torch.float32)
    scales = {(3, 1): np.float64(0.1), (3, -1): torch.tensor(2.0)}
    with layer.merge.scaled(scales):
        assert layer.merge.coef.dtype == torch.float32
        y = _run(layer, x)
    expected = _expected(layer, x, {(3, 1): 0.1, (3, -1): 2.0})
    torch.testing.assert_close(y, expected, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- nesting
@pytest.mark.parametrize("form", FORMS)
def test_nested_contexts_compose_and_restore_bit_exactly(form: str) -> None:
    layer, x = _layer(form), _x()
    mg = layer.merge
    y0 = _run(layer, x)
    outer = {(1, 1): 0.3, (3, 0): 2.0}
    inner = {(1, 1): 0.7, (1, -1): 1.5}
    with mg.scaled(outer):
        y1, coef1, rows1 = _run(layer, x), mg.coef.clone(), mg.row_scale.clone()
        torch.testing.assert_close(y1, _expected(layer, x, outer), rtol=0, atol=1e-13)
        with mg.scaled(inner):
            assert mg.scales == {(1, 1): 0.3 * 0.7, (3, 0): 2.0, (1, -1): 1.5}
            y2 = _run(layer, x)
            torch.testing.assert_close(y2, _expected(layer, x, mg.scales), rtol=0, atol=1e-13)
            with mg.scaled({(1, 1): 0.5}):
                assert mg.scales[(1, 1)] == 0.3 * 0.7 * 0.5
            assert torch.equal(_run(layer, x), y2)
        assert torch.equal(_run(layer, x), y1)
        assert torch.equal(mg.coef, coef1) and torch.equal(mg.row_scale, rows1)
        assert mg.scales == outer and mg.steered
    assert torch.equal(_run(layer, x), y0)
    assert not mg.steered and mg.scales == {}
    assert mg.coef.tolist() == [1.0] * mg.num_extra and mg.row_scale.tolist() == [1.0] * 4


def test_contexts_may_close_out_of_order() -> None:
    layer, x = _layer("overlap"), _x()
    mg = layer.merge
    a, b = {(1, 0): 0.25}, {(3, 1): 4.0, (1, 0): 2.0}
    with mg.scaled(b):
        only_b = _run(layer, x)
    ctx_a, ctx_b = mg.scaled(a), mg.scaled(b)
    ctx_a.__enter__()
    ctx_b.__enter__()
    assert mg.scales == {(1, 0): 0.5, (3, 1): 4.0}
    ctx_a.__exit__(None, None, None)  # the outer one first
    assert mg.scales == b and torch.equal(_run(layer, x), only_b)
    ctx_b.__exit__(None, None, None)
    assert not mg.steered and torch.equal(_run(layer, x), _run(_layer("overlap"), x))


def test_exception_inside_a_context_restores() -> None:
    layer, x = _layer("disjoint"), _x()
    mg = layer.merge
    y0 = _run(layer, x)
    with pytest.raises(RuntimeError, match="boom"), mg.scaled({(1, 2): 0.0}):
        raise RuntimeError("boom")
    assert not mg.steered and torch.equal(_run(layer, x), y0)
    with mg.scaled({(3, 0): 5.0}):
        y1 = _run(layer, x)
        with pytest.raises(KeyError), mg.scaled({(3, 0): 0.0}):
            raise KeyError("x")
        assert torch.equal(_run(layer, x), y1) and mg.scales == {(3, 0): 5.0}
    assert torch.equal(_run(layer, x), y0)


def test_reset_drops_every_scale() -> None:
    layer, x = _layer("overlap"), _x()
    mg = layer.merge
    y0 = _run(layer, x)
    with contextlib.ExitStack() as stack:
        stack.enter_context(mg.scaled({(1, 0): 0.0}))
        stack.enter_context(mg.scaled({(3, -1): 7.0}))
        mg.reset()
        assert not mg.steered and mg.scales == {}
        assert torch.equal(_run(layer, x), y0)
    assert not mg.steered and torch.equal(_run(layer, x), y0)


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("key", "match"),
    [
        ((0, 0), r"unit 0 is not split in this layer; split units: \[1, 3\]"),
        ((9, -1), "unit 9 is not split"),
        (("x", 0), "unit 'x' is not split"),
        ((1, 3), r"subunit k=3 does not exist for unit 1, which has 3 subunits \(valid k: 0..2"),
        ((3, 2), "k=2 does not exist for unit 3, which has 2 subunits"),
        ((1, -2), "k=-2 does not exist"),
        ((1, True), "k=True does not exist"),
        ((1, 1.0), "k=1.0 does not exist"),
    ],
)
def test_invalid_subunit_raises_and_changes_nothing(key: tuple, match: str) -> None:
    layer, x = _layer("overlap"), _x()
    mg = layer.merge
    y0 = _run(layer, x)
    with mg.scaled({(1, 0): 0.5}):
        y1 = _run(layer, x)
        with pytest.raises(UnknownSubunitError, match=match), mg.scaled({(3, 0): 2.0, key: 0.0}):
            pytest.fail("entered a context with an invalid subunit")
        assert mg.scales == {(1, 0): 0.5} and torch.equal(_run(layer, x), y1)
    assert not mg.steered and torch.equal(_run(layer, x), y0)


@pytest.mark.parametrize("alpha", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_alpha_raises_value_error(alpha: float) -> None:
    layer, x = _layer("disjoint"), _x()
    mg = layer.merge
    y0 = _run(layer, x)
    with pytest.raises(ValueError, match=r"scale of subunit \(1, 1\) must be finite"):
        with mg.scaled({(1, 1): alpha}):
            pytest.fail("entered a context with a non-finite scale")
    assert not mg.steered and torch.equal(_run(layer, x), y0)
    with (
        pytest.raises(TypeError, match=r"must be a number, got str 'big'"),
        mg.scaled({(1, 1): "big"}),
    ):
        pass


def test_index_merge_direct_construction_and_errors() -> None:
    m = IndexMerge(2, units=[0], num_subunits=[2], dim=-1, dtype=DT)
    inter = torch.tensor([[1.0, 5.0, 2.0, 0.5]], dtype=DT)  # t0 of unit 0, unit 1, t1, r
    assert m(inter).tolist() == [[3.5, 5.0]]
    with m.scaled({(0, 1): 0.0}):
        assert m(inter).tolist() == [[1.5, 5.0]]
    assert m(inter).tolist() == [[3.5, 5.0]]
    ov = IndexMerge(2, units=[0], num_subunits=[2], dim=-1, form="overlap", dtype=DT)
    with ov.scaled({(0, 0): 3.0}):  # z' = 3 t0 + t1 + (3 + 1 - 1) r
        assert ov(inter).tolist() == [[3.0 + 2.0 + 1.5, 5.0]]
    with pytest.raises(ValueError, match="dim must be counted from the end"):
        IndexMerge(2, [0], [2], dim=1)
    with pytest.raises(ValueError, match="merge must be one of 'disjoint', 'overlap'"):
        IndexMerge(2, [0], [2], dim=-1, form="sum")
    with pytest.raises(ValueError, match="same length"):
        IndexMerge(2, [0, 1], [2], dim=-1)
    with pytest.raises(ValueError, match="expects 4 channels at dim -1"):
        m(torch.zeros(1, 3, dtype=DT))
    assert not any(k in m.state_dict() for k in ("index", "coef", "row_scale"))


def test_subunit_numbers_accept_residual_and_numpy_integers() -> None:
    m = IndexMerge(3, units=[1], num_subunits=[3], dim=-1, dtype=DT)
    assert m.channel(np.int64(1), "residual") == m.channel(1, -1) == 5
    assert m.channel(torch.tensor(1), np.int32(2)) == 4
    with pytest.raises(UnknownSubunitError, match="unit 1.5 is not split"):
        m.position(1.5)  # a float is no unit number, not unit 1
    with pytest.raises(UnknownSubunitError, match="k=True does not exist"):
        m.channel(1, True)
    with m.scaled({(1, "residual"): 0.0}):
        assert m.scales == {(1, -1): 0.0} and m.steered
