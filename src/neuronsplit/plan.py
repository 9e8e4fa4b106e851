"""Split plans: which unit of which layer is split, and how its inputs are routed.

A plan is pure data. It knows nothing about weights; :func:`neuronsplit.surgery.apply_plan`
turns it into a rewritten model. Both classes are frozen dataclasses with a JSON round trip.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from torch import nn

from ._plan_util import (
    _as_index,
    _as_index_tuple,
    _check_plain,
    _fmt_indices,
    _FrozenMeta,
    _n_inputs_outputs,
    _thaw,
)
from .errors import CorruptFileError, PlanError, PlanMismatchError
from .layers import check_supported, resolve_layer

__all__ = ["UnitSplit", "SplitPlan", "MERGE_FORMS", "PLAN_FORMAT", "PLAN_VERSION"]

MergeForm = Literal["overlap", "partition"]
MERGE_FORMS: tuple[str, ...] = ("overlap", "partition")
PLAN_FORMAT = "neuronsplit.SplitPlan"
PLAN_VERSION = 1

_UNIT_KEYS = {"layer", "unit", "groups", "shared", "merge", "labels"}


@dataclass(frozen=True)
class UnitSplit:
    """How one unit (a Conv2d output channel or a Linear output feature) is split.

    Parameters
    ----------
    layer : str
        Dotted name of the ``nn.Conv2d`` / ``nn.Linear`` layer, e.g. ``"layer4.2.conv3"``.
    unit : int
        Output channel / feature of that layer.
    groups : tuple of tuple of int
        ``groups[k]`` are the input indices (input channels of a Conv2d, input features of a
        Linear) routed to subunit ``k``. At least two groups are required: a single concept
        needs no split. A group may be empty (the split stays exact).
    shared : tuple of int, default ()
        The remaining input indices (``S0``), seen by the residual.
    merge : {"overlap", "partition"}, default "overlap"
        ``"overlap"`` (Hesse et al.): subunit ``k`` sees ``groups[k] + shared`` and the bias,
        the residual sees ``shared`` and the bias, ``z = sum_k s_k - (K-1) r``.
        ``"partition"``: subunit ``k`` sees only ``groups[k]`` (no bias), the residual sees
        ``shared`` and the bias, ``z = sum_k t_k + t_0``.
    labels : tuple of str, default ()
        Optional human-readable concept names, one per group.

    Notes
    -----
    Lists are normalised to sorted tuples of ints. Every index may appear only once across
    ``groups`` and ``shared``; completeness against a concrete layer is checked by
    :meth:`validate`.

    Examples
    --------
    >>> s = UnitSplit("fc", 0, groups=[[2, 0], [1]], shared=[3], merge="partition")
    >>> s.groups, s.num_subunits
    (((0, 2), (1,)), 2)
    >>> UnitSplit.from_json(s.to_json()) == s
    True
    """

    layer: str
    unit: int
    groups: tuple[tuple[int, ...], ...]
    shared: tuple[int, ...] = ()
    merge: MergeForm = "overlap"
    labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.layer, str) or not self.layer:
            raise PlanError(
                f"layer must be a non-empty dotted name like 'layer4.2.conv3', got {self.layer!r}"
            )
        unit = _as_index(self.unit, f"unit of layer {self.layer!r}")
        where = f"split of unit {unit} of {self.layer!r}"
        if isinstance(self.groups, (str, bytes)) or not isinstance(self.groups, Iterable):
            raise PlanError(f"groups of the {where} must be a sequence of index sequences")
        groups = tuple(
            _as_index_tuple(g, f"groups[{k}] of the {where}") for k, g in enumerate(self.groups)
        )
        if len(groups) < 2:
            raise PlanError(
                f"the {where} has {len(groups)} group(s); a split needs at least 2 groups "
                "(a unit with a single concept needs no split: leave it out of the plan)"
            )
        shared = _as_index_tuple(self.shared, f"shared of the {where}")
        seen: dict[int, int] = {}
        for idx in (i for g in (*groups, shared) for i in g):
            seen[idx] = seen.get(idx, 0) + 1
        dup = [i for i, n in seen.items() if n > 1]
        if dup:
            raise PlanError(
                f"input indices {_fmt_indices(dup)} appear more than once in the {where}; "
                "each input index must go to exactly one group or to shared"
            )
        if self.merge not in MERGE_FORMS:
            raise PlanError(
                f"merge must be one of {', '.join(map(repr, MERGE_FORMS))}; got {self.merge!r} "
                f"for the {where}"
            )
        labels = self.labels
        if isinstance(labels, str) or not isinstance(labels, Iterable):
            raise PlanError(f"labels of the {where} must be a sequence of str, got {labels!r}")
        labels = tuple(labels)
        if labels and len(labels) != len(groups):
            raise PlanError(
                f"the {where} has {len(groups)} groups but {len(labels)} labels; give one label "
                "per group or none"
            )
        if not all(isinstance(x, str) for x in labels):
            raise PlanError(f"labels of the {where} must all be str, got {labels!r}")
        object.__setattr__(self, "unit", unit)
        object.__setattr__(self, "groups", tuple(tuple(sorted(g)) for g in groups))
        object.__setattr__(self, "shared", tuple(sorted(shared)))
        object.__setattr__(self, "labels", labels)

    @property
    def num_subunits(self) -> int:
        """Number of subunits ``K`` (the residual not counted)."""
        return len(self.groups)

    @property
    def num_extra_rows(self) -> int:
        """Rows the split adds to the layer: ``K - 1`` subunits plus the residual."""
        return len(self.groups)

    def validate(self, n_inputs: int, n_units: int) -> None:
        """Check the split against a layer with ``n_inputs`` inputs and ``n_units`` outputs.

        Every input index ``0 .. n_inputs-1`` must appear exactly once across ``groups`` and
        ``shared``, and ``unit`` must be below ``n_units``.

        Parameters
        ----------
        n_inputs : int
            Input channels (Conv2d) or input features (Linear) of the layer.
        n_units : int
            Output channels / features of the layer.

        Raises
        ------
        PlanMismatchError
            Naming the unit or the missing / out-of-range indices.

        Examples
        --------
        >>> UnitSplit("fc", 1, groups=[[0], [1]], shared=[2]).validate(3, 4)
        >>> UnitSplit("fc", 1, groups=[[0], [1]]).validate(3, 4)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        neuronsplit.errors.PlanMismatchError: input indices 2 of layer 'fc' are in no group ...
        """
        where = f"layer {self.layer!r}"
        if self.unit >= n_units:
            raise PlanMismatchError(
                f"unit {self.unit} is out of range for {where}, which has {n_units} units "
                f"(valid: 0..{n_units - 1})"
            )
        used = {i for g in (*self.groups, self.shared) for i in g}
        too_big = [i for i in used if i >= n_inputs]
        if too_big:
            raise PlanMismatchError(
                f"input indices {_fmt_indices(too_big)} in the split of unit {self.unit} are out "
                f"of range for {where}, which has {n_inputs} inputs (valid: 0..{n_inputs - 1})"
            )
        missing = [i for i in range(n_inputs) if i not in used]
        if missing:
            raise PlanMismatchError(
                f"input indices {_fmt_indices(missing)} of {where} are in no group and not in "
                f"shared for unit {self.unit}; every input index must appear exactly once "
                "(put the unassigned ones into shared)"
            )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (lists instead of tuples).

        Examples
        --------
        >>> UnitSplit("fc", 0, groups=[[0], [1]]).to_dict()["groups"]
        [[0], [1]]
        """
        return {
            "layer": self.layer,
            "unit": self.unit,
            "groups": [list(g) for g in self.groups],
            "shared": list(self.shared),
            "merge": self.merge,
            "labels": list(self.labels),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UnitSplit:
        """Build a split from :meth:`to_dict` output; unknown or missing keys raise PlanError.

        Examples
        --------
        >>> UnitSplit.from_dict({"layer": "fc", "unit": 0, "groups": [[0], [1]]}).merge
        'overlap'
        """
        if not isinstance(data, Mapping):
            raise PlanError(f"a unit split must be a JSON object, got {type(data).__name__}")
        unknown = set(data) - _UNIT_KEYS
        if unknown:
            raise PlanError(
                f"unknown key(s) {sorted(unknown)} in unit split; valid: {sorted(_UNIT_KEYS)}"
            )
        missing = {"layer", "unit", "groups"} - set(data)
        if missing:
            raise PlanError(f"unit split {dict(data)!r:.80} lacks key(s) {sorted(missing)}")
        return cls(**dict(data))

    def to_json(self) -> str:
        """Return the split as a JSON string (see :meth:`to_dict`).

        Examples
        --------
        >>> UnitSplit("fc", 0, groups=[[0], [1]]).to_json()[:13]
        '{"layer": "fc'
        """
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> UnitSplit:
        """Parse a JSON string written by :meth:`to_json`.

        Examples
        --------
        >>> UnitSplit.from_json('{"layer": "fc", "unit": 2, "groups": [[1], [0]]}').groups
        ((1,), (0,))
        """
        try:
            data = json.loads(text)
        except (TypeError, json.JSONDecodeError) as err:
            raise CorruptFileError(f"unit split is not valid JSON: {err}") from err
        return cls.from_dict(data)


@dataclass(frozen=True)
class SplitPlan:
    """An ordered collection of :class:`UnitSplit` plus JSON-compatible metadata.

    Parameters
    ----------
    splits : sequence of UnitSplit
        The unit splits. Within a layer, the order fixes the layout of the extra rows.
        A (layer, unit) pair may appear only once. An empty plan is allowed.
    meta : mapping, default {}
        JSON-compatible metadata (method, parameters, ...). Stored read-only.

    Examples
    --------
    >>> plan = SplitPlan([UnitSplit("0", 1, groups=[[0], [1]], shared=[2])], meta={"by": "me"})
    >>> len(plan), plan.layers, plan.meta["by"]
    (1, ('0',), 'me')
    >>> SplitPlan.from_json(plan.to_json()) == plan
    True
    """

    splits: tuple[UnitSplit, ...]
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.splits, UnitSplit) or not isinstance(self.splits, Iterable):
            raise PlanError(
                f"splits must be a sequence of UnitSplit, got {type(self.splits).__name__}"
            )
        splits = tuple(self.splits)
        for s in splits:
            if not isinstance(s, UnitSplit):
                raise PlanError(
                    f"splits must contain UnitSplit objects, got {type(s).__name__} {s!r:.60}; "
                    "use SplitPlan.from_dict for plain dicts"
                )
        seen: set[tuple[str, int]] = set()
        for s in splits:
            if (s.layer, s.unit) in seen:
                raise PlanError(
                    f"unit {s.unit} of layer {s.layer!r} is split twice in the plan; merge the "
                    "two UnitSplit entries into one"
                )
            seen.add((s.layer, s.unit))
        object.__setattr__(self, "splits", splits)
        object.__setattr__(self, "meta", _FrozenMeta(self.meta))

    def __iter__(self) -> Iterator[UnitSplit]:
        return iter(self.splits)

    def __len__(self) -> int:
        return len(self.splits)

    def __getitem__(self, i: int) -> UnitSplit:
        return self.splits[i]

    @property
    def layers(self) -> tuple[str, ...]:
        """Layer names in order of first appearance."""
        return tuple(dict.fromkeys(s.layer for s in self.splits))

    def by_layer(self) -> dict[str, list[UnitSplit]]:
        """Group the splits by layer, keeping plan order.

        Examples
        --------
        >>> p = SplitPlan([UnitSplit("a", 0, [[0], [1]]), UnitSplit("a", 1, [[1], [0]])])
        >>> [s.unit for s in p.by_layer()["a"]]
        [0, 1]
        """
        out: dict[str, list[UnitSplit]] = {}
        for s in self.splits:
            out.setdefault(s.layer, []).append(s)
        return out

    def validate(self, model: nn.Module) -> None:
        """Check that the plan fits ``model`` (read-only; the model is not changed).

        Raises
        ------
        UnknownLayerError
            A planned layer does not exist (the message lists close names).
        UnsupportedLayerError
            A planned layer is not a Conv2d (groups=1) or Linear.
        PlanError
            A planned layer is already split, or lies inside a split layer.
        PlanMismatchError
            A unit or input index is out of range, or input indices are missing.

        Examples
        --------
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Linear(3, 2))
        >>> SplitPlan([UnitSplit("0", 1, [[0], [1]], shared=[2])]).validate(m)
        """
        from .surgery import SplitConv2d, SplitLinear  # local: surgery imports this module

        split_names = [
            n for n, m in model.named_modules() if isinstance(m, (SplitConv2d, SplitLinear))
        ]
        for name, splits in self.by_layer().items():
            for sname in split_names:
                if name.startswith(sname + "."):
                    raise PlanError(
                        f"layer {name!r} lies inside the split layer {sname!r}; nested splits are "
                        "not supported. Plan against the original model instead."
                    )
            layer = resolve_layer(model, name)
            if isinstance(layer, (SplitConv2d, SplitLinear)):
                raise PlanError(
                    f"layer {name!r} is already split; nested splits are not supported. Apply "
                    "one combined plan to the original model (see neuronsplit.surgery.plan_of)."
                )
            check_supported(layer, name)
            _check_plain(model, layer, name)
            n_in, n_out = _n_inputs_outputs(layer)
            for s in splits:
                s.validate(n_in, n_out)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict with ``format`` and ``version`` fields.

        Examples
        --------
        >>> SplitPlan([]).to_dict()["version"]
        1
        """
        return {
            "format": PLAN_FORMAT,
            "version": PLAN_VERSION,
            "meta": _thaw(self.meta),
            "splits": [s.to_dict() for s in self.splits],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SplitPlan:
        """Build a plan from :meth:`to_dict` output.

        Raises
        ------
        CorruptFileError
            Wrong ``format``, a newer ``version`` or a malformed layout.
        PlanError
            Invalid splits (duplicate indices, ...).

        Examples
        --------
        >>> SplitPlan.from_dict({"version": 1, "splits": []}).splits
        ()
        """
        if not isinstance(data, Mapping):
            raise CorruptFileError(f"a split plan must be a JSON object, got {type(data).__name__}")
        fmt = data.get("format", PLAN_FORMAT)
        if fmt != PLAN_FORMAT:
            raise CorruptFileError(
                f"not a neuronsplit plan: format is {fmt!r}, expected {PLAN_FORMAT!r}"
            )
        version = data.get("version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise CorruptFileError(f"split plan lacks an integer 'version' field (got {version!r})")
        if version > PLAN_VERSION:
            raise CorruptFileError(
                f"split plan has version {version}, this neuronsplit reads up to {PLAN_VERSION}; "
                "upgrade neuronsplit"
            )
        splits = data.get("splits")
        if not isinstance(splits, list):
            raise CorruptFileError(f"split plan field 'splits' must be a list, got {splits!r:.60}")
        meta = data.get("meta", {})
        if not isinstance(meta, Mapping):
            raise CorruptFileError(f"split plan field 'meta' must be an object, got {meta!r:.60}")
        return cls(tuple(UnitSplit.from_dict(s) for s in splits), meta=meta)

    def to_json(self, path: str | Path | None = None, *, indent: int | None = None) -> str:
        """Serialise to JSON; also write it to ``path`` when given.

        Parameters
        ----------
        path : str or Path, optional
            File to write (UTF-8).
        indent : int, optional
            Passed to :func:`json.dumps`.

        Returns
        -------
        str
            The JSON text.

        Examples
        --------
        >>> SplitPlan([]).to_json()
        '{"format": "neuronsplit.SplitPlan", "version": 1, "meta": {}, "splits": []}'
        """
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    @classmethod
    def from_json(cls, source: str | Path) -> SplitPlan:
        """Read a plan from JSON text or from a file.

        Parameters
        ----------
        source : str or Path
            A ``Path``, or a ``str`` that is JSON text (starts with ``{``) or a file path.

        Raises
        ------
        CorruptFileError
            Missing file, invalid JSON or a malformed plan layout.
        PlanError
            Invalid splits.

        Examples
        --------
        >>> SplitPlan.from_json('{"version": 1, "splits": []}')
        SplitPlan(splits=(), meta={})
        """
        if isinstance(source, str) and source.lstrip().startswith("{"):
            text, where = source, "plan JSON"
        elif isinstance(source, (str, Path)):
            path = Path(source)
            if not path.is_file():
                raise CorruptFileError(f"plan file {str(path)!r} does not exist or is not a file")
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as err:
                raise CorruptFileError(f"cannot read plan file {str(path)!r}: {err}") from err
            where = f"plan file {str(path)!r}"
        else:
            raise TypeError(f"from_json expects JSON text or a path, got {type(source).__name__}")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise CorruptFileError(f"{where} is not valid JSON: {err}") from err
        return cls.from_dict(data)

    def __repr__(self) -> str:
        if len(self.splits) > 6:
            body = f"<{len(self.splits)} splits in {len(self.layers)} layers>"
        else:
            body = repr(self.splits)
        return f"SplitPlan(splits={body}, meta={self.meta!r})"
