"""Save and load split models: ``weights.safetensors`` + the plan (``plan.json`` and
``plan.safetensors``).

The plan is stored, not the module objects: :func:`load` re-applies the plan to a fresh
instance of the original architecture and then loads the weights strictly. This keeps the
files free of pickles and makes every mismatch a readable error.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._checks import check_module
from .._files import sha256_file, staged
from ..errors import (
    ArgumentTypeError,
    CorruptFileError,
    PlanError,
    PlanMismatchError,
    UnknownLayerError,
    UnsupportedLayerError,
)
from ..plan import SplitPlan
from ..plan.files import write_plan
from .layer_scale import FoldedLayerScale, folded_layer_scales, layer_scale_pairs
from .split_layer import SPLIT_TYPES
from .surgery import apply_plan, plan_of

__all__ = ["save", "load", "WEIGHTS_FILE", "PLAN_FILE", "original_shapes", "fingerprint"]

WEIGHTS_FILE = "weights.safetensors"
PLAN_FILE = "plan.json"
PLAN_TENSORS_FILE = "plan.safetensors"
#: the weights file's metadata: one JSON entry "neuronsplit" (safetensors writes several entries
#: in a random order, which would make two saves of the same model differ in their bytes)
WEIGHTS_FORMAT = "neuronsplit.weights"
WEIGHTS_VERSION = 1


def original_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """State-dict shapes of the model a (possibly) split ``model`` was made from.

    Keys ``<layer>.subunits.weight`` / ``.bias`` of split layers map back to ``<layer>.weight``
    / ``.bias`` with the original number of rows; merge buffers are not in the state dict; a
    LayerScale folded into a split layer (:class:`~neuronsplit.nn.layer_scale.FoldedLayerScale`)
    gives back its ``<path>.gamma``.

    Examples
    --------
    >>> original_shapes(nn.Linear(2, 3))
    {'weight': (3, 2), 'bias': (3,)}
    """
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if torch.is_tensor(v)}
    for path, mod in model.named_modules(remove_duplicate=False):
        if isinstance(mod, SPLIT_TYPES):
            prefix = f"{path}." if path else ""
            for pname in ("weight", "bias"):
                key = f"{prefix}subunits.{pname}"
                if key in shapes:
                    shape = shapes.pop(key)
                    shapes[f"{prefix}{pname}"] = (mod.original_out, *shape[1:])
        elif isinstance(mod, FoldedLayerScale):
            shapes[f"{path}.gamma" if path else "gamma"] = (mod.dim,)
    return shapes


def fingerprint(shapes: dict[str, tuple[int, ...]]) -> str:
    """Short hash of a ``{name: shape}`` mapping (order-independent).

    Examples
    --------
    >>> fingerprint({"a": (1, 2)}) == fingerprint({"a": [1, 2]})
    True
    """
    text = json.dumps(sorted((k, [int(s) for s in v]) for k, v in shapes.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save(
    split_model: nn.Module, directory: str | Path, *, meta: dict[str, Any] | None = None
) -> Path:
    """Write ``weights.safetensors``, ``plan.json`` and ``plan.safetensors`` into ``directory``.

    The weights file holds the split model's full state dict (tensors copied to contiguous
    CPU storage, so shared/aliased tensors are fine). The plan files hold the plan
    reconstructed from the model's split layers plus meta: the neuronsplit version, the
    original model class name, a fingerprint of the original parameter shapes and, where
    ``apply_plan`` folded a LayerScale, ``folded_layer_scales`` (``{layer: LayerScale path}``;
    ``load`` folds them again, the saved rows already hold ``gamma``). Merge
    scales are not stored; steering in progress is therefore not saved. The model is not
    modified.

    All three files are written to temporary files first and renamed into place only when
    all three are complete, so a failure while writing leaves a previous save in
    ``directory`` as it was. The files are linked by hashes (``plan.json`` records the
    SHA-256 of ``plan.safetensors``, the weights file that of ``plan.json``), so files of two
    saves side by side are refused by :func:`load`.

    Parameters
    ----------
    split_model : nn.Module
        A model returned by ``apply_plan`` (an unsplit model gives an empty plan).
    directory : str or Path
        Created if needed.
    meta : dict, optional
        Extra JSON-compatible metadata stored in the plan.

    Returns
    -------
    Path
        The directory.

    Examples
    --------
    >>> import tempfile
    >>> from neuronsplit.plan import UnitSplit
    >>> m = nn.Sequential(nn.Linear(3, 2))
    >>> s = apply_plan(m, SplitPlan([UnitSplit("0", 0, [[0], [1]], shared=[2])]))
    >>> d = save(s, tempfile.mkdtemp())
    >>> sorted(p.name for p in d.iterdir())
    ['plan.json', 'plan.safetensors', 'weights.safetensors']
    """
    from safetensors.torch import save_file

    from .. import __version__

    check_module(split_model, "split_model")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for key, value in split_model.state_dict().items():
        if not torch.is_tensor(value):
            raise ArgumentTypeError(
                f"state_dict entry {key!r} is a {type(value).__name__}; only tensors can be "
                "saved to safetensors"
            )
        # clone: safetensors refuses tensors that share storage (tied weights, views)
        tensors[key] = value.detach().to("cpu").contiguous().clone()
    shapes = original_shapes(split_model)
    plan = plan_of(split_model)
    full_meta = {
        **(meta or {}),
        "neuronsplit_version": __version__,
        "model_class": type(split_model).__name__,
        "original_fingerprint": fingerprint(shapes),
        "num_tensors": len(shapes),
    }
    folded = folded_layer_scales(split_model)
    if folded:  # {split layer: LayerScale path}: their gammas are in the rows, not the file
        full_meta["folded_layer_scales"] = folded
    plan = plan.with_meta(full_meta)
    paths = (directory / PLAN_TENSORS_FILE, directory / PLAN_FILE, directory / WEIGHTS_FILE)
    with staged(*paths) as (plan_tensors_tmp, plan_tmp, weights_tmp):  # renamed in this order
        write_plan(plan, plan_tmp, plan_tensors_tmp, PLAN_TENSORS_FILE)
        header = {
            "format": WEIGHTS_FORMAT,
            "version": WEIGHTS_VERSION,
            "neuronsplit": __version__,
            "plan_sha256": sha256_file(plan_tmp),
        }
        metadata = {"neuronsplit": json.dumps(header, sort_keys=True)}
        save_file(tensors, str(weights_tmp), metadata=metadata)
    return directory


def _diff_message(cls: str, expected: dict[str, tuple], found: dict[str, tuple]) -> str:
    """PyTorch-style 'Missing key(s) / Unexpected key(s) / size mismatch' text."""
    msgs = []
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    if missing:
        msgs.append(f"Missing key(s) in state_dict: {_keys(missing)}. ")
    if unexpected:
        msgs.append(f"Unexpected key(s) in state_dict: {_keys(unexpected)}. ")
    for k, shape in expected.items():
        if k in found and tuple(found[k]) != tuple(shape):
            msgs.append(
                f"size mismatch for {k}: copying a param with shape {torch.Size(found[k])} from "
                f"checkpoint, the shape in current model is {torch.Size(shape)}."
            )
    if not msgs:
        return ""
    return f"Error(s) in loading state_dict for {cls}:\n\t" + "\n\t".join(msgs)


def _keys(keys: list[str], limit: int = 20) -> str:
    text = ", ".join(f'"{k}"' for k in keys[:limit])
    return text + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def _header_shapes(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            return shapes, dict(f.metadata() or {})
    except Exception as err:  # safetensors raises its own SafetensorError, OSError, ...
        raise CorruptFileError(
            f"{str(path)!r} is not a readable safetensors file ({type(err).__name__}: {err}); "
            "re-create it with neuronsplit.save"
        ) from err


def _weights_header(path: Path, metadata: dict[str, str]) -> dict[str, Any]:
    """The header :func:`save` wrote: one JSON object under "neuronsplit" with the format, its
    version and the hash of ``plan.json``. Files of neuronsplit 0.2.0 kept plain entries
    (``"neuronsplit": "0.2.0"``, ``"plan_sha256"``); they are read as they are."""
    raw = metadata.get("neuronsplit", "")
    if not raw.lstrip().startswith("{"):
        return metadata
    try:
        header = json.loads(raw)
    except ValueError as err:
        raise CorruptFileError(
            f"{str(path)!r} has a damaged header ({err}); save the model again"
        ) from err
    fmt, version = (
        (header.get("format"), header.get("version")) if isinstance(header, dict) else (None, None)
    )
    if fmt != WEIGHTS_FORMAT or version != WEIGHTS_VERSION:
        raise CorruptFileError(
            f"{str(path)!r} has weights format {fmt!r} version {version!r}; this neuronsplit "
            f"reads {WEIGHTS_FORMAT!r} version {WEIGHTS_VERSION} (save the model again)"
        )
    return header


def load(directory: str | Path, model: nn.Module) -> nn.Module:
    """Rebuild a split model saved by :func:`save` on top of ``model``.

    ``model`` must be an instance of the original architecture; it is not modified (the plan
    is applied to a deep copy, whose weights are then all replaced by the saved ones, cast to
    the copy's dtypes as ``load_state_dict`` does).

    Parameters
    ----------
    directory : str or Path
        Holds ``plan.json`` and ``weights.safetensors``.
    model : nn.Module
        A fresh instance of the original (unsplit) architecture.

    Returns
    -------
    nn.Module
        The split model, in ``model``'s training/eval mode.

    Raises
    ------
    CorruptFileError
        Missing files, invalid JSON or plan, unreadable safetensors, files from different saves.
    PlanMismatchError
        The plan or the weights do not fit ``model`` (missing layer, unit out of range, missing
        or unexpected keys, shape mismatch); the message names the mismatch.

    Examples
    --------
    >>> import tempfile
    >>> from neuronsplit.plan import UnitSplit
    >>> m = nn.Sequential(nn.Linear(3, 2))
    >>> s = apply_plan(m, SplitPlan([UnitSplit("0", 0, [[0], [1]], shared=[2])]))
    >>> d = save(s, tempfile.mkdtemp())
    >>> type(load(d, nn.Sequential(nn.Linear(3, 2)))[0]).__name__
    'SplitLinear'
    """
    from safetensors.torch import load_file

    check_module(model, "model")
    directory = Path(directory)
    plan_path, weights_path = directory / PLAN_FILE, directory / WEIGHTS_FILE
    for p in (plan_path, weights_path):
        if not p.is_file():
            raise CorruptFileError(
                f"{str(p)!r} does not exist; a saved split model needs both {PLAN_FILE} and "
                f"{WEIGHTS_FILE} (write them with neuronsplit.save)"
            )
    plan = SplitPlan.load(plan_path)  # CorruptFileError names the file
    file_shapes, metadata = _header_shapes(weights_path)
    header = _weights_header(weights_path, metadata)
    if "plan_sha256" in header and header["plan_sha256"] != sha256_file(plan_path):
        raise CorruptFileError(
            f"{str(plan_path)!r} and {str(weights_path)!r} come from different saves (the plan "
            "hash in the weights file does not match); save the model again"
        )
    _check_fingerprint(plan, model, file_shapes, directory)
    # files of neuronsplit <= 0.2 kept the LayerScale of a split fc2/proj (its gamma is saved)
    fold = not any(f"{ls}.gamma" in file_shapes for ls in _folds(model, plan).values())
    try:
        split = apply_plan(model, plan, fold_layer_scale=fold)
    except (UnknownLayerError, UnsupportedLayerError, PlanError) as err:
        raise PlanMismatchError(
            f"the plan in {str(plan_path)!r} does not fit the given {type(model).__name__}: {err}"
        ) from err
    expected = {k: tuple(v.shape) for k, v in split.state_dict().items() if torch.is_tensor(v)}
    msg = _diff_message(type(split).__name__, expected, file_shapes)
    if msg:
        raise PlanMismatchError(f"{str(weights_path)!r} does not fit the split model. {msg}")
    try:
        state = load_file(str(weights_path))
    except Exception as err:
        raise CorruptFileError(f"cannot read tensors from {str(weights_path)!r}: {err}") from err
    _check_kinds(weights_path, split.state_dict(), state)
    try:
        split.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise PlanMismatchError(
            f"{str(weights_path)!r} does not fit the split model: {err}"
        ) from err
    return split


def _check_kinds(path: Path, expected: dict[str, Any], found: dict[str, torch.Tensor]) -> None:
    """Floating tensors must come from floating ones, integer from integer: ``load_state_dict``
    would cast anything (a damaged dtype field would load garbage silently)."""
    for key, want in expected.items():
        got = found.get(key)
        if torch.is_tensor(want) and got is not None:
            if want.is_floating_point() != got.is_floating_point() or want.is_complex() != (
                got.is_complex()
            ):
                raise CorruptFileError(
                    f"{str(path)!r}: tensor {key!r} is {got.dtype} but the model holds "
                    f"{want.dtype} there; the file is damaged or not from neuronsplit.save"
                )


def _check_fingerprint(
    plan: SplitPlan, model: nn.Module, file_shapes: dict[str, tuple[int, ...]], directory: Path
) -> None:
    """Refuse a model whose parameter shapes differ from the one the files were saved from."""
    saved_fp = plan.meta.get("original_fingerprint")
    if saved_fp is None:
        return  # plan written by hand: the strict key/shape check below still applies
    shapes = original_shapes(model)
    if fingerprint(shapes) == saved_fp:
        return
    # derive the original shapes stored in the file to say what differs
    orig_file = dict(file_shapes)
    for name, layer_split in plan.by_layer().items():
        extra = layer_split.num_extra_rows
        for pname in ("weight", "bias"):
            key = f"{name}.subunits.{pname}"
            if key in orig_file:
                shape = orig_file.pop(key)
                orig_file[f"{name}.{pname}"] = (shape[0] - extra, *shape[1:])
    folded = plan.meta.get("folded_layer_scales")
    if not isinstance(folded, Mapping):
        folded = _folds(model, plan)
    for name, scale in folded.items():  # a folded gamma is not in the file
        if f"{name}.weight" in orig_file:
            orig_file.setdefault(f"{scale}.gamma", orig_file[f"{name}.weight"][:1])
    detail = _diff_message(type(model).__name__, shapes, orig_file) or "(shapes differ)"
    raise PlanMismatchError(
        f"{str(directory)!r} was saved from a {plan.meta.get('model_class', '?')} whose "
        f"parameter shapes differ from the given {type(model).__name__} (fingerprint "
        f"{saved_fp} vs {fingerprint(shapes)}); pass a fresh instance of the original "
        f"architecture. {detail}"
    )


def _folds(model: nn.Module, plan: SplitPlan) -> dict[str, str]:
    """``{planned layer: LayerScale path}`` that ``apply_plan`` may fold for this model."""
    pairs = layer_scale_pairs(model)
    return {name: pairs[name] for name in plan.layers if name in pairs}
