"""Sparse dictionaries: ReLU, JumpReLU, TopK and BatchTopK SAEs and transcoders.

One module, :class:`SparseAutoencoder`, covers the family of Tang et al. §2.3: ``x_q =
sigma(W_E x_p + b_E)`` and ``x_hat_r = W_D x_q + b_D``, with an activation ``sigma`` whose every
output is either 0 or its input (``relu``, ``jumprelu``, ``topk``, ``batchtopk``). A
:class:`Transcoder` is the same module reading one space (an MLP's input) and writing another
(its output). Decoder columns are kept at unit norm by the trainer
(:func:`~neuronsplit.sdl.train.train_sae`), so the L1 penalty and the anchors mean the same at
every scale. Matryoshka training is a loss over dictionary prefixes, not a module: see
``prefixes`` in :func:`~neuronsplit.sdl.train.train_sae`.

Examples
--------
>>> sae = SparseAutoencoder(8, 32, activation="topk", k=2, seed=0)
>>> x_hat, z = sae(torch.randn(5, 8))
>>> x_hat.shape, int((z != 0).sum(1).max()) <= 2
(torch.Size([5, 8]), True)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .._checks import check_choice, check_int, check_number
from ..errors import InvalidArgumentError

__all__ = ["ACTIVATIONS", "SparseAutoencoder", "Transcoder"]

#: the activations :class:`SparseAutoencoder` knows
ACTIVATIONS = ("relu", "jumprelu", "topk", "batchtopk")


class _JumpReLU(torch.autograd.Function):
    """``z * H(z - theta)``; theta learns through a rectangle-kernel pseudo-derivative
    (Rajamanoharan et al. 2024), since the true derivative of the step is zero almost
    everywhere."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, log_theta: Tensor, bandwidth: float) -> Tensor:
        theta = log_theta.exp()
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return z * (z > theta)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        z, theta = ctx.saved_tensors
        h = ctx.bandwidth
        near = ((z - theta).abs() < h / 2).to(z.dtype)
        d_theta = -(theta / h) * near * grad
        d_log = (d_theta * theta).reshape(-1, theta.numel()).sum(0)
        return grad * (z > theta), d_log, None


class _Step(torch.autograd.Function):
    """``H(z - theta)`` for JumpReLU's L0 penalty.

    Pseudo-derivative in theta (Rajamanoharan et al. 2024): ``dH/dtheta := -(1/h) K((z -
    theta) / h)`` with the rectangle kernel ``K`` -- ``1/h``, where JumpReLU's own has
    ``theta/h``; the gradient is taken in ``log theta`` (times ``theta``)."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, log_theta: Tensor, bandwidth: float) -> Tensor:
        theta = log_theta.exp()
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor, None]:
        z, theta = ctx.saved_tensors
        h = ctx.bandwidth
        near = ((z - theta).abs() < h / 2).to(z.dtype)
        d_log = (-(1.0 / h) * near * grad * theta).reshape(-1, theta.numel()).sum(0)
        return None, d_log, None


class SparseAutoencoder(nn.Module):
    """A sparse dictionary ``x -> sigma(W_E x + b_E) -> W_D z + b_D``.

    Parameters
    ----------
    n_in : int
        Input dimension ``n_p``.
    n_latents : int
        Dictionary size ``n_q``.
    activation : {"topk", "batchtopk", "relu", "jumprelu"}
        ``topk``: the ``k`` largest pre-activations of each sample (then ReLU);
        ``batchtopk``: the ``k * B`` largest of a batch of ``B`` while training, a learned
        threshold (running mean of the smallest kept value) at inference; ``relu``: train with
        an L1 penalty; ``jumprelu``: ``z * H(z - theta)`` with a learned per-latent threshold.
    k : int, default 32
        Active latents per sample (TopK family); must be ``<= n_latents``.
    n_out : int, optional
        Output dimension ``n_r`` (default ``n_in``: an autoencoder).
    bias : bool, default True
        Learn ``b_E`` and ``b_D`` (zero-initialised); ``False`` is the model the theory analyses.
    seed : int, optional
        Seed of the initialisation (unit decoder columns; encoder = decoder transposed when
        ``n_out == n_in``).
    bandwidth : float, default 0.05
        JumpReLU's pseudo-derivative kernel width.
    """

    def __init__(
        self, n_in: int, n_latents: int, *, activation: str = "topk", k: int = 32,
        n_out: int | None = None, bias: bool = True, seed: int | None = None,
        bandwidth: float = 0.05,
    ) -> None:  # fmt: skip
        super().__init__()
        n_in = check_int(n_in, "n_in", low=1)
        n_latents = check_int(n_latents, "n_latents", low=1)
        n_out = n_in if n_out is None else check_int(n_out, "n_out", low=1)
        self.activation = check_choice(activation, "activation", ACTIVATIONS)
        k = check_int(k, "k", low=1)
        if activation in ("topk", "batchtopk") and k > n_latents:
            raise InvalidArgumentError(
                f"k={k} is larger than the dictionary (n_latents={n_latents}); a TopK SAE keeps "
                f"at most n_latents latents: use k <= {n_latents}"
            )
        self.k = k
        self.bandwidth = check_number(bandwidth, "bandwidth", low=0, low_open=True)
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        dec = F.normalize(torch.randn(n_out, n_latents, generator=gen), dim=0)
        enc = dec.T.clone() if n_out == n_in else F.normalize(
            torch.randn(n_latents, n_in, generator=gen), dim=1
        )  # fmt: skip
        self.w_enc = nn.Parameter(enc)
        self.w_dec = nn.Parameter(dec)
        self.b_enc = nn.Parameter(torch.zeros(n_latents), requires_grad=bias)
        self.b_dec = nn.Parameter(torch.zeros(n_out), requires_grad=bias)
        # JumpReLU threshold (log scale keeps it positive); BatchTopK's inference threshold
        self.log_threshold = nn.Parameter(
            torch.full((n_latents,), -3.0), requires_grad=activation == "jumprelu"
        )  # fmt: skip
        self.register_buffer("batch_threshold", torch.tensor(-1.0))

    @property
    def n_latents(self) -> int:
        """Dictionary size."""
        return int(self.w_enc.shape[0])

    def pre_activation(self, x: Tensor) -> Tensor:
        """``W_E x + b_E``."""
        return F.linear(x, self.w_enc, self.b_enc)

    def activate(self, z: Tensor) -> Tensor:
        """Apply the sparse activation to pre-activations ``(B, n_latents)``."""
        if self.activation == "relu":
            return F.relu(z)
        if self.activation == "jumprelu":
            return _JumpReLU.apply(z, self.log_threshold, self.bandwidth)
        rows, cols = self.select(z)
        out = torch.zeros_like(z)
        out[rows, cols] = F.relu(z[rows, cols])
        return out

    def select(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """TopK family: ``(rows, cols)`` of the kept pre-activations (before the ReLU).

        ``topk``: each row's ``k`` largest; ``batchtopk`` while training: the ``k * B`` largest
        of the batch (and the inference threshold, a running mean of the smallest kept positive
        value, is updated); ``batchtopk`` at inference: the entries above that threshold (each
        row's top ``k`` until one was learned).
        """
        if self.activation not in ("topk", "batchtopk"):
            raise InvalidArgumentError(f"select is for topk / batchtopk, not {self.activation!r}")
        b, n = z.shape
        if self.activation == "batchtopk" and not self.training:
            if float(self.batch_threshold) >= 0:
                return (z > self.batch_threshold).nonzero(as_tuple=True)
        if self.activation == "topk" or not self.training:
            rows = torch.arange(b, device=z.device).repeat_interleave(self.k)
            return rows, z.topk(self.k, dim=-1).indices.reshape(-1)
        top = z.reshape(-1).topk(min(self.k * b, b * n))  # k per sample on average
        with torch.no_grad():  # the inference threshold: smallest kept positive value
            kept = top.values[top.values > 0]
            if kept.numel():
                low = kept.min()
                old = self.batch_threshold
                self.batch_threshold.copy_(torch.where(old < 0, low, 0.99 * old + 0.01 * low))
        return top.indices // n, top.indices % n

    def encode(self, x: Tensor) -> Tensor:
        """Latent codes ``x_q`` ``(B, n_latents)``."""
        return self.activate(self.pre_activation(x))

    def decode(self, z: Tensor) -> Tensor:
        """Reconstruction ``W_D z + b_D``."""
        return F.linear(z, self.w_dec, self.b_dec)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(reconstruction, latents)``."""
        z = self.encode(x)
        return self.decode(z), z

    def l0_proxy(self, z_pre: Tensor) -> Tensor:
        """JumpReLU's differentiable count of active latents per sample, ``(B,)``."""
        return _Step.apply(z_pre, self.log_threshold, self.bandwidth).sum(-1)

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Rescale decoder columns to unit norm (the encoder rows absorb nothing: the trainer
        calls this after every step, so the drift is one step's)."""
        self.w_dec.copy_(F.normalize(self.w_dec, dim=0))

    def encoder_directions(self) -> Tensor:
        """Encoder rows ``(n_latents, n_in)`` (the features the LRB metrics score)."""
        return self.w_enc.detach()

    def decoder_directions(self) -> Tensor:
        """Decoder columns as rows ``(n_latents, n_out)``."""
        return self.w_dec.detach().T

    def extra_repr(self) -> str:
        return (
            f"n_in={self.w_enc.shape[1]}, n_latents={self.n_latents}, "
            f"n_out={self.w_dec.shape[0]}, activation={self.activation!r}, k={self.k}"
        )


class Transcoder(SparseAutoencoder):
    """A sparse dictionary from one space to another (e.g. an MLP's input to its output).

    Same parameters as :class:`SparseAutoencoder`, with ``n_out`` required; train it on
    ``(inputs, targets)`` pairs.

    Examples
    --------
    >>> tc = Transcoder(8, 16, n_out=4, k=3, seed=0)
    >>> tc(torch.randn(2, 8))[0].shape
    torch.Size([2, 4])
    """

    def __init__(self, n_in: int, n_latents: int, *, n_out: int, **kwargs: Any) -> None:
        super().__init__(n_in, n_latents, n_out=n_out, **kwargs)
