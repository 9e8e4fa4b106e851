"""The merge step of split layers: fold extra rows back into their parent units.

Private module; the public name is :class:`neuronsplit.surgery.IndexMerge`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .errors import UnknownSubunitError

__all__ = ["IndexMerge", "RESIDUAL"]

RESIDUAL = -1  # value of ``IndexMerge.sub`` for a residual row


class IndexMerge(nn.Module):
    """Fold the extra rows of a split layer back into the original units.

    ``out = inter[:C] + index_add(index, inter[C:] * coef)`` along the channel dimension,
    computed out of place (Captum hooks may hold ``inter``).

    Parameters
    ----------
    original_out : int
        ``C``, the number of units of the original layer.
    index : sequence of int
        Parent unit of each extra row (length ``E``).
    sub : sequence of int
        Subunit number ``k >= 1`` of each extra row, or ``-1`` for a residual row.
    coef : sequence of float
        Exact merge coefficient of each extra row (``+1`` for subunits, ``-(K-1)`` for an
        overlap residual, ``+1`` for a partition residual).
    dim : int
        Channel dimension, counted from the end: ``-3`` for Conv2d outputs (works for batched
        and unbatched inputs), ``-1`` for Linear outputs (``(B, C)`` and ``(B, T, C)``).
    dtype, device : optional
        Of the float buffers; follow the layer's weight.

    Notes
    -----
    Buffers (all non-persistent: they follow from the plan, so ``state_dict`` holds weights
    only): ``index``, ``sub``, ``coef`` (current coefficients, may be scaled by steering),
    ``coef_base`` (the exact ones), ``first_index`` (the split units, whose own row holds
    subunit 0) and ``first_coef`` (scale of subunit 0, 1 when not steered).

    Examples
    --------
    >>> m = IndexMerge(2, index=[0, 0], sub=[1, -1], coef=[1.0, -1.0], dim=-1)
    >>> m(torch.tensor([[1.0, 5.0, 2.0, 0.5]]))
    tensor([[2.5000, 5.0000]])
    """

    def __init__(
        self,
        original_out: int,
        index: Sequence[int],
        sub: Sequence[int],
        coef: Sequence[float],
        dim: int,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if dim >= 0:
            raise ValueError(f"dim must be counted from the end (negative), got {dim}")
        if not (len(index) == len(sub) == len(coef)):
            raise ValueError("index, sub and coef must have the same length")
        self.original_out = int(original_out)
        self.dim = int(dim)
        dtype = (
            dtype if dtype is not None and dtype.is_floating_point else torch.get_default_dtype()
        )
        first = sorted(set(int(i) for i in index))
        long = {"dtype": torch.long, "device": device}
        flt = {"dtype": dtype, "device": device}
        self.register_buffer("index", torch.tensor(list(index), **long), persistent=False)
        self.register_buffer("sub", torch.tensor(list(sub), **long), persistent=False)
        self.register_buffer("coef", torch.tensor(list(coef), **flt), persistent=False)
        self.register_buffer("coef_base", torch.tensor(list(coef), **flt), persistent=False)
        self.register_buffer("first_index", torch.tensor(first, **long), persistent=False)
        self.register_buffer("first_coef", torch.ones(len(first), **flt), persistent=False)
        # (unit, k) -> extra row position; k = -1 is the residual. Python-side for O(1) lookup.
        self._pos = {(int(u), int(k)): p for p, (u, k) in enumerate(zip(index, sub, strict=True))}
        self._first_pos = {u: p for p, u in enumerate(first)}
        self._first_scaled = False  # skip the subunit-0 path unless steering asked for it

    @property
    def num_extra(self) -> int:
        """``E``, the number of extra rows."""
        return int(self.index.numel())

    @property
    def rows(self) -> tuple[tuple[int, int], ...]:
        """``(unit, k)`` of every extra row in order; ``k == -1`` marks a residual."""
        return tuple(self._pos)

    def _shape(self, t: Tensor) -> Tensor:
        return t.reshape((-1,) + (1,) * (-self.dim - 1))

    def forward(self, inter: Tensor) -> Tensor:
        """Merge ``inter`` (``C + E`` channels) into the original ``C`` channels."""
        c, e = self.original_out, self.num_extra
        if inter.dim() < -self.dim or inter.shape[self.dim] != c + e:
            raise ValueError(
                f"IndexMerge expects {c + e} channels at dim {self.dim}, got shape "
                f"{tuple(inter.shape)}"
            )
        base = inter.narrow(self.dim, 0, c)
        extra = inter.narrow(self.dim, c, e)
        out = base.index_add(self.dim, self.index, extra * self._shape(self.coef))
        if self._first_scaled:
            # alpha * s0 = s0 + (alpha - 1) * s0; only while steering, so exact mode stays cheap
            scaled = base.index_select(self.dim, self.first_index) * self._shape(
                self.first_coef - 1
            )
            out = out.index_add(self.dim, self.first_index, scaled)
        return out

    def set_scale(self, unit: int, k: int, alpha: float) -> None:
        """Scale subunit ``k`` of ``unit`` (``k = -1``: its residual) by ``alpha`` in the merge.

        ``alpha = 1`` restores the exact coefficient. Meant for steering context managers,
        which must call :meth:`reset` in ``finally``.

        Examples
        --------
        >>> m = IndexMerge(1, index=[0, 0], sub=[1, -1], coef=[1.0, -1.0], dim=-1)
        >>> m.set_scale(0, 1, 0.0); m(torch.tensor([[1.0, 5.0, 2.0]]))
        tensor([[-1.]])
        >>> m.reset(); m(torch.tensor([[1.0, 5.0, 2.0]]))
        tensor([[4.]])
        """
        if k == 0 and int(unit) in self._first_pos:
            with torch.no_grad():
                self.first_coef[self._first_pos[int(unit)]] = float(alpha)
            self._first_scaled = bool((self.first_coef != 1).any())
            return
        pos = self._pos.get((int(unit), int(k)))
        if pos is None:
            raise UnknownSubunitError(
                f"no subunit k={k} of unit {unit} in this merge; valid (unit, k) pairs: "
                f"{sorted({(u, 0) for u in self._first_pos} | set(self._pos))[:12]}"
            )
        with torch.no_grad():
            self.coef[pos] = self.coef_base[pos] * float(alpha)

    def reset(self) -> None:
        """Restore the exact merge coefficients."""
        with torch.no_grad():
            self.coef.copy_(self.coef_base)
            self.first_coef.fill_(1.0)
        self._first_scaled = False

    @property
    def steered(self) -> bool:
        """Whether any coefficient differs from its exact value."""
        return self._first_scaled or bool((self.coef != self.coef_base).any())

    def extra_repr(self) -> str:
        return f"original_out={self.original_out}, extra={self.num_extra}, dim={self.dim}"
