"""Plan files: ``plan.json`` (metadata, one header per layer) + ``plan.safetensors`` (indices).

Whole-layer plans are millions of integers; JSON lists of them took 13 MB for one ViT-B layer.
The JSON keeps what a person reads (layers, merge forms, labels, metadata) and names the tensor
file with its SHA-256; the tensors are int8/int16 in safetensors. Both files are written to
temporary files that are renamed into place once both are complete, so a failure never leaves
half a file or a new file next to an old one. Small plans may also be
one JSON file with inline assignments (:meth:`SplitPlan.to_json`); :func:`load_plan` reads both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .._files import sha256_file, staged
from ..errors import CorruptFileError, PlanError
from ._util import thaw
from .layer import LayerSplit
from .plan import PLAN_FORMAT, PLAN_VERSION, SplitPlan, check_header

__all__ = ["save_plan", "load_plan", "write_plan"]

_TENSOR_KEYS = ("units", "num_subunits", "assignment")


def _tensor_path(json_path: Path) -> Path:
    return json_path.with_suffix(".safetensors")


def save_plan(plan: SplitPlan, path: Path) -> Path:
    """Write ``path`` and its ``.safetensors`` sibling (see the module docstring).

    Both files are written to temporary siblings first and renamed into place only when both
    are complete (tensors first), so a failure leaves the previous pair as it was.
    """
    if path.suffix != ".json":
        raise PlanError(f"plan files end in .json (the tensors go next to it), got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tensor_path = _tensor_path(path)
    with staged(tensor_path, path) as (tensor_tmp, json_tmp):
        write_plan(plan, json_tmp, tensor_tmp, tensor_path.name)
    return path


def write_plan(plan: SplitPlan, json_path: Path, tensor_path: Path, tensor_name: str) -> None:
    """Write the two plan files as they are (no temporary files): the JSON names its tensor
    file ``tensor_name`` (the name it will have next to the JSON) and records its SHA-256."""
    from safetensors.torch import save_file

    tensors = {
        f"{ls.layer}/{key}": t.contiguous()
        for ls in plan.layer_splits
        for key, t in ls.tensors().items()
    }
    # safetensors cannot write an empty dict of tensors on every version: keep one marker
    tensors = tensors or {"__empty__": torch.zeros(0)}
    save_file(tensors, str(tensor_path), metadata={"format": PLAN_FORMAT})
    header = {
        "format": PLAN_FORMAT,
        "version": PLAN_VERSION,
        "meta": thaw(plan.meta),
        "assignments": {"file": tensor_name, "sha256": sha256_file(tensor_path)},
        "layers": [ls.header() for ls in plan.layer_splits],
    }
    json_path.write_text(json.dumps(header, indent=1), encoding="utf-8")


def load_plan(path: Path) -> SplitPlan:
    """Read a plan file written by :func:`save_plan` or :meth:`SplitPlan.to_json`.

    Raises
    ------
    CorruptFileError
        Missing or unreadable files, invalid JSON, a tensor file from another save, tensors
        whose shapes disagree with the JSON header, or an invalid plan inside (the message
        names the file and the problem).
    """
    try:
        is_file = path.is_file()
    except OSError:  # e.g. a long string that is neither JSON nor a usable file name
        is_file = False
    if not is_file:
        raise CorruptFileError(
            f"plan file {str(path)[:200]!r} does not exist or is not a file (JSON text must "
            "start with '{')"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise CorruptFileError(f"cannot read plan file {str(path)!r}: {err}") from err
    except json.JSONDecodeError as err:
        raise CorruptFileError(f"plan file {str(path)!r} is not valid JSON: {err}") from err
    try:
        if not isinstance(data, dict) or "assignments" not in data:
            return SplitPlan.from_dict(data)
        meta, _ = check_header(data)
        ref = data["assignments"]
        layers = data.get("layers")
        if not isinstance(ref, dict) or not isinstance(layers, list):
            raise CorruptFileError("fields 'assignments' and 'layers' are malformed")
        tensors = _read_tensors(path.parent / str(ref.get("file")), ref.get("sha256"))
        splits = []
        for header in layers:
            if not isinstance(header, dict) or "layer" not in header:
                raise CorruptFileError(f"malformed layer entry {header!r:.80}")
            name = header["layer"]
            parts = {}
            for key in _TENSOR_KEYS:
                if f"{name}/{key}" not in tensors:
                    raise CorruptFileError(f"the tensor file lacks {name}/{key}")
                parts[key] = tensors[f"{name}/{key}"]
            splits.append(LayerSplit.from_parts(header, parts))
        return SplitPlan(splits, meta=meta)
    except CorruptFileError as err:
        raise CorruptFileError(f"plan file {str(path)!r}: {err}") from err
    except PlanError as err:
        raise CorruptFileError(f"plan file {str(path)!r} holds an invalid plan: {err}") from err


def _read_tensors(tensor_path: Path, sha: Any) -> dict[str, Any]:
    from safetensors.torch import load_file

    if not tensor_path.is_file():
        raise CorruptFileError(f"its tensor file {str(tensor_path)!r} is missing")
    if sha != sha256_file(tensor_path):
        raise CorruptFileError(
            f"{str(tensor_path)!r} does not belong to it (SHA-256 differs): the two files come "
            "from different saves; save the plan again"
        )
    try:
        return load_file(str(tensor_path))
    except Exception as err:  # safetensors raises its own SafetensorError, OSError, ...
        raise CorruptFileError(f"{str(tensor_path)!r} is not readable: {err}") from err
