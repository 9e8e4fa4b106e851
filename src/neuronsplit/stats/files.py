"""Scan files: one safetensors file with a versioned JSON header.

The header lists the layers, every statistic with its type and parameters, and the shape and
dtype of every tensor; :func:`load_scan` checks each tensor against it, so a truncated,
edited or foreign file is refused with a message that names the file and the tensor.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .._files import atomic_write
from ..errors import CorruptFileError, MissingFileError
from .layer import LayerStats
from .result import ScanResult
from .statistics import STATISTIC_TYPES, ClassCounts, Statistic

__all__ = ["save_scan", "load_scan", "SCAN_FORMAT", "SCAN_VERSION"]

SCAN_FORMAT = "neuronsplit.scan"
# 1: fixed tensors (neuronsplit 0.1); 2: statistic objects, shapes in header; 3: images without
# positive relevance are important for no unit, and are counted per layer ("no_positive")
SCAN_VERSION = 3


def _entries(result: ScanResult) -> list[tuple[str, str, Statistic]]:
    """``(key prefix, statistic name, statistic)`` of every statistic, counts first."""
    out: list[tuple[str, str, Statistic]] = [("", "class_counts", result.counts)]
    for name, stats in result.layers.items():
        out.extend((f"{name}/", key, stat) for key, stat in stats.statistics.items())
    return out


def save_scan(result: ScanResult, path: str | os.PathLike) -> None:
    """Write ``result`` atomically (temporary file, then rename)."""
    from safetensors.torch import save_file

    tensors = {}
    for name, stats in result.layers.items():
        tensors[f"{name}/weight"] = stats.weight
    for prefix, key, stat in _entries(result):
        for field, tensor in stat.tensors.items():
            tensors[f"{prefix}{key}/{field}"] = tensor
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    header = {
        "format": SCAN_FORMAT,
        "version": SCAN_VERSION,
        "layers": [
            {
                "name": name,
                "kind": stats.kind,
                "statistics": {
                    key: {"type": type(s).__name__, "spec": s.spec()}
                    for key, s in stats.statistics.items()
                },
            }
            for name, stats in result.layers.items()
        ],
        "tau_grid": list(result.tau_grid),
        "relevance": result.relevance,
        "target": result.target,
        "meta": result.meta,
        "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in tensors.items()},
    }
    path = Path(path)
    metadata = {"neuronsplit": json.dumps(header)}
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata=metadata))


def load_scan(path: str | os.PathLike) -> ScanResult:
    """Read a file written by :func:`save_scan` (see :meth:`ScanResult.load`)."""
    from safetensors import safe_open

    path = os.fspath(path)
    if not os.path.exists(path):
        raise MissingFileError(f"scan file {path!r} does not exist")
    try:
        with safe_open(path, framework="pt") as handle:
            header = json.loads((handle.metadata() or {})["neuronsplit"])
            if not isinstance(header, dict):
                raise TypeError(f"metadata is a JSON {type(header).__name__}, not an object")
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as exc:
        raise CorruptFileError(
            f"{path!r} is not a neuronsplit scan file ({type(exc).__name__}: {exc}); "
            "re-create it with ScanResult.save()."
        ) from exc
    fmt, version = header.get("format"), header.get("version")
    if fmt == "neuronsplit.scan/1":
        raise CorruptFileError(
            f"{path!r} was written by neuronsplit 0.1 (scan format 1); scan again to write the "
            f"current format {SCAN_VERSION}"
        )
    if fmt == SCAN_FORMAT and version == 2:
        raise CorruptFileError(
            f"{path!r} has scan format version 2, whose importance counts mark every unit as "
            "important for an image without positive relevance at the layer (version 3 counts "
            "such images for no unit and keeps their number); scan again to write version "
            f"{SCAN_VERSION}"
        )
    if fmt != SCAN_FORMAT or version != SCAN_VERSION:
        raise CorruptFileError(
            f"{path!r} has format {fmt!r} version {version!r}; this neuronsplit reads "
            f"{SCAN_FORMAT!r} version {SCAN_VERSION}"
        )
    try:
        _check_tensors(path, header["tensors"], tensors)
        layers = {}
        for entry in header["layers"]:
            name = entry["name"]
            statistics = {
                key: _statistic(info, tensors, f"{name}/{key}")
                for key, info in entry["statistics"].items()
            }
            layers[name] = LayerStats(name, entry["kind"], tensors[f"{name}/weight"], statistics)
        counts = _statistic({"type": "ClassCounts", "spec": {}}, tensors, "class_counts")
        if not isinstance(counts, ClassCounts):
            raise TypeError("class_counts is not a ClassCounts")
        _check_consistent(path, counts, layers, tuple(float(t) for t in header["tau_grid"]))
        return ScanResult(
            layers,
            counts,
            tuple(float(t) for t in header["tau_grid"]),
            str(header["relevance"]),
            str(header["target"]),
            dict(header.get("meta", {})),
        )
    except CorruptFileError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CorruptFileError(
            f"{path!r} is incomplete or malformed ({type(exc).__name__}: {exc}); "
            "re-create it with ScanResult.save()."
        ) from None


def _check_tensors(path: str, declared: Any, tensors: dict[str, Any]) -> None:
    if not isinstance(declared, dict):
        raise TypeError("the header's 'tensors' entry is not an object")
    missing = sorted(set(declared) - set(tensors))
    extra = sorted(set(tensors) - set(declared))
    if missing or extra:
        raise CorruptFileError(
            f"{path!r} does not match its header: missing tensors {missing[:5]}, undeclared "
            f"tensors {extra[:5]}; re-create it with ScanResult.save()."
        )
    for key, info in declared.items():
        t = tensors[key]
        if list(t.shape) != list(info["shape"]) or str(t.dtype) != info["dtype"]:
            raise CorruptFileError(
                f"{path!r}: tensor {key!r} has shape {list(t.shape)} and {t.dtype}, the header "
                f"declares {info['shape']} and {info['dtype']}; the file was altered or damaged"
            )


def _statistic(info: Any, tensors: dict[str, Any], prefix: str) -> Statistic:
    cls = STATISTIC_TYPES[info["type"]]
    spec = dict(info.get("spec") or {})
    return cls(**{f: tensors[f"{prefix}/{f}"] for f in cls.fields}, **spec)


_REQUIRED = {
    "important": "TauCounts",
    "no_positive": "NoPositiveCounts",
    "relevance_sum": "ClassSums",
    "input_sums": "TapSums",
}


def _check_consistent(
    path: str, counts: ClassCounts, layers: dict[str, LayerStats], taus: tuple[float, ...]
) -> None:
    """Every statistic must be of its type and agree with the layer, the classes and the grid."""
    n = int(counts.counts.shape[0])
    for name, stats in layers.items():
        c, j, k = stats.weight.shape
        expected = {
            "important": {"counts": (len(taus), n, c)},
            "no_positive": {"counts": (n,)},
            "relevance_sum": {"sums": (n, c)},
            "input_sums": {"sums": (n, j, k)},
        }
        problems = []
        if stats.kind not in ("conv2d", "linear"):
            problems.append(f"{name}: kind {stats.kind!r} is neither 'conv2d' nor 'linear'")
        for key, type_name in _REQUIRED.items():
            stat = stats.statistics.get(key)
            if stat is None or type(stat).__name__ != type_name:
                problems.append(f"statistic {name}/{key} must be a {type_name}")
        for key, stat in stats.statistics.items():
            shapes = {f: tuple(t.shape) for f, t in stat.tensors.items()}
            want = expected.get(key)
            if want is None:  # a per-unit reservoir: every tensor (C, n)
                first = next(iter(shapes.values()))
                want = {f: (c, first[1] if len(first) == 2 else -1) for f in shapes}
            if shapes != want:
                problems.append(f"statistic {name}/{key} has shapes {shapes}, expected {want}")
        none = stats.statistics.get("no_positive")
        if not problems and bool((none.counts > counts.counts).any()):  # type: ignore[union-attr]
            problems.append(f"{name}/no_positive counts more images than class_counts")
        taus_of = getattr(stats.statistics.get("important"), "taus", taus)
        if tuple(taus_of) != tuple(taus):
            problems.append(
                f"importance counts on taus {list(taus_of)}, the file's grid {list(taus)}"
            )
        if problems:
            raise CorruptFileError(
                f"{path!r} is inconsistent: {'; '.join(problems)} (layer {name!r} has {c} units, "
                f"{j} inputs and the file {n} classes); re-create it with ScanResult.save()."
            )
