"""Splitting a scan over processes (``torchrun``) and bringing the statistics back together.

Sharding rule (documented in docs/distributed.md):

* A map-style ``DataLoader`` (a dataset with ``__len__``, the default batch sampler): the
  loader's sample order for one pass is taken once (``list(loader.sampler)``; 0..N-1 for the
  default sequential sampler; a shuffled order is drawn once, on process 0, and sent to the
  others), cut to ``max_batches`` batches (and to whole batches with ``drop_last``), and
  process ``r`` of ``W`` takes the positions ``r, r + W, r + 2W, ...`` -- every sample exactly
  once, no padding (unlike
  ``DistributedSampler``, which repeats samples to even out the shards). A loader whose sampler
  is already a ``DistributedSampler`` is taken as sharded by the user and used as it is.
  Sample indices are the dataset indices.
* Any other iterable (an ``IterableDataset``, a custom batch sampler, a generator): every
  process iterates the whole stream and process ``r`` keeps batches ``r, r + W, ...``; sample
  indices are positions in the stream.

A process that gets no batch still takes part in every collective, with empty statistics.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    IterableDataset,
    SequentialSampler,
)

from ..errors import DistributedError, IncompatibleResultsError, InputShapeError

__all__ = [
    "Shard",
    "current_shard",
    "sharded_batches",
    "batch_size_of",
    "collective_device",
    "require_process_group",
    "sync_failure",
    "check_same_everywhere",
    "max_over_ranks",
]


@dataclass(frozen=True)
class Shard:
    """This process's place in the scan: ``rank`` of ``world``, and the process group."""

    rank: int = 0
    world: int = 1
    group: Any = None


def require_process_group() -> None:
    """Raise unless ``torch.distributed`` is initialised."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise DistributedError(
            "all_reduce needs an initialised torch.distributed process group; call "
            "torch.distributed.init_process_group first (torchrun sets up the environment), or "
            "merge() results by hand."
        )


def current_shard(group: Any = None) -> Shard:
    """The shard of this process: ``Shard()`` unless ``torch.distributed`` is initialised."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        return Shard()
    return Shard(dist.get_rank(group), dist.get_world_size(group), group)


def collective_device(group: Any = None) -> torch.device:
    """Where tensors must live for collectives of ``group``: CUDA for NCCL, else the CPU."""
    import torch.distributed as dist

    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def batch_size_of(batch: Any) -> int:
    """Number of samples in a batch (its first tensor's first dimension)."""
    first = batch
    while isinstance(first, (tuple, list)) and first:
        first = first[0]
    if isinstance(first, torch.Tensor) and first.dim() > 0:
        return int(first.shape[0])
    raise InputShapeError(
        f"cannot tell the batch size of a {type(batch).__name__}; the loader must yield "
        "tensors or (inputs, labels) pairs"
    )


def _is_map_style(loader: Any) -> bool:
    return (
        isinstance(loader, DataLoader)
        and not isinstance(loader.dataset, IterableDataset)
        and type(loader.batch_sampler) is BatchSampler
        and loader.batch_size is not None
    )


def _rebuilt(loader: DataLoader, indices: list[int]) -> DataLoader:
    """The same loader over an explicit list of dataset indices."""
    extra: dict[str, Any] = {}
    if loader.num_workers > 0:
        extra = {
            "prefetch_factor": loader.prefetch_factor,
            "persistent_workers": loader.persistent_workers,
            "multiprocessing_context": loader.multiprocessing_context,
            "worker_init_fn": loader.worker_init_fn,
        }
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=indices,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        timeout=loader.timeout,
        **extra,
    )


def _sample_order(loader: DataLoader, shard: Shard) -> list[int]:
    """The loader's sample order for one pass, the same on every process.

    A shuffling sampler draws its own order in each process (seeds may differ), so under
    ``torch.distributed`` the order of rank 0 is broadcast; a sequential order needs no message.
    """
    import torch.distributed as dist

    if shard.world == 1 or isinstance(loader.sampler, SequentialSampler):
        return [int(i) for i in loader.sampler]
    box: list[Any] = [[int(i) for i in loader.sampler] if shard.rank == 0 else None]
    src = 0 if shard.group is None else dist.get_global_rank(shard.group, 0)
    dist.broadcast_object_list(box, src=src, group=shard.group)
    return list(box[0])


def sharded_batches(
    loader: Iterable[Any], shard: Shard, max_batches: int | None = None, offset: int = 0
) -> tuple[Iterator[tuple[Any, torch.Tensor]], int | None]:
    """This process's batches with the sample index of each sample, and how many there are.

    Returns
    -------
    (iterator, total)
        The iterator yields ``(batch, indices)`` (``indices`` an int64 tensor, ``+ offset``);
        ``total`` is the number of batches this process gets, or ``None`` when unknown.
    """
    if _is_map_style(loader) and not isinstance(loader.sampler, DistributedSampler):
        order = _sample_order(loader, shard)
        size = int(loader.batch_size)
        if max_batches is not None:
            order = order[: max_batches * size]
        if loader.drop_last:  # drop the last incomplete batch of the *whole* pass
            order = order[: len(order) // size * size]
        mine = order[shard.rank :: shard.world]
        local = _rebuilt(loader, mine)
        n_batches = -(-len(mine) // size)

        def indexed() -> Iterator[tuple[Any, torch.Tensor]]:
            for b, batch in enumerate(local):
                chunk = mine[b * size : (b + 1) * size]
                yield batch, torch.tensor(chunk, dtype=torch.int64) + offset

        return indexed(), n_batches
    if _is_map_style(loader):  # already sharded by the user's DistributedSampler
        order = [int(i) for i in loader.sampler]
        size = int(loader.batch_size)

        def user_sharded() -> Iterator[tuple[Any, torch.Tensor]]:
            for b, batch in enumerate(loader):
                if max_batches is not None and b >= max_batches:
                    return
                yield (
                    batch,
                    torch.tensor(order[b * size : (b + 1) * size], dtype=torch.int64) + offset,
                )

        total = len(loader) if max_batches is None else min(len(loader), max_batches)
        return user_sharded(), total

    def streamed() -> Iterator[tuple[Any, torch.Tensor]]:
        position = offset
        for b, batch in enumerate(loader):
            if max_batches is not None and b >= max_batches:
                return
            n = batch_size_of(batch)
            if b % shard.world == shard.rank:
                yield batch, torch.arange(position, position + n, dtype=torch.int64)
            position += n

    total = None
    if hasattr(loader, "__len__") and shard.world == 1:
        try:
            total = len(loader)  # type: ignore[arg-type]
        except TypeError:
            total = None
        if total is not None and max_batches is not None:
            total = min(total, max_batches)
    return streamed(), total


def sync_failure(shard: Shard, failed: bool, device: torch.device) -> None:
    """Tell every process whether this one failed; raise on the healthy ones if any did.

    Called once by every process after its scan loop (or from its error handler), so that a
    failure on one process never leaves the others waiting in a later collective.

    Parameters
    ----------
    shard : Shard
        This process and its group.
    failed : bool
        Whether this process failed.
    device : torch.device
        Where the backend's collectives run.

    Raises
    ------
    RuntimeError
        On a healthy process when another one failed.
    """
    import torch.distributed as dist

    flag = torch.tensor([1 if failed else 0], dtype=torch.int64, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=shard.group)
    if int(flag.item()) and not failed:
        raise DistributedError(
            "the scan failed on another process (see its traceback); this process stops too"
        )


def max_over_ranks(shard: Shard, value: int, device: torch.device) -> tuple[int, int]:
    """``(max, min)`` of an integer over all processes.

    Parameters
    ----------
    shard : Shard
        This process and its group.
    value : int
        This process's value; a negative value means "unknown" and is left out of the minimum.
    device : torch.device
        Where the backend's collectives run.

    Returns
    -------
    (int, int)
    """
    import torch.distributed as dist

    hi = torch.tensor([value], dtype=torch.int64, device=device)
    lo = torch.tensor([value if value >= 0 else 2**62], dtype=torch.int64, device=device)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX, group=shard.group)
    dist.all_reduce(lo, op=dist.ReduceOp.MIN, group=shard.group)
    return int(hi.item()), int(lo.item())


def check_same_everywhere(shard: Shard, signature: dict[str, Any]) -> None:
    """Raise :class:`IncompatibleResultsError` on every process unless all signatures agree."""
    import torch.distributed as dist

    gathered: list[Any] = [None] * shard.world
    dist.all_gather_object(gathered, signature, group=shard.group)
    for rank, other in enumerate(gathered):
        diff = sorted(k for k in signature if other.get(k) != signature.get(k))
        if diff:
            detail = "; ".join(f"{k}: {signature.get(k)!r} vs {other.get(k)!r}" for k in diff)
            raise IncompatibleResultsError(
                f"scan processes disagree (this rank {shard.rank} vs rank {rank}): {detail}; "
                "every process must scan the same model, layers and classes"
            )
