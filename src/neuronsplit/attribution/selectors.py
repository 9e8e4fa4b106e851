"""Captum neuron selectors for subunits: :func:`subunit_selector` and the callables it returns.

A subunit of the disjoint form is one row of the ``.subunits`` output (an index or a slice);
one of the overlap form is two rows, ``t_k + r`` (:class:`ChannelSumSelector`); a Linear sums
its row over whatever lies between the batch and the feature axis (:class:`UnitSelector`), so
one selector fits ``(B, C)`` outputs and token outputs ``(B, T, C)`` alike: the unit axis
follows from the layer type (dim 1 of a Conv2d's ``(B, C, H, W)``, the last axis of a Linear's
output), and nobody has to pass the output's rank.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from ..errors import InvalidArgumentError
from ..nn import SplitConv2d
from .refs import SubunitLike, subunit_rows

__all__ = [
    "channel_sum",
    "UnitSelector",
    "TokenSumSelector",
    "ChannelSumSelector",
    "subunit_selector",
    "Selector",
]


def channel_sum(tensor: Tensor, dim: int, channel: int) -> Tensor:
    """Per-sample total ``(B,)`` of one channel on dimension ``dim``, over all other positions."""
    picked = tensor.select(dim, channel)
    return picked.reshape(picked.shape[0], -1).sum(1)


class UnitSelector(int):
    """A Linear subunit's row ``c``: the int ``c``, and a Captum selector for any output rank.

    As an int it indexes a ``(B, C)`` tensor exactly as ``c`` does (and equals ``c``). Captum
    calls it (it is callable, which Captum checks first): channel ``c`` of the last axis, summed
    over the tokens of a ``(B, T, C)`` output, the channel itself on a ``(B, C)`` output. So
    ``subunit_selector`` needs no ``ndim`` for a CNN head or a ViT block alike.

    Examples
    --------
    >>> import torch
    >>> sel = UnitSelector(1)
    >>> sel == 1, torch.tensor([[1.0, 7.0, 2.0]])[:, sel]
    (True, tensor([7.]))
    >>> sel(torch.tensor([[1.0, 7.0, 2.0]])), sel(torch.ones(2, 5, 3))
    (tensor([7.]), tensor([5., 5.]))
    """

    def __call__(self, output: Tensor) -> Tensor:
        return channel_sum(output, -1, int(self))

    def __repr__(self) -> str:
        return f"UnitSelector({int(self)})"


class TokenSumSelector:
    """Captum neuron selector for Linear outputs: channel ``c`` of the last axis, summed over tokens.

    Works on ``(B, D)`` (the channel itself) and on token tensors ``(B, T, ..., D)`` (summed over
    all token positions).

    Parameters
    ----------
    channel : int
        Channel on the last dimension.

    Examples
    --------
    >>> import torch
    >>> TokenSumSelector(1)(torch.ones(2, 5, 3))
    tensor([5., 5.])
    >>> TokenSumSelector(1)(torch.tensor([[1.0, 7.0, 2.0]]))
    tensor([7.])
    """

    def __init__(self, channel: int) -> None:
        self.channel = int(channel)

    def __call__(self, output: Tensor) -> Tensor:
        return channel_sum(output, -1, self.channel)

    def __repr__(self) -> str:
        return f"TokenSumSelector({self.channel})"


class ChannelSumSelector:
    """Captum neuron selector: a weighted sum of channels, each summed over all positions.

    Used for subunits that are a sum of rows (the overlap form: ``t_k + r``).

    Parameters
    ----------
    channels : sequence of (int, float)
        ``(channel, weight)`` pairs.
    dim : int
        Channel axis counted from the end (``-3`` for Conv2d outputs, ``-1`` for Linear).

    Examples
    --------
    >>> import torch
    >>> ChannelSumSelector([(0, 1.0), (2, 1.0)], -1)(torch.tensor([[1.0, 5.0, 2.0]]))
    tensor([3.])
    """

    def __init__(self, channels: Any, dim: int) -> None:
        self.channels = tuple((int(c), float(w)) for c, w in channels)
        self.dim = int(dim)

    def __call__(self, output: Tensor) -> Tensor:
        return sum(w * channel_sum(output, self.dim, c) for c, w in self.channels)  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"ChannelSumSelector({list(self.channels)}, dim={self.dim})"


Selector = int | tuple[int | slice, ...] | Callable[[Tensor], Tensor]  # UnitSelector is an int


def subunit_selector(
    split_model: nn.Module,
    ref: SubunitLike,
    *,
    ndim: int | None = None,
    token: int | None = None,
) -> Selector:
    """A Captum ``neuron_selector`` for ``ref`` on :func:`subunit_layer` of its layer.

    The selector picks the *whole* subunit, as :class:`~neuronsplit.Disentangle` does. A subunit
    of the overlap form is two rows (``t_k + r``) and gets a :class:`ChannelSumSelector`. That
    works with the neuron methods that apply the selector to the layer output only
    (``NeuronGradient``, ``NeuronIntegratedGradients``, ``NeuronDeepLift``, ...), but not with
    ``NeuronConductance``, which applies it to the layer gradient too and would count the
    unit's gradient twice: use the disjoint form (one row per subunit) or
    :class:`~neuronsplit.Disentangle` there. Otherwise:

    The unit axis follows from the layer, so the same call serves CNNs and ViTs:

    * Conv2d (output ``(B, C, H, W)``): ``(c, slice(None), slice(None))``. Captum sums a sliced
      region per example, so this is the channel's total over all positions. Use
      ``(c, i, j)`` yourself for one position.
    * Linear (output ``(B, C)`` or token output ``(B, T, C)``): a :class:`UnitSelector`, the
      int ``c`` that Captum calls to pick channel ``c`` of the last axis and sum it over the
      tokens, if any; ``(token, c)`` when ``token`` is given (a ``(B, T, C)`` output).
    * ``ndim`` (optional, the output's rank including the batch) pins the form: ``ndim=2`` gives
      the plain int ``c`` (for ``NeuronConductance``, which warns about callables),
      ``ndim >= 3`` a :class:`TokenSumSelector`.

    Parameters
    ----------
    split_model : nn.Module
        A split model.
    ref : SubunitRef or (layer, unit, k) or str
        The subunit (``k=0`` of an unsplit unit: the unit itself).
    ndim : int, optional
        Number of dimensions of the layer output including the batch. Not needed (the selector
        fits any rank); ``ndim=2`` asks for the plain int of a Linear's 2-D output.
    token : int, optional
        Select one token of a ``(B, T, C)`` Linear output instead of summing over tokens.

    Returns
    -------
    int or tuple or callable

    Raises
    ------
    UnknownSubunitError
        For a subunit that does not exist.
    ValueError
        For an ``ndim`` / ``token`` that does not fit the layer type.

    Examples
    --------
    >>> from torch import nn
    >>> from neuronsplit.plan import SplitPlan, UnitSplit
    >>> from neuronsplit.nn import apply_plan
    >>> m = apply_plan(nn.Sequential(nn.Conv2d(2, 3, 1)), SplitPlan([UnitSplit("0", 0, [[0], [1]])]))
    >>> subunit_selector(m, ("0", 0, 1))
    (3, slice(None, None, None), slice(None, None, None))
    >>> lin = apply_plan(nn.Sequential(nn.Linear(2, 3)), SplitPlan([UnitSplit("0", 0, [[0], [1]])]))
    >>> subunit_selector(lin, ("0", 0, 1)), subunit_selector(lin, ("0", 0, 1), ndim=2)
    (UnitSelector(3), 3)
    """
    layer, rows, _ = subunit_rows(split_model, ref)
    channel = rows[0][0]
    if len(rows) > 1:  # overlap subunit: t_k + r
        if token is not None:
            raise InvalidArgumentError(
                "token= selects one row; overlap subunits are a sum of two rows"
            )
        return ChannelSumSelector(rows, layer.merge.dim)
    if isinstance(layer, SplitConv2d):
        if ndim not in (None, 4) or token is not None:
            raise InvalidArgumentError(
                f"a Conv2d subunit layer has 4-D outputs (B, C, H, W); got ndim={ndim!r}, "
                f"token={token!r}. Use a tuple (channel, i, j) for one position."
            )
        return (channel, slice(None), slice(None))
    if ndim == 2:
        if token is not None:
            raise InvalidArgumentError(
                f"token={token!r} needs a token output (B, T, C), but ndim=2 was given; drop "
                "ndim or pass ndim=3"
            )
        return channel
    if ndim is not None and ndim < 2:
        raise InvalidArgumentError(f"ndim must be >= 2 (batch and features), got {ndim}")
    if token is None:
        # the last axis is the unit axis of any Linear output: 2-D picks, 3-D+ sums over tokens
        return TokenSumSelector(channel) if ndim is not None else UnitSelector(channel)
    if ndim not in (None, 3):
        raise InvalidArgumentError(
            f"token= selects from (B, T, C) outputs (ndim=3); got ndim={ndim}"
        )
    return (operator.index(token), channel)
