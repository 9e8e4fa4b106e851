"""Feature anchoring (Tang et al. §4): pull the first ``k`` latents toward known directions.

``L_anchor = ||W_E[:k] - A_p||_F^2 + ||W_D[:, :k] - A_r||_F^2``, added to any SDL loss with a
weight ``lambda`` (a soft penalty, not a freeze). Anchors come from the ground truth on the
LRB (:func:`gt_anchors`: ``k`` random GT columns, which the metrics then leave out) or from
labelled data (:func:`class_mean_anchors`: normalised class means of the representations).

Examples
--------
>>> a = Anchors(torch.eye(3)[:2], torch.eye(3)[:, :2], weight=0.1)
>>> a.k
2
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from .._checks import check_int, check_number
from ..errors import EmptyClassError, InvalidArgumentError
from .bench import LinearRepresentationBench
from .models import SparseAutoencoder

__all__ = ["Anchors", "gt_anchors", "class_mean_anchors", "anchor_loss"]


@dataclass(frozen=True)
class Anchors:
    """Anchor directions for the first ``k`` latents.

    Attributes
    ----------
    encoder : Tensor
        ``(k, n_in)``: targets of the first ``k`` encoder rows.
    decoder : Tensor
        ``(n_out, k)``: targets of the first ``k`` decoder columns.
    weight : float
        ``lambda_anchor``.
    features : Tensor or None
        The GT feature index of each anchor (LRB anchors), for the metrics to leave out.
    """

    encoder: Tensor
    decoder: Tensor
    weight: float = 0.1
    features: Tensor | None = None

    def __post_init__(self) -> None:
        check_number(self.weight, "anchor weight", low=0)
        if self.encoder.dim() != 2 or self.decoder.dim() != 2:
            raise InvalidArgumentError("anchor encoder must be (k, n_in) and decoder (n_out, k)")
        if self.encoder.shape[0] != self.decoder.shape[1]:
            raise InvalidArgumentError(
                f"{self.encoder.shape[0]} encoder anchors but {self.decoder.shape[1]} decoder "
                "anchors; give one of each per anchored latent"
            )

    @property
    def k(self) -> int:
        """Number of anchored latents."""
        return int(self.encoder.shape[0])


def gt_anchors(
    bench: LinearRepresentationBench, k: int = 100, *, weight: float = 0.1, seed: int = 0,
    target: str = "p",
) -> Anchors:  # fmt: skip
    """``k`` random GT features of an LRB as anchors (eq. 22; defaults k = 100, lambda = 0.1).

    ``target="p"`` anchors the decoder to ``W_p`` (an SAE), ``"r"`` to ``W_r`` (a transcoder).

    Examples
    --------
    >>> from neuronsplit.sdl.bench import make_bench
    >>> a = gt_anchors(make_bench(30, 24, 0.9, 0.4), k=5)
    >>> a.encoder.shape, a.decoder.shape, a.features.shape
    (torch.Size([5, 24]), torch.Size([24, 5]), torch.Size([5]))
    """
    k = check_int(k, "k", low=1)
    if k > bench.n:
        raise InvalidArgumentError(
            f"k={k} anchors but the bench has only n={bench.n} GT features; use k <= {bench.n}"
        )
    if target not in ("p", "r"):
        raise InvalidArgumentError(f"target must be 'p' or 'r'; got {target!r}")
    idx = torch.randperm(bench.n, generator=torch.Generator().manual_seed(seed))[:k].sort().values
    dec = bench.w_r if target == "r" else bench.w_p
    return Anchors(
        bench.w_p[:, idx].T.float().contiguous(), dec[:, idx].float().contiguous(), weight, idx
    )  # fmt: skip


def class_mean_anchors(
    activations: Tensor, labels: Tensor, *, classes: int | None = None, weight: float = 1.0
) -> Anchors:
    """Normalised class means of ``activations`` ``(N, d)`` as anchors (eqs. 23-24).

    The decoder anchors equal the encoder anchors (an SAE, ``x_r = x_p``); default weight 1.0
    as in the paper's CLIP experiment.

    Examples
    --------
    >>> acts = torch.tensor([[2.0, 0.0], [4.0, 0.0], [0.0, 3.0]])
    >>> class_mean_anchors(acts, torch.tensor([0, 0, 1])).encoder
    tensor([[1., 0.],
            [0., 1.]])
    """
    if activations.dim() != 2 or labels.shape != activations.shape[:1]:
        raise InvalidArgumentError(
            f"activations must be (N, d) and labels (N,); got {tuple(activations.shape)} and "
            f"{tuple(labels.shape)}"
        )
    labels = labels.long()
    classes = int(labels.max()) + 1 if classes is None else check_int(classes, "classes", low=1)
    counts = torch.bincount(labels, minlength=classes)
    if bool((counts == 0).any()):
        missing = int((counts == 0).nonzero()[0])
        raise EmptyClassError(f"class {missing} has no sample; its mean is undefined")
    sums = torch.zeros(classes, activations.shape[1], dtype=activations.dtype)
    sums.index_add_(0, labels, activations)
    means = F.normalize(sums / counts[:, None], dim=1).float()
    return Anchors(means, means.T.contiguous(), weight)


def anchor_loss(model: SparseAutoencoder, anchors: Anchors) -> Tensor:
    """``weight * (||W_E[:k] - A_p||^2 + ||W_D[:, :k] - A_r||^2)`` (eqs. 25-26).

    Examples
    --------
    >>> from neuronsplit.sdl.models import SparseAutoencoder
    >>> sae = SparseAutoencoder(3, 4, k=1, seed=0)
    >>> a = Anchors(sae.w_enc.detach()[:2].clone(), sae.w_dec.detach()[:, :2].clone(), 0.5)
    >>> float(anchor_loss(sae, a).detach())
    0.0
    """
    if anchors.k > model.n_latents:
        raise InvalidArgumentError(
            f"{anchors.k} anchors but the dictionary has only {model.n_latents} latents; use "
            f"at most {model.n_latents} anchors"
        )
    if anchors.encoder.shape[1] != model.w_enc.shape[1] or (
        anchors.decoder.shape[0] != model.w_dec.shape[0]
    ):
        raise InvalidArgumentError(
            f"anchors are {tuple(anchors.encoder.shape)} / {tuple(anchors.decoder.shape)} but "
            f"the model reads {model.w_enc.shape[1]} and writes {model.w_dec.shape[0]} dimensions"
        )
    k = anchors.k
    enc = anchors.encoder.to(model.w_enc)
    dec = anchors.decoder.to(model.w_dec)
    loss = (model.w_enc[:k] - enc).square().sum() + (model.w_dec[:, :k] - dec).square().sum()
    return anchors.weight * loss
