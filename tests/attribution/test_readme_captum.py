"""The README's Captum snippet, verbatim, on a ResNet conv layer and on a ViT token Linear.

``ns.subunit_selector(split, ref)`` takes no ``ndim``: the unit axis follows from the layer (dim 1
of a Conv2d's ``(B, C, H, W)``, the last axis of a Linear's ``(B, T, C)``). Each attribution is
checked against IG's completeness, ``sum(attr) = F(x) - F(0)`` with ``F`` the subunit's total
read independently off the ``.subunits`` output with ``LayerActivation``.
"""

from __future__ import annotations

import random

import pytest
import timm
import torch
import torchvision
from captum.attr import LayerActivation, LayerGradientXActivation, NeuronIntegratedGradients

import neuronsplit as ns
from helpers import random_split
from neuronsplit.attribution import TokenSumSelector
from neuronsplit.attribution.selectors import UnitSelector
from neuronsplit.plan import SplitPlan

DT = torch.float64


def _readme_snippet(split: torch.nn.Module, name: str, x: torch.Tensor, y: torch.Tensor):
    """The README's lines, with its "fc2" replaced by ``name``."""
    layer = ns.subunit_layer(split, name)  # the .subunits child
    ref = ns.SubunitRef(name, unit=2, k=1)  # k=-1: the residual
    layer_attr = LayerGradientXActivation(split, layer).attribute(x, target=y)
    ig = NeuronIntegratedGradients(split, layer).attribute(
        x, ns.subunit_selector(split, ref), n_steps=64
    )
    return layer, ref, layer_attr, ig


def _subunit_total(
    split: torch.nn.Module, layer: torch.nn.Module, x: torch.Tensor, row: int, axis: int
):
    """The subunit's row of the ``.subunits`` output, summed over every non-batch position."""
    out = LayerActivation(split, layer).attribute(x).select(axis, row)
    return out.reshape(out.shape[0], -1).sum(1)


def _check(split, name: str, x, y, axis: int, rows: int) -> None:  # noqa: ANN001
    layer, ref, layer_attr, ig = _readme_snippet(split, name, x, y)
    row = split.get_submodule(name).subunit_index(2, 1)
    assert layer_attr.shape[0] == len(x) and layer_attr.shape[axis] == rows  # units + 2 rows
    assert ig.shape == x.shape
    gain = _subunit_total(split, layer, x, row, axis) - _subunit_total(
        split, layer, torch.zeros_like(x), row, axis
    )
    assert gain.abs().min() > 0  # a subunit that carries something
    torch.testing.assert_close(ig.reshape(len(x), -1).sum(1), gain, rtol=1e-3, atol=1e-8)


@pytest.mark.slow
def test_readme_snippet_on_a_resnet_conv_layer() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=5).to(DT).eval()
    unit = random_split(random.Random(0), "layer2.0.conv1", 2, 64, 2, "disjoint")
    split = ns.apply_plan(model, SplitPlan([unit]))
    x = torch.rand(2, 3, 32, 32, dtype=DT)
    _check(split, "layer2.0.conv1", x, torch.tensor([0, 3]), axis=1, rows=128 + 2)


@pytest.mark.slow
def test_readme_snippet_on_a_vit_token_linear() -> None:
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=5).to(DT).eval()
    unit = random_split(random.Random(1), "blocks.0.mlp.fc1", 2, 192, 2, "disjoint")
    split = ns.apply_plan(vit, SplitPlan([unit]))
    x = torch.rand(2, 3, 32, 32, dtype=DT)
    _check(split, "blocks.0.mlp.fc1", x, torch.tensor([1, 4]), axis=-1, rows=768 + 2)
    # the selector fits the token output without ndim; ndim=3 (the old spelling) is the same
    ref = ns.SubunitRef("blocks.0.mlp.fc1", unit=2, k=1)
    inferred, explicit = ns.subunit_selector(split, ref), ns.subunit_selector(split, ref, ndim=3)
    assert isinstance(inferred, UnitSelector) and isinstance(explicit, TokenSumSelector)
    assert inferred == explicit.channel == 768
    assert ns.subunit_selector(split, ref, token=0) == (0, 768)
