"""Embedded data: scikit-learn's bundled handwritten digits (no download needed).

1797 greyscale 8x8 images of the digits 0-9, scaled to [0, 1]. The split into 1400 training and
397 test images is fixed (seeded), so every run of the demo sees the same data.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from ..errors import InvalidArgumentError

__all__ = ["DigitsData", "load_digits", "digits_loader", "DIGIT_CLASSES"]

DIGIT_CLASSES: tuple[str, ...] = tuple(str(d) for d in range(10))
_N_TRAIN = 1400
_SPLIT_SEED = 0


@dataclass(frozen=True)
class DigitsData:
    """Images ``(N, 1, 8, 8)`` float32 in [0, 1] and labels ``(N,)`` int64."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@functools.cache
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 digits as ``(pixels (1797, 64), labels (1797,))``, read once per process.

    Read straight from the CSV file scikit-learn ships (what ``sklearn.datasets.load_digits``
    reads): importing ``sklearn.datasets`` costs about a second of the demo's start-up.
    """
    spec = importlib.util.find_spec("sklearn")
    roots = spec.submodule_search_locations if spec is not None else None
    path = Path(roots[0], "datasets", "data", "digits.csv.gz") if roots else None
    if path is None or not path.is_file():  # another layout: ask scikit-learn
        from sklearn.datasets import load_digits as sk_load_digits

        bunch = sk_load_digits()
        data = np.column_stack([bunch.data, bunch.target])
    else:
        with gzip.open(path, mode="rt", encoding="utf-8") as f:
            data = np.loadtxt(f, delimiter=",")
    data.setflags(write=False)
    return data[:, :-1], data[:, -1]


def load_digits(split: str = "train") -> DigitsData:
    """Return the train (1400) or test (397) part of scikit-learn's digits.

    Parameters
    ----------
    split : {"train", "test", "all"}
        Which part to return.

    Returns
    -------
    DigitsData
        Images scaled to [0, 1] with shape ``(N, 1, 8, 8)`` and integer labels.

    Examples
    --------
    >>> d = load_digits("test")
    >>> tuple(d.images.shape), int(d.labels.max())
    ((397, 1, 8, 8), 9)
    """
    if split not in ("train", "test", "all"):
        raise InvalidArgumentError(f"split must be 'train', 'test' or 'all', got {split!r}")
    pixels, target = _digits_arrays()
    images = torch.from_numpy(pixels.reshape(-1, 8, 8).astype(np.float32) / 16.0).unsqueeze(1)
    labels = torch.from_numpy(target.astype(np.int64))
    order = torch.from_numpy(np.random.default_rng(_SPLIT_SEED).permutation(len(labels)))
    images, labels = images[order], labels[order]
    if split == "train":
        images, labels = images[:_N_TRAIN], labels[:_N_TRAIN]
    elif split == "test":
        images, labels = images[_N_TRAIN:], labels[_N_TRAIN:]
    return DigitsData(images.contiguous(), labels.contiguous())


def digits_loader(split: str = "train", batch_size: int = 128, shuffle: bool = False) -> DataLoader:
    """A ``DataLoader`` of ``(image, label)`` batches over :func:`load_digits`.

    Examples
    --------
    >>> x, y = next(iter(digits_loader("test", batch_size=4)))
    >>> tuple(x.shape), tuple(y.shape)
    ((4, 1, 8, 8), (4,))
    """
    data = load_digits(split)
    generator = torch.Generator().manual_seed(_SPLIT_SEED) if shuffle else None
    return DataLoader(
        TensorDataset(data.images, data.labels),
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
    )
