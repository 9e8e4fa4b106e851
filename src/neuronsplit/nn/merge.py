"""The merge step of a split layer: fold the extra rows back into their units, with scales.

A split layer's ``.subunits`` output holds the ``C`` original channels (row ``u`` of a split unit
holds its subunit 0) followed by ``E`` extra rows: for each split unit, in ascending unit
order, its subunits ``1 .. K-1`` and then its residual. The rows are the *disjoint* parts
``t_k`` (subunit ``k`` sees only its own inputs) and ``r`` (the shared inputs and the bias), so
the merge is a plain sum ``z_u = sum_k t_k + r`` -- no coefficient, no cancellation.

Steering scales subunits. In the disjoint reading ``z' = sum_k a_k t_k + a_r r``; in Hesse's
overlap reading (subunit ``s_k = t_k + r``, ``z = sum_k s_k - (K-1) r``) scaling ``s_k`` by
``a_k`` gives ``z' = sum_k a_k t_k + (sum_k a_k - (K-1) a_r) r``. Scales compose: nested
:meth:`IndexMerge.scaled` contexts multiply, and leaving one recomputes the coefficients from the
contexts still open, so every exit restores the previous state exactly and the last one
restores the unsteered, coefficient-free merge.
"""

from __future__ import annotations

import contextlib
import math
import operator
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import (
    ArgumentTypeError,
    InputShapeError,
    InvalidArgumentError,
    UnknownSubunitError,
)
from ..plan.forms import normalise_form

__all__ = ["IndexMerge", "RESIDUAL", "extra_rows"]

RESIDUAL = -1  # subunit number of a residual row
_HALF = (torch.float16, torch.bfloat16)


def _as_int(value: Any) -> int:
    """An int from an int, a numpy integer or a 0-d integer tensor; ``TypeError`` otherwise."""
    if isinstance(value, bool):
        raise TypeError("a bool is not a unit or subunit number")
    return operator.index(value)


def check_scale(value: Any, what: str) -> float:
    """A finite steering scale: ints, floats, numpy numbers and 0-d tensors, not bools or strings.

    Examples
    --------
    >>> check_scale(0, "subunit (3, 1)")
    0.0
    """
    try:
        if isinstance(value, (bool, str, bytes)):
            raise TypeError
        alpha = float(value)
    except (TypeError, ValueError):
        raise ArgumentTypeError(
            f"the scale of {what} must be a number, got {type(value).__name__} {value!r}"
        ) from None
    if not math.isfinite(alpha):
        raise InvalidArgumentError(f"the scale of {what} must be finite, got {value!r}")
    return alpha


def extra_rows(num_subunits: Tensor) -> tuple[Tensor, Tensor]:
    """The layout of the extra rows: for each, the position of its unit and its subunit number.

    Split unit ``s`` (in ascending unit order) owns ``K_s`` extra rows: subunits ``1 .. K_s-1``,
    then its residual (``-1``); subunit 0 stays in the unit's own row. The one definition of the
    row layout, used by the merge and by the construction of the rows.

    Examples
    --------
    >>> extra_rows(torch.tensor([2, 3]))
    (tensor([0, 0, 1, 1, 1]), tensor([ 1, -1,  1,  2, -1]))
    """
    ks = torch.as_tensor(num_subunits, dtype=torch.long).flatten().cpu()
    pos = torch.repeat_interleave(torch.arange(ks.numel()), ks)
    starts = torch.cumsum(ks, 0) - ks
    within = torch.arange(int(ks.sum())) - starts[pos]  # 0 .. K-1 within each unit
    last = within == ks[pos] - 1
    return pos, torch.where(last, torch.full_like(within, RESIDUAL), within + 1)


class IndexMerge(nn.Module):
    """Fold the extra rows of a split layer back into the original units.

    ``out = inter[:C] + index_add(index, inter[C:])`` along the unit axis, out of place (Captum
    hooks may hold ``inter``); while steered, rows are scaled first. Half-precision rows are
    added in float32 and the sum is rounded once to their dtype (the output keeps it).

    Parameters
    ----------
    original_out : int
        ``C``, the number of units of the original layer.
    units : sequence of int or Tensor
        The split units in ascending order.
    num_subunits : sequence of int or Tensor
        ``K`` of each split unit.
    dim : int
        Unit axis counted from the end: ``-3`` for Conv2d outputs, ``-1`` for Linear outputs.
    form : {"disjoint", "overlap"}
        The reading of the subunits that :meth:`scaled` uses.
    device, dtype : optional
        Of the buffers; follow the layer's weight.

    Notes
    -----
    All buffers are non-persistent (they follow from the plan, so ``state_dict`` holds weights
    only): ``index`` (parent unit of each extra row), ``sub`` (its subunit number, ``-1`` for a
    residual), ``units``, ``num_subunits``, ``offsets`` (first extra row of each split unit), and
    ``row_scale`` / ``coef``, the scales in use while steered. ``parameter_free_linear = True``
    tells the Zennit backend to give the merge the ``Norm`` rule.

    Examples
    --------
    >>> m = IndexMerge(2, units=[0], num_subunits=[2], dim=-1)
    >>> inter = torch.tensor([[1.0, 5.0, 2.0, 0.5]])  # t0 of unit 0, unit 1, t1 of unit 0, r
    >>> m(inter)
    tensor([[3.5000, 5.0000]])
    >>> with m.scaled({(0, 1): 0.0}):
    ...     m(inter)
    tensor([[1.5000, 5.0000]])
    >>> m(inter)
    tensor([[3.5000, 5.0000]])
    """

    parameter_free_linear = True

    def __init__(
        self,
        original_out: int,
        units: Any,
        num_subunits: Any,
        dim: int,
        *,
        form: str = "disjoint",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if dim >= 0:
            raise InvalidArgumentError(f"dim must be counted from the end (negative), got {dim}")
        form = normalise_form(form, "merge")
        units_t = torch.as_tensor(units, dtype=torch.long).flatten().cpu()
        ks = torch.as_tensor(num_subunits, dtype=torch.long).flatten().cpu()
        if units_t.shape != ks.shape:
            raise InvalidArgumentError("units and num_subunits must have the same length")
        self.original_out = int(original_out)
        self.dim = int(dim)
        self.form = form
        pos, sub = extra_rows(ks)
        starts = torch.cumsum(ks, 0) - ks
        # the layout on the host: lookups never read a device buffer (no sync, and they work
        # on the meta device, where buffers have no values); the buffers are refilled from it
        # after every move (see _apply)
        self._layout = {
            "index": torch.repeat_interleave(units_t, ks),
            "sub": sub,
            "units": units_t,
            "num_subunits": ks,
            "offsets": self.original_out + starts,
        }
        for name, host in self._layout.items():
            self.register_buffer(name, host.to(device, torch.long, copy=True), persistent=False)
        dtype = (
            dtype if dtype is not None and dtype.is_floating_point else torch.get_default_dtype()
        )
        flt = {"dtype": dtype, "device": device}
        self.register_buffer("row_scale", torch.ones(self.original_out, **flt), persistent=False)
        self.register_buffer("coef", torch.ones(int(ks.sum()), **flt), persistent=False)
        self._position = {u: s for s, u in enumerate(units_t.tolist())}
        self._counts = ks.tolist()
        self._offsets = self._layout["offsets"].tolist()
        self._stack: list[tuple[object, dict[tuple[int, int], float]]] = []
        self._steered = False

    def _apply(self, fn: Any, recurse: bool = True) -> IndexMerge:
        """Move/cast as ``nn.Module`` does, then refill the buffers: they follow from the plan,
        so ``to_empty`` (materialising a model planned on the meta device) leaves them right."""
        super()._apply(fn, recurse)
        with torch.no_grad():
            for name, host in self._layout.items():
                getattr(self, name).copy_(host)
        self._refresh()
        return self

    # ------------------------------------------------------------------ layout
    @property
    def num_extra(self) -> int:
        """``E``, the number of extra rows."""
        return int(self.index.numel())

    def position(self, unit: int) -> int:
        """Index of ``unit`` among the split units (``UnknownSubunitError`` if it is not split)."""
        try:
            return self._position[_as_int(unit)]
        except (KeyError, TypeError):
            shown = list(self._position)[:20]
            raise UnknownSubunitError(
                f"unit {unit!r} is not split in this layer; split units: {shown}"
                f"{' ...' if len(self._position) > 20 else ''} (units 0..{self.original_out - 1} "
                "exist)"
            ) from None

    def count(self, unit: int) -> int:
        """``K`` of a split unit (``UnknownSubunitError`` if it is not split)."""
        return self._counts[self.position(unit)]

    def channel(self, unit: int, k: int) -> int:
        """Channel of subunit ``k`` of ``unit`` in the ``.subunits`` output (``k=-1``: residual)."""
        s = self.position(unit)
        n = self._counts[s]
        try:
            number = RESIDUAL if k == "residual" else _as_int(k)
        except TypeError:
            number = n  # out of range: reported below
        if not RESIDUAL <= number < n:
            raise UnknownSubunitError(
                f"subunit k={k!r} does not exist for unit {unit}, which has {n} subunits (valid "
                f"k: 0..{n - 1}, or -1 / 'residual' for the residual)"
            )
        k = number
        if k == 0:
            return _as_int(unit)
        offset = self._offsets[s]
        return offset + n - 1 if k == RESIDUAL else offset + k - 1

    # ------------------------------------------------------------------ forward
    def _shape(self, t: Tensor, like: Tensor) -> Tensor:
        return t.to(like.dtype).reshape((-1,) + (1,) * (-self.dim - 1))

    def forward(self, inter: Tensor) -> Tensor:
        """Merge ``inter`` (``C + E`` units on :attr:`dim`) into the original ``C`` units."""
        c, e = self.original_out, self.num_extra
        if inter.dim() < -self.dim or inter.shape[self.dim] != c + e:
            raise InputShapeError(
                f"IndexMerge expects {c + e} channels at dim {self.dim}, got shape "
                f"{tuple(inter.shape)}"
            )
        dtype = inter.dtype
        if dtype in _HALF:  # add the rows in float32: one rounding, not one per row
            inter = inter.float()
        base = inter.narrow(self.dim, 0, c)
        extra = inter.narrow(self.dim, c, e)
        if self._steered:
            base = base * self._shape(self.row_scale, base)
            extra = extra * self._shape(self.coef, extra)
        return base.index_add(self.dim, self.index, extra).to(dtype)

    # ------------------------------------------------------------------ steering
    @property
    def steered(self) -> bool:
        """Whether any scale other than 1 is in effect (scales of 1 keep the exact merge)."""
        return self._steered

    @property
    def scales(self) -> dict[tuple[int, int], float]:
        """The scale of every steered ``(unit, k)``: the product over the open contexts."""
        out: dict[tuple[int, int], float] = {}
        for _, entry in self._stack:
            for key, alpha in entry.items():
                out[key] = out.get(key, 1.0) * alpha
        return out

    @contextlib.contextmanager
    def scaled(self, scales: Mapping[tuple[int, int], float]) -> Iterator[None]:
        """Scale subunits while the context is open; nestable, restores exactly on exit.

        Parameters
        ----------
        scales : mapping of (unit, k) to float
            ``k = 0 .. K-1`` a subunit, ``k = -1`` the residual; 1 leaves it unchanged.

        Raises
        ------
        UnknownSubunitError
            For a unit that is not split or a ``k`` it does not have.
        ValueError
            For a scale that is not a finite number.
        """
        entry: dict[tuple[int, int], float] = {}
        for (unit, k), alpha in scales.items():
            self.channel(unit, k)  # validates
            value = check_scale(alpha, f"subunit ({unit}, {k})")
            entry[(_as_int(unit), RESIDUAL if k == "residual" else _as_int(k))] = value
        token = object()
        self._stack.append((token, entry))
        try:
            self._refresh()
            yield
        finally:
            self._stack = [item for item in self._stack if item[0] is not token]
            self._refresh()

    def reset(self) -> None:
        """Drop every scale (also those of contexts still open)."""
        self._stack.clear()
        self._refresh()

    def _refresh(self) -> None:
        scales = {key: alpha for key, alpha in self.scales.items() if alpha != 1.0}
        self._steered = bool(scales)
        with torch.no_grad():
            self.row_scale.fill_(1.0)
            self.coef.fill_(1.0)
            if not scales:
                return
            by_unit: dict[int, dict[int, float]] = {}
            for (unit, k), alpha in scales.items():
                by_unit.setdefault(unit, {})[k] = alpha
            for unit, alphas in by_unit.items():
                n = self.count(unit)
                subunit = [alphas.get(k, 1.0) for k in range(n)]
                residual = alphas.get(RESIDUAL, 1.0)
                if self.form == "overlap":
                    residual = sum(subunit) - (n - 1) * residual
                self.row_scale[unit] = subunit[0]
                for k in range(1, n):
                    self.coef[self.channel(unit, k) - self.original_out] = subunit[k]
                self.coef[self.channel(unit, RESIDUAL) - self.original_out] = residual

    def extra_repr(self) -> str:
        return (
            f"original_out={self.original_out}, split_units={int(self.units.numel())}, "
            f"extra={self.num_extra}, dim={self.dim}, form={self.form!r}"
        )
