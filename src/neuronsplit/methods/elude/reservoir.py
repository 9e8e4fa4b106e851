"""Top-activating samples of every unit of a layer, with their inputs: :class:`TopInputs`.

ELUDe clusters the input contributions ``w_uj * x_j`` of a unit on the samples that activate it
most. Keeping ``n`` input vectors for each of the ``C`` units would cost ``C * n * J`` numbers
(600 MB for a ViT-B ``fc1`` at ``n = 64``); units share their top samples, so the reservoir keeps
per unit only the ``n`` best *keys*, their activations and the *slot* of their input vector in
one **pool**, where each vector is stored once. A slot is reused as soon as no unit names it, and
the pool grows (by doubling, up to ``C * n`` rows) only when every slot is in use, so it never
holds more than ``min(samples seen, C * n)`` live vectors and a batch copies only its own new
vectors: memory does not grow with the data beyond this bound.

A *sample* is a token of a token tensor (``tokens`` selects which), a row of a plain feature
batch, or, for a ``Conv2d``, an image at the position where the unit is most active (its input
patch is stored, so contributions sum over the kernel taps).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ...errors import InputShapeError, NonFiniteError

__all__ = ["TopInputs", "token_slice"]


def token_slice(tokens: str, num_prefix: int) -> slice:
    """Which tokens of a ``(B, T, D)`` tensor are samples: all, the class token, or the patches."""
    if tokens == "cls":
        return slice(0, 1)
    if tokens == "patch":
        return slice(num_prefix, None)
    return slice(None)


@dataclass(eq=False)
class TopInputs:
    """Per unit the ``n`` samples with the largest activation, and the inputs they saw.

    Parameters
    ----------
    layer : nn.Module
        The ``Linear`` or ``Conv2d`` whose units are ranked.
    n : int
        Samples kept per unit.
    tokens : slice
        Token positions that count as samples when the layer sees ``(B, T, D)`` tensors.
    per_image : bool
        Token tensors are read per image, at each unit's most active token.
    sign : Tensor, optional
        ``(C,)`` per-unit signs the activations are multiplied by before ranking (``-1`` where a
        LayerScale with a negative scale follows: the block writes ``gamma * z``).

    Attributes
    ----------
    values : Tensor
        ``(C, n)`` activations of the kept samples, descending; ``-inf`` in unused slots.
    keys : Tensor
        ``(C, n)`` int64 sample keys (``-1`` in unused slots).
    slots : Tensor
        ``(C, n)`` int64 row of each kept sample's input vector in ``pool`` (``-1``: unused).
    pool : Tensor
        ``(P, D)`` input vectors (``D = J * kh * kw`` for a Conv2d); rows no unit names are free.

    Examples
    --------
    >>> layer = nn.Linear(3, 2)
    >>> top = TopInputs(layer, n=2)
    >>> x = torch.randn(5, 3)
    >>> top.update(x, layer(x))
    >>> top.vectors(0).shape, top.count
    (torch.Size([2, 3]), 5)
    """

    layer: nn.Module
    n: int
    tokens: slice = field(default_factory=lambda: slice(None))
    per_image: bool = False
    sign: Tensor | None = None
    values: Tensor = field(init=False)
    keys: Tensor = field(init=False)
    slots: Tensor = field(init=False)
    pool: Tensor = field(init=False)
    count: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        units = (
            self.layer.out_channels
            if isinstance(self.layer, nn.Conv2d)
            else self.layer.out_features
        )
        self.values = torch.full((units, self.n), -torch.inf, dtype=torch.float64)
        self.keys = torch.full((units, self.n), -1, dtype=torch.long)
        self.slots = torch.full((units, self.n), -1, dtype=torch.long)
        self.pool = torch.empty(0, 0)

    # ------------------------------------------------------------------ one batch
    @torch.no_grad()
    def update(self, x: Tensor, out: Tensor) -> None:
        """Merge one batch: ``x`` the layer's input, ``out`` its output (both detached)."""
        conv = isinstance(self.layer, nn.Conv2d)
        if self.sign is not None:  # rank by the residual write gamma * z (see discovery.py),
            # before an image's best token or position is picked
            sign = self.sign.to(out.device, out.dtype)
            out = out * (sign[:, None, None] if conv else sign)
        if conv:
            acts, keys, fetch = self._conv(x, out)
        else:
            acts, keys, fetch = self._linear(x, out)
        if not torch.isfinite(acts).all():
            raise NonFiniteError(
                "the layer's activations contain NaN or inf on the samples seen so far "
                f"(after {self.count} samples); check the inputs and the model's weights"
            )
        if self.values.device != acts.device:  # the reservoir lives where the model runs
            self.values, self.keys = self.values.to(acts.device), self.keys.to(acts.device)
            self.slots = self.slots.to(acts.device)
        values = torch.cat([self.values, acts.double()], 1)
        best = values.topk(self.n, dim=1)  # n + M >= n candidates: unused slots stay -inf
        self.values = best.values
        self.keys = torch.cat([self.keys, keys], 1).gather(1, best.indices)
        slots = F.pad(self.slots, (0, acts.shape[1]), value=-1).gather(1, best.indices)
        self.slots = self._store_new(slots, fetch)

    def _linear(self, x: Tensor, out: Tensor) -> tuple[Tensor, Tensor, object]:
        if x.dim() == 3:
            x, out = x[:, self.tokens], out[:, self.tokens]
            if self.per_image:
                return self._per_image(x, out)
        elif x.dim() != 2:
            raise InputShapeError(
                f"ELUDe reads Linear inputs of shape (B, D) or (B, T, D); got {tuple(x.shape)}"
            )
        rows_x = x.reshape(-1, x.shape[-1])
        acts = out.reshape(-1, out.shape[-1]).T  # (C, M)
        keys = torch.arange(self.count, self.count + rows_x.shape[0], device=x.device)
        self.count += rows_x.shape[0]

        def fetch(wanted: Tensor) -> Tensor:
            return rows_x[wanted - keys[0]]

        return acts, keys.expand(acts.shape[0], -1), fetch

    def _best_positions(self, per_position: Tensor) -> tuple[Tensor, Tensor, object]:
        """Each image at its most active position (token or pixel) for every unit.

        ``per_position`` is ``(B, C, P)``; returns the ``(C, B)`` activations and keys (the key
        names the image and the position) and ``locate(keys) -> (image in batch, position)``.
        """
        b, _, positions = per_position.shape
        acts, pos = per_position.max(2)  # (B, C)
        first = self.count
        base = torch.arange(first, first + b, device=per_position.device)
        self.count += b

        def locate(wanted: Tensor) -> tuple[Tensor, Tensor]:
            return wanted // positions - first, wanted % positions

        return acts.T, (base[:, None] * positions + pos).T, locate

    def _per_image(self, x: Tensor, out: Tensor) -> tuple[Tensor, Tensor, object]:
        """Token tensors read per image: each image at its most active token."""
        acts, keys, locate = self._best_positions(out.transpose(1, 2))

        def fetch(wanted: Tensor) -> Tensor:
            return x[locate(wanted)]

        return acts, keys, fetch

    def _conv(self, x: Tensor, out: Tensor) -> tuple[Tensor, Tensor, object]:
        acts, keys, locate = self._best_positions(out.flatten(2))
        conv = self.layer

        def fetch(wanted: Tensor) -> Tensor:
            image, where = locate(wanted)
            # unfold only the images that hold a wanted patch
            images, inverse = image.unique(return_inverse=True)
            # pad as the layer does (also padding="same", asymmetric for even kernels)
            padded = F.pad(x[images], conv._reversed_padding_repeated_twice)
            cols = F.unfold(
                padded, conv.kernel_size, dilation=conv.dilation, stride=conv.stride
            )  # (I, J*kh*kw, L)
            return cols[inverse, :, where]

        return acts, keys, fetch

    def _store_new(self, slots: Tensor, fetch: object) -> Tensor:
        """Give the batch's samples that entered some unit's top ``n`` a pool row each (rows no
        unit names any more are reused) and return the slots with theirs filled in."""
        fresh = (slots < 0) & (self.keys >= 0)
        if not fresh.any():
            return slots
        new_keys, inverse = self.keys[fresh].unique(return_inverse=True)
        new = fetch(new_keys).detach()  # type: ignore[operator]
        if new.dtype in (torch.float16, torch.bfloat16):
            new = new.float()
        if self.pool.numel() == 0:
            self.pool = new.new_empty((0, new.shape[1]))
        free = torch.ones(self.pool.shape[0], dtype=torch.bool, device=new.device)
        free[slots[slots >= 0]] = False
        rows = free.nonzero().squeeze(1)
        if rows.numel() < new_keys.numel():  # every row in use: grow by doubling, up to C * n
            need = self.pool.shape[0] + new_keys.numel() - rows.numel()
            cap = min(max(2 * self.pool.shape[0], need), self.keys.numel())
            grown = self.pool.new_empty((cap - self.pool.shape[0], self.pool.shape[1]))
            rows = torch.cat([rows, torch.arange(self.pool.shape[0], cap, device=new.device)])
            self.pool = torch.cat([self.pool, grown])
        rows = rows[: new_keys.numel()]
        self.pool[rows] = new.to(self.pool.dtype)
        slots = slots.clone()
        slots[fresh] = rows[inverse]
        return slots

    # ------------------------------------------------------------------ reading
    def kept(self, unit: int) -> int:
        """How many samples unit ``unit`` holds (fewer than ``n`` only on small data)."""
        return int((self.keys[unit] >= 0).sum())

    def vectors(self, unit: int) -> Tensor:
        """``(m, D)`` input vectors of the unit's kept samples, most active first."""
        slots = self.slots[unit]
        return self.pool[slots[slots >= 0]]

    @property
    def live(self) -> int:
        """Pool rows some unit names (the rest are free for later batches)."""
        return int(self.slots[self.slots >= 0].unique().numel())
