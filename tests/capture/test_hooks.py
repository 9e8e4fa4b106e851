"""``neuronsplit.capture.capture``: graph start, in-place safety, early stop, casts, call
counting, hook removal, layer-name errors and ``input_fn``.

References are computed without neuronsplit: a manual forward through ``nn.Sequential`` pieces
with ``retain_grad``, or plain forward hooks that clone what they see.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from helpers import hook_counts
from neuronsplit.capture import Capture, capture
from neuronsplit.errors import UnknownLayerError, UnsupportedLayerError

DT = torch.float64


def _seeded(model: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    for m in model.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return model.to(DT).eval()


class Boom(nn.Module):
    """A module that must never run (or that fails in the middle of the forward pass)."""

    def __init__(self, armed: bool = True) -> None:
        super().__init__()
        self.armed = armed
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        if self.armed:
            raise RuntimeError("boom: reached a module after the captured layer")
        return x


class InplaceResidual(nn.Module):
    """``h = fc(x); h += x`` -- the in-place residual add of timm blocks, on fc's output."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.head = nn.Linear(width, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc(x)
        h += x
        return self.head(torch.relu_(h))


class Twice(nn.Module):
    """Applies ``shared`` twice; ``unused`` never runs."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(3, 3)
        self.unused = nn.Linear(3, 3)
        self.head = nn.Linear(3, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.shared(torch.tanh(self.shared(x))))


def _mlp(inplace: bool = False) -> nn.Sequential:
    return _seeded(
        nn.Sequential(nn.Linear(4, 6), nn.ReLU(inplace=inplace), nn.Linear(6, 3), nn.Tanh())
    )


# --------------------------------------------------------------------------- graph start


def _reference_grad(model: nn.Sequential, x: Tensor) -> tuple[Tensor, Tensor]:
    """Output of layer 0 and d(sum of logits)/d(output of layer 0), by a manual forward."""
    h = model[0](x)
    h.retain_grad()
    model[1:](h).sum().backward()
    assert h.grad is not None
    return h.detach(), h.grad


def test_frozen_model_starts_a_graph_with_the_unfrozen_gradient() -> None:
    frozen = _mlp()
    unfrozen = copy.deepcopy(frozen)
    frozen.requires_grad_(False)
    x = torch.randn(5, 4, dtype=DT)
    ref_out, ref_grad = _reference_grad(unfrozen, x)
    with capture(frozen, ["0"], grad=True) as cap:
        y = frozen(x)
        assert y.requires_grad  # the graph starts at the captured output
        (grad,) = torch.autograd.grad(y.sum(), cap.output("0"))
    assert ref_grad.abs().max() > 0
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-14)
    torch.testing.assert_close(cap.output("0").detach(), ref_out, rtol=0, atol=0)
    assert all(p.grad is None for p in frozen.parameters())


def test_unfrozen_model_records_the_output_in_the_graph() -> None:
    model = _mlp()
    x = torch.randn(5, 4, dtype=DT)
    _, ref_grad = _reference_grad(copy.deepcopy(model), x)
    with capture(model, ["0"], grad=True) as cap:
        y = model(x)
        out = cap.output("0")
        assert out.grad_fn is not None  # not a detached leaf: the parameters stay reachable
        (grad,) = torch.autograd.grad(y.sum(), out)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-14)


# --------------------------------------------------------------------------- in-place ops


def _clone_hook(store: list[Tensor]) -> Any:
    return lambda m, args, out: store.append(out.detach().clone())


def test_inplace_relu_after_the_layer_does_not_corrupt_the_record() -> None:
    model = _mlp(inplace=True)
    x = torch.randn(8, 4, dtype=DT)
    independent: list[Tensor] = []
    handle = model[0].register_forward_hook(_clone_hook(independent))  # runs before capture's
    try:
        with capture(model, ["0"], grad=True) as cap:
            y = model(x)
            (grad,) = torch.autograd.grad(y.sum(), cap.output("0"))
            recorded = cap.output("0").detach()
    finally:
        handle.remove()
    assert (independent[0] < 0).any()  # the ReLU had something to overwrite
    assert torch.equal(recorded, independent[0])
    _, ref_grad = _reference_grad(_mlp(inplace=False), x)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-14)


def test_inplace_residual_add_does_not_corrupt_the_record() -> None:
    model = _seeded(InplaceResidual(5), seed=1)
    x = torch.randn(6, 5, dtype=DT)
    with torch.no_grad():
        expected = model.fc(x).clone()
        logits = model(x)
    with capture(model, ["fc"], grad=True) as cap:
        y = model(x)
        out = cap.output("fc")
        (grad,) = torch.autograd.grad(y.sum(), out)
    assert torch.equal(out.detach(), expected)
    assert torch.equal(y.detach(), logits)  # the model's own result is unchanged
    h = expected.clone().requires_grad_(True)  # reference: the block after fc, on a leaf
    model.head(torch.relu(h + x)).sum().backward()
    torch.testing.assert_close(grad, h.grad, rtol=0, atol=1e-14)


def test_inplace_op_does_not_corrupt_a_detached_output_record() -> None:
    model = _mlp(inplace=True)
    x = torch.randn(8, 4, dtype=DT)
    with torch.no_grad():
        expected = model[0](x).clone()
    assert (expected < 0).any()
    with capture(model, ["0"]) as cap, torch.no_grad():
        model(x)
    assert torch.equal(cap.output("0"), expected)


class InplaceInputAdd(nn.Module):
    """``x += fc(x)``: overwrites the input of ``fc`` after ``fc`` ran."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = x.clone()
        x += self.fc(x)
        return x


def test_inplace_op_does_not_corrupt_an_input_record() -> None:
    model = _seeded(InplaceInputAdd(), seed=3)
    x = torch.randn(4, 3, dtype=DT)
    with capture(model, ["fc"], inputs=True) as cap, torch.no_grad():
        model(x)
    assert torch.equal(cap.input("fc"), x)


def test_layers_given_as_a_mapping_are_read_under_their_keys() -> None:
    model = _mlp()
    x = torch.randn(3, 4, dtype=DT)
    with torch.no_grad():
        expected = model[0](x)
    with capture(model, {"first": model[0]}) as cap, torch.no_grad():
        model(x)
    assert cap.names == ("first",) and torch.equal(cap.output("first"), expected)


# --------------------------------------------------------------------------- early stop


def test_stop_ends_the_forward_after_the_captured_layer() -> None:
    model = _seeded(nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 3), Boom()))
    x = torch.randn(2, 4, dtype=DT)
    with torch.no_grad():
        expected = model[1](model[0](x))
    with capture(model, ["0", "1"], stop=True, inputs=True) as cap:
        assert cap.forward(model, x) is None
        assert torch.equal(cap.output("1"), expected)
        assert torch.equal(cap.input("0"), x)
        cap.clear()
        assert cap.forward(model, x) is None  # a second pass stops again
    assert model[2].calls == 0
    assert _no_module_hooks(model)


def test_forward_without_stop_returns_the_model_output() -> None:
    model = _mlp()
    x = torch.randn(2, 4, dtype=DT)
    with capture(model, ["0"]) as cap, torch.no_grad():
        assert torch.equal(cap.forward(model, x), model(x))


# --------------------------------------------------------------------------- to=, input_fn


def test_to_casts_detached_records() -> None:
    model = _seeded(nn.Sequential(nn.Linear(4, 3), nn.ReLU())).float()
    x = torch.randn(5, 4)
    with capture(model, ["0"], inputs=True, to={"dtype": DT}) as cap, torch.no_grad():
        model(x)
        out, inp = cap.output("0"), cap.input("0")
        expected = model[0](x)
    assert out.dtype == DT and inp.dtype == DT
    assert torch.equal(out, expected.to(DT)) and torch.equal(inp, x.to(DT))
    with capture(model, ["0"], grad=True, to={"dtype": DT}) as cap:
        model(x)
        assert cap.output("0").dtype == torch.float32  # differentiable records are not cast


def test_input_fn_result_is_stored_instead_of_the_input() -> None:
    model = _mlp()
    x = torch.randn(5, 4, dtype=DT, requires_grad=True)
    seen: list[tuple[nn.Module, bool, bool, bool]] = []

    def summarise(module: nn.Module, inp: Tensor, out: Tensor) -> dict[str, Tensor]:
        seen.append((module, inp.requires_grad, out.requires_grad, torch.is_grad_enabled()))
        return {"in_sum": inp.sum(0), "out_max": out.amax(1)}

    with capture(model, ["0", "2"], input_fn=summarise) as cap:
        model(x)
        first, second = cap.input("0"), cap.input("2")
    with torch.no_grad():
        h = model[0](x)
        z = model[2](model[1](h))
    torch.testing.assert_close(first["in_sum"], x.detach().sum(0), rtol=0, atol=0)
    torch.testing.assert_close(first["out_max"], h.amax(1), rtol=0, atol=0)
    torch.testing.assert_close(second["in_sum"], torch.relu(h).sum(0), rtol=0, atol=0)
    torch.testing.assert_close(second["out_max"], z.amax(1), rtol=0, atol=0)
    assert [s[0] for s in seen] == [model[0], model[2]]
    assert all(s[1:] == (False, False, False) for s in seen)  # detached, under no_grad


# --------------------------------------------------------------------------- call counting


def test_module_used_twice_is_counted_and_refused_where_one_value_is_needed() -> None:
    model = _seeded(Twice(), seed=2)
    x = torch.randn(4, 3, dtype=DT)
    with torch.no_grad():
        first = model.shared(x)
        second = model.shared(torch.tanh(first))
    with capture(model, ["shared", "unused"]) as cap, torch.no_grad():
        model(x)
        assert cap.calls("shared") == 2 and cap.calls("unused") == 0
        outs = cap.outputs("shared")
        assert len(outs) == 2
        assert torch.equal(outs[0], first) and torch.equal(outs[1], second)
        assert cap.outputs("unused") == []
        with pytest.raises(UnsupportedLayerError, match=r"'shared' ran 2 times"):
            cap.output("shared")
        with pytest.raises(UnsupportedLayerError, match=r"'shared' ran 2 times"):
            cap.input("shared")
        with pytest.raises(UnsupportedLayerError, match=r"'unused' ran 0 times.*did not run"):
            cap.output("unused")
        model(x)
        assert cap.calls("shared") == 4  # counts add up until clear()
        cap.clear()
        assert cap.calls("shared") == 0 and cap.outputs("shared") == []
        model.shared(x)
        assert torch.equal(cap.output("shared"), first)  # exactly once: readable


def test_reading_a_layer_that_is_not_captured_raises_key_error() -> None:
    model = _mlp()
    with capture(model, ["0"]) as cap:
        assert isinstance(cap, Capture) and cap.names == ("0",)
        with pytest.raises(UnknownLayerError, match="not captured"):  # a LookupError
            cap.output("2")


def test_layer_returning_a_tuple_is_refused() -> None:
    model = nn.Sequential(nn.LSTM(3, 2, batch_first=True))
    with capture(model, ["0"]), pytest.raises(UnsupportedLayerError, match="'0' returned tuple"):
        model(torch.randn(1, 4, 3))
    assert _no_module_hooks(model)


# --------------------------------------------------------------------------- hook removal


def _no_module_hooks(model: nn.Module) -> bool:
    return all(sum(v) == 0 for k, v in hook_counts(model).items() if k != "<global>")


@pytest.fixture
def tripwire_model() -> Iterator[nn.Sequential]:
    model = _seeded(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), Boom(armed=False), nn.Linear(3, 2)))
    before = hook_counts(model)
    yield model
    assert hook_counts(model) == before


@pytest.mark.parametrize("grad", [False, True])
def test_hooks_are_removed_after_normal_exit(tripwire_model: nn.Sequential, grad: bool) -> None:
    with capture(tripwire_model, ["0", "3"], grad=grad, inputs=True) as cap:
        assert len(tripwire_model[0]._forward_hooks) == 1
        tripwire_model(torch.randn(2, 4, dtype=DT))
        assert cap.calls("3") == 1
    assert _no_module_hooks(tripwire_model)


def test_hooks_are_removed_after_an_exception_inside_the_context(
    tripwire_model: nn.Sequential,
) -> None:
    with pytest.raises(ValueError, match="user code"), capture(tripwire_model, ["0", "3"]):
        tripwire_model(torch.randn(2, 4, dtype=DT))
        raise ValueError("user code failed")
    assert _no_module_hooks(tripwire_model)


@pytest.mark.parametrize("stop", [False, True])
def test_hooks_are_removed_after_the_model_raises_mid_forward(
    tripwire_model: nn.Sequential, stop: bool
) -> None:
    tripwire_model[2].armed = True
    with (
        pytest.raises(RuntimeError, match="boom"),
        capture(tripwire_model, ["0", "3"], grad=True, stop=stop) as cap,
    ):
        cap.forward(tripwire_model, torch.randn(2, 4, dtype=DT))
    assert cap.calls("0") == 1 and cap.calls("3") == 0
    assert _no_module_hooks(tripwire_model)


# --------------------------------------------------------------------------- layer names


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(3, 3)
        self.fc2 = nn.Linear(3, 3)
        self.act = nn.ReLU()


class Named(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = Encoder()
        self.classifier = nn.Linear(3, 2)


def test_unknown_layer_name_raises_with_close_matches() -> None:
    model = Named()
    before = hook_counts(model)
    with pytest.raises(UnknownLayerError) as info, capture(model, ["encoder.fc1", "encoder.fc"]):
        pass
    message = str(info.value)
    assert "'encoder.fc'" in message
    assert "'encoder.fc1'" in message and "'encoder.fc2'" in message
    assert "'classifier'" not in message  # only the close names
    assert hook_counts(model) == before  # nothing was registered for the good name either
    with pytest.raises(UnknownLayerError, match="non-empty"), capture(model, [""]):
        pass
