"""Disentangle with Zennit LRP: agreement with grad x act, conservation, the merge's Norm rule."""

from __future__ import annotations

import pytest
import torch
from zennit.composites import EpsilonPlusFlat, LayerMapComposite
from zennit.rules import Epsilon, Flat, Pass
from zennit.types import Activation, Linear

from attribution_models import CASES, conv_model, conv_plan, inputs, mlp_model, mlp_plan
from neuronsplit import Disentangle, Zennit
from neuronsplit.nn import IndexMerge, apply_plan
from neuronsplit.relevance import SplitRule


def _epsilon_composite(eps: float = 1e-13) -> LayerMapComposite:
    return LayerMapComposite([(Activation, Pass()), (Linear, Epsilon(eps))])


@pytest.mark.parametrize("kind", ["conv", "mlp"])
@pytest.mark.parametrize("merge", ["disjoint", "overlap"])
def test_zennit_epsilon_agrees_with_grad_x_act(kind: str, merge: str) -> None:
    make, make_plan, layer, shape, _ = CASES[kind]
    model = make()
    x = inputs(shape)
    plain = Disentangle(model, make_plan(merge))
    lrp = Disentangle(
        model, make_plan(merge), relevance=Zennit(_epsilon_composite(), merge_epsilon=1e-15)
    )
    for unit in plain.model.get_submodule(layer).split_units:
        a = plain.attribute_unit(x, target=1, layer=layer, unit=unit)
        b = lrp.attribute_unit(x, target=1, layer=layer, unit=unit)
        scale = a.subunits.abs().max()
        torch.testing.assert_close(b.subunits, a.subunits, rtol=0, atol=1e-8 * scale)
        torch.testing.assert_close(b.relevance, a.relevance, rtol=0, atol=1e-8 * scale)
        torch.testing.assert_close(b.unit, a.unit, rtol=0, atol=1e-8 * scale)


@pytest.mark.parametrize("merge", ["disjoint", "overlap"])
def test_zennit_conservation_with_epsilon_plus_flat(merge: str) -> None:
    model = conv_model()
    x = inputs((2, 2, 8, 8))
    for relevance in (EpsilonPlusFlat(), Zennit(EpsilonPlusFlat())):
        dis = Disentangle(model, conv_plan(merge), relevance=relevance)
        res = dis.attribute_unit(x, target=0, layer="conv2", unit=4)
        assert res.unit.abs().max() > 0
        torch.testing.assert_close(res.subunits.sum(0), res.unit, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(res.relevance.sum(1), res.unit_relevance, rtol=1e-6, atol=1e-9)
    for module in dis.model.modules():  # nothing left behind
        assert not module._forward_hooks and not module._forward_pre_hooks


def test_plain_gradients_through_the_merge_would_not_conserve() -> None:
    """Why the merge needs a rule: with plain gradients through the index-add, the disjoint
    rows of a unit each receive the unit's whole relevance (K+1 times it in total)."""
    model = mlp_model()
    x = inputs((3, 6))
    split = apply_plan(model, mlp_plan("disjoint"))
    rows = [0, split.fc2.subunit_index(0, 1), split.fc2.residual_index(0)]
    composite = _epsilon_composite()
    store: list[torch.Tensor] = []
    with composite.context(split):
        handle = split.fc2.subunits.register_forward_hook(lambda m, i, o: store.append(o))
        try:
            xs = x.clone().requires_grad_(True)
            y = split(xs)[:, 0]
            (g,) = torch.autograd.grad(y, store[0], grad_outputs=y.detach())
        finally:
            handle.remove()
    res = Disentangle(split, relevance=_epsilon_composite()).attribute_unit(
        x, target=0, layer="fc2", unit=0
    )
    # without a rule each of the three rows gets the unit's relevance R_u (here: g[:, 0])
    torch.testing.assert_close(g[:, rows].sum(1), 3 * g[:, 0])
    torch.testing.assert_close(res.unit_relevance, g[:, 0], rtol=1e-9, atol=1e-12)
    # with the rule (Disentangle) the rows share it
    torch.testing.assert_close(res.relevance.sum(1), res.unit_relevance, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("merge", ["disjoint", "overlap"])
def test_split_rule_on_the_merges_only_during_the_call(merge: str) -> None:
    """The merge and the rows carry the SplitRule pair (the composite's rule applied to the
    original weight, relevance split in proportion to the rule's own contributions)."""
    split = apply_plan(conv_model(), conv_plan(merge))
    merges = [m for m in split.modules() if isinstance(m, IndexMerge)]
    assert len(merges) == 1
    seen: list[set[type]] = []
    spy = merges[0].register_forward_hook(
        lambda m, i, o: seen.append({type(h.__self__.owner) for h in _hooks(m)})
    )
    try:
        dis = Disentangle(split, relevance=EpsilonPlusFlat())
        dis.attribute(inputs((2, 2, 8, 8)), target=0, subunit=("conv2", 4, 1))
    finally:
        spy.remove()
    assert seen == [{SplitRule}]  # one forward pass, and the merge was ruled by the pair
    for name, module in split.named_modules():  # nothing left behind
        assert not module._forward_hooks and not module._forward_pre_hooks, name
        assert not module._backward_hooks and not module._backward_pre_hooks, name
    assert not any(hasattr(m, "canonizer_sum") for m in split.modules())


def _hooks(module: torch.nn.Module) -> list:
    return [
        h for h in module._forward_hooks.values() if hasattr(getattr(h, "__self__", None), "owner")
    ]


def test_merge_epsilon_is_the_norm_rule_stabiliser() -> None:
    """Where the split rule does not apply (a Flat rule on the rows), merges fall back to Norm:
    R_row = A_row * R_u / (z_u + eps), so a huge merge_epsilon starves the subunits."""
    model, x = mlp_model(), inputs((3, 6))

    def flat() -> LayerMapComposite:
        return LayerMapComposite([(Activation, Pass()), (Linear, Flat())])

    exact = Disentangle(model, mlp_plan(), relevance=Zennit(flat(), merge_epsilon=1e-12))
    damped = Disentangle(model, mlp_plan(), relevance=Zennit(flat(), merge_epsilon=1e6))
    a = exact.attribute_unit(x, target=0, layer="fc2", unit=3)
    b = damped.attribute_unit(x, target=0, layer="fc2", unit=3)
    torch.testing.assert_close(b.unit_relevance, a.unit_relevance)  # the unit is unaffected
    torch.testing.assert_close(a.relevance.sum(1), a.unit_relevance, rtol=1e-9, atol=1e-12)
    assert b.relevance.abs().max() < 1e-4 * a.relevance.abs().max()


def test_merge_epsilon_moved_to_the_backend() -> None:
    with pytest.raises(TypeError, match=r"merge_epsilon"):
        Disentangle(mlp_model(), mlp_plan(), merge_epsilon=1e-9)  # type: ignore[call-arg]
    assert Zennit(EpsilonPlusFlat(), merge_epsilon=1e-7).merge_epsilon == 1e-7
    assert (
        Disentangle(mlp_model(), mlp_plan(), relevance=EpsilonPlusFlat()).backend.name == "zennit"
    )
