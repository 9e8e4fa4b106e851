"""The distributed scan under ``torchrun`` (2 processes, gloo on the CPU).

One ``torchrun`` launch runs every case of ``_distributed_scan.py`` (starting the processes is
the expensive part); the tests compare what each rank wrote with a 1-process scan computed here.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
import torch

import neuronsplit as ns

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(240)]

SCRIPT = Path(__file__).with_name("_distributed_scan.py")
WORLD = 2


def _script_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_distributed_scan", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def script() -> ModuleType:
    return _script_module()


@pytest.fixture(scope="module")
def outdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Launch torchrun once; every test reads the files it left."""
    out = tmp_path_factory.mktemp("distributed")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
        "--nproc_per_node", str(WORLD), "--master_addr", "127.0.0.1",
        "--master_port", str(_free_port()), str(SCRIPT), str(out),
    ]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    (out / "elapsed.txt").write_text(f"{elapsed:.1f}")
    return out


def _tensors(res: ns.ScanResult) -> dict[str, torch.Tensor]:
    out = {"class_counts": res.class_counts}
    for name, stats in res.layers.items():
        out.update({f"{name}/{key}": t for key, t in stats.tensors().items()})
    return out


def _load_ranks(outdir: Path, case: str) -> list[ns.ScanResult]:
    return [ns.ScanResult.load(outdir / f"{case}.rank{r}.safetensors") for r in range(WORLD)]


def _assert_matches_one_process(got: ns.ScanResult, ref: ns.ScanResult) -> None:
    assert list(got.layers) == list(ref.layers)
    assert (got.tau_grid, got.relevance, got.target) == (ref.tau_grid, ref.relevance, ref.target)
    assert got.meta["processes"] == WORLD and ref.meta["processes"] == 1
    ta, tr = _tensors(got), _tensors(ref)
    assert ta.keys() == tr.keys()
    for key, a in ta.items():
        b = tr[key]
        assert a.dtype == b.dtype and a.shape == b.shape, key
        if a.is_floating_point() and not key.endswith("/weight"):
            finite = torch.isfinite(b)
            assert torch.equal(finite, torch.isfinite(a)) and torch.equal(a[~finite], b[~finite])
            if finite.any():
                scale = b[finite].abs().max().clamp_min(1e-300)
                assert float((a[finite] - b[finite]).abs().max() / scale) <= 1e-12, key
        else:  # counts, reservoir indices and positions, weights: exact
            assert torch.equal(a, b), key


@pytest.mark.parametrize(
    "case",
    [
        "uneven",
        "idle_rank",
        "stream",
        "max_batches",
        "offset",
        "shuffled",
        "drop_last",
    ],
)
def test_every_rank_returns_the_one_process_result(
    outdir: Path, script: ModuleType, case: str
) -> None:
    results = _load_ranks(outdir, case)
    first = _tensors(results[0])
    for other in results[1:]:
        assert _tensors(other).keys() == first.keys()
        for key, tensor in _tensors(other).items():
            assert torch.equal(tensor, first[key]), key
        assert other.meta == results[0].meta
    reference = script.run_case(case, reference=True)
    for res in results:
        _assert_matches_one_process(res, reference)


def test_uneven_shards_count_every_sample_once(outdir: Path, script: ModuleType) -> None:
    (res, _) = _load_ranks(outdir, "uneven")
    assert res.num_samples == 23 and res.meta["batches"] == 6
    top = res.layer("conv2").top_activation
    assert top is not None and top.n == script.TOP_N
    filled = top.index[top.index >= 0]
    assert int(filled.min()) >= 0 and int(filled.max()) < 23
    for unit in range(top.index.shape[0]):  # no sample twice in one unit's reservoir
        assert top.index[unit].unique().numel() == top.n


def test_idle_rank_takes_part_with_empty_statistics(outdir: Path) -> None:
    for res in _load_ranks(outdir, "idle_rank"):
        assert res.num_samples == 1 and res.num_classes == 3 and res.meta["batches"] == 1
        top = res.layer("fc").top_relevance
        assert top is not None
        assert torch.equal(top.index[:, 0], torch.zeros(3, dtype=torch.int64))
        assert bool((top.index[:, 1:] == -1).all()) and bool(torch.isinf(top.values[:, 1:]).all())


def test_ranks_scanning_different_layers_all_raise(outdir: Path) -> None:
    for rank in range(WORLD):
        message = (outdir / f"different_layers.rank{rank}.txt").read_text()
        assert message.startswith("IncompatibleResultsError: "), message
        assert "layers" in message and "conv1" in message
    message = (outdir / "different_layers.rank0.txt").read_text()
    assert "rank 0 vs rank 1" in message and "conv2" in message


def test_every_rank_names_both_sides_of_the_disagreement(outdir: Path) -> None:
    for rank in range(WORLD):
        message = (outdir / f"different_layers.rank{rank}.txt").read_text()
        assert "conv1" in message and "conv2" in message, (rank, message)
        assert "rank 0 vs rank 0" not in message, (rank, message)


def test_a_failure_on_one_rank_stops_the_others(outdir: Path) -> None:
    failed = (outdir / "one_rank_fails.rank1.txt").read_text()
    assert failed.startswith("InvalidTargetError: ") and "label 7" in failed
    waiting = (outdir / "one_rank_fails.rank0.txt").read_text()
    # a DistributedError (a RuntimeError and a NeuronSplitError), not a hang
    assert waiting.startswith("DistributedError: ") and "another process" in waiting


def test_plans_are_byte_identical_across_ranks_and_one_process(
    outdir: Path, script: ModuleType, tmp_path: Path
) -> None:
    """Each process scanned its shard; the plan built from the reduced scan (rho scored on the
    full loader) is the 1-process plan, byte for byte. The 1-process run uses one thread, as
    each torchrun process does, so the number of processes is the only difference."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        script.plan_from(script.run_case(script.PLAN_CASE, reference=True), tmp_path / "plan.json")
    finally:
        torch.set_num_threads(threads)
    assert ns.SplitPlan.load(tmp_path / "plan.json").meta["units"], "nothing was planned"
    for rank in range(WORLD):
        for name in ("plan.json", "plan.safetensors"):
            got = (outdir / f"plan.rank{rank}" / name).read_bytes()
            assert got == (tmp_path / name).read_bytes(), (rank, name)


def test_images_without_positive_relevance_are_counted_over_processes(
    outdir: Path, script: ModuleType
) -> None:
    reference = script.run_case("uneven", reference=True)
    assert reference.no_positive_relevance("fc").sum() > 0  # negative target logits
    for res in _load_ranks(outdir, "uneven"):
        assert torch.equal(res.no_positive_relevance("fc"), reference.no_positive_relevance("fc"))


def test_launch_time_is_modest(outdir: Path) -> None:
    assert float((outdir / "elapsed.txt").read_text()) < 90
