"""A split plan: which units of which layers are split, and how their inputs are routed.

A plan is pure data (no ``torch.nn``): one :class:`~neuronsplit.plan.LayerSplit` per layer plus
JSON-compatible metadata. :func:`neuronsplit.apply_plan` turns it into a rewritten model. Plans
are built from :class:`~neuronsplit.plan.UnitSplit` objects (one unit at a time, as Hesse et
al.'s method does) or from layer splits directly (whole layers, as ``discover`` does).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ..errors import ArgumentTypeError, CorruptFileError, PlanError, UnknownLayerError
from ._util import FrozenMeta, thaw
from .layer import LayerSplit
from .unit import UnitSplit

__all__ = ["SplitPlan", "PLAN_FORMAT", "PLAN_VERSION", "check_header"]

PLAN_FORMAT = "neuronsplit.SplitPlan"
PLAN_VERSION = 2  # 1: a list of unit splits; 2: layer splits (inline or in a safetensors file)


class SplitPlan:
    """An ordered set of layer splits plus JSON-compatible metadata. Read-only.

    Parameters
    ----------
    splits : iterable of UnitSplit or LayerSplit, default ()
        Unit splits of the same layer are packed into one :class:`LayerSplit` (they must share
        the merge form). Layers keep the order of their first appearance; within a layer units
        are in ascending order (which fixes the row layout of the split layer). A unit may be
        split only once. An empty plan is allowed.
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

    __slots__ = ("_layers", "meta", "_units")

    def __init__(
        self, splits: Iterable[UnitSplit | LayerSplit] = (), meta: Mapping[str, Any] | None = None
    ) -> None:
        if isinstance(splits, (UnitSplit, LayerSplit)) or not isinstance(splits, Iterable):
            raise PlanError(
                f"splits must be a sequence of UnitSplit or LayerSplit, got {type(splits).__name__}"
            )
        layers: dict[str, LayerSplit] = {}
        pending: dict[str, list[UnitSplit]] = {}
        order: list[str] = []
        for s in splits:
            if isinstance(s, UnitSplit):
                if s.layer in layers:
                    raise PlanError(
                        f"layer {s.layer!r} is given both as a LayerSplit and as unit splits"
                    )
                pending.setdefault(s.layer, []).append(s)
            elif isinstance(s, LayerSplit):
                if s.layer in layers or s.layer in pending:
                    raise PlanError(
                        f"layer {s.layer!r} appears twice in the plan; combine its splits into "
                        "one LayerSplit"
                    )
                layers[s.layer] = s
            else:
                raise PlanError(
                    f"splits must contain UnitSplit or LayerSplit objects, got "
                    f"{type(s).__name__} {s!r:.60}; use SplitPlan.from_dict for plain dicts"
                )
            if s.layer not in order:
                order.append(s.layer)
        for name, units in pending.items():
            seen: set[int] = set()
            for u in units:
                if u.unit in seen:
                    raise PlanError(
                        f"unit {u.unit} of layer {name!r} is split twice in the plan; merge the "
                        "two UnitSplit entries into one"
                    )
                seen.add(u.unit)
            layers[name] = LayerSplit.from_unit_splits(units)
        object.__setattr__(self, "_layers", {name: layers[name] for name in order})
        object.__setattr__(self, "meta", FrozenMeta(meta))
        object.__setattr__(self, "_units", None)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("SplitPlan is read-only; build a new one")

    # ------------------------------------------------------------------ views
    @property
    def layer_splits(self) -> tuple[LayerSplit, ...]:
        """The layer splits in plan order."""
        return tuple(self._layers.values())

    @property
    def layers(self) -> tuple[str, ...]:
        """Layer names in plan order."""
        return tuple(self._layers)

    def layer(self, name: str) -> LayerSplit:
        """The :class:`LayerSplit` of one layer.

        Raises
        ------
        UnknownLayerError
            If the plan does not split that layer.
        """
        try:
            return self._layers[name]
        except KeyError:
            raise UnknownLayerError(
                f"the plan does not split layer {name!r}; it splits {list(self._layers)}"
            ) from None

    def by_layer(self) -> dict[str, LayerSplit]:
        """``{layer name: LayerSplit}`` in plan order."""
        return dict(self._layers)

    @property
    def splits(self) -> tuple[UnitSplit, ...]:
        """Every split unit as a :class:`UnitSplit` (layer order, then ascending unit)."""
        if self._units is None:
            units = tuple(u for ls in self._layers.values() for u in ls.unit_splits())
            object.__setattr__(self, "_units", units)
        return self._units

    @property
    def num_units(self) -> int:
        """Number of split units over all layers."""
        return sum(ls.num_units for ls in self._layers.values())

    def __iter__(self) -> Iterator[UnitSplit]:
        return iter(self.splits)

    def __len__(self) -> int:
        return self.num_units

    def __getitem__(self, i: int) -> UnitSplit:
        return self.splits[i]

    def with_meta(self, meta: Mapping[str, Any]) -> SplitPlan:
        """The same splits with other metadata."""
        return SplitPlan(self.layer_splits, meta=meta)

    def check_shapes(self, shapes: Mapping[str, tuple[int, int]]) -> None:
        """Check every layer split against ``{layer: (units, inputs)}`` of a model.

        Raises
        ------
        UnknownLayerError
            A planned layer is missing from ``shapes``.
        PlanMismatchError
            A unit or input count does not fit.
        """
        for name, ls in self._layers.items():
            if name not in shapes:
                raise UnknownLayerError(f"the model has no layer {name!r} to split")
            ls.check_shape(*shapes[name])

    # ------------------------------------------------------------------ dicts and JSON
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with every assignment inline (use :meth:`save` for big plans).

        Examples
        --------
        >>> SplitPlan([]).to_dict()["version"]
        2
        """
        return {
            "format": PLAN_FORMAT,
            "version": PLAN_VERSION,
            "meta": thaw(self.meta),
            "layers": [ls.to_dict() for ls in self._layers.values()],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SplitPlan:
        """Build a plan from :meth:`to_dict` output (version 2) or a version-1 unit list.

        Raises
        ------
        CorruptFileError
            Wrong ``format``, a newer ``version``, a malformed layout, or assignments stored in
            a separate file (read those with :meth:`load`).
        PlanError
            Invalid splits (duplicate indices, ...).

        Examples
        --------
        >>> SplitPlan.from_dict({"version": 1, "splits": []}).layers
        ()
        """
        meta, version = check_header(data)
        if version == 1:
            splits = data.get("splits")
            if not isinstance(splits, list):
                raise CorruptFileError(
                    f"split plan field 'splits' must be a list, got {splits!r:.60}"
                )
            # version-1 files default to Hesse's overlap form, the default of neuronsplit 0.1
            units = [UnitSplit.from_dict({"merge": "overlap", **s}) if isinstance(s, Mapping)
                     else UnitSplit.from_dict(s) for s in splits]  # fmt: skip
            return cls(units, meta=meta)
        if "assignments" in data:
            raise CorruptFileError(
                "this plan keeps its assignments in a separate safetensors file; read it with "
                "SplitPlan.load('<dir>/plan.json')"
            )
        layers = data.get("layers")
        if not isinstance(layers, list) or not all(isinstance(x, Mapping) for x in layers):
            raise CorruptFileError(
                f"split plan field 'layers' must be a list of objects, got {layers!r:.60}"
            )
        try:
            return cls([LayerSplit.from_parts(x, x) for x in layers], meta=meta)
        except KeyError as err:
            raise CorruptFileError(f"a layer of the split plan lacks the field {err}") from None

    def to_json(self, path: str | Path | None = None, *, indent: int | None = None) -> str:
        """Serialise to JSON with inline assignments; also write it to ``path`` when given.

        Examples
        --------
        >>> SplitPlan([]).to_json()
        '{"format": "neuronsplit.SplitPlan", "version": 2, "meta": {}, "layers": []}'
        """
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            from .._files import atomic_write_text

            atomic_write_text(Path(path), text)
        return text

    @classmethod
    def from_json(cls, source: str | Path) -> SplitPlan:
        """Read a plan from JSON text or from a file (also one written by :meth:`save`).

        Parameters
        ----------
        source : str or Path
            A ``Path``, or a ``str`` that is JSON text (starts with ``{``) or a file path.

        Raises
        ------
        CorruptFileError
            Missing file, invalid JSON or a malformed plan layout.
        PlanError
            Invalid splits in JSON text (a file with invalid splits raises CorruptFileError
            naming the file).

        Examples
        --------
        >>> SplitPlan.from_json('{"version": 1, "splits": []}')
        SplitPlan(<empty>)
        """
        if isinstance(source, str) and source.lstrip().startswith("{"):
            try:
                data = json.loads(source)
            except json.JSONDecodeError as err:
                raise CorruptFileError(f"plan JSON is not valid JSON: {err}") from err
            return cls.from_dict(data)
        if not isinstance(source, (str, Path)):
            raise ArgumentTypeError(
                f"from_json expects JSON text or a path, got {type(source).__name__}"
            )
        from .files import load_plan

        return load_plan(Path(source))

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (``plan.json``: metadata) and ``<stem>.safetensors`` (assignments).

        Both are written atomically; the JSON records the SHA-256 of the tensor file, so a pair
        from different saves is refused on load.

        Parameters
        ----------
        path : str or Path
            The JSON file; it must end in ``.json``.

        Returns
        -------
        Path
            The JSON path.
        """
        from .files import save_plan

        return save_plan(self, Path(path))

    @classmethod
    def load(cls, path: str | Path) -> SplitPlan:
        """Read a plan written by :meth:`save` (or an inline JSON file).

        Raises
        ------
        CorruptFileError
            Missing, unreadable, mismatched or invalid files; the message names the file.
        """
        from .files import load_plan

        return load_plan(Path(path))

    # ------------------------------------------------------------------ comparison
    def __eq__(self, other: object) -> bool:
        # a plan is a set of layer splits: the order of the layers is presentation only
        if not isinstance(other, SplitPlan):
            return NotImplemented
        return self._layers == other._layers and self.meta == other.meta

    def __hash__(self) -> int:
        return hash((frozenset(self._layers.values()), self.meta))

    def __reduce__(self) -> tuple[Any, ...]:
        return (SplitPlan, (self.layer_splits, thaw(self.meta)))

    def __repr__(self) -> str:
        # counts, not indices: a whole-layer plan has millions of assignments
        if not self._layers:
            body = "<empty>"
        else:
            n, units = len(self._layers), self.num_units
            subunits = sum(int(ls.num_subunits.sum()) for ls in self._layers.values())
            names = list(self._layers)[:4] + (["..."] if n > 4 else [])
            body = (
                f"{n} layer{'s' if n > 1 else ''}, {units} unit{'s' if units != 1 else ''} "
                f"split, {subunits} subunits, layers={names}"
            )
        meta = f", meta keys={sorted(self.meta)}" if self.meta else ""
        return f"SplitPlan({body}{meta})"


def check_header(data: Any) -> tuple[Mapping[str, Any], int]:
    """Validate the format, version and meta of a plan dict; return ``(meta, version)``.

    Raises
    ------
    CorruptFileError
        Not an object, another format, a version this neuronsplit cannot read, or bad meta.
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
    if version > PLAN_VERSION or version < 1:
        raise CorruptFileError(
            f"split plan has version {version}, this neuronsplit reads versions 1 to "
            f"{PLAN_VERSION}; upgrade neuronsplit"
        )
    meta = data.get("meta", {})
    if not isinstance(meta, Mapping):
        raise CorruptFileError(f"split plan field 'meta' must be an object, got {meta!r:.60}")
    return meta, version
