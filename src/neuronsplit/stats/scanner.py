"""The streaming scan: one pass over a DataLoader that fills a :class:`ScanResult`.

For every batch the scan runs one forward pass with :func:`neuronsplit.capture.capture` on the
chosen layers (outputs for the gradient, input tap sums computed in the hook) and one backward
pass (``torch.autograd.grad``) from the target logits to those layers' outputs only, so nothing
upstream of the earliest chosen layer is differentiated and no ``.grad`` is written to any
parameter. The relevance backend owns the model session and the seed. Under ``torchrun`` the
data is sharded (see :mod:`neuronsplit.stats.sharding`) and every statistic is all-reduced on
the scan's device before it moves to the CPU, so every process returns the same result.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .._checks import check_bool, check_choice, check_int, check_module, check_names, check_number
from .._progress import progress_bar
from ..capture import (
    capture,
    check_supported,
    eval_mode,
    flat_weight,
    layer_kind,
    layer_shape,
    resolve_layer,
    tap_sums,
)
from ..errors import (
    ArgumentTypeError,
    IncompatibleResultsError,
    InputShapeError,
    InvalidArgumentError,
    InvalidTargetError,
    NonFiniteError,
)
from ..relevance import RelevanceBackend, get_backend, per_unit
from .batches import split_batch, targets_of
from .layer import DEFAULT_TAU_GRID, LayerStats
from .result import ScanResult
from .sharding import (
    Shard,
    collective_device,
    current_shard,
    max_over_ranks,
    sharded_batches,
    sync_failure,
)
from .statistics import (
    ClassCounts,
    ClassSums,
    LayerBatch,
    NoPositiveCounts,
    TapSums,
    TauCounts,
    TopN,
)

__all__ = ["scan"]


def _position_max(tensor: Tensor, kind: str) -> tuple[Tensor, Tensor]:
    """Largest value of every unit over its positions (conv pixels, tokens), and where: ``(B, C)``.

    Positions are flat: ``h * W + w`` for a conv, the flat token index for a token Linear, 0 for
    a 2-d Linear. Views only, no copy of the layer output.
    """
    if kind == "conv2d":
        return tensor.flatten(2).max(-1)
    if tensor.dim() == 2:
        return tensor, torch.zeros_like(tensor, dtype=torch.long)
    return tensor.flatten(1, -2).max(1)


class _Accumulator:
    """The statistics of every scanned layer, created once the number of classes is known."""

    def __init__(
        self,
        modules: dict[str, nn.Module],
        taus: tuple[float, ...],
        top_n: int,
        device: torch.device,
    ) -> None:
        self.modules = modules
        self.taus = taus
        self.top_n = top_n
        self.device = device
        self.counts: ClassCounts | None = None
        self.layers: dict[str, dict[str, Any]] = {}

    def allocate(self, num_classes: int) -> None:
        if self.counts is not None:
            return
        dev = self.device
        self.counts = ClassCounts.zeros(num_classes, dev)
        for name, module in self.modules.items():
            units, _ = layer_shape(module)
            _, inputs, taps = flat_weight(module).shape
            stats: dict[str, Any] = {
                "important": TauCounts.zeros(self.taus, num_classes, units, dev),
                "no_positive": NoPositiveCounts.zeros(num_classes, dev),
                "relevance_sum": ClassSums.zeros(num_classes, units, dev),
                "input_sums": TapSums.zeros(num_classes, inputs, taps, dev),
            }
            if self.top_n:
                stats["top_activation"] = TopN.empty(units, self.top_n, "activation", dev)
                stats["top_relevance"] = TopN.empty(units, self.top_n, "relevance", dev)
            self.layers[name] = stats

    def update(self, name: str, batch: LayerBatch) -> None:
        for stat in self.layers[name].values():
            stat.update(batch)


def _check_arguments(
    model: Any, layers: Any, target: Any, tau_grid: Any, num_classes: Any, top_n: Any,
    max_batches: Any, progress: Any, shard: Any, sample_offset: Any,
) -> tuple[list[str], tuple[float, ...]]:  # fmt: skip
    """Every argument of :func:`scan`, checked before any computation."""
    check_module(model, "model")
    names = check_names(layers, "layers", example="'layer4.2.conv3'")
    for name in names:
        check_supported(resolve_layer(model, name), name)
    check_choice(target, "target", ("label", "prediction"))
    if isinstance(tau_grid, (str, bytes)) or not isinstance(tau_grid, Iterable):
        raise ArgumentTypeError(f"tau_grid must be a sequence of thresholds, got {tau_grid!r}")
    taus = tuple(
        check_number(t, "tau_grid entry", low=0.0, high=1.0, low_open=True) for t in tau_grid
    )
    if not taus or len(set(taus)) != len(taus):
        raise InvalidArgumentError(
            f"tau_grid must hold distinct thresholds in (0, 1], got {list(taus)}"
        )
    check_int(num_classes, "num_classes", low=1, optional=True)
    check_int(top_n, "top_n (0 keeps no samples)", low=0)
    check_int(max_batches, "max_batches", low=1, optional=True)
    check_bool(progress, "progress")
    check_bool(shard, "shard")
    check_int(sample_offset, "sample_offset", low=0)
    return names, taus


def scan(
    model: nn.Module,
    loader: Iterable[Any],
    layers: str | Sequence[str],
    num_classes: int | None = None,
    *,
    relevance: str | RelevanceBackend = "grad_x_act",
    target: str = "label",
    tau_grid: Sequence[float] = DEFAULT_TAU_GRID,
    top_n: int = 32,
    device: str | torch.device | None = None,
    max_batches: int | None = None,
    progress: bool = True,
    shard: bool = True,
    sample_offset: int = 0,
) -> ScanResult:
    """Scan ``model`` over ``loader`` and accumulate per-class statistics of ``layers``.

    Parameters
    ----------
    model : nn.Module
        A classifier returning logits ``(B, num_classes)``. It is run in eval mode and never
        modified (its training flags are restored afterwards).
    loader : iterable
        Yields ``(inputs, labels)`` pairs (or bare inputs with ``target="prediction"``).
    layers : str or sequence of str
        Dotted names of ``nn.Conv2d`` / ``nn.Linear`` layers, e.g. ``"layer4.2.conv3"``.
    num_classes : int, optional
        Number of classes; inferred from the logits when omitted.
    relevance : "grad_x_act", zennit Composite or RelevanceBackend
        ``"grad_x_act"`` (default, Hesse et al.), ``ns.Zennit(composite, canonizers=...)``,
        ``ns.Zennit.for_model(model)``, or a bare composite, which gets the model family's
        canonizers (see :func:`~neuronsplit.relevance.get_backend`).
    target : {"label", "prediction"}
        Which logit the relevance explains; images are counted under that class.
    tau_grid : sequence of float
        Thresholds at which importance counts are kept (detection can use any of them).
    top_n : int, default 32
        Keep, per unit, the indices of the ``top_n`` samples with the largest activation and
        the largest relevance (0: keep none).
    device : str or torch.device, optional
        Where to run and accumulate; defaults to the device of the model's first parameter.
    max_batches : int, optional
        Stop after this many batches of the (unsharded) loader.
    progress : bool
        Show a tqdm progress bar.
    shard : bool, default True
        Under ``torch.distributed``: split the data over the processes and all-reduce the
        statistics (see :mod:`neuronsplit.stats.sharding`); ``False`` scans the whole loader
        in every process without communicating.
    sample_offset : int, default 0
        Added to every sample index (scan consecutive parts with offsets, then ``merge``).

    Returns
    -------
    ScanResult
        Statistics of size O(units x classes x inputs); nothing per sample.

    Raises
    ------
    UnknownLayerError, UnsupportedLayerError
        Bad layer names or types (checked before any computation).
    InvalidTargetError
        Labels outside ``[0, num_classes)``, or no labels with ``target="label"``.
    NonFiniteError
        NaN/inf in inputs, activations, logits or relevances.
    IncompatibleResultsError
        Processes of a distributed scan that disagree on layers, shapes or classes.
    UnsupportedModelError, InvalidArgumentError
        A bare composite on a model of no known family, or a composite its family refuses
        (``Zennit.for_model``); pass ``ns.Zennit(composite, canonizers=[...])`` instead.

    Examples
    --------
    >>> import neuronsplit as ns
    >>> from neuronsplit.demo import DigitsNet, digits_loader
    >>> res = ns.scan(DigitsNet(), digits_loader("test"), ["fc2"], progress=False)
    >>> res.num_samples, res.layer("fc2").num_units
    (397, 6)
    """
    names, taus = _check_arguments(
        model, layers, target, tau_grid, num_classes, top_n, max_batches, progress, shard,
        sample_offset,
    )  # fmt: skip
    backend = get_backend(relevance, model=model)
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    where = current_shard() if shard else Shard()
    modules = {name: resolve_layer(model, name) for name in names}
    acc = _Accumulator(modules, taus, top_n, device)
    # the sample order is agreed on (a collective) before the loop: a process that fails in the
    # loop then meets the others in the error-flag reduction, never in another collective
    stream, total = sharded_batches(loader, where, max_batches, sample_offset)
    batches = 0
    try:
        batches, num_classes = _loop(
            model, stream, total, names, num_classes, backend, target, acc, device, progress
        )
    except BaseException:
        if where.world > 1:
            with contextlib.suppress(Exception):
                sync_failure(where, True, collective_device(where.group))
        raise
    if where.world > 1:
        sync_failure(where, False, collective_device(where.group))
        num_classes, batches = _agree(where, num_classes, batches)
        acc.allocate(num_classes)  # a process that got no batch takes part with empty statistics
    if acc.counts is None:
        raise InputShapeError("the loader yielded no batches; nothing was scanned")
    result_layers = {}
    for name, module in modules.items():
        weight = flat_weight(module).detach().to("cpu", torch.float64).clone()
        result_layers[name] = LayerStats(name, layer_kind(module), weight, acc.layers[name])
    meta = {
        "model": type(model).__name__,
        "batches": batches,
        "merged": 1,
        "processes": where.world,
    }
    result = ScanResult(result_layers, acc.counts, taus, backend.describe(), target, meta)
    if where.world > 1:
        result.all_reduce(where.group)  # checks that every process scanned the same, then sums
    return result.to("cpu")


def _agree(where: Shard, num_classes: int | None, batches: int) -> tuple[int, int]:
    """The number of classes every process must use, and the batches scanned in all."""
    import torch.distributed as dist

    device = collective_device(where.group)
    hi, lo = max_over_ranks(where, -1 if num_classes is None else num_classes, device)
    if hi < 0:
        raise InputShapeError("the loader yielded no batches on any process; nothing was scanned")
    if lo != hi:
        raise IncompatibleResultsError(
            f"scan processes disagree on the number of classes ({lo} vs {hi}); pass "
            "num_classes= or scan the same model everywhere"
        )
    count = torch.tensor([batches], dtype=torch.int64, device=device)
    dist.all_reduce(count, group=where.group)
    return hi, int(count.item())


def _loop(
    model: nn.Module, stream: Iterable[tuple[Any, Tensor]], total: int | None, names: list[str],
    num_classes: int | None, backend: RelevanceBackend, target: str, acc: _Accumulator,
    device: torch.device, progress: bool,
) -> tuple[int, int | None]:  # fmt: skip
    """The per-batch work; returns the number of batches this process scanned and the classes."""
    batches = 0
    kinds = {name: layer_kind(m) for name, m in acc.modules.items()}
    with (
        eval_mode(model),
        backend.session(model, copy=True) as work,
        capture(work, names, grad=True, input_fn=tap_sums_of) as cap,
    ):
        for batch, index in progress_bar(
            stream, desc="neuronsplit scan", total=total, enabled=progress
        ):
            x, labels = split_batch(batch)
            x = x.to(device)
            cap.clear()
            with torch.enable_grad():
                logits = work(x)
            num_classes = _check_logits(logits, num_classes)
            targets = targets_of(logits, labels, target, num_classes, batches)
            outputs = [cap.output(name) for name in names]
            seed = F.one_hot(targets, logits.shape[1]).to(logits.dtype)
            grads = torch.autograd.grad(
                logits, outputs, grad_outputs=seed * backend.output_seed(logits), allow_unused=True
            )
            index = index.to(device)
            updates, finite = [], [torch.isfinite(logits).all()]
            for name, out, grad in zip(names, outputs, grads, strict=True):
                kind = kinds[name]
                out = out.detach()
                if grad is None:  # the layer does not influence the logits at all
                    grad = torch.zeros_like(out)
                elementwise = backend.relevance(out, grad)
                rel = per_unit(elementwise, kind)
                # NaN/inf anywhere in the layer output or its gradient reaches the (B, C)
                # relevance: one check of it instead of scanning every activation
                finite.append(torch.isfinite(rel).all())
                act_max = act_pos = rel_pos = None
                if acc.top_n:
                    act_max, act_pos = _position_max(out, kind)
                    rel_pos = _position_max(elementwise, kind)[1]
                batch_stats = LayerBatch(
                    targets, index, rel, cap.input(name), act_max, act_pos, rel_pos
                )
                updates.append((name, out, batch_stats))
            if not bool(torch.stack(finite).all()):  # one host sync per batch
                _raise_non_finite(logits, updates, x, batches)
            acc.allocate(num_classes)
            for name, _, batch_stats in updates:
                acc.update(name, batch_stats)
            acc.counts.add(targets)  # type: ignore[union-attr]
            batches += 1
    return batches, num_classes


def _check_logits(logits: Any, num_classes: int | None) -> int:
    """The number of classes, from the first batch's logits unless given; typed errors."""
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        raise InputShapeError(
            "scan needs a model that returns logits shaped (batch, classes), got "
            f"{getattr(logits, 'shape', type(logits).__name__)}; wrap the model so it "
            "returns the class logits."
        )
    if num_classes is None:
        return int(logits.shape[1])
    if logits.shape[1] < num_classes:
        raise InvalidTargetError(
            f"num_classes={num_classes} but the model outputs only {logits.shape[1]} logits"
        )
    return num_classes


def tap_sums_of(module: nn.Module, x: Tensor, out: Tensor) -> Tensor:
    """Capture hook: the input's per-tap sums (the scan never keeps the input itself)."""
    return tap_sums(module, x, out.shape)


def _raise_non_finite(
    logits: Tensor, updates: list[tuple[str, Tensor, LayerBatch]], x: Tensor, batch: int
) -> None:
    """Say precisely where NaN/inf came from (only runs on the failure path)."""
    if not torch.isfinite(x).all():
        where = "the inputs"
    elif not torch.isfinite(logits).all():
        where = "the logits"
    else:
        where = "an unknown place"
        for name, out, stats in updates:
            if not torch.isfinite(out).all():
                where = f"the activations of layer {name!r}"
                break
            if not torch.isfinite(stats.relevance).all():
                where = f"the gradient reaching layer {name!r}"
                break
    raise NonFiniteError(
        f"NaN/inf in {where} in batch {batch}; check the inputs (normalised images?) and the "
        "model's weights (a finite checkpoint?)."
    )
