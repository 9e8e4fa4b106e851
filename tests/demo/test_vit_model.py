"""The demo ViT: accuracy, cache round trip, damaged cache rebuilt, deterministic by seed.

The full training (8-20 s) runs once per module, through ``get_demo_vit`` with a temporary
cache; the other tests train for one epoch or replace the trainer.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from neuronsplit.demo import DigitsViT, _background, get_demo_vit, load_digits, train_demo_vit
from neuronsplit.demo import vit as vit_module
from neuronsplit.errors import ArgumentTypeError, InvalidArgumentError

CACHE_NAME = "demo_digits_vit_v3.safetensors"


@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory) -> tuple[DigitsViT, Path]:
    cache = tmp_path_factory.mktemp("vit_cache")
    return get_demo_vit(cache), cache


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_accuracy_on_the_test_digits(cached: tuple[DigitsViT, Path]) -> None:
    model, _ = cached
    test = load_digits("test")
    assert len(test) == 397
    assert isinstance(model, VisionTransformer) and not model.training
    with torch.no_grad():
        accuracy = float((model(test.images).argmax(1) == test.labels).float().mean())
    assert accuracy >= 0.9


def test_cache_round_trip_is_bitwise(cached: tuple[DigitsViT, Path]) -> None:
    model, cache = cached
    assert (cache / CACHE_NAME).is_file()
    assert [p.name for p in cache.iterdir()] == [CACHE_NAME]  # no temporary file left
    again = get_demo_vit(cache)
    assert again is not model and _same_weights(again, model)
    again.blocks[0].attn.qkv.weight.data.zero_()  # a fresh instance: editing it changes nothing
    assert _same_weights(get_demo_vit(cache), model)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "other_tensors"])
def test_damaged_cache_is_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    quick = train_demo_vit(epochs=1, seed=3).model
    calls = []

    def fake_train(**kwargs: object) -> object:
        calls.append(kwargs)
        return vit_module.TrainResult(quick, 0.0, 0.0)

    monkeypatch.setattr(vit_module, "train_demo_vit", fake_train)
    path = tmp_path / CACHE_NAME
    if damage == "truncated":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in quick.state_dict().items()}, str(path))
        path.write_bytes(path.read_bytes()[:-100])
    elif damage == "garbage":
        path.write_bytes(b"not a safetensors file")
    else:
        from safetensors.torch import save_file

        save_file({"weight": torch.zeros(3)}, str(path))
    model = get_demo_vit(tmp_path)
    assert len(calls) == 1 and _same_weights(model, quick)
    assert _same_weights(get_demo_vit(tmp_path), quick)  # the rebuilt file is read back
    assert len(calls) == 1


def test_retrain_overwrites_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = (train_demo_vit(epochs=1, seed=s).model for s in (1, 2))
    models = iter([first, second])
    monkeypatch.setattr(
        vit_module, "train_demo_vit", lambda **_: vit_module.TrainResult(next(models), 0.0, 0.0)
    )
    assert _same_weights(get_demo_vit(tmp_path), first)
    assert _same_weights(get_demo_vit(tmp_path, retrain=True), second)
    assert _same_weights(get_demo_vit(tmp_path), second)


def test_training_is_deterministic_by_seed_and_restores_threads() -> None:
    threads = torch.get_num_threads()
    state = torch.get_rng_state()
    a, b, c = (train_demo_vit(epochs=1, seed=s) for s in (5, 5, 6))
    assert _same_weights(a.model, b.model) and a.test_accuracy == b.test_accuracy
    assert not _same_weights(a.model, c.model)
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is untouched
    assert not a.model.training and a.seconds > 0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"epochs": 0}, InvalidArgumentError, "epochs must be >= 1, got 0"),
        ({"epochs": 1.5}, ArgumentTypeError, "epochs must be an int"),
        ({"lr": 0.0}, InvalidArgumentError, r"lr must be in \(0, inf\)"),
        ({"weight_decay": -1.0}, InvalidArgumentError, r"weight_decay must be in \[0, inf\)"),
        ({"batch_size": 0}, InvalidArgumentError, "batch_size must be >= 1"),
        ({"seed": "0"}, ArgumentTypeError, "seed must be an int"),
    ],
)
def test_training_arguments_are_checked(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        train_demo_vit(**kwargs)


def test_get_demo_vit_checks_retrain(tmp_path: Path) -> None:
    with pytest.raises(ArgumentTypeError, match="retrain"):
        get_demo_vit(tmp_path, retrain="yes")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_training_restores_timms_attention_setting() -> None:
    model = train_demo_vit(epochs=1).model
    assert [b.attn.fused_attn for b in model.blocks] == [
        b.attn.fused_attn for b in DigitsViT().blocks
    ]


def test_background_training_gives_train_demo_vits_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ViT trained in a thread while this thread draws from torch's global generator."""
    monkeypatch.setattr(vit_module, "_EPOCHS", 1)
    with vit_module.demo_vit_in_background(tmp_path):
        torch.manual_seed(123)
        noise = torch.randn(10_000)  # what the demo's other half does meanwhile
        model = get_demo_vit(tmp_path)  # waits for the thread
        assert [p.name for p in tmp_path.iterdir()] == [CACHE_NAME]
    torch.manual_seed(123)
    assert torch.equal(noise, torch.randn(10_000))  # nor did the thread draw from it
    assert _same_weights(model, train_demo_vit(epochs=1).model)


def test_background_does_nothing_when_cached(cached: tuple[DigitsViT, Path]) -> None:
    model, cache = cached
    with vit_module.demo_vit_in_background(cache):
        assert not _background._PENDING  # no thread started
        assert _same_weights(get_demo_vit(cache), model)


def test_background_job_runs_in_its_own_process_where_fork_exists(tmp_path: Path) -> None:
    """A thread would share the interpreter lock with the demo's own Python work (the demo
    models are small enough for Python dispatch to dominate); a forked child does not."""
    import multiprocessing
    import os

    path = tmp_path / "pid.txt"
    with _background.in_background(path, lambda: path.write_text(str(os.getpid()))):
        _background.wait_for_background(path)
        assert not _background._PENDING  # the finished job is forgotten
    forks = "fork" in multiprocessing.get_all_start_methods()
    assert (int(path.read_text()) != os.getpid()) == forks


def test_a_failing_block_stops_the_forked_job(tmp_path: Path) -> None:
    """An error in the demo's other half must not wait for the ViT's training to finish."""
    import time

    if not _background.forks():
        pytest.skip("background jobs are threads here (no fork), which cannot be stopped")
    path = tmp_path / "late.txt"

    def slow() -> None:
        time.sleep(120)
        path.write_text("late")

    with pytest.raises(RuntimeError, match="CNN half failed"):
        with _background.in_background(path, slow):
            worker = _background._PENDING[path]
            raise RuntimeError("CNN half failed")
    assert not worker.is_alive() and worker.exitcode is not None and worker.exitcode < 0
    assert not path.exists() and not _background._PENDING


def test_failed_background_job_leaves_the_reader_to_train(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    quick = train_demo_vit(epochs=1, seed=3).model
    monkeypatch.setattr(
        vit_module, "train_demo_vit", lambda **_: vit_module.TrainResult(quick, 0.0, 0.0)
    )

    def fail() -> None:
        raise RuntimeError("out of memory")

    with _background.in_background(tmp_path / CACHE_NAME, fail):
        assert _same_weights(get_demo_vit(tmp_path), quick)  # no error: trained here instead
    assert (tmp_path / CACHE_NAME).is_file()


def test_a_second_background_request_joins_the_running_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``neuronsplit demo`` starts the ViT's training before importing the pipeline, and
    ``run_demo`` asks again: the second request must not train the model a second time."""
    monkeypatch.setattr(vit_module, "_EPOCHS", 1)
    with vit_module.demo_vit_in_background(tmp_path):
        path = tmp_path / CACHE_NAME
        assert _background.pending(path)
        first = _background._PENDING[path]
        with vit_module.demo_vit_in_background(tmp_path):
            assert _background._PENDING[path] is first  # no second job
        model = get_demo_vit(tmp_path)
        assert not _background.pending(path)
    assert _same_weights(model, train_demo_vit(epochs=1).model)


@pytest.mark.parametrize("fork", [True, False], ids=["forked", "in-process"])
def test_beside_returns_the_jobs_value_or_raises_its_error(
    fork: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    if fork and not _background.forks():
        pytest.skip("no fork here")
    monkeypatch.setattr(_background, "forks", lambda: fork)
    parent = os.getpid()
    handle = _background.beside(lambda: {"pid": os.getpid(), "value": [1, 2]})
    got = handle.result()
    assert got["value"] == [1, 2] and (got["pid"] != parent) == fork
    assert handle.result() == got  # the outcome is kept, not read from the pipe twice

    def fail() -> None:
        raise InvalidArgumentError("the checks failed")

    failed = _background.beside(fail)
    for _ in range(2):
        with pytest.raises(InvalidArgumentError, match="the checks failed") as info:
            failed.result()
        assert "Traceback" in "".join(info.value.__notes__)  # the child's traceback


def test_without_fork_beside_runs_the_job_before_returning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A thread would run the ViT's checks (hooks, eval mode) on the model the caller is
    building the report with at the same time."""
    monkeypatch.setattr(_background, "forks", lambda: False)
    ran: list[int] = []
    handle = _background.beside(lambda: ran.append(1))
    assert ran == [1]
    handle.result()
    assert ran == [1]


def test_beside_reports_a_child_that_dies_without_a_result() -> None:
    import os

    if not _background.forks():
        pytest.skip("no fork here")
    with pytest.raises(RuntimeError, match="without a result .exit code 3"):
        _background.beside(lambda: os._exit(3)).result()


def test_a_hung_beside_job_is_stopped_and_run_here() -> None:
    import os
    import time

    if not _background.forks():
        pytest.skip("no fork here")
    parent = os.getpid()

    def job() -> int:
        if os.getpid() != parent:
            time.sleep(60)  # the child hangs
        return os.getpid()

    handle = _background.beside(job)
    assert handle.result(timeout=0.5) == parent
    assert handle._process is not None and not handle._process.is_alive()


def test_cancel_stops_the_child() -> None:
    import time

    if not _background.forks():
        pytest.skip("no fork here")
    handle = _background.beside(lambda: time.sleep(60))
    handle.cancel()
    assert handle._process is not None and not handle._process.is_alive()


def test_ctrl_c_while_waiting_stops_the_child(monkeypatch: pytest.MonkeyPatch) -> None:
    """The child ignores SIGINT (the parent handles Ctrl+C): an interrupted wait must stop it
    instead of joining a child that goes on for the rest of its job."""
    import signal
    import time

    if not _background.forks():
        pytest.skip("no fork here")
    handle = _background.beside(lambda: time.sleep(60))

    def interrupted(timeout: float) -> bool:
        raise KeyboardInterrupt

    monkeypatch.setattr(handle._receive, "poll", interrupted)
    with pytest.raises(KeyboardInterrupt):
        handle.result()
    assert handle._process is not None and handle._process.exitcode == -signal.SIGTERM


def test_fork_only_starts_nothing_where_the_job_would_be_a_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command line starts the ViT before ``run_demo`` sets the thread count: only a
    forked job may start that early."""
    monkeypatch.setattr(_background, "forks", lambda: False)
    monkeypatch.setattr(vit_module, "forks", lambda: False)
    with vit_module.demo_vit_in_background(tmp_path, fork_only=True):
        assert not _background._PENDING
    assert not (tmp_path / CACHE_NAME).exists()
    with pytest.raises(ArgumentTypeError, match="fork_only"):
        vit_module.demo_vit_in_background(tmp_path, fork_only="yes")
