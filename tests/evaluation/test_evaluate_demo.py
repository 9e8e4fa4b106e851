"""ns.evaluate on the demo CNN and its Hesse plan: consistent with concept_fractions, exact."""

from __future__ import annotations

import functools

import pytest
import torch

import neuronsplit as ns
from neuronsplit.demo import demo_plan, digits_loader, get_demo_model, load_digits
from neuronsplit.evaluation import concept_fractions


@functools.cache
def _world():
    model = get_demo_model()
    _, _, plan = demo_plan(model)
    split = ns.apply_plan(model, plan)
    return model, plan, split


def test_demo_evaluation_agrees_with_concept_fractions() -> None:
    model, plan, split = _world()
    ev = ns.evaluate(model, split, digits_loader("test", batch_size=64), plan, progress=False)
    test = load_digits("test")
    assert ev.n_images == len(test) and ev.equivalence.passed
    assert ev.max_abs_delta <= 1e-4
    infos = plan.meta["units"]
    assert len(ev) == sum(len(i["concepts"]) + 2 for i in infos)
    for info in infos:
        layer, unit, concepts = info["layer"], info["unit"], info["concepts"]
        assert ev.row(layer, unit).exact is True
        # Hesse's diagonal d_k / orig, computed by the existing function on the original model
        want = concept_fractions(model, split, layer, unit, test.images, test.labels, concepts)
        for k, fr in enumerate(want):
            got = ev.row(layer, unit, k).fraction_own
            assert got == pytest.approx(fr.subunit_mean[k], abs=1e-5)
        # the merge identity of the plan's form holds for the mean fractions
        subs = sum(ev.row(layer, unit, k).fraction for k in range(len(concepts)))
        res = ev.row(layer, unit, -1).fraction
        form = ev.row(layer, unit).form
        merged = subs - (len(concepts) - 1) * res if form == "overlap" else subs + res
        assert merged == pytest.approx(1.0, abs=1e-5)
        for r in (ev.row(layer, unit, k) for k in range(len(concepts))):
            labels = test.labels[list(r.top_indices)]
            assert r.purity == pytest.approx(
                float(torch.bincount(labels).max()) / len(labels)
            )  # the top indices point into the loader's order


def test_demo_label_free_evaluation_keeps_the_label_free_numbers() -> None:
    model, plan, split = _world()
    loader = [x for x, _ in digits_loader("test", batch_size=64)]
    free = ns.evaluate(model, split, loader, labels=False, equivalence=False, progress=False)
    full = ns.evaluate(model, split, digits_loader("test", batch_size=64), progress=False)
    assert free.equivalence is None and "purity" not in free.columns
    for a, b in zip(free.rows, full.rows, strict=True):
        assert a.top_indices == b.top_indices
        assert a.mean_activation == pytest.approx(b.mean_activation)
