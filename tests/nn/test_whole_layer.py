"""Every unit of a layer split at once, from a dense random assignment (a LayerSplit)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from neuronsplit.nn import (
    apply_plan,
    get_split_layer,
    load,
    plan_of,
    save,
    verify_equivalence,
)
from neuronsplit.plan import SHARED, LayerSplit, SplitPlan

N_IN, N_OUT = 96, 48


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(N_IN, N_OUT), nn.GELU(), nn.Linear(N_OUT, 10)).eval()


def _layer_split(form: str, seed: int = 0) -> LayerSplit:
    """Every unit of layer "0", K drawn from {2, 3, 4}, inputs assigned uniformly to a subunit
    or to shared; units given in a shuffled order.

    Parameters
    ----------
    form : str
        Merge form of the layer.
    seed : int
        Seed of the draw.

    Returns
    -------
    LayerSplit
    """
    g = torch.Generator().manual_seed(seed)
    ks = torch.randint(2, 5, (N_OUT,), generator=g)
    # per unit: -1 .. K-1, uniformly
    assign = (torch.rand(N_OUT, N_IN, generator=g) * (ks[:, None] + 1)).floor().long() - 1
    order = torch.randperm(N_OUT, generator=g)
    return LayerSplit("0", order, assign[order], ks[order], merge=form)


@pytest.mark.parametrize("form", ["disjoint", "overlap"])
def test_every_unit_split(tmp_path: Path, form: str) -> None:
    model = _model()
    ls = _layer_split(form)
    assert ls.units.tolist() == list(range(N_OUT))
    assert set(ls.num_subunits.tolist()) == {2, 3, 4}
    assert (ls.assignment == SHARED).any() and ls.assignment.dtype == torch.int8
    plan = SplitPlan([ls], meta={"seed": 0})
    split = apply_plan(model, plan)
    layer = get_split_layer(split, "0")
    extra = int(ls.num_subunits.sum())
    assert layer.subunits.weight.shape == (N_OUT + extra, N_IN)
    assert layer.split_units == tuple(range(N_OUT)) and layer.merge.num_extra == extra

    # the stored rows: t_k holds exactly the inputs assigned to k, the residual the shared ones
    w, ws = model[0].weight, layer.subunits.weight
    for u in (0, 17, N_OUT - 1):
        row = ls.assignment[u].long()
        for k in (*range(int(ls.num_subunits[u])), SHARED):
            c = layer.merge.channel(u, k)
            assert torch.equal(ws[c], torch.where(row == k, w[u], torch.zeros(())))
            assert layer.subunits.bias[c] == (model[0].bias[u] if k == SHARED else 0)

    # exact in float32 and float64, per layer and at the output
    g = torch.Generator().manual_seed(1)
    x = [torch.randn(16, N_IN, generator=g), torch.randn(3, 5, N_IN, generator=g)]
    report = verify_equivalence(model, split, x)
    assert report.passed, str(report)
    for row in report.rows:
        (lay,) = row.layers
        assert [d.unit for d in lay.split_units] == list(range(N_OUT))
        assert lay.unsplit_worst_unit is None  # nothing left unsplit
        assert row.output_max_ref > 0.1

    # unsplit gives the original layer back, bit for bit
    back = layer.unsplit()
    assert torch.equal(back.weight, model[0].weight) and torch.equal(back.bias, model[0].bias)

    # plan_of returns the same layer split (meta is not part of the model)
    assert plan_of(split) == SplitPlan([ls])
    assert plan_of(split).layer("0") == ls

    # save / load on a fresh model instance with other weights
    save(split, tmp_path, meta={"seed": 0})
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "plan.json",
        "plan.safetensors",
        "weights.safetensors",
    ]
    loaded = load(tmp_path, _model(seed=5))
    assert plan_of(loaded) == plan_of(split)
    assert get_split_layer(loaded, "0").form == form
    for k, v in split.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    with torch.no_grad():
        assert torch.equal(loaded(x[0]), split(x[0]))
    assert SplitPlan.load(tmp_path / "plan.json").meta["seed"] == 0


def test_every_unit_split_with_scales() -> None:
    """Ablating every subunit 0 of every unit at once (disjoint) leaves W with group 0 zeroed."""
    model = _model().double()
    ls = _layer_split("disjoint", seed=3)
    layer = get_split_layer(apply_plan(model, SplitPlan([ls])), "0")
    x = torch.randn(8, N_IN, dtype=torch.float64)
    w = torch.where(ls.assignment.long() == 0, torch.zeros(()), model[0].weight.detach())
    with torch.no_grad(), layer.merge.scaled({(u, 0): 0.0 for u in range(N_OUT)}):
        expected = x @ w.T + model[0].bias
        torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-12)
