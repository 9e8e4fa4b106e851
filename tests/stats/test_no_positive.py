"""Images whose positive relevance at a layer is zero are important for no unit.

Hesse et al.'s rule ``R_c >= tau * sum_c' max(R_c', 0)`` reads ``R_c >= 0`` for such an image and
would mark every unit with zero relevance as important (on timm's ResNet-50 at random init every
unit of ``layer4.2.conv3`` became relevant to every class). neuronsplit counts them for no unit
and keeps their number per layer and class (:meth:`ScanResult.no_positive_relevance`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import neuronsplit as ns
from neuronsplit.methods.hesse import relevant_classes

DT = torch.float64


def _planted() -> nn.Module:
    """``y = W2 (W1 x)`` with ``W2 = 1``: the relevance of unit ``c`` of ``fc`` is ``z_c``."""
    model = nn.Sequential(nn.Linear(2, 3, bias=False), nn.Linear(3, 2, bias=False)).to(DT)
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        model[1].weight.fill_(1.0)
    return model.eval()


#: input -> relevance (z) of the three units of layer "0"
PLANTED = [
    ([1.0, 2.0], "positive"),  # z = (1, 2, 3): every unit important at small tau
    ([0.0, 0.0], "zero"),  # z = 0: no positive relevance
    ([-1.0, -1.0], "negative"),  # z = (-1, -1, -2): none positive
    ([1.0, -2.0], "mixed"),  # z = (1, -2, -1): positive total 1, only unit 0 important
    ([-0.0, 0.0], "zero"),
    ([2.0, -1.0], "mixed"),  # z = (2, -1, 1): units 0 and 2
]
LABELS = [0, 0, 1, 1, 1, 0]


def _batches(rows: slice = slice(None)) -> list[tuple[torch.Tensor, torch.Tensor]]:
    x = torch.tensor([p[0] for p in PLANTED], dtype=DT)[rows]
    y = torch.tensor(LABELS)[rows]
    return [(x[i : i + 2], y[i : i + 2]) for i in range(0, len(x), 2)]


def _scan(batches: list, **kwargs) -> ns.ScanResult:
    return ns.scan(_planted(), batches, ["0"], 2, tau_grid=(0.01, 0.5), progress=False, **kwargs)


def test_planted_images_without_positive_relevance_count_for_no_unit() -> None:
    res = _scan(_batches())
    assert res.class_counts.tolist() == [3, 3]
    # class 0: images 0 (positive), 1 (zero), 5 (units 0, 2); class 1: 2 (negative), 3, 4 (zero)
    assert res.no_positive_relevance("0").tolist() == [1, 2]
    assert res.no_positive_relevance("0").dtype == torch.int64
    assert res.important_counts("0", 0.01).tolist() == [[2, 1, 2], [1, 0, 0]]
    assert res.important_counts("0", 0.5).tolist() == [[1, 0, 1], [1, 0, 0]]
    # relevance and ARVs still include every image: only the importance count changes
    torch.testing.assert_close(res.layer("0").relevance_sum, torch.tensor(
        [[3.0, 1.0, 4.0], [0.0, -3.0, -3.0]], dtype=DT))  # fmt: skip
    # p = 1/3 of class 1 is one image: unit 0 only (the zero images no longer vote for all)
    assert relevant_classes(res, "0", tau=0.01, p=0.3).tolist() == [
        [True, True, True],
        [True, False, False],
    ]


def test_merge_save_and_load_keep_the_count(tmp_path: Path) -> None:
    whole = _scan(_batches())
    first = _scan(_batches(slice(0, 3)))
    second = _scan(_batches(slice(3, None)), sample_offset=3)
    for merged in (first.merge(second), second.merge(first)):
        assert torch.equal(merged.no_positive_relevance("0"), whole.no_positive_relevance("0"))
        assert torch.equal(merged.layer("0").important, whole.layer("0").important)
    whole.save(tmp_path / "scan.safetensors")
    back = ns.ScanResult.load(tmp_path / "scan.safetensors")
    assert torch.equal(back.no_positive_relevance("0"), whole.no_positive_relevance("0"))
    with pytest.raises(ns.UnknownLayerError, match="'1'"):
        whole.no_positive_relevance("1")


class DeadBranch(nn.Module):
    """A residual block whose last BatchNorm is zero-initialised (timm's ``zero_init_last``):
    ``conv2``'s output is multiplied by 0, so no gradient and no relevance reaches it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 1)
        self.bn = nn.BatchNorm2d(6)
        nn.init.zeros_(self.bn.weight)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(x))
        h = torch.relu(h + self.bn(self.conv2(h)))
        return self.fc(h.mean((2, 3)))


def test_a_dead_layer_has_no_relevant_units() -> None:
    torch.manual_seed(0)
    model = DeadBranch().eval()
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(12, 3, 6, 6, generator=gen), torch.arange(12) % 4
    res = ns.scan(model, [(x[:6], y[:6]), (x[6:], y[6:])], ["conv2", "conv1"], 4, progress=False)
    assert res.layer("conv2").relevance_sum.abs().max() == 0  # dead indeed
    assert torch.equal(res.no_positive_relevance("conv2"), res.class_counts)
    for tau in res.tau_grid:
        assert res.important_counts("conv2", tau).sum() == 0
    assert not relevant_classes(res, "conv2", p=0.01).any()
    assert ns.find_polysemantic(res, "conv2", p=0.01) == []
    # the live layer is unaffected
    assert res.no_positive_relevance("conv1").sum() < res.num_samples
    assert res.important_counts("conv1", 0.01).sum() > 0


@pytest.mark.slow
def test_timm_resnet50_at_random_init_has_no_relevant_units_in_a_dead_layer() -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("resnet50", pretrained=False, num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([3, 7])
    res = ns.scan(model, [(x, labels)], ["layer4.2.conv3"], 10, top_n=0, progress=False)
    assert res.layer("layer4.2.conv3").relevance_sum.abs().max() == 0  # bn3.weight == 0
    assert res.no_positive_relevance("layer4.2.conv3").tolist() == res.class_counts.tolist()
    assert res.important_counts("layer4.2.conv3", 0.03).sum() == 0
    assert ns.find_polysemantic(res, p=0.5) == []
