"""The images a report shows, read from the loader the split was evaluated on.

:func:`~neuronsplit.evaluate` names images by their position in the loader's order
(``top_indices``). :func:`gather` fetches those positions: straight from the dataset of a
``DataLoader`` that does not shuffle, else by one more pass over the loader that keeps only the
wanted images and stops after the last one. :func:`first_images` keeps the first few images and
labels, the batch the density plots, steering curves and heatmaps are drawn on.

Examples
--------
>>> x = torch.arange(10.0).reshape(10, 1)
>>> loader = [(x[:4], torch.zeros(4)), (x[4:], torch.ones(6))]
>>> gathered = gather(loader, [1, 7])
>>> len(gathered), float(gathered[7][0])
(10, 7.0)
>>> imgs, labels = first_images(loader, 5)
>>> tuple(imgs.shape), labels.tolist()
((5, 1), [0.0, 0.0, 0.0, 0.0, 1.0])
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, SequentialSampler

from ..errors import InputShapeError, InvalidArgumentError
from ..stats.batches import split_batch

__all__ = ["Gathered", "gather", "first_images", "sequential_dataset", "check_loader"]


class Gathered(Mapping[int, Tensor]):
    """Images by loader position; ``len`` is the number of images the loader gives, so that
    :func:`~neuronsplit.plots.image_grid` accepts every position it was asked for."""

    def __init__(self, images: dict[int, Tensor], total: int) -> None:
        self._images, self._total = images, total

    def __getitem__(self, index: int) -> Tensor:
        return self._images[int(index)]

    def __iter__(self) -> Iterator[int]:
        return iter(self._images)

    def __len__(self) -> int:
        return self._total


def sequential_dataset(loader: Any) -> Any | None:
    """The dataset of a ``DataLoader`` that reads it in order, else None."""
    if not isinstance(loader, DataLoader) or not isinstance(loader.sampler, SequentialSampler):
        return None
    return loader.dataset


def check_loader(loader: Any) -> None:
    """Refuse a loader that cannot give the same images in the same order twice.

    The report reads the loader more than once (the evaluation, then the images it names by
    position), so a one-shot iterator would be exhausted and a shuffling ``DataLoader`` would
    show other images than the ones measured.

    Examples
    --------
    >>> check_loader(iter([torch.zeros(2, 3)]))
    Traceback (most recent call last):
    ...
    neuronsplit.errors.InvalidArgumentError: loader is a one-shot iterator (list_iterator) ...
    """
    if iter(loader) is loader:
        raise InvalidArgumentError(
            f"loader is a one-shot iterator ({type(loader).__name__}) and the report reads it "
            "more than once; pass a DataLoader (shuffle=False) or a list of batches"
        )
    if isinstance(loader, DataLoader) and not isinstance(loader.sampler, SequentialSampler):
        raise InvalidArgumentError(
            f"the DataLoader draws its images with a {type(loader.sampler).__name__}, so a "
            "second pass would not give the images the evaluation measured; pass "
            "shuffle=False (a SequentialSampler)"
        )


def _image(item: Any) -> Tensor:
    image = item[0] if isinstance(item, (tuple, list)) else item
    return torch.as_tensor(image)


def gather(loader: Iterable[Any], indices: Iterable[int], total: int | None = None) -> Gathered:
    """The images at ``indices`` (positions in the loader's order) of ``loader``.

    Parameters
    ----------
    loader : iterable
        Batches of inputs or ``(inputs, labels, ...)``, in the order they were evaluated.
    indices : iterable of int
        Positions to fetch.
    total : int, optional
        Images in the loader (default: counted by the pass, or the dataset's length).

    Returns
    -------
    Gathered
        ``{position: image}`` (on the CPU), whose ``len`` is ``total``.
    """
    wanted = sorted({int(i) for i in indices})
    dataset = sequential_dataset(loader)
    if dataset is not None:
        found = {i: _image(dataset[i]).detach().cpu() for i in wanted}
        return Gathered(found, total if total is not None else len(dataset))
    found, offset = {}, 0
    todo = set(wanted)
    for batch in loader:
        x, _ = split_batch(batch)
        for i in [i for i in todo if offset <= i < offset + x.shape[0]]:
            found[i] = x[i - offset].detach().cpu()
            todo.discard(i)
        offset += x.shape[0]
        if not todo and total is not None:
            break  # every image found; the rest of the pass is not needed
    return Gathered(found, total if total is not None else offset)


def first_images(loader: Iterable[Any], n: int) -> tuple[Tensor, Tensor | None]:
    """The first ``n`` images of ``loader`` (fewer if it has fewer) and their labels.

    Raises
    ------
    InputShapeError
        The loader yields no image (checked before anything is written).
    """
    xs: list[Tensor] = []
    ys: list[Tensor] = []
    have = 0
    for batch in loader:
        x, y = split_batch(batch)
        if not x.shape[0]:
            continue
        xs.append(x[: n - have].detach().cpu())
        if y is not None:
            ys.append(torch.as_tensor(y)[: n - have].detach().cpu())
        have += xs[-1].shape[0]
        if have >= n:
            break
    if not have:
        raise InputShapeError(
            "the loader yielded no images, so there is nothing to report on; pass a loader over "
            "at least one batch of images (with labels for the label measures)"
        )
    labels = torch.cat(ys) if len(ys) == len(xs) else None
    return torch.cat(xs), labels
