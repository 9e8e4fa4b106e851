"""Check that a split model computes the same function as the original.

Both models are deep-copied to each requested dtype and run in eval mode under ``no_grad``.
Besides the model outputs, every split layer's merged output is compared with the original
layer's output through forward hooks, unit by unit (with the output of the original's LayerScale
where ``apply_plan`` folded one into the split layer).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_bool, check_module, check_number
from ..capture import capture, model_device
from ..errors import (
    ArgumentTypeError,
    InputShapeError,
    InvalidArgumentError,
    MetaTensorError,
    NotExactError,
    PlanMismatchError,
)
from .layer_scale import folded_layer_scales, with_fold_rounding
from .report import DtypeResult, EquivalenceReport, LayerResult, UnitDiff, _key
from .split_layer import explicit_rows
from .surgery import iter_split_layers

__all__ = [
    "verify_equivalence",
    "EquivalenceReport",
    "DtypeResult",
    "LayerResult",
    "UnitDiff",
    "DEFAULT_RTOL",
]

#: default relative tolerance per dtype: pass iff max|Δ| <= atol + rtol * max|y|
DEFAULT_RTOL: dict[torch.dtype, float] = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 1e-2,
    torch.bfloat16: 5e-2,
}


def _no_meta(what: str, tensors: Iterable[Tensor]) -> None:
    if any(t.is_meta for t in tensors):
        raise MetaTensorError(
            f"{what} is on the meta device: meta tensors have shapes but no values, so there is "
            "nothing to compare. apply_plan works on meta for shape-only planning; to verify, "
            "materialise the weights first (model.to_empty(device='cpu') and load a state_dict, "
            "then apply_plan again) and pass real inputs."
        )


def _dtypes(dtype: Any) -> tuple[torch.dtype, ...]:
    if dtype is None:
        return (torch.float32, torch.float64)
    out = (dtype,) if isinstance(dtype, torch.dtype) else tuple(dtype)
    for d in out:
        if not isinstance(d, torch.dtype) or not d.is_floating_point:
            raise ArgumentTypeError(
                f"dtype must be a floating torch.dtype or a sequence of them, got {d!r}"
            )
    if not out:
        raise InvalidArgumentError("dtype must name at least one dtype")
    return out


def _batches(inputs: Any) -> Iterable[tuple[Tensor, ...]]:
    """Normalise ``inputs`` to a re-iterable of positional-argument tuples."""
    if isinstance(inputs, Tensor):
        return [(inputs,)]
    if isinstance(inputs, tuple) and inputs and all(isinstance(t, Tensor) for t in inputs):
        return [inputs]
    if isinstance(inputs, (str, bytes, Mapping)) or not isinstance(inputs, Iterable):
        raise InputShapeError(
            f"inputs must be a Tensor, a tuple of Tensors (one batch of positional arguments) "
            f"or an iterable of batches (x or (x, y)); got {type(inputs).__name__}"
        )

    def one(batch: Any, i: int) -> tuple[Tensor, ...]:
        if isinstance(batch, Tensor):
            return (batch,)
        if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
            return (batch[0],)  # DataLoader convention: (x, y, ...)
        raise InputShapeError(
            f"batch {i} of inputs is a {type(batch).__name__}; expected a Tensor or (x, y)"
        )

    class _Reiter:
        def __init__(self, src: Iterable[Any]) -> None:
            # a one-shot iterator (generator) is materialised so every dtype sees the data
            self.src = list(src) if iter(src) is src else src

        def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
            return (one(b, i) for i, b in enumerate(self.src))

    return _Reiter(inputs)


def _leaves(out: Any) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, Mapping):
        return [t for k in sorted(out, key=str) for t in _leaves(out[k])]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in _leaves(v)]
    return []


def _compare(lo: list[Tensor], ls: list[Tensor]) -> tuple[float, float]:
    """Max |Δ| and max |y| over matching output leaves; a structure mismatch counts as inf."""
    d_abs, ref = 0.0, 0.0
    if len(lo) != len(ls):
        d_abs = math.inf
    for a, b in zip(lo, ls, strict=False):
        ref = max(ref, _amax(a.double()))
        d_abs = max(d_abs, _key(_amax(a.double() - b.double())) if a.shape == b.shape else math.inf)
    return d_abs, ref


def _per_unit_max(t: Tensor, dim: int) -> Tensor:
    return t.movedim(dim, 0).reshape(t.shape[dim], -1).amax(dim=1)


def _amax(t: Tensor) -> float:
    return float(t.abs().max()) if t.numel() else 0.0


def _cast(a: Tensor, dtype: torch.dtype, device: torch.device | None) -> Tensor:
    a = a if device is None else a.to(device)
    return a.to(dtype) if a.is_floating_point() else a  # integer inputs (token ids) stay


def _run_dtype(
    original: nn.Module,
    split: nn.Module,
    batches: Iterable[tuple[Tensor, ...]],
    dtype: torch.dtype,
    atol: float,
    rtol: float,
    allow_unused: bool = False,
) -> DtypeResult:
    """Run both models (deep copies in ``dtype``, eval, no_grad) and compare."""
    new = copy.deepcopy(split).to(dtype).eval()
    # a layer with a LayerScale folded in computes what the original's LayerScale outputs,
    # with gamma * W rounded in the model's dtype (given to the reference for precise dtypes)
    folded = folded_layer_scales(new)
    orig = with_fold_rounding(copy.deepcopy(original).to(dtype), original, folded).eval()
    layers = list(iter_split_layers(new))
    orig_mods = dict(orig.named_modules())
    target = {n: folded.get(n, n) for n, _ in layers}
    missing = [n for n, _ in layers if target[n] not in orig_mods]
    if missing:
        raise PlanMismatchError(
            f"the original model has no layer(s) {missing}; pass the model the split was made from"
        )
    n_units = {n: lay.original_out for n, lay in layers}
    layer_abs = {n: torch.zeros(n_units[n], dtype=torch.float64) for n, _ in layers}
    layer_ref = dict.fromkeys(n_units, 0.0)
    calls = dict.fromkeys(n_units, 0)  # how often each split layer ran
    out_abs, out_ref, n_batches = 0.0, 0.0, 0
    device = model_device(orig)
    names = [n for n, _ in layers]
    with (
        capture(orig, {n: orig_mods[target[n]] for n in names}) as cap_o,
        capture(new, dict(layers)) as cap_s,
        explicit_rows(new),  # check the rows, not the original layer unobserved inference runs
        torch.no_grad(),
    ):
        for i, args in enumerate(batches):
            _no_meta(f"batch {i} of inputs", args)
            args = tuple(_cast(a, dtype, device) for a in args)
            cap_o.clear()
            cap_s.clear()
            try:
                y_o = orig(*args)
            except Exception as err:
                # the user's model raised: its error passes through unchanged, with a note
                shapes = [tuple(a.shape) for a in args]
                err.add_note(
                    f"neuronsplit.verify_equivalence: the original {type(original).__name__} "
                    f"failed on batch {i} (input shapes {shapes}, {dtype}); pass inputs it accepts"
                )
                raise
            y_s = new(*args)
            n_batches += 1
            d_abs, ref = _compare(_leaves(y_o), _leaves(y_s))
            out_abs, out_ref = max(out_abs, d_abs), max(out_ref, ref)
            for name, lay in layers:
                outs_o, outs_s = cap_o.outputs(name), cap_s.outputs(name)
                calls[name] += len(outs_s)
                if len(outs_o) != len(outs_s):  # layer called a different number of times
                    layer_abs[name].fill_(math.inf)
                for a, b in zip(outs_o, outs_s, strict=False):
                    d = (a.double() - b.double()).abs()
                    diff = _per_unit_max(d, lay.merge.dim).cpu()  # the report lives on the CPU
                    layer_abs[name] = torch.maximum(layer_abs[name], diff)
                    layer_ref[name] = max(layer_ref[name], _amax(a.double()))
    if n_batches == 0:
        raise InputShapeError("inputs held no batches; pass at least one input tensor")
    results = []
    for name, lay in layers:
        ref, diffs = layer_ref[name], torch.nan_to_num(layer_abs[name], nan=math.inf)
        tol = atol + rtol * ref
        split_set = set(lay.split_units)
        unsplit = [u for u in range(n_units[name]) if u not in split_set]
        if unsplit:
            sub = diffs[unsplit]
            j = int(sub.argmax())
            u_abs, u_worst = float(sub[j]), unsplit[j]
        else:
            u_abs, u_worst = 0.0, None
        split_diffs = tuple(
            UnitDiff(u, float(diffs[u]), _rel(float(diffs[u]), ref)) for u in lay.split_units
        )
        ok = u_abs <= tol and all(d.max_abs <= tol for d in split_diffs)
        ok = ok and (calls[name] > 0 or allow_unused)  # a layer that never ran was not checked
        results.append(
            LayerResult(
                name, ref, u_abs, _rel(u_abs, ref), u_worst, split_diffs, bool(ok), calls[name]
            )
        )
    tol = atol + rtol * out_ref
    passed = out_abs <= tol and all(r.passed for r in results)
    return DtypeResult(
        str(dtype).removeprefix("torch."), n_batches, out_abs, out_ref, _rel(out_abs, out_ref),
        atol, rtol, bool(passed), tuple(results),
    )  # fmt: skip


def _rel(diff: float, ref: float) -> float:
    if diff == 0:
        return 0.0
    return diff / ref if ref > 0 else math.inf


def verify_equivalence(
    original: nn.Module,
    split: nn.Module,
    inputs: Tensor | tuple[Tensor, ...] | Iterable[Any],
    *,
    dtype: torch.dtype | Sequence[torch.dtype] | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    raise_on_fail: bool = False,
    allow_unused: bool = False,
) -> EquivalenceReport:
    """Compare ``split`` with ``original`` on ``inputs``, per dtype.

    Neither model is mutated: both are deep-copied to each dtype and run in eval mode under
    ``no_grad``; hooks live on the copies and are removed in ``finally``.

    Parameters
    ----------
    original, split : nn.Module
        The original model and the output of ``apply_plan`` (or ``load``).
    inputs : Tensor, tuple of Tensor, or iterable of batches
        A Tensor is one batch; a tuple of Tensors is one batch of positional arguments; any
        other iterable (list, DataLoader, generator) yields batches ``x`` or ``(x, y, ...)``,
        of which ``x`` is used.
    dtype : torch.dtype or sequence, optional
        Dtypes to test; default ``(torch.float32, torch.float64)``.
    atol, rtol : float, optional
        A comparison passes iff ``max|Δ| <= atol + rtol * max|y|``. Defaults: ``atol = 0`` and
        ``rtol`` from :data:`DEFAULT_RTOL` (1e-10 for float64, 1e-5 for float32). Applied to the
        model outputs and to every unit of every split layer (``max|y|`` of that layer).
    raise_on_fail : bool, default False
        Raise :class:`NotExactError` naming the worst comparison instead of returning a failed
        report.
    allow_unused : bool, default False
        A split layer that never runs on ``inputs`` (a branch the inputs do not take) cannot be
        checked; by default its :class:`LayerResult` (``calls == 0``) and the report fail.
        ``True`` accepts it (the report still says it did not run).

    Returns
    -------
    EquivalenceReport

    Raises
    ------
    Exception
        Whatever the original model raises on ``inputs`` passes through unchanged, with a note
        naming the batch and its shapes.
    InputShapeError
        If ``inputs`` is not a tensor, a tuple of tensors or an iterable of batches.
    MetaTensorError
        If a model or an input is on the ``meta`` device (shapes only, no values to compare).
    NotExactError
        With ``raise_on_fail=True`` when a comparison fails.

    Examples
    --------
    >>> from neuronsplit.plan import SplitPlan, UnitSplit
    >>> from neuronsplit.nn import apply_plan
    >>> m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    >>> s = apply_plan(m, SplitPlan([UnitSplit("0", 2, [[0], [1, 2]], merge="disjoint")]))
    >>> verify_equivalence(m, s, [torch.randn(2, 3, 8, 8)], dtype=torch.float64).passed
    True
    """
    check_module(original, "original")
    check_module(split, "split")
    if atol is not None:
        check_number(atol, "atol", low=0.0)
    if rtol is not None:
        check_number(rtol, "rtol", low=0.0)
    check_bool(raise_on_fail, "raise_on_fail")
    check_bool(allow_unused, "allow_unused")
    for what, model in (("the original model", original), ("the split model", split)):
        _no_meta(what, (*model.parameters(), *model.buffers()))
    dtypes = _dtypes(dtype)
    batches = _batches(inputs)
    rows = []
    for dt in dtypes:
        r_tol = DEFAULT_RTOL.get(dt, 1e-2) if rtol is None else float(rtol)
        a_tol = 0.0 if atol is None else float(atol)
        rows.append(_run_dtype(original, split, batches, dt, a_tol, r_tol, allow_unused))
    report = EquivalenceReport(all(r.passed for r in rows), tuple(rows))
    if raise_on_fail and not report.passed:
        raise NotExactError(f"split model is not equivalent to the original: {report.worst()}")
    return report
