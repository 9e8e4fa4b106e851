"""Sparse dictionary learning (SDL) as a yardstick for exact splits: ``neuronsplit.sdl``.

* :mod:`~neuronsplit.sdl.bench`: the Linear Representation Bench of Tang et al. (arXiv
  2512.05534) and its GT-recovery / max-inner-product metrics;
* :mod:`~neuronsplit.sdl.models`: ReLU, JumpReLU, TopK and BatchTopK SAEs, transcoders;
* :mod:`~neuronsplit.sdl.anchoring`: feature anchoring;
* :mod:`~neuronsplit.sdl.train`: :func:`train_sae` (Matryoshka prefixes, Gao's aux loss);
* :mod:`~neuronsplit.sdl.lrb`: the Table 1 reproduction (``neuronsplit bench lrb``);
* :mod:`~neuronsplit.sdl.bridge` and :mod:`~neuronsplit.sdl.studies`: SAE versus split on the
  same ground truth.

See ``docs/sdl.md``.

Examples
--------
>>> from neuronsplit import sdl
>>> bench = sdl.make_bench(n=24, n_p=16, sparsity=0.9, max_interference=0.5, seed=0)
>>> sae = sdl.SparseAutoencoder(16, 48, k=2, seed=0)
>>> _ = sdl.train_sae(sae, bench, steps=5, batch_size=32, progress=False)
>>> 0 <= sdl.dictionary_recovery(sae.encoder_directions(), bench.w_p).gt_recovery <= 1
True
"""

from __future__ import annotations

from .anchoring import Anchors, anchor_loss, class_mean_anchors, gt_anchors
from .bench import (
    LinearRepresentationBench,
    Recovery,
    dictionary_recovery,
    make_bench,
    pgd_dictionary,
    welch_bound,
)
from .bridge import feature_purity, layer_outputs, spliced_output_change, subunit_activations
from .lrb import PAPER_TABLE_1, SIZES, format_table, run_lrb
from .models import ACTIVATIONS, SparseAutoencoder, Transcoder
from .train import DEFAULTS, TrainResult, train_sae

__all__ = [
    "ACTIVATIONS", "Anchors", "DEFAULTS", "LinearRepresentationBench", "PAPER_TABLE_1",
    "Recovery", "SIZES", "SparseAutoencoder", "TrainResult", "Transcoder", "anchor_loss",
    "class_mean_anchors", "dictionary_recovery", "feature_purity", "format_table", "gt_anchors",
    "layer_outputs", "make_bench", "pgd_dictionary", "run_lrb", "spliced_output_change",
    "subunit_activations", "train_sae", "welch_bound",
]  # fmt: skip
