"""Printing a split model shows counts, never the index lists of its plan."""

from __future__ import annotations

import torch
from torch import nn

import neuronsplit as ns
from neuronsplit.plan import LayerSplit, SplitPlan


def test_a_whole_vit_sized_layer_prints_in_a_few_lines() -> None:
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(192, 768), nn.GELU(), nn.Linear(768, 192))
    assign = torch.randint(-1, 3, (768, 192), generator=g)
    assign[:, :3] = torch.tensor([0, 1, 2])  # every unit has subunits 0, 1 and 2
    split = ns.apply_plan(model, SplitPlan([LayerSplit("0", torch.arange(768), assign)]))
    text = repr(split)
    assert text.splitlines()[2].strip() == (
        "original_out=768, split_units=768, K=3, extra_rows=2304, form='disjoint'"
    )
    assert "(subunits): Linear(in_features=192, out_features=3072, bias=True)" in text
    assert "IndexMerge(original_out=768, split_units=768, extra=2304, dim=-1" in text
    assert len(text) < 800 and len(text.splitlines()) < 12
