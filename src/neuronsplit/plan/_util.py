"""Private helpers of :mod:`neuronsplit.plan`: index parsing and read-only metadata."""

from __future__ import annotations

import json
import operator
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import PlanError


def fmt_indices(indices: Iterable[int], limit: int = 12) -> str:
    """Format sorted integers compactly as ``0-3, 7, 9`` (why: plans can hold thousands)."""
    values = sorted(set(indices))
    runs: list[str] = []
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        runs.append(str(values[i]) if i == j else f"{values[i]}-{values[j]}")
        i = j + 1
    if len(runs) > limit:
        return ", ".join(runs[:limit]) + f", ... ({len(values)} in all)"
    return ", ".join(runs)


def as_index(value: Any, what: str) -> int:
    """Convert ``value`` to a non-negative Python int, refusing bools, floats and strings."""
    if isinstance(value, bool):
        raise PlanError(f"{what} must be an int, got the bool {value!r}")
    try:
        out = operator.index(value)  # accepts int, numpy ints, 0-d integer tensors
    except TypeError:
        raise PlanError(f"{what} must be an int, got {type(value).__name__} {value!r}") from None
    if out < 0:
        raise PlanError(f"{what} must be >= 0, got {out}")
    return out


def as_index_tuple(values: Any, what: str) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise PlanError(f"{what} must be a sequence of ints, got {type(values).__name__}")
    return tuple(as_index(v, f"{what} entry") for v in values)


class FrozenMeta(Mapping[str, Any]):
    """Read-only, hashable, picklable mapping holding JSON-compatible plan metadata."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        try:
            # a JSON round trip both copies and proves that to_json() will work later
            plain = json.loads(json.dumps(thaw(dict(data or {})), allow_nan=False))
        except (TypeError, ValueError) as err:
            raise PlanError(f"plan meta must be JSON-serialisable (str keys): {err}") from err
        object.__setattr__(self, "_data", {k: freeze(v) for k, v in plain.items()})

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(json.dumps(thaw(self), sort_keys=True))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and thaw(self) == thaw(other)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("plan meta is read-only; build a new SplitPlan with other meta")

    def __repr__(self) -> str:
        return repr(thaw(self))

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenMeta, (thaw(self),))

    def to_dict(self) -> dict[str, Any]:
        """A plain, mutable copy: dicts and lists all the way down (JSON-ready).

        Examples
        --------
        >>> FrozenMeta({"a": [1, {"b": 2}]}).to_dict()
        {'a': [1, {'b': 2}]}
        """
        return thaw(self)


def freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return FrozenMeta(value)
    if isinstance(value, list):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [thaw(v) for v in value]
    return value


def as_long_tensor(values: Any, what: str, dims: int) -> Tensor:
    try:
        t = torch.as_tensor(np.asarray(values) if not isinstance(values, Tensor) else values)
    except (TypeError, ValueError) as err:
        raise PlanError(f"{what} must be integers, got {type(values).__name__}: {err}") from None
    if t.numel() and (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool):
        raise PlanError(f"{what} must hold integers, got dtype {t.dtype}")
    if t.dim() != dims:
        raise PlanError(f"{what} must be {dims}-d, got shape {tuple(t.shape)}")
    return t.detach().to("cpu", torch.int64)


def unit_labels(
    labels: Mapping[Any, Any] | None, k_of: dict[int, int], where: str
) -> dict[int, tuple[str, ...]]:
    """Validated ``{unit: names}``: keys are split units, values one string per subunit."""
    if labels is None:
        return {}
    if not isinstance(labels, Mapping):
        raise PlanError(
            f"labels of the {where} must map units to names, got {type(labels).__name__}"
        )
    out: dict[int, tuple[str, ...]] = {}
    for key, names in labels.items():
        try:
            u = int(key)
        except (TypeError, ValueError):
            raise PlanError(
                f"labels of the {where} are keyed by unit numbers, got {key!r}"
            ) from None
        if u not in k_of:
            raise PlanError(f"labels given for unit {u}, which the {where} does not split")
        if isinstance(names, (str, bytes)) or not isinstance(names, Iterable):
            raise PlanError(
                f"labels of unit {u} in the {where} must be a sequence of {k_of[u]} strings, got "
                f"{names!r}"
            )
        names = tuple(names)
        if len(names) != k_of[u] or not all(isinstance(n, str) for n in names):
            raise PlanError(
                f"labels of unit {u} in the {where} must be {k_of[u]} strings (one per "
                f"subunit), got {names!r}"
            )
        out[u] = names
    return out
