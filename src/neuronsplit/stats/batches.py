"""Reading the user's batches: inputs, labels and the target class of every sample."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..errors import InputShapeError, InvalidTargetError

__all__ = ["split_batch", "targets_of"]


def split_batch(batch: Any) -> tuple[Tensor, Tensor | None]:
    """``(inputs, labels or None)`` of a batch that is a tensor or an ``(inputs, labels, ...)`` pair.

    Raises
    ------
    InputShapeError
        For anything else, with the expected form.
    """
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        labels = batch[1] if len(batch) > 1 else None
        if labels is not None and not isinstance(labels, Tensor):
            labels = torch.as_tensor(labels)
        return batch[0], labels
    raise InputShapeError(
        f"the loader must yield tensors or (inputs, labels) pairs, got {type(batch).__name__}; "
        "wrap your dataset so that it returns (image_tensor, int_label)."
    )


def targets_of(
    logits: Tensor, labels: Tensor | None, target: str, num_classes: int, batch: int
) -> Tensor:
    """The class each sample is explained for (and counted under): its label or the prediction.

    Raises
    ------
    InvalidTargetError
        Missing, one-hot, non-integer or out-of-range labels, naming the batch and the value.
    """
    if target == "prediction":
        return logits.detach()[:, :num_classes].argmax(1)
    if labels is None:
        raise InvalidTargetError(
            "the loader yields no labels but target='label'; yield (inputs, labels) pairs or "
            "pass target='prediction'."
        )
    labels = labels.to(logits.device)
    if labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
        raise InvalidTargetError(
            f"labels of batch {batch} have shape {tuple(labels.shape)}; expected "
            f"({logits.shape[0]},) integer class indices (not one-hot)."
        )
    if labels.is_floating_point() and not torch.equal(labels, labels.round()):
        raise InvalidTargetError(f"labels of batch {batch} are not integers: {labels.tolist()[:5]}")
    labels = labels.long()
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.numel():
        raise InvalidTargetError(
            f"label {int(bad[0])} in batch {batch} is outside [0, {num_classes}); pass the right "
            "num_classes or remap the labels."
        )
    return labels
