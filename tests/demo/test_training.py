"""Training the demo models: progress bars, one thread, the caller's settings left alone."""

from __future__ import annotations

import pytest
import torch
from threadpoolctl import threadpool_info

from neuronsplit.demo import train_demo_model, train_demo_vit
from neuronsplit.demo._threads import DEMO_THREADS, demo_threads
from neuronsplit.errors import ArgumentTypeError


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_demo_threads_sets_one_thread_and_restores_the_callers() -> None:
    assert DEMO_THREADS == 1
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    # read after the caller's own setting: torch's pool is one of them (with OMP_NUM_THREADS=1
    # in the environment the reading before the set_num_threads(2) differed from it)
    pools = [p["num_threads"] for p in threadpool_info()]
    try:
        with pytest.raises(RuntimeError, match="inside"):
            with demo_threads():
                assert torch.get_num_threads() == 1
                assert all(p["num_threads"] == 1 for p in threadpool_info())
                raise RuntimeError("inside")
        assert torch.get_num_threads() == 2  # restored, also after an error
        assert [p["num_threads"] for p in threadpool_info()] == pools
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("train", "desc"),
    [(train_demo_model, "training the demo CNN"), (train_demo_vit, "training the demo ViT")],
)
def test_training_shows_a_progress_bar_over_epochs(capsys, train, desc: str) -> None:
    train(epochs=2, progress=True)
    err = capsys.readouterr().err
    assert desc in err and "2/2" in err and "epoch" in err
    train(epochs=1)  # quiet by default
    assert capsys.readouterr() == ("", "")


def test_cnn_training_is_deterministic_and_leaves_the_caller_alone() -> None:
    threads, state = torch.get_num_threads(), torch.get_rng_state()
    a, b, c = (train_demo_model(epochs=2, seed=s) for s in (4, 4, 5))
    assert _same_weights(a.model, b.model) and a.test_accuracy == b.test_accuracy
    assert not _same_weights(a.model, c.model)
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is untouched
    assert not a.model.training and a.seconds > 0


def test_cnn_training_checks_progress() -> None:
    with pytest.raises(ArgumentTypeError, match="progress"):
        train_demo_model(epochs=1, progress="yes")  # type: ignore[arg-type]
