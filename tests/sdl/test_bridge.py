"""The side-by-side: hooks, feature scores, planted concepts, and the CLI."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from neuronsplit.cli import main as cli_main
from neuronsplit.errors import InvalidArgumentError
from neuronsplit.plan import SplitPlan, UnitSplit
from neuronsplit.sdl import feature_purity, spliced_output_change, subunit_activations
from neuronsplit.sdl.studies import planted_study


def test_feature_purity_by_hand() -> None:
    acts = torch.tensor([[5.0, 0.0], [4.0, 0.0], [3.0, 0.0], [0.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 1])
    purity = feature_purity(acts, labels, k=3, min_active=1)
    assert purity[0].item() == pytest.approx(2 / 3)  # top 3: labels 0, 0, 1
    assert torch.isnan(purity[1])  # never active: dead, not scored
    with pytest.raises(InvalidArgumentError, match="k=5 but there are only 4 samples"):
        feature_purity(acts, labels, k=5)


@pytest.mark.parametrize("merge", ["disjoint", "overlap"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_subunits_sum_to_their_unit(dtype: torch.dtype, merge: str) -> None:
    gen = torch.Generator().manual_seed(0)
    w, b = torch.randn(3, 5, generator=gen, dtype=dtype), torch.randn(3, generator=gen, dtype=dtype)
    x = torch.randn(7, 5, generator=gen, dtype=dtype)
    plan = SplitPlan([UnitSplit("0", 1, [[0, 3], [1, 4]], shared=[2], merge=merge)])
    acts, names = subunit_activations(w, b, plan.by_layer()["0"], x)
    assert names == [(0, -1), (1, 0), (1, 1), (2, -1)]
    unit = x.double() @ w[1].double() + b[1].double()
    # disjoint: the residual (shared input + bias) is no feature; overlap: each subunit
    # carries it once
    shared = x[:, 2].double() * w[1, 2].double() + b[1].double()
    sign = 1.0 if merge == "disjoint" else -1.0
    torch.testing.assert_close(acts[:, 1] + acts[:, 2] + sign * shared, unit)
    torch.testing.assert_close(acts[:, 0], x.double() @ w[0].double() + b[0].double())


def test_spliced_output_change_by_hand() -> None:
    net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Identity())
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(2))
    data = [torch.tensor([[3.0, 4.0]])]
    same = spliced_output_change(net, "0", lambda y: y, data)
    assert same["relative_change"] == 0.0 and same["agreement"] == 1.0
    half = spliced_output_change(net, "0", lambda y: y / 2, data)
    assert half["relative_change"] == pytest.approx(0.5)  # ||f/2 - f|| / ||f||
    assert half["layer_relative_error"] == pytest.approx(0.5)
    assert half["max_abs_change"] == pytest.approx(2.0)
    swapped = spliced_output_change(net, "0", lambda y: y.flip(-1), data)
    assert swapped["agreement"] == 0.0  # arg-max moved from 1 to 0
    with pytest.raises(InvalidArgumentError, match="replacement has shape"):
        spliced_output_change(net, "0", lambda y: y[:, :1], data)
    assert not net[0]._forward_hooks  # removed after the failure too


def test_planted_split_is_exact_and_beats_an_sae_on_the_outputs() -> None:
    """Units that sum several concepts: the concepts share the unit's output direction, so an
    SAE on the outputs cannot tell them apart; the split reads the inputs and finds them all."""
    torch.manual_seed(0)
    out = planted_study(seed=0, steps=150, progress=False)
    assert out["split"]["recovered"] == 1.0 and out["split"]["ari"] == 1.0
    assert out["split"]["relative_change"] == 0.0
    assert out["sae"]["recovered"] < out["split"]["recovered"]
    assert out["sae"]["layer_relative_error"] > 0.0


def test_cli_bench_lrb_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(["bench", "lrb", "--steps", "3", "--methods", "TopK SAE", "--no-progress"])
    text = capsys.readouterr().out
    assert code == 0
    assert "TopK SAE" in text and "84.9%" in text  # the paper's figure beside ours
    assert "n=100, n_p=77" in text


def test_cli_bench_rejects_a_bad_size(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli_main(["bench", "lrb", "--size", "huge"])
    assert info.value.code == 2 and "invalid choice: 'huge'" in capsys.readouterr().err
