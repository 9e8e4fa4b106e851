"""ELUDe's unsupervised whole-layer split: :func:`discover`.

One pass over the data fills, per layer, a reservoir of every unit's top-activating samples and
their inputs (:class:`~neuronsplit.methods.elude.reservoir.TopInputs`); each unit's contributions
on those samples are then clustered and its inputs routed to subunits
(:func:`~neuronsplit.methods.elude.concepts.find_concepts`). No labels are read.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from joblib import Parallel, delayed
from threadpoolctl import threadpool_limits
from torch import Tensor, nn

from ..._checks import check_bool, check_choice, check_int, check_module, check_names, check_number
from ..._progress import progress_bar
from ...capture import (
    capture,
    check_plain,
    check_supported,
    eval_mode,
    is_split_layer,
    layer_shape,
    model_device,
    resolve_layer,
)
from ...capture.layer_scales import layer_scale_pairs
from ...errors import (
    ArgumentTypeError,
    InputShapeError,
    InvalidArgumentError,
    PlanError,
    UnsupportedLayerError,
)
from ...plan import LayerSplit, SplitPlan
from ...stats.batches import split_batch
from .concepts import ConceptRule, UnitConcepts, find_concepts_batch, span_coordinates
from .reservoir import TopInputs, token_slice

__all__ = ["discover", "DEFAULT_TOP_N"]

#: samples kept per unit: a unit is read by its strongest activations, and clusters among those
#: gave the purest subunits (validation split of the training digits, demo ViT, all MLP layers:
#: top 24 +0.107, 32 +0.115, 48 +0.105, 64 +0.095, 128 +0.042 purity gain); still room for four
#: clusters of ``min_cluster`` samples
DEFAULT_TOP_N = 32
_CHUNK = 256  # most units per clustering task
_TASK_BYTES = 64 * 2**20  # most contribution bytes per clustering task
_PARALLEL_FROM = 256  # fewer units are clustered in this process


def _check_tokens(model: nn.Module, tokens: str) -> int:
    """The number of prefix tokens, refusing ``tokens`` the model cannot have."""
    check_choice(tokens, "tokens", ("all", "cls", "patch"))
    prefix = getattr(model, "num_prefix_tokens", None)
    if tokens == "all":
        return int(prefix or 0)
    if prefix is None:
        raise InvalidArgumentError(
            f"tokens={tokens!r} needs a model that says which tokens are prefix tokens (a timm "
            f"VisionTransformer's num_prefix_tokens); {type(model).__name__} has none. Use "
            "tokens='all'."
        )
    if tokens == "cls" and getattr(model, "cls_token", None) is None:
        raise InvalidArgumentError(
            f"tokens='cls' but {type(model).__name__} has no class token (class_token=False); "
            "use tokens='patch' or 'all'."
        )
    return int(prefix)


def _check_layer(model: nn.Module, name: str) -> nn.Module:
    layer = resolve_layer(model, name)
    if is_split_layer(layer):
        raise PlanError(
            f"layer {name!r} is already split; discover on the original model (nested splits "
            "are not supported)"
        )
    check_supported(layer, name)
    check_plain(model, layer, name)
    return layer


def _units(units: Any, n_units: int, name: str) -> tuple[list[int], bool]:
    """``(units to examine, force a split)``."""
    if isinstance(units, str):
        check_choice(units, "units", ("polysemantic", "all"))
        return list(range(n_units)), units == "all"
    if not isinstance(units, Iterable):
        raise ArgumentTypeError(
            f"units must be 'polysemantic', 'all' or a list of unit indices, got {units!r}"
        )
    ids = [check_int(u, "each unit", low=0) for u in units]
    bad = [u for u in ids if u >= n_units]
    if bad:
        raise InvalidArgumentError(
            f"units {bad[:5]} do not exist in layer {name!r}, which has {n_units} units "
            f"(0..{n_units - 1})"
        )
    if not ids:
        raise InvalidArgumentError("units is an empty list; name at least one unit")
    return sorted(set(ids)), False


def _write_signs(model: nn.Module, names: Iterable[str]) -> dict[str, Tensor]:
    """Per layer followed by a timm LayerScale (DINOv2), the sign of its scale per unit.

    ``apply_plan`` folds the scale into the split rows, so the subunits are the block's writes
    ``gamma * z``: a unit is ranked, and its contributions read, in that direction.
    """
    pairs = layer_scale_pairs(model)
    return {
        name: model.get_submodule(pairs[name]).gamma.detach().sign().cpu()
        for name in names
        if name in pairs
    }


def _collect(
    model: nn.Module, loader: Iterable[Any], layers: dict[str, nn.Module], top_n: int,
    tokens: slice, per_image: bool, max_batches: int | None, progress: bool,
) -> dict[str, TopInputs]:  # fmt: skip
    signs = _write_signs(model, layers)
    tops = {
        name: TopInputs(layer, top_n, tokens, per_image, signs.get(name))
        for name, layer in layers.items()
    }
    device = model_device(model)

    def record(module: nn.Module, x: Tensor, out: Tensor) -> None:
        tops[names[id(module)]].update(x, out)

    names = {id(layer): name for name, layer in layers.items()}
    batches = 0
    with eval_mode(model), torch.no_grad():
        # no early stop: a layer that runs twice per pass must be seen running twice
        with capture(model, layers, outputs=False, input_fn=record) as cap:
            for batch in progress_bar(loader, desc="discover: collecting", enabled=progress):
                if max_batches is not None and batches >= max_batches:
                    break
                inputs, _ = split_batch(batch)
                cap.clear()
                cap.forward(model, inputs.to(device) if device is not None else inputs)
                for name in layers:
                    if cap.calls(name) != 1:
                        raise UnsupportedLayerError(
                            f"layer {name!r} ran {cap.calls(name)} times in one forward pass; "
                            "discover needs layers that run exactly once per pass"
                        )
                batches += 1
    if batches == 0:
        raise InputShapeError("the loader yielded no batches; discover needs samples")
    return tops


def _unit_groups(
    top: TopInputs, weight: Tensor, units: list[int], conv_taps: int
) -> Iterator[tuple[list[int], np.ndarray, np.ndarray, np.ndarray] | list[int]]:
    """Units with the same number of kept samples, in groups small enough to ship to a worker:
    ``(units, contributions (G, m, J), span coordinates (G, m, r), activations (G, m))``, or a
    bare list of units that kept no sample."""
    by_size: dict[int, list[int]] = {}
    for u in units:
        by_size.setdefault(top.kept(u), []).append(u)
    for m, same in by_size.items():
        if m == 0:
            yield same
            continue
        inputs = weight.shape[1] // conv_taps
        per_group = max(1, min(_CHUNK, _TASK_BYTES // (8 * m * max(inputs, weight.shape[1]))))
        for start in range(0, len(same), per_group):
            group = same[start : start + per_group]
            vec = torch.stack([top.vectors(u) for u in group]).double()  # (G, m, D)
            contrib = vec * weight[group].to(vec.device, torch.float64).unsqueeze(1)
            if top.sign is not None:  # contributions to the write gamma * z
                contrib = contrib * top.sign[group].to(contrib).reshape(-1, 1, 1)
            if conv_taps > 1:  # sum over the kernel taps: one contribution per input channel
                contrib = contrib.reshape(*contrib.shape[:2], -1, conv_taps).sum(-1)
            norms = contrib.norm(dim=-1, keepdim=True)
            coords = span_coordinates(contrib / norms.clamp_min(1e-300))
            acts = top.values[group, :m]
            yield group, contrib.cpu().numpy(), coords.cpu().numpy(), acts.cpu().numpy()


def _concepts_of_group(
    task: tuple[list[int], np.ndarray, np.ndarray, np.ndarray], rule: ConceptRule, force: bool
) -> list[tuple[int, UnitConcepts]]:
    """Run in a worker process: one group of units, one thread (tiny k-means problems: threads
    cost more than they give)."""
    group, contrib, coords, acts = task
    with threadpool_limits(1):
        return list(
            zip(group, find_concepts_batch(contrib, coords, rule, acts, force), strict=True)
        )


def _layer_concepts(
    top: TopInputs, weight: Tensor, units: list[int], rule: ConceptRule, force: bool,
    conv_taps: int, n_jobs: int,
) -> dict[int, UnitConcepts]:  # fmt: skip
    found: dict[int, UnitConcepts] = {}
    tasks = []
    for item in _unit_groups(top, weight, units, conv_taps):
        if isinstance(item, list):
            found.update({u: UnitConcepts(1, None, float("nan"), 0, "few_active") for u in item})
        else:
            tasks.append(item)
    # processes pay off only for many units (starting the workers costs about a second)
    jobs = n_jobs if len(units) >= _PARALLEL_FROM else 1
    if jobs == 1:
        results = [_concepts_of_group(t, rule, force) for t in tasks]
    else:
        results = Parallel(n_jobs=jobs)(delayed(_concepts_of_group)(t, rule, force) for t in tasks)
    for pairs in results:
        found.update(pairs)
    return found


def discover(
    model: nn.Module,
    loader: Iterable[Any],
    layers: str | Sequence[str],
    *,
    units: str | Sequence[int] = "polysemantic",
    max_concepts: int = 4,
    top_n: int = DEFAULT_TOP_N,
    tokens: str = "all",
    samples: str = "token",
    min_silhouette: float = 0.4,
    margin: float = 0.0,
    seed: int = 0,
    max_batches: int | None = None,
    n_jobs: int | None = None,
    progress: bool = True,
) -> SplitPlan:
    """Split the polysemantic units of whole layers without labels (ELUDe).

    For every unit of every layer: its ``top_n`` most activating samples (tokens of a ViT) and
    their input contributions ``w_uj * x_j`` are collected in one pass; the contributions are
    clustered with scikit-learn's k-means for ``K = 2 .. max_concepts``; the silhouette picks
    ``K`` or says ``K = 1`` (not polysemantic, left alone); each input goes to the subunit whose
    cluster it dominates by ``margin``, ambiguous and inhibitory inputs to the shared residual.
    The rules and their reasons are in :mod:`neuronsplit.methods.elude.concepts` and
    ``docs/elude.md``. The plan is exact by construction (:func:`neuronsplit.apply_plan`).

    Parameters
    ----------
    model : nn.Module
        The model (not changed; run in eval mode under ``no_grad``).
    loader : iterable
        Batches of inputs, or ``(inputs, labels, ...)`` tuples whose labels are ignored.
    layers : str or sequence of str
        ``nn.Linear`` / ``nn.Conv2d`` layers, e.g. ``["blocks.3.mlp.fc1", "blocks.3.mlp.fc2"]``.
    units : "polysemantic", "all" or sequence of int, default "polysemantic"
        ``"polysemantic"``: every unit, split where the rules find concepts; a list: only those
        units, same rules; ``"all"``: every unit with enough active samples is split with its
        best ``K >= 2`` whatever the silhouette.
    max_concepts : int, default 4
        Largest number of subunits per unit.
    top_n : int, default 32
        Samples kept per unit (its most active ones).
    tokens : {"all", "cls", "patch"}, default "all"
        For layers that see token tensors ``(B, T, D)``: which tokens are samples.
    samples : {"token", "image"}, default "token"
        For token layers: every token is a sample, or every image at its most active token
        (convolutions are always read per image, at the most active position).
    min_silhouette : float, default 0.4
        Silhouette the best clustering must reach for a split.
    margin : float, default 0.0
        Routing margin in ``[0, 1)``: an input goes to a subunit only if its share there is
        more than ``1 / (1 - margin)`` times its share in any other (0: argmax; ties and inputs
        negative in every cluster go to the residual).
    seed : int, default 0
        Seed of k-means (the result is deterministic).
    max_batches : int, optional
        Stop after this many batches.
    n_jobs : int, optional
        Processes that cluster the units (joblib); default: one per CPU core. Layers with fewer
        than 256 units to examine are clustered in this process.
    progress : bool, default True
        Show progress bars.

    Returns
    -------
    SplitPlan
        Disjoint-form splits of the polysemantic units; ``plan.meta["elude"]`` holds the
        settings and per layer the units examined, split, the K histogram and the reasons
        units were left alone.

    Raises
    ------
    UnknownLayerError, UnsupportedLayerError, PlanError
        A layer that does not exist, is not a plain Linear/Conv2d, is already split or runs
        more than once per pass.
    InvalidArgumentError, ArgumentTypeError
        Bad settings, ``tokens`` the model has not (``"cls"`` without a class token).
    NonFiniteError
        NaN or infinite activations.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(6, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> plan = discover(model, [torch.randn(64, 6)], ["0"], progress=False)
    >>> plan.meta["elude"]["layers"]["0"]["examined"]
    3
    """
    check_module(model, "model")
    names = check_names(layers, "layers", example="'blocks.3.mlp.fc1'")
    check_int(max_concepts, "max_concepts", low=2)
    check_int(top_n, "top_n", low=2)
    check_number(min_silhouette, "min_silhouette", low=-1, high=1)
    check_number(margin, "margin", low=0, high=1, high_open=True)
    check_int(seed, "seed", low=0)
    check_int(max_batches, "max_batches", low=1, optional=True)
    jobs = check_int(n_jobs, "n_jobs", low=1, optional=True) or os.cpu_count() or 1
    check_bool(progress, "progress")
    prefix = _check_tokens(model, tokens)
    modules = {name: _check_layer(model, name) for name in names}
    if len({id(m) for m in modules.values()}) != len(modules):
        raise PlanError("two of the layers are the same module; name each module once")
    plans = {name: _units(units, layer_shape(m)[0], name) for name, m in modules.items()}
    rule = ConceptRule(max_concepts=max_concepts, min_silhouette=min_silhouette, margin=margin,
                       seed=seed)  # fmt: skip
    if top_n < 2 * rule.min_cluster:
        raise InvalidArgumentError(
            f"top_n={top_n} cannot hold two clusters of {rule.min_cluster} samples; use "
            f"top_n >= {2 * rule.min_cluster} (default {DEFAULT_TOP_N})"
        )
    tops = _collect(
        model, loader, modules, top_n, token_slice(tokens, prefix),
        check_choice(samples, "samples", ("token", "image")) == "image", max_batches, progress,
    )  # fmt: skip
    splits: list[LayerSplit] = []
    summary: dict[str, Any] = {}
    for name, layer in modules.items():
        unit_ids, force = plans[name]
        weight = layer.weight.detach().reshape(layer.weight.shape[0], -1)
        taps = int(np.prod(layer.kernel_size)) if isinstance(layer, nn.Conv2d) else 1
        found = _layer_concepts(tops[name], weight, unit_ids, rule, force, taps, jobs)
        split = {u: c for u, c in found.items() if c.k >= 2}
        if split:
            order = sorted(split)
            splits.append(
                LayerSplit(
                    name,
                    order,
                    np.stack([split[u].assignment for u in order]),
                    [split[u].k for u in order],
                )  # fmt: skip
            )
        reasons: dict[str, int] = {}
        for c in found.values():
            if c.k == 1:
                reasons[c.reason] = reasons.get(c.reason, 0) + 1
        ks = [c.k for c in split.values()]
        summary[name] = {
            "examined": len(found),
            "split": len(split),
            "k_histogram": {str(k): ks.count(k) for k in sorted(set(ks))},
            "left_alone": reasons,
            "samples_seen": tops[name].count,
        }
    meta = {
        "elude": {
            "max_concepts": max_concepts, "top_n": top_n, "tokens": tokens,
            "min_silhouette": min_silhouette, "margin": margin, "seed": seed,
            "units": units if isinstance(units, str) else "list", "layers": summary,
        }
    }  # fmt: skip
    return SplitPlan(splits, meta=meta)
