"""SAE versus exact split on the same ground truth: :func:`planted_study`, :func:`vit_study`.

**Planted concepts.** :func:`~neuronsplit.evaluation.planted_concepts` builds ``Linear(J, U) ->
ReLU`` whose units each sum several planted concepts (each sample is driven by one). Three
methods read layer ``"0"``: a TopK SAE on its outputs, a TopK transcoder from its inputs to its
outputs, and :func:`~neuronsplit.discover` (which splits units by their inputs). Each feature
(latent, subunit, or unsplit unit) is scored by the planted concept of its top-activating
samples; a concept counts as recovered when some feature's top-``k`` samples are at least 90 %
that concept. Also reported: the layer's reconstruction error, the change of the network's
output with the reconstruction spliced in (the split model: :func:`~neuronsplit.apply_plan`),
and wall time.

**Demo ViT.** The same three-way view on one MLP layer of the digits ViT: an SAE on ``fc1``'s
outputs (every token a sample) trained on the training digits, ``discover`` on the same
data, and the class purity of each feature's top-``k`` test images (labels read only here).

Examples
--------
>>> row = planted_study(seed=0, steps=50, progress=False)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from .._checks import check_int
from ..evaluation.planted import planted_concepts, recovery
from ..methods.elude import discover
from ..nn import apply_plan
from .bridge import feature_purity, layer_outputs, spliced_output_change, subunit_activations
from .models import SparseAutoencoder, Transcoder
from .train import train_sae

__all__ = ["planted_study", "vit_study", "CONCEPTS"]

#: concepts planted per unit (the ELUDe ground-truth benchmark's setting)
CONCEPTS = [2, 3, 4, 1, 1, 1]


def _concept_scores(acts: torch.Tensor, concept: torch.Tensor, k: int) -> dict[str, float]:
    """Recovery of planted concepts by features ``acts`` ``(N, F)``."""
    n_concepts = int(concept.max()) + 1
    top = acts.topk(k, dim=0).indices  # (k, F)
    share = torch.stack([(concept[top] == c).double().mean(0) for c in range(n_concepts)])
    alive = (acts > 0).sum(0) >= k
    best = share[:, alive].amax(1) if bool(alive.any()) else torch.zeros(n_concepts)
    return {"recovered": float((best >= 0.9).double().mean()), "best_purity": float(best.mean()),
            "features": int(alive.sum())}  # fmt: skip


def _time(fn: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def planted_study(
    *, seed: int = 0, latents: int = 48, k: int = 1, steps: int = 1500, batch_size: int = 256,
    top: int = 20, progress: bool = True,
) -> dict[str, dict[str, float]]:  # fmt: skip
    """SAE, transcoder and ``discover`` on ``planted_concepts(CONCEPTS, seed=seed)``.

    Returns one dict per method (``"sae"``, ``"transcoder"``, ``"split"``) with
    ``recovered`` (share of the 12 planted concepts found by some feature at top-``top``
    purity >= 0.9), ``best_purity``, ``features``, ``layer_relative_error``,
    ``relative_change`` of the network output, ``seconds``; the split also has ``ari`` (mean
    over units, :func:`~neuronsplit.evaluation.recovery`).
    """
    check_int(seed, "seed", low=0)
    planted = planted_concepts(CONCEPTS, seed=seed)
    net, data, concept = planted.model, planted.data, planted.concept_of_sample
    batches = list(data.split(256))
    x, y = layer_outputs(net, "0", batches)
    out: dict[str, dict[str, float]] = {}
    for name, model, pairs, reads in (
        ("sae", SparseAutoencoder(y.shape[1], latents, k=k, seed=seed), y, "output"),
        ("transcoder", Transcoder(x.shape[1], latents, n_out=y.shape[1], k=k, seed=seed),
         (x, y), "input"),
    ):  # fmt: skip
        result, secs = _time(
            lambda m=model, p=pairs: train_sae(
                m, p, steps=steps, batch_size=batch_size, lr=3e-3, seed=seed, progress=progress
            )
        )
        with torch.no_grad():
            acts = model.encode(y if reads == "output" else x)
        change = spliced_output_change(net, "0", model, batches, reads=reads)
        out[name] = {**_concept_scores(acts, concept, top), **change, "seconds": secs,
                     "train_reconstruction": result.reconstruction}  # fmt: skip
    plan, secs = _time(lambda: discover(net, batches, ["0"], progress=progress))
    split = apply_plan(net, plan)
    acts, _ = subunit_activations(net[0].weight, net[0].bias, plan.by_layer().get("0"), x)
    with torch.no_grad():
        f, g = net(data).double(), split(data).double()
    scores = _concept_scores(acts.float(), concept, top)
    out["split"] = {**scores, "layer_relative_error": 0.0,
                    "relative_change": float((g - f).norm() / f.norm()),
                    "max_abs_change": float((g - f).abs().max()), "agreement": 1.0,
                    "seconds": secs,
                    "ari": float(np.mean([r.ari for r in recovery(plan, planted)]))}  # fmt: skip
    return out


def vit_study(
    *, layer: str = "blocks.3.mlp.fc1", latents: int = 1024, k: int = 16, steps: int = 2000,
    batch_size: int = 512, top: int = 20, cache_dir: str | os.PathLike | None = None,
    seed: int = 0, progress: bool = True,
) -> dict[str, dict[str, float]]:  # fmt: skip
    """A TopK SAE on the demo ViT's ``layer`` outputs versus ``discover`` on that layer.

    Returns ``"sae"`` and ``"split"`` dicts: ``purity`` (mean top-``top`` class purity of the
    features that fire on at least ``top`` test images), ``features``, ``unit_purity`` (the
    layer's units, the same score), ``layer_relative_error``, ``relative_change`` of the
    logits, ``agreement`` (unchanged predictions), ``seconds``.
    """
    from ..demo.data import load_digits
    from ..demo.vit import get_demo_vit

    vit = get_demo_vit(cache_dir)
    train, test = load_digits("train"), load_digits("test")
    train_batches = list(train.images.split(256))
    test_loader = DataLoader(TensorDataset(test.images, test.labels), batch_size=256)
    _, h_train = layer_outputs(vit, layer, train_batches)
    x_test, h_test = layer_outputs(vit, layer, test_loader)
    labels = test.labels
    units = feature_purity(h_test.amax(1), labels, k=top, min_active=top)
    sae = SparseAutoencoder(h_train.shape[-1], latents, k=k, seed=seed)
    result, secs = _time(lambda: train_sae(
        sae, h_train.reshape(-1, h_train.shape[-1]), steps=steps, batch_size=batch_size,
        seed=seed, progress=progress))  # fmt: skip
    with torch.no_grad():
        z = sae.encode(h_test.reshape(-1, h_test.shape[-1])).reshape(*h_test.shape[:2], -1)
    purity = feature_purity(z.amax(1), labels, k=top, min_active=top)
    change = spliced_output_change(vit, layer, sae, test_loader)
    unit_mean = float(units.nanmean())
    out = {"sae": {"purity": float(purity.nanmean()), "features": int((~purity.isnan()).sum()),
                   "unit_purity": unit_mean, **change, "seconds": secs,
                   "train_reconstruction": result.reconstruction}}  # fmt: skip
    plan, secs = _time(lambda: discover(vit, train_batches, [layer], progress=progress))
    fc = vit.get_submodule(layer)
    acts, _ = subunit_activations(fc.weight, fc.bias, plan.by_layer().get(layer), x_test)
    sub = feature_purity(acts.amax(1).float(), labels, k=top, min_active=top)
    split = apply_plan(vit, plan)
    with torch.no_grad():
        f, g = vit(test.images).double(), split(test.images).double()
    out["split"] = {"purity": float(sub.nanmean()), "features": int((~sub.isnan()).sum()),
                    "unit_purity": unit_mean, "layer_relative_error": 0.0,
                    "relative_change": float((g - f).norm() / f.norm()),
                    "max_abs_change": float((g - f).abs().max()),
                    "agreement": float((f.argmax(1) == g.argmax(1)).double().mean()),
                    "seconds": secs, "units_split": len(plan)}  # fmt: skip
    return out
