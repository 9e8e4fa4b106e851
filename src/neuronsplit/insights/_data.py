"""The fixed batch shown by Insights: drawn once (seeded) or chosen, then shown on every Fetch.

Private module of :mod:`neuronsplit.insights`. Insights asks its dataset for a new batch on
every Fetch; to compare one image across a unit, its subunits and Captum's methods the
visualizer must see the *same* images every time, so :func:`fixed_batch` draws them once --
``batch_size`` samples picked by a seeded generator, or the user's ``indices`` -- and the
visualizer repeats that one batch.

A dataset whose transform ends in ``torchvision.transforms.Normalize`` (as
:func:`neuronsplit.image_folder_loader` builds for a timm model) would show normalised,
unviewable images; its normalisation is moved to the Insights feature's input transforms
(applied before the model, not to the picture).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .._checks import check_int
from ..errors import ArgumentTypeError, InvalidArgumentError, InvalidTargetError

__all__ = ["FixedBatch", "fixed_batch"]


@dataclass
class FixedBatch:
    """The images shown, their labels, where they come from and what the model needs first."""

    images: Tensor
    labels: Tensor
    indices: tuple[int, ...]
    input_transforms: list[Callable[[Tensor], Tensor]] = field(default_factory=list)
    classes: list[str] | None = None  # the dataset's class names, if it has them


def _split_normalize(dataset: Any) -> tuple[Any, list[Callable[[Tensor], Tensor]]]:
    """A shallow copy of ``dataset`` without its final ``Normalize``, and that ``Normalize``."""
    transform = getattr(dataset, "transform", None)
    steps = getattr(transform, "transforms", None)
    if not steps:
        return dataset, []
    try:
        from torchvision.transforms import Compose, Normalize
    except ImportError:  # pragma: no cover - torchvision made the transform
        return dataset, []
    if not isinstance(transform, Compose) or not isinstance(steps[-1], Normalize):
        return dataset, []
    shown = copy.copy(dataset)  # the user's dataset keeps its transform
    shown.transform = Compose(list(steps[:-1]))
    if getattr(shown, "transforms", None) is not None and hasattr(shown, "target_transform"):
        from torchvision.datasets.vision import StandardTransform

        shown.transforms = StandardTransform(shown.transform, shown.target_transform)
    return shown, [steps[-1]]


def _pick(n: int, indices: Sequence[int] | None, batch_size: int, seed: int) -> list[int]:
    if n == 0:
        raise InvalidArgumentError("the data hold no images; give a dataset with at least one")
    if indices is None:
        generator = torch.Generator().manual_seed(int(seed))
        drawn = torch.randperm(n, generator=generator)[: min(batch_size, n)]
        return sorted(int(i) for i in drawn)
    picked = [check_int(i, "indices[...]") for i in indices]
    if not picked:
        raise InvalidArgumentError("indices is empty; give at least one image index or None")
    bad = [i for i in picked if not 0 <= i < n]
    if bad:
        raise InvalidArgumentError(
            f"image index {bad[0]} is out of range for {n} images (0..{n - 1}); pick indices "
            "in that range"
        )
    return picked


def _as_label(value: Any, index: int) -> int:
    if isinstance(value, Tensor) and value.numel() == 1 and not value.is_floating_point():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise InvalidTargetError(
        f"sample {index} of the data has label {value!r}; Insights needs an integer class "
        "label per image (a dataset of (image, label) pairs)"
    )


def fixed_batch(
    data: Any,
    images: Tensor | None,
    labels: Tensor | None,
    *,
    indices: Sequence[int] | None,
    batch_size: int,
    seed: int,
) -> FixedBatch:
    """Draw (or pick) the batch once: from ``data`` (Dataset or DataLoader) or from tensors."""
    check_int(batch_size, "batch_size", low=1)
    check_int(seed, "seed")
    if data is not None:
        if images is not None or labels is not None:
            raise InvalidArgumentError("give data= or images= and labels=, not both")
        dataset = getattr(data, "dataset", data)  # a DataLoader: its map-style dataset
        if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
            raise ArgumentTypeError(
                f"data must be a map-style Dataset (or a DataLoader over one) of (image, label) "
                f"pairs, got {type(data).__name__}"
            )
        shown, transforms = _split_normalize(dataset)
        picked = _pick(len(dataset), indices, batch_size, seed)
        samples = [shown[i] for i in picked]
        for i, sample in zip(picked, samples, strict=True):
            if not (isinstance(sample, (tuple, list)) and len(sample) >= 2):
                raise InvalidTargetError(
                    f"sample {i} of the data is not an (image, label) pair; Insights needs a "
                    "label for every image"
                )
            if not isinstance(sample[0], Tensor):
                raise ArgumentTypeError(
                    f"sample {i} of the data is a {type(sample[0]).__name__}, not a tensor; "
                    "give the dataset a transform that makes tensors (torchvision ToTensor)"
                )
        stacked = torch.stack([s[0] for s in samples])
        targets = torch.tensor([_as_label(s[1], i) for i, s in zip(picked, samples, strict=True)])
        classes = getattr(dataset, "classes", None)
        return FixedBatch(stacked, targets, tuple(picked), transforms,
                          list(map(str, classes)) if classes else None)  # fmt: skip
    if images is None:
        raise InvalidArgumentError("no data: give data= or images= and labels=")
    if labels is None:
        raise InvalidTargetError(
            "Captum Insights needs a label for every image (it skips unlabelled samples and then "
            "loops forever waiting for four); pass labels="
        )
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or len(labels) != len(images) or labels.is_floating_point():
        raise InvalidTargetError(
            f"labels must be an integer tensor of shape ({len(images)},), got dtype "
            f"{labels.dtype} and shape {tuple(labels.shape)}"
        )
    picked = _pick(len(labels), indices, batch_size, seed)
    return FixedBatch(images[picked], labels[picked], tuple(picked))
