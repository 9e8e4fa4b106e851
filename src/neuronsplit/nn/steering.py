"""Steering a split model: scale its subunits, for a block of code or for good.

:func:`steer` names subunits ``(layer, unit, k)`` with a scale ``alpha`` each (``k = -1``: the
residual; ``alpha = 1`` leaves a subunit as it is, ``0`` ablates it, ``> 1`` amplifies it) and
returns a :class:`Steering`. Used as a context manager it scales the subunits in the merge of
each named split layer (:meth:`IndexMerge.scaled`) while the block runs and restores the exact
merge on exit, also when the block raises; contexts nest, and nested scales multiply.
:meth:`Steering.permanent` (or ``steer(..., permanent=True)``) instead returns a new model in
which the scales are multiplied into the subunit rows' weights and biases, so it computes what
the context computes with no steering state.

In the disjoint form scaling subunit ``k`` by ``a_k`` gives ``z' = sum_k a_k t_k + a_r r``; in
Hesse's overlap form, where subunit ``k`` is ``s_k = t_k + r``, it gives
``z' = sum_k a_k s_k - (K-1) a_r r`` (the shared inputs inside ``s_k`` are scaled with it; see
``reference/methods.md`` section 2.6).

The scales file of ``neuronsplit steer`` (:func:`load_scales`) is a JSON list of objects::

    [{"layer": "fc2", "unit": 0, "k": 1, "alpha": 0.0},
     {"layer": "fc2", "unit": 0, "k": "residual", "alpha": 1.5}]
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import operator
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._checks import check_bool, check_module
from ..errors import (
    ArgumentTypeError,
    CorruptFileError,
    InvalidArgumentError,
    MissingFileError,
)
from .merge import RESIDUAL, check_scale
from .split_layer import SplitConv2d, SplitLinear
from .surgery import get_split_layer, iter_split_layers

__all__ = ["steer", "Steering", "load_scales", "SubunitKey"]

SubunitKey = tuple[str, int, int]
"""A subunit as ``(layer, unit, k)``; ``k = -1`` is the residual."""

_HALF = (torch.float16, torch.bfloat16)
_FIELDS = {"layer", "unit", "k", "alpha"}


def _key_of(ref: Any) -> tuple[Any, Any, Any]:
    """``(layer, unit, k)`` of a :class:`~neuronsplit.SubunitRef` (read by its attributes, so
    that ``nn`` does not import ``attribution``) or of a 3-tuple."""
    if isinstance(ref, tuple) and len(ref) == 3:
        return ref
    if not isinstance(ref, tuple) and all(hasattr(ref, a) for a in ("layer", "unit", "k")):
        return ref.layer, ref.unit, ref.k
    raise ArgumentTypeError(
        f"a key of scales must be a SubunitRef or a (layer, unit, k) tuple, got "
        f"{type(ref).__name__} {ref!r}"
    )


def _resolve(model: nn.Module, scales: Any) -> list[tuple[SubunitKey, nn.Module, float]]:
    """Check every entry of ``scales`` against ``model``: ``(key, split layer, alpha)``."""
    if not isinstance(scales, Mapping):
        raise ArgumentTypeError(
            f"scales must be a mapping {{SubunitRef or (layer, unit, k): alpha}}, got "
            f"{type(scales).__name__}"
        )
    out: list[tuple[SubunitKey, nn.Module, float]] = []
    seen: dict[tuple[int, int, int], SubunitKey] = {}
    for ref, value in scales.items():
        name, unit, k = _key_of(ref)
        layer = get_split_layer(model, name)  # UnknownLayerError: unknown, or not split
        layer.merge.channel(unit, k)  # UnknownSubunitError: unit not split, or no such k
        key = (name, operator.index(unit), RESIDUAL if k == "residual" else operator.index(k))
        alpha = check_scale(value, f"subunit {key}")
        same = (id(layer), key[1], key[2])  # a layer registered at two paths is one layer
        if same in seen:
            raise InvalidArgumentError(
                f"scales names subunit {key} twice (also as {seen[same]}); give each subunit "
                "one scale"
            )
        seen[same] = key
        out.append((key, layer, alpha))
    return out


class Steering:
    """Scales of some subunits of a split model, to use as a context or to bake in.

    Made by :func:`steer` (which checks the scales against the model; the constructor takes
    its checked entries). ``with steering:``
    scales the subunits while the block runs (``as`` gives the model); the same object can
    be entered again, also nested in itself (its scales then apply twice).
    :meth:`permanent` returns a steered copy instead.
    """

    def __init__(self, model: nn.Module, entries: list[tuple[SubunitKey, nn.Module, float]]):
        self._model = model
        self._entries = entries
        self._open: list[contextlib.ExitStack] = []

    @property
    def model(self) -> nn.Module:
        """The split model that is steered."""
        return self._model

    @property
    def scales(self) -> dict[SubunitKey, float]:
        """``{(layer, unit, k): alpha}``, normalised (``k = -1`` for the residual)."""
        return {key: alpha for key, _, alpha in self._entries}

    def _by_layer(self) -> list[tuple[nn.Module, dict[tuple[int, int], float]]]:
        groups: dict[int, tuple[nn.Module, dict[tuple[int, int], float]]] = {}
        for (_, unit, k), layer, alpha in self._entries:
            groups.setdefault(id(layer), (layer, {}))[1][(unit, k)] = alpha
        return list(groups.values())

    def __enter__(self) -> nn.Module:
        with contextlib.ExitStack() as stack:
            for layer, scales in self._by_layer():
                stack.enter_context(layer.merge.scaled(scales))
            self._open.append(stack.pop_all())  # all layers scaled: keep them open
        return self._model

    def __exit__(self, *exc: Any) -> None:
        self._open.pop().close()  # restores every layer of this entry, in reverse order

    def permanent(self) -> nn.Module:
        """A new model whose subunit rows are scaled, computing what the context computes.

        The model is deep-copied (never changed); scales already in force on it (contexts
        still open) are baked in as well. The copy carries no steering state: every merge is
        plain, and rows whose scale is 1 are bit-identical to the model's.

        Returns
        -------
        nn.Module
        """
        new = copy.deepcopy(self._model)
        entries = _resolve(new, {key: alpha for key, _, alpha in self._entries})
        factors = []
        with Steering(new, entries):
            for _, layer in iter_split_layers(new):
                merge = layer.merge
                if merge.steered:
                    factors.append((layer, torch.cat([merge.row_scale, merge.coef]).clone()))
        for _, layer in iter_split_layers(new):
            layer.merge.reset()  # contexts of the model copied along
        with torch.no_grad():
            for layer, factor in factors:
                _scale_rows(layer, factor)
        return new

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}: {a:g}" for k, _, a in self._entries[:6])
        more = ", ..." if len(self._entries) > 6 else ""
        return f"Steering({type(self._model).__name__}, {{{shown}{more}}})"


def _scale_rows(layer: SplitConv2d | SplitLinear, factor: torch.Tensor) -> None:
    """Multiply row ``i`` of ``layer.subunits`` (weight and bias) by ``factor[i]`` in place;
    half precision is multiplied in float32 and rounded once, as the merge does."""
    for param in (layer.subunits.weight, layer.subunits.bias):
        if param is None:
            continue
        work = torch.float32 if param.dtype in _HALF else param.dtype
        f = factor.to(param.device, work).reshape((-1,) + (1,) * (param.dim() - 1))
        param.copy_((param.to(work) * f).to(param.dtype))


def steer(split_model: nn.Module, scales: Mapping[Any, Any], *, permanent: bool = False) -> Any:
    """Scale subunits of a split model: as a context manager, or baked into a new model.

    Parameters
    ----------
    split_model : nn.Module
        A model from :func:`~neuronsplit.apply_plan` (or :func:`~neuronsplit.load`).
    scales : mapping
        ``{SubunitRef or (layer, unit, k): alpha}``. ``k = 0 .. K-1`` is a subunit, ``k = -1``
        (or ``"residual"``) the residual; ``alpha = 1`` leaves it unchanged (outputs stay
        bit-identical), ``0`` ablates it. In the overlap form subunit ``k`` is ``t_k + r``,
        so its scale also scales the shared inputs it holds (module docstring).
    permanent : bool
        False (default): return a :class:`Steering`, a context manager that scales the
        subunits of ``split_model`` itself while the ``with`` block runs and restores them
        exactly on exit (also on an exception); contexts nest and their scales multiply.
        True: return a new ``nn.Module`` with the scales multiplied into the subunit rows'
        weights and biases (``split_model`` is not changed; see :meth:`Steering.permanent`).

    Returns
    -------
    Steering or nn.Module

    Raises
    ------
    UnknownLayerError
        A layer that does not exist or is not split (the message lists the split layers).
    UnknownSubunitError
        A unit that is not split, or a ``k`` it does not have.
    ArgumentTypeError
        ``scales`` not a mapping, a key not a subunit, a scale not a number.
    InvalidArgumentError
        A scale that is not finite, or a subunit named twice.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from neuronsplit.nn import apply_plan
    >>> from neuronsplit.plan import SplitPlan, UnitSplit
    >>> fc = nn.Linear(3, 2)
    >>> with torch.no_grad():
    ...     _ = fc.weight.copy_(torch.tensor([[1.0, 2.0, 4.0], [1.0, 1.0, 1.0]]))
    ...     _ = fc.bias.zero_()
    >>> split = apply_plan(nn.Sequential(fc), SplitPlan([UnitSplit("0", 0, [[0], [1]], [2])]))
    >>> x = torch.ones(1, 3)
    >>> with torch.no_grad(), steer(split, {("0", 0, 1): 0.0}):  # drop input 1 from unit 0
    ...     split(x)
    tensor([[5., 3.]])
    >>> split(x).detach()  # restored
    tensor([[7., 3.]])
    >>> steered = steer(split, {("0", 0, -1): 2.0}, permanent=True)  # a new model
    >>> steered(x).detach()
    tensor([[11.,  3.]])
    """
    check_module(split_model, "split_model")
    check_bool(permanent, "permanent")
    steering = Steering(split_model, _resolve(split_model, scales))
    return steering.permanent() if permanent else steering


def _field(entry: dict[str, Any], name: str, where: str) -> Any:
    value = entry[name]
    if name == "layer":
        ok = isinstance(value, str) and value
    elif name == "unit":
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    elif name == "k":
        ok = value == "residual" or (
            isinstance(value, int) and not isinstance(value, bool) and value >= RESIDUAL
        )
    else:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = ok and math.isfinite(value)
    if not ok:
        want = {
            "layer": "a non-empty layer name",
            "unit": "an int >= 0",
            "k": "an int >= 0, or -1 / 'residual'",
            "alpha": "a finite number",
        }[name]
        raise CorruptFileError(f"{where}: {name!r} must be {want}, got {value!r}")
    return value


def load_scales(path: str | os.PathLike) -> dict[SubunitKey, float]:
    """Read a scales file: a JSON list of ``{"layer", "unit", "k", "alpha"}`` objects.

    ``k`` is ``0 .. K-1`` or ``-1`` / ``"residual"``. The result goes to :func:`steer`, which
    checks the subunits against the model.

    Parameters
    ----------
    path : path-like
        The JSON file.

    Returns
    -------
    dict
        ``{(layer, unit, k): alpha}`` in file order (``k = -1`` for the residual).

    Raises
    ------
    MissingFileError
        If the file does not exist.
    CorruptFileError
        Not JSON, not a list of such objects, a field missing, unknown or of the wrong type,
        or a subunit listed twice; the message names the entry.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "scales.json"
    >>> _ = p.write_text('[{"layer": "fc2", "unit": 0, "k": "residual", "alpha": 0.5}]')
    >>> load_scales(p)
    {('fc2', 0, -1): 0.5}
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(
            f"scales file {str(path)!r} does not exist; write a JSON list like "
            '[{"layer": "fc2", "unit": 3, "k": 0, "alpha": 0.0}]'
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CorruptFileError(f"scales file {str(path)!r} is not valid JSON: {err}") from err
    if not isinstance(data, list):
        raise CorruptFileError(
            f"scales file {str(path)!r} must hold a JSON list of objects "
            f'{{"layer", "unit", "k", "alpha"}}, got a {type(data).__name__}'
        )
    scales: dict[SubunitKey, float] = {}
    for i, entry in enumerate(data):
        where = f"scales file {str(path)!r}, entry {i}"
        if not isinstance(entry, dict) or set(entry) != _FIELDS:
            fields = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
            raise CorruptFileError(
                f"{where} must be an object with exactly the fields 'layer', 'unit', 'k', "
                f"'alpha'; got {fields}"
            )
        layer, unit, k, alpha = (_field(entry, n, where) for n in ("layer", "unit", "k", "alpha"))
        key = (layer, unit, RESIDUAL if k == "residual" else k)
        if key in scales:
            raise CorruptFileError(f"{where} lists subunit {key} a second time")
        scales[key] = float(alpha)
    return scales
