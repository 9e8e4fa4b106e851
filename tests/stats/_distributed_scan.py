"""Run by ``test_distributed.py`` under ``torchrun`` (not a test module: pytest skips the name).

Every process joins one gloo process group and runs each case of :data:`CASES` in turn, then the
two failure cases; it writes its results to ``<outdir>/<case>.rank<r>.safetensors`` and the
errors it caught to ``<outdir>/<case>.rank<r>.txt``. From its (all-reduced) scan of
:data:`PLAN_CASE` each process then plans (:func:`plan_from`: rho="auto" on the full loader)
and saves the plan to ``<outdir>/plan.rank<r>/plan.json``. The test imports this file for the model and
the data, so both sides scan exactly the same thing.

Usage: ``torchrun --nproc_per_node 2 _distributed_scan.py OUTDIR``
"""

from __future__ import annotations

import datetime
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

NUM_CLASSES = 3
LAYERS = ["conv1", "conv2", "fc"]
TOP_N = 5
BATCH_SIZE = 4

#: case name -> (number of samples, layers, num_classes passed to scan, loader kind, extra args)
CASES: dict[str, tuple[int, list[str], int | None, str, dict[str, Any]]] = {
    "uneven": (23, LAYERS, NUM_CLASSES, "map", {}),  # 12 + 11 samples, 3 + 3 batches
    "idle_rank": (1, LAYERS, None, "map", {}),  # rank 1 gets no batch; classes from the logits
    "stream": (23, ["conv2"], NUM_CLASSES, "list", {}),  # batches 0, 2, 4 vs 1, 3, 5
    "max_batches": (23, ["fc"], NUM_CLASSES, "map", {"max_batches": 3}),  # the first 12 samples
    "offset": (23, ["conv1"], NUM_CLASSES, "map", {"sample_offset": 100}),
    # each process draws its own shuffled order (a per-rank seed, as training scripts do)
    "shuffled": (23, ["conv2", "fc"], NUM_CLASSES, "shuffle", {}),
    "drop_last": (23, ["fc"], NUM_CLASSES, "drop_last", {}),  # one process scans 20 samples
}

#: the scan case every process plans from; the plan files must equal a 1-process run's, byte
#: for byte
PLAN_CASE = "uneven"


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 5, 3, stride=2, padding=1)
        self.fc = nn.Linear(5, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(h.mean((2, 3)))


def build_model() -> nn.Module:
    """The same float64 model in every process (seeded, independent of the global RNG)."""
    model = SmallCNN().to(torch.float64).eval()
    gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=gen, dtype=torch.float64) * 0.5)
    return model


def build_dataset(n: int, bad_label_at: int | None = None) -> TensorDataset:
    gen = torch.Generator().manual_seed(99)
    x = torch.randn(n, 2, 6, 6, generator=gen, dtype=torch.float64)
    y = torch.arange(n) % NUM_CLASSES
    if bad_label_at is not None:
        y[bad_label_at] = NUM_CLASSES + 4
    return TensorDataset(x, y)


def build_loader(n: int, kind: str) -> Any:
    dataset = build_dataset(n)
    loader = DataLoader(
        dataset, batch_size=BATCH_SIZE, shuffle=kind == "shuffle", drop_last=kind == "drop_last"
    )
    return list(loader) if kind == "list" else loader


def run_case(name: str, *, reference: bool = False, **overrides: Any) -> Any:
    """``ns.scan`` of one case; ``reference=True`` reads a shuffled loader in order instead."""
    import neuronsplit as ns

    n, layers, num_classes, kind, extra = CASES[name]
    if reference and kind == "shuffle":
        kind = "map"  # the statistics do not depend on the order of the samples
    args: dict[str, Any] = {"layers": layers, "num_classes": num_classes, **extra, **overrides}
    return ns.scan(build_model(), build_loader(n, kind), top_n=TOP_N, progress=False, **args)


def plan_from(result: Any, path: Path) -> None:
    """find_polysemantic -> plan_split (rho="auto", scored on the whole loader) -> save."""
    import neuronsplit as ns

    units = ns.find_polysemantic(result, p=0.5, gamma=0.9)
    loader = build_loader(CASES[PLAN_CASE][0], "map")
    ns.plan_split(units, result, loader, model=build_model()).save(path)


def _report(path: Path, action: Any) -> None:
    try:
        action()
        path.write_text("no error")
    except Exception as exc:  # the test reads the type and the message
        path.write_text(f"{type(exc).__name__}: {exc}")


def main(outdir: Path) -> None:
    import torch.distributed as dist

    import neuronsplit as ns

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    try:
        results = {}
        for name in CASES:
            torch.manual_seed(100 + rank)
            results[name] = run_case(name)
            results[name].save(outdir / f"{name}.rank{rank}.safetensors")
        plan_from(results[PLAN_CASE], outdir / f"plan.rank{rank}" / "plan.json")
        _report(  # every process must raise, none may wait forever
            outdir / f"different_layers.rank{rank}.txt",
            lambda: run_case("uneven", layers=["conv1"] if rank == 0 else ["conv2"]),
        )
        loader = DataLoader(build_dataset(8, bad_label_at=1), batch_size=BATCH_SIZE)
        _report(  # sample 1 is rank 1's: it fails, rank 0 must not hang
            outdir / f"one_rank_fails.rank{rank}.txt",
            lambda: ns.scan(build_model(), loader, LAYERS, NUM_CLASSES, progress=False),
        )
    finally:
        # every rank reaches here before the group goes (a rank that tears gloo down while the
        # other still talks to it can abort: "terminate called without an active exception",
        # seen twice under CI load); a missing rank fails the barrier instead of hanging it
        try:
            dist.monitored_barrier(timeout=datetime.timedelta(seconds=60))
        finally:
            dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    # everything is written: leave without the interpreter's finalisation, during which gloo's
    # worker threads may still drop tensors that need the GIL (pytorch/pytorch#179291)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
