"""The streaming scan: one pass over a DataLoader that fills :class:`~neuronsplit.stats.ScanResult`.

For every batch the scan runs one forward pass with a forward hook on each chosen layer and one
backward pass (``torch.autograd.grad``) from the target logits to those layers' outputs only, so
nothing upstream of the earliest chosen layer is differentiated and no ``.grad`` is written to
any parameter. The hooks are removed and the model's training flag restored in ``finally``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from .errors import InputShapeError, InvalidTargetError, NonFiniteError, UnsupportedLayerError
from .layers import check_supported, eval_mode, layer_kind, resolve_layer
from .relevance import RelevanceBackend, Zennit, get_backend
from .stats import DEFAULT_TAU_GRID, LayerStats, ScanResult

__all__ = ["scan", "input_tap_sums", "differentiable_output"]


def _conv_pads(module: nn.Conv2d, in_hw: tuple[int, int]) -> list[int]:
    """Explicit (left, right, top, bottom) zero padding of a Conv2d, for ``F.pad``."""
    pads: list[tuple[int, int]] = []
    for dim in (0, 1):
        k, d = module.kernel_size[dim], module.dilation[dim]
        if module.padding == "valid":
            pads.append((0, 0))
        elif module.padding == "same":
            total = d * (k - 1)  # PyTorch puts the odd extra pixel on the right/bottom
            pads.append((total // 2, total - total // 2))
        else:
            p = module.padding[dim]
            pads.append((p, p))
    (top, bottom), (left, right) = pads
    return [left, right, top, bottom]


def input_tap_sums(
    module: nn.Module, inputs: torch.Tensor, out_shape: Sequence[int]
) -> torch.Tensor:
    """Per-sample sums of the layer input over the positions each kernel tap reads.

    For a ``Conv2d`` with weight ``W (C, J, kh, kw)`` the output summed over space is
    ``z_c = sum_{j,k} W[c, j, k] * S[j, k] + b_c * H_out * W_out``; this returns ``S`` with shape
    ``(B, J, kh * kw)``. For a ``Linear`` it returns the input summed over all token/space
    axes, ``(B, J, 1)``. Gradient x input of ``z_c`` w.r.t. input ``j`` is therefore
    ``sum_k W[c, j, k] * S[j, k]`` exactly.

    Parameters
    ----------
    module : nn.Conv2d or nn.Linear
        The layer.
    inputs : torch.Tensor
        Its input ``X``.
    out_shape : sequence of int
        Shape of its output (gives the number of output positions).

    Returns
    -------
    torch.Tensor
        ``(B, J, K)`` in the input's dtype.

    Examples
    --------
    >>> conv = nn.Conv2d(2, 3, 3, padding=1, bias=False)
    >>> x = torch.randn(1, 2, 5, 5)
    >>> s = input_tap_sums(conv, x, (1, 3, 5, 5))
    >>> z = conv(x).sum((2, 3))
    >>> torch.allclose(z, (conv.weight.flatten(2) * s[:, None]).sum((2, 3)), atol=1e-5)
    True
    """
    if isinstance(module, nn.Linear):
        if inputs.dim() == 2:
            return inputs.unsqueeze(-1)
        return inputs.sum(dim=tuple(range(1, inputs.dim() - 1))).unsqueeze(-1)
    x = F.pad(inputs, _conv_pads(module, tuple(inputs.shape[-2:])))
    (kh, kw), (dh, dw), (sh, sw) = module.kernel_size, module.dilation, module.stride
    ho, wo = int(out_shape[-2]), int(out_shape[-1])
    taps = []
    for i in range(kh):
        for j in range(kw):
            window = x[
                :,
                :,
                i * dh : i * dh + sh * (ho - 1) + 1 : sh,
                j * dw : j * dw + sw * (wo - 1) + 1 : sw,
            ]
            taps.append(window.sum(dim=(2, 3)))
    return torch.stack(taps, dim=-1)


def _split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        labels = batch[1] if len(batch) > 1 else None
        if labels is not None and not isinstance(labels, torch.Tensor):
            labels = torch.as_tensor(labels)
        return batch[0], labels
    raise InputShapeError(
        f"the loader must yield tensors or (inputs, labels) pairs, got {type(batch).__name__}; "
        "wrap your dataset so that it returns (image_tensor, int_label)."
    )


def differentiable_output(output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a hooked layer output into the tensor to differentiate and the one to pass on.

    A frozen model (no parameter requires grad) gives outputs without a graph: one is started
    here. Later in-place ops (``ReLU(inplace=True)``, timm's ``x += shortcut``) must not
    overwrite the tensor whose gradient is read, so the rest of the network gets a clone.

    Returns
    -------
    (source, downstream)
        ``source`` to pass to ``torch.autograd.grad``; ``downstream`` for the hook to return.
    """
    source = output if output.requires_grad else output.detach().requires_grad_(True)
    return source, source.clone()


class _Recorder:
    """Forward hooks that keep each layer's output (for the gradient) and input tap sums."""

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        self.modules = modules
        self.outputs: dict[str, torch.Tensor] = {}
        self.taps: dict[str, torch.Tensor] = {}
        self.calls: dict[str, int] = {}

    def reset(self) -> None:
        self.outputs.clear()
        self.taps.clear()
        self.calls.clear()

    def hook(self, name: str):
        def record(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> torch.Tensor:
            if not isinstance(output, torch.Tensor):
                raise UnsupportedLayerError(
                    f"layer {name!r} returned {type(output).__name__}, not a Tensor"
                )
            self.calls[name] = self.calls.get(name, 0) + 1
            with torch.no_grad():
                self.taps[name] = input_tap_sums(module, inputs[0].detach(), output.shape)
            self.outputs[name], downstream = differentiable_output(output)
            return downstream

        return record


def scan(
    model: nn.Module,
    loader: Iterable[Any],
    layers: str | Sequence[str],
    num_classes: int | None = None,
    *,
    relevance: str | RelevanceBackend = "grad_x_act",
    target: str = "label",
    tau_grid: Sequence[float] = DEFAULT_TAU_GRID,
    device: str | torch.device | None = None,
    max_batches: int | None = None,
    progress: bool = True,
) -> ScanResult:
    """Scan ``model`` over ``loader`` and accumulate per-class statistics of ``layers``.

    Parameters
    ----------
    model : nn.Module
        A classifier returning logits ``(B, num_classes)``. It is run in eval mode and never
        modified (its training flag is restored afterwards).
    loader : iterable
        Yields ``(inputs, labels)`` pairs (or bare inputs with ``target="prediction"``).
    layers : str or sequence of str
        Dotted names of ``nn.Conv2d`` / ``nn.Linear`` layers, e.g. ``"layer4.2.conv3"``.
    num_classes : int, optional
        Number of classes; inferred from the logits when omitted.
    relevance : "grad_x_act" or RelevanceBackend
        ``"grad_x_act"`` (default, Hesse et al.) or ``ns.Zennit(composite, canonizers=...)``.
    target : {"label", "prediction"}
        Which logit the relevance explains; images are counted under that class.
    tau_grid : sequence of float
        Thresholds at which importance counts are kept (detection can use any of them).
    device : str or torch.device, optional
        Where to run; defaults to the device of the model's first parameter.
    max_batches : int, optional
        Stop after this many batches.
    progress : bool
        Show a tqdm progress bar.

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

    Examples
    --------
    >>> import neuronsplit as ns
    >>> from neuronsplit.data import digits_loader
    >>> from neuronsplit.demo_model import DigitsNet
    >>> res = ns.scan(DigitsNet(), digits_loader("test"), ["fc2"], progress=False)
    >>> res.num_samples, res.layer("fc2").num_units
    (397, 6)
    """
    names = [layers] if isinstance(layers, str) else list(layers)
    if not names:
        raise ValueError("layers is empty; name at least one Conv2d/Linear layer, e.g. ['fc2']")
    if len(set(names)) != len(names):
        raise ValueError(f"layers lists a name twice: {names}")
    for name in names:  # fail fast, before any computation
        check_supported(resolve_layer(model, name), name)
    if target not in ("label", "prediction"):
        raise ValueError(f"target must be 'label' or 'prediction', got {target!r}")
    taus = tuple(float(t) for t in tau_grid)
    if not taus or any(not 0.0 < t <= 1.0 for t in taus):
        raise ValueError(f"tau_grid must hold thresholds in (0, 1], got {list(tau_grid)}")
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    backend = get_backend(relevance)
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)

    handles: list[Any] = []
    accum: dict[str, dict[str, torch.Tensor]] = {}
    class_counts: torch.Tensor | None = None
    batches = 0
    try:
        # eval_mode restores every submodule's own training flag, even on errors
        with eval_mode(model), backend.prepare(model) as work:
            modules = {name: resolve_layer(work, name) for name in names}
            recorder = _Recorder(modules)
            for name, module in modules.items():
                handles.append(module.register_forward_hook(recorder.hook(name)))
            iterator = tqdm(loader, desc="neuronsplit scan", unit="batch", disable=not progress)
            for batch in iterator:
                if max_batches is not None and batches >= max_batches:
                    break
                x, labels = _split_batch(batch)
                x = x.to(device)
                recorder.reset()
                with torch.enable_grad():
                    logits = work(x)
                if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
                    raise InputShapeError(
                        "scan needs a model that returns logits shaped (batch, classes), got "
                        f"{getattr(logits, 'shape', type(logits).__name__)}; wrap the model so it "
                        "returns the class logits."
                    )
                if num_classes is None:
                    num_classes = int(logits.shape[1])
                elif logits.shape[1] < num_classes:
                    raise InvalidTargetError(
                        f"num_classes={num_classes} but the model outputs only {logits.shape[1]} logits"
                    )
                if not torch.isfinite(logits).all():
                    raise NonFiniteError(f"batch {batches} produced NaN/inf logits")
                targets = _targets(logits, labels, target, num_classes, batches)
                for name in names:
                    calls = recorder.calls.get(name, 0)
                    if calls != 1:
                        raise UnsupportedLayerError(
                            f"layer {name!r} ran {calls} times in one forward pass; neuronsplit "
                            "needs layers that run exactly once (a module reused in several "
                            "places cannot be attributed per call)."
                        )
                seed = F.one_hot(targets, logits.shape[1]).to(logits.dtype)
                if isinstance(backend, Zennit):  # LRP starts from the logit itself
                    seed = seed * logits.detach()
                outputs = [recorder.outputs[name] for name in names]
                grads = torch.autograd.grad(logits, outputs, grad_outputs=seed, allow_unused=True)
                if class_counts is None:
                    class_counts = torch.zeros(num_classes, dtype=torch.int64, device=device)
                class_counts.index_add_(0, targets, torch.ones_like(targets))
                for name, out, grad in zip(names, outputs, grads, strict=True):
                    module = modules[name]
                    kind = layer_kind(module)
                    if grad is None:  # the layer does not influence the logits at all
                        grad = torch.zeros_like(out)
                    rel = backend.unit_relevance(out.detach(), grad, kind)
                    # one cheap check on (B, C) instead of scanning every activation: NaN/inf
                    # anywhere in the layer output or its gradient reaches the relevance
                    if not torch.isfinite(rel).all():
                        _raise_non_finite(name, out, x, batches)
                    _accumulate(
                        accum, name, module, rel, recorder.taps[name], targets, num_classes, taus
                    )
                batches += 1
    finally:
        for handle in handles:
            handle.remove()

    if class_counts is None:
        raise InputShapeError("the loader yielded no batches; nothing was scanned")
    result_layers = {}
    for name in names:
        module = resolve_layer(model, name)
        weight = module.weight.detach().to("cpu", torch.float64)
        acc = accum[name]
        result_layers[name] = LayerStats(
            name,
            layer_kind(module),
            weight.reshape(weight.shape[0], weight.shape[1], -1).clone(),
            acc["important"].cpu(),
            acc["relevance_sum"].cpu(),
            acc["input_sums"].cpu(),
        )
    meta = {"model": type(model).__name__, "batches": batches, "merged": 1}
    return ScanResult(result_layers, class_counts.cpu(), taus, backend.describe(), target, meta)


def _targets(
    logits: torch.Tensor, labels: torch.Tensor | None, target: str, num_classes: int, batch: int
) -> torch.Tensor:
    if target == "prediction":
        return logits.detach()[:, :num_classes].argmax(1)
    if labels is None:
        raise InvalidTargetError(
            "the loader yields no labels but target='label'; yield (inputs, labels) pairs or "
            "pass target='prediction'."
        )
    labels = labels.to(logits.device)
    if labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
        raise InvalidTargetError(
            f"labels of batch {batch} have shape {tuple(labels.shape)}; expected ({logits.shape[0]},)"
            " integer class indices (not one-hot)."
        )
    if labels.is_floating_point() and not torch.equal(labels, labels.round()):
        raise InvalidTargetError(f"labels of batch {batch} are not integers: {labels.tolist()[:5]}")
    labels = labels.long()
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.numel():
        raise InvalidTargetError(
            f"label {int(bad[0])} in batch {batch} is outside [0, {num_classes}); pass the right "
            "num_classes or remap the labels."
        )
    return labels


def _accumulate(
    accum: dict[str, dict[str, torch.Tensor]],
    name: str,
    module: nn.Module,
    rel: torch.Tensor,
    taps: torch.Tensor,
    targets: torch.Tensor,
    num_classes: int,
    taus: tuple[float, ...],
) -> None:
    if name not in accum:
        units, device = rel.shape[1], rel.device
        accum[name] = {
            "important": torch.zeros(
                len(taus), num_classes, units, dtype=torch.int32, device=device
            ),
            "relevance_sum": torch.zeros(num_classes, units, dtype=torch.float64, device=device),
            "input_sums": torch.zeros(
                num_classes, *taps.shape[1:], dtype=torch.float64, device=device
            ),
        }
    acc = accum[name]
    rel = rel.detach()
    positive_total = rel.clamp(min=0).sum(1, keepdim=True)
    thresholds = torch.tensor(taus, dtype=rel.dtype, device=rel.device).view(-1, 1, 1)
    important = (rel.unsqueeze(0) >= thresholds * positive_total.unsqueeze(0)).to(torch.int32)
    acc["important"].index_add_(1, targets, important)  # all taus in one call: (T, B, C)
    acc["relevance_sum"].index_add_(0, targets, rel.to(torch.float64))
    acc["input_sums"].index_add_(0, targets, taps.to(torch.float64))


def _raise_non_finite(name: str, out: torch.Tensor, x: torch.Tensor, batch: int) -> None:
    """Say precisely where NaN/inf came from (only runs on the failure path)."""
    if not torch.isfinite(x).all():
        where = "the inputs"
    elif not torch.isfinite(out).all():
        where = f"the activations of layer {name!r}"
    else:
        where = f"the gradient reaching layer {name!r}"
    raise NonFiniteError(
        f"NaN/inf in {where} in batch {batch}; check the inputs (normalised images?) and the "
        "model's weights (a finite checkpoint?)."
    )
