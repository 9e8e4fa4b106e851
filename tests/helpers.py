"""Helpers shared by the tests (not a test module)."""

from __future__ import annotations

import random
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as torch_module

from neuronsplit.plan import UnitSplit
from neuronsplit.stats import LayerStats, ScanResult

MODULE_HOOKS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_load_state_dict_pre_hooks",
)
GLOBAL_HOOKS = (
    "_global_forward_hooks",
    "_global_forward_hooks_always_called",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
    "_global_module_registration_hooks",
    "_global_parameter_registration_hooks",
    "_global_buffer_registration_hooks",
)
_SIMPLE = (bool, int, float, str, type(None))


def hook_counts(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Number of hooks of every kind on every module, and the global module hooks."""
    counts = {
        name: tuple(len(getattr(m, d, {})) for d in MODULE_HOOKS)
        for name, m in model.named_modules()
    }
    counts["<global>"] = tuple(len(getattr(torch_module, d, {})) for d in GLOBAL_HOOKS)
    return counts


def global_state() -> dict[str, Any]:
    """Process-wide torch state a public call must restore: grad mode, inference mode and the
    default dtype."""
    return {
        "grad_enabled": torch.is_grad_enabled(),
        "inference_mode": torch.is_inference_mode_enabled(),
        "default_dtype": torch.get_default_dtype(),
    }


def _plain(value: Any) -> Any:
    """A comparable summary of a module attribute: simple values as they are, containers by
    type and length (a steering stack left open shows up), anything else by type."""
    if isinstance(value, _SIMPLE):
        return value
    if isinstance(value, (list, tuple, dict, set)):
        return (type(value).__name__, len(value))
    return type(value).__name__


def snapshot(model: nn.Module) -> dict[str, Any]:
    """Everything a public call must leave unchanged on a user's model, and the global state."""
    return {
        "params": {
            k: (p.detach().clone(), p.requires_grad, p.grad) for k, p in model.named_parameters()
        },
        "param_ids": {k: id(p) for k, p in model.named_parameters()},
        "buffers": {k: b.detach().clone() for k, b in model.named_buffers()},
        "modules": {k: (type(m), m.training) for k, m in model.named_modules()},
        "attributes": {
            k: {a: _plain(v) for a, v in vars(m).items() if a != "training"}
            for k, m in model.named_modules()
        },
        "forwards": {k: m.forward for k, m in model.named_modules()},
        "hooks": hook_counts(model),
        "global": global_state(),
    }


def assert_unchanged(model: nn.Module, snap: dict[str, Any]) -> None:
    now = snapshot(model)
    assert now["global"] == snap["global"], "grad mode, inference mode or default dtype changed"
    assert now["modules"] == snap["modules"], "module types or training flags changed"
    assert now["hooks"] == snap["hooks"], "hooks were added or removed"
    assert now["forwards"] == snap["forwards"], "a forward method was replaced"
    assert now["attributes"] == snap["attributes"], "module attributes changed"
    assert now["param_ids"] == snap["param_ids"], "parameter objects were replaced"
    assert now["params"].keys() == snap["params"].keys()
    for k, (p, rg, grad) in snap["params"].items():
        q, rg2, grad2 = now["params"][k]
        assert rg == rg2, f"requires_grad of {k} changed"
        assert torch.equal(p, q), f"parameter {k} changed"
        assert grad2 is grad, f".grad of {k} changed"
    assert now["buffers"].keys() == snap["buffers"].keys()
    for k, b in snap["buffers"].items():
        assert torch.equal(b, now["buffers"][k]), f"buffer {k} changed"


def random_split(
    rng: random.Random, layer: str, unit: int, n_inputs: int, k: int, merge: str
) -> UnitSplit:
    """Random assignment of every input to one of K groups or to shared."""
    slots = [rng.randrange(k + 1) for _ in range(n_inputs)]  # slot k == shared
    groups = [[i for i, s in enumerate(slots) if s == g] for g in range(k)]
    shared = [i for i, s in enumerate(slots) if s == k]
    return UnitSplit(layer, unit, groups, shared=shared, merge=merge)


def layer_sizes(layer: nn.Module) -> tuple[int, int]:
    if isinstance(layer, nn.Conv2d):
        return layer.in_channels, layer.out_channels
    return layer.in_features, layer.out_features


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a - b| / max|a|, computed in float64."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-300))


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics/affine and LayerScale gammas (timm zero-inits some of them,
    which would hide a wrong split from the model output)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            elif type(m).__name__ == "LayerScale":
                m.gamma.copy_(torch.rand(m.gamma.shape, generator=g) + 0.5)
    return model


def planted_unit(n: int = 64) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A float64 model whose unit 0 of ``fc`` reads inputs 0-3 for class 0 and inputs 4-7 for
    class 1 (nothing shared): the planted two-concept unit of the rho and dtype tests."""
    gen = torch.Generator().manual_seed(3)
    x = torch.zeros(2 * n, 8, dtype=torch.float64)
    x[:n, :4] = 0.5 + torch.rand(n, 4, generator=gen, dtype=torch.float64)
    x[n:, 4:] = 0.5 + torch.rand(n, 4, generator=gen, dtype=torch.float64)
    y = torch.cat([torch.zeros(n), torch.ones(n)]).long()
    model = nn.Sequential()
    model.add_module("fc", nn.Linear(8, 2, bias=False))
    model.add_module("act", nn.ReLU())
    model.add_module("head", nn.Linear(2, 2, bias=False))
    model = model.double()
    with torch.no_grad():
        model.fc.weight.copy_(torch.tensor([[1.0] * 8, [0.1, -0.2, 0.3, 0.1, -0.1, 0.2, 0.1, 0.3]]))
        model.head.weight.copy_(torch.tensor([[1.0, 0.05], [1.0, -0.05]]))
    return model.eval(), x, y


def hand_built_scan(
    class_counts: list[int],
    important: list[list[int]],
    arvs: dict[tuple[int, int], list[float]],
    no_positive: list[int] | None = None,
    tau_grid: tuple[float, ...] = (0.03,),
) -> ScanResult:
    """A scan of one layer ``"L"`` built by hand (exact counts and ARVs).

    ``important[t][c]`` class-t images make unit c important; unit c reads its own block of
    inputs with weight 1, so ``ARV(c, t) = arvs[(c, t)]`` exactly."""
    n_cls, n_units = len(class_counts), len(important[0])
    d = len(next(iter(arvs.values())))
    weight = torch.zeros(n_units, n_units * d, 1, dtype=torch.float64)
    input_sums = torch.zeros(n_cls, n_units * d, 1, dtype=torch.float64)
    for c in range(n_units):
        weight[c, c * d : (c + 1) * d, 0] = 1.0
    for (c, t), vec in arvs.items():
        input_sums[t, c * d : (c + 1) * d, 0] = (
            torch.tensor(vec, dtype=torch.float64) * class_counts[t]
        )
    counts = torch.tensor(important, dtype=torch.int32).unsqueeze(0).repeat(len(tau_grid), 1, 1)
    blank = None if no_positive is None else torch.tensor(no_positive, dtype=torch.int64)
    stats = LayerStats.from_tensors(
        "L", "linear", weight, counts, torch.zeros(n_cls, n_units, dtype=torch.float64), input_sums,
        taus=tau_grid, no_positive=blank,
    )  # fmt: skip
    return ScanResult({"L": stats}, torch.tensor(class_counts), tau_grid)
