"""Small float64 models and plans shared by the Disentangle tests (not a test module).

Weights are skewed positive so that units are alive on positive inputs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from neuronsplit.plan import SplitPlan, UnitSplit

DT = torch.float64


class ConvNet(nn.Module):
    def __init__(self, bias: bool = True, in_ch: int = 2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, 4, 3, padding=1, bias=bias)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1, bias=bias)
        self.act2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(6 * 4 * 4, 5, bias=bias)
        self.act3 = nn.ReLU()
        self.out = nn.Linear(5, 3, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.act2(self.conv2(self.act1(self.conv1(x)))))
        return self.out(self.act3(self.fc(self.flatten(x))))


class MLP(nn.Module):
    def __init__(self, bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 8, bias=bias)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(8, 5, bias=bias)
        self.act2 = nn.ReLU()
        self.fc3 = nn.Linear(5, 3, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.act2(self.fc2(self.act1(self.fc1(x)))))


def skew(model: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-0.2, 0.5)
    return model.to(DT).eval()


def conv_model(bias: bool = True, in_ch: int = 2) -> nn.Module:
    return skew(ConvNet(bias, in_ch))


def mlp_model(bias: bool = True) -> nn.Module:
    return skew(MLP(bias))


def conv_plan(merge: str = "disjoint") -> SplitPlan:
    return SplitPlan(
        [
            UnitSplit("conv2", 1, [[0, 1], [2]], shared=[3], merge=merge),
            UnitSplit("conv2", 4, [[0], [1], [2]], shared=[3], merge=merge),
        ]
    )


def mlp_plan(merge: str = "disjoint") -> SplitPlan:
    return SplitPlan(
        [
            UnitSplit("fc2", 0, [[0, 1, 2], [3, 4]], shared=[5, 6, 7], merge=merge),
            UnitSplit("fc2", 3, [[0], [1], [2, 3]], shared=[4, 5, 6, 7], merge=merge),
        ]
    )


# kind -> (model factory, plan factory, split layer, input shape, unit axis)
Case = tuple[Callable[..., nn.Module], Callable[[str], SplitPlan], str, tuple[int, ...], int]
CASES: dict[str, Case] = {
    "conv": (conv_model, conv_plan, "conv2", (2, 2, 8, 8), 1),
    "mlp": (mlp_model, mlp_plan, "fc2", (3, 6), -1),
}


def inputs(shape: tuple[int, ...], seed: int = 1) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


def reference_unit(
    model: nn.Module, layer: str, unit: int, x: torch.Tensor, target: int, dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Conditional attribution of ``unit`` on the *unsplit* model, written out independently."""
    x = x.clone().requires_grad_(True)
    store: list[torch.Tensor] = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: store.append(o))
    try:
        y = model(x)[:, target]
    finally:
        handle.remove()
    (z,) = store
    (g,) = torch.autograd.grad(y.sum(), z, retain_graph=True)
    mask = torch.zeros_like(g)
    mask.select(dim, unit).copy_(g.select(dim, unit))
    (gx,) = torch.autograd.grad(z, x, mask)
    relevance = (z * g).detach().select(dim, unit).reshape(x.shape[0], -1).sum(1)
    return x.detach() * gx, relevance
