"""The demo model: a small CNN on scikit-learn's digits with a 6-unit bottleneck.

Ten classes must pass through the six units of ``fc2``, so each unit is shared by several
classes. An L1 penalty on the 64 activations feeding ``fc2`` makes those inputs class-specific,
which is what makes some ``fc2`` units polysemantic in Hesse et al.'s sense (different classes
drive the unit through different inputs). See DESIGN.md, "Demo model: what was measured".
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .._checks import check_bool
from .._files import atomic_write
from .._progress import progress_bar
from ._threads import demo_threads
from .data import load_digits

M = TypeVar("M", bound=nn.Module)

__all__ = ["DigitsNet", "TrainResult", "train_demo_model", "get_demo_model", "default_cache_dir"]

DEMO_LAYER = "fc2"
#: v2: 20 epochs on one thread (v1: 40 epochs on torch's default thread count, so its weights
#: depended on the machine's core count)
_CACHE_NAME = "demo_digits_v2.safetensors"


class DigitsNet(nn.Module):
    """Conv trunk -> Linear(512, 64) -> ReLU -> Linear(64, 6) -> ReLU -> Linear(6, 10).

    Examples
    --------
    >>> net = DigitsNet()
    >>> tuple(net(torch.zeros(2, 1, 8, 8)).shape)
    (2, 10)
    """

    def __init__(self, bottleneck: int = 6) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.act2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(512, 64)
        self.act3 = nn.ReLU()
        self.fc2 = nn.Linear(64, bottleneck)
        self.act4 = nn.ReLU()
        self.fc3 = nn.Linear(bottleneck, 10)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """The 64 post-ReLU activations that feed the bottleneck ``fc2``."""
        x = self.pool(self.act2(self.conv2(self.act1(self.conv1(x)))))
        return self.act3(self.fc1(self.flatten(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.act4(self.fc2(self.hidden(x))))


@dataclass(frozen=True)
class TrainResult:
    """A trained demo model with its test accuracy and training time in seconds."""

    model: DigitsNet
    test_accuracy: float
    seconds: float


def train_demo_model(
    *,
    epochs: int = 20,
    lr: float = 3e-3,
    l1: float = 0.05,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = False,
) -> TrainResult:
    """Train :class:`DigitsNet` on the digits training split (about 2-3 s on one core).

    Training runs on one torch thread (:func:`~neuronsplit.demo._threads.demo_threads`; the
    caller's thread settings and global random generator are restored afterwards), so the
    weights depend only on the arguments, not on the machine's core count or load.

    Parameters
    ----------
    epochs, lr, batch_size : int, float, int
        Adam schedule (20 epochs: test accuracy 0.985 for seed 0, the same three ``fc2``
        units split as with 40; 40 cost twice the time for no better demo).
    l1 : float
        Weight of the L1 penalty on the 64 activations feeding ``fc2``.
    seed : int
        Seeds initialisation and shuffling, so the result is reproducible.
    progress : bool, default False
        Show a progress bar over the epochs.

    Returns
    -------
    TrainResult
        The model in eval mode, its accuracy on the 397 test images, and the training time.
    """
    check_bool(progress, "progress")
    start = time.perf_counter()
    with demo_threads(), torch.random.fork_rng(devices=[]):
        generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        model = DigitsNet()
        train, test = load_digits("train"), load_digits("test")
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        n = len(train)
        model.train()
        batches = epoch_batches(n, batch_size, epochs, generator, "training the demo CNN", progress)
        for idx in batches:
            h = model.hidden(train.images[idx])
            logits = model.fc3(model.act4(model.fc2(h)))
            loss = F.cross_entropy(logits, train.labels[idx]) + l1 * h.abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        acc = digits_accuracy(model, test)
    return TrainResult(model, acc, time.perf_counter() - start)


def epoch_batches(
    n: int, batch_size: int, epochs: int, generator: torch.Generator, desc: str, progress: bool
) -> Iterator[Tensor]:
    """Index batches of ``epochs`` shuffled passes over ``n`` training images (a bar per epoch)."""
    for _ in progress_bar(range(epochs), desc=desc, unit="epoch", enabled=progress):
        order = torch.randperm(n, generator=generator)
        for i in range(0, n, batch_size):
            yield order[i : i + batch_size]


def digits_accuracy(model: nn.Module, test: Any) -> float:
    """Put ``model`` in eval mode and return its accuracy on the digits ``test`` split."""
    model.eval()
    with torch.no_grad():
        return (model(test.images).argmax(1) == test.labels).float().mean().item()


def default_cache_dir() -> Path:
    """``$NEURONSPLIT_CACHE`` if set, else ``~/.cache/neuronsplit``."""
    env = os.environ.get("NEURONSPLIT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "neuronsplit"


def get_demo_model(
    cache_dir: str | os.PathLike | None = None, *, retrain: bool = False, progress: bool = False
) -> DigitsNet:
    """Return the trained demo model, training and caching it on first use.

    Parameters
    ----------
    cache_dir : path-like, optional
        Where the weights are cached (default :func:`default_cache_dir`).
    retrain : bool
        Ignore the cache and train again.
    progress : bool, default False
        Show a progress bar while training (nothing is shown when the cache is read).

    Returns
    -------
    DigitsNet
        A fresh instance in eval mode (callers may modify it freely).

    Examples
    --------
    >>> model = get_demo_model()  # doctest: +SKIP
    """
    check_bool(retrain, "retrain")
    check_bool(progress, "progress")
    model = DigitsNet()
    path = Path(cache_dir or default_cache_dir()) / _CACHE_NAME
    return cached_weights(
        model, path, lambda: train_demo_model(progress=progress).model, retrain=retrain
    )


def cached_weights(
    model: M, path: Path, train: Callable[[], nn.Module], *, retrain: bool = False
) -> M:
    """Load ``model``'s weights from the safetensors file ``path``, training them on a miss.

    A file that cannot be read (truncated, other tensors) is never trusted: ``train()`` runs
    again and the file is rewritten atomically, so parallel processes (test workers) never read
    a half-written file. Returns ``model`` in eval mode.
    """
    from safetensors.torch import load_file, save_file

    if path.exists() and not retrain:
        try:
            model.load_state_dict(load_file(str(path)))
            return model.eval()
        except Exception:  # a damaged cache is rebuilt, never trusted
            path.unlink(missing_ok=True)
    state = {k: v.contiguous() for k, v in train().state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: save_file(state, str(tmp)))
    model.load_state_dict(state)
    return model.eval()
