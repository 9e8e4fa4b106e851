"""Table 1 of Tang et al. on the Linear Representation Bench: :func:`run_lrb`.

Every method of :data:`METHODS` is trained on the same bench with and without feature
anchoring (``k`` random GT anchors, weight 0.1; anchored features are left out of the metrics)
and scored on its encoder rows (:func:`~neuronsplit.sdl.bench.dictionary_recovery`: GT recovery
at tau = 0.95 and max inner product), in two readings: the rows normalised (cosines) and as
trained (inner products; the paper does not say which it uses, docs/sdl.md); decoder-based
scores are reported as an extra.

Sizes (:data:`SIZES`): ``"paper"`` is the paper's bench (n = 1000, n_p = 768, n_q = 16,000,
batches of 4096) and needs a GPU; ``"small"`` keeps S = 0.99, M = 0.1, the superposition ratio
n / n_p = 1.3 and the 10 % anchor share, and shrinks n and the dictionary; its three default
rows (ReLU, TopK, BatchTopK, each with and without anchoring: six trainings of 4000 steps) take
about 4 minutes of CPU time on one thread (docs/sdl.md, "Time").

Examples
--------
>>> sorted(SIZES), [m[0] for m in METHODS][:3]
(['paper', 'small'], ['ReLU SAE', 'TopK SAE', 'BatchTopK SAE'])
"""

from __future__ import annotations

import time
from typing import Any

import torch

from .._checks import check_bool, check_choice, check_int
from .anchoring import gt_anchors
from .bench import dictionary_recovery, make_bench
from .models import SparseAutoencoder, Transcoder
from .train import train_sae

__all__ = ["SIZES", "METHODS", "PAPER_TABLE_1", "run_lrb", "format_table"]

#: bench and training sizes; ``k`` is the TopK family's active-latent count (the paper does not
#: state its k; the small size's k = 1 is the mean number of active features, and with it TopK
#: never fires two latents on one sample while BatchTopK does: co-firing latents make the
#: unmixing rows of pinv(W_p) the best encoder rows, which fail the cosine reading and pass the
#: raw one, see docs/sdl.md, "Why BatchTopK scores 0 % on cosines")
SIZES: dict[str, dict[str, Any]] = {
    "small": {"n": 100, "n_p": 77, "n_q": 400, "k": 1, "steps": 4000, "batch_size": 1024,
              "lr": 3e-3, "anchors": 10,
              "methods": ["ReLU SAE", "TopK SAE", "BatchTopK SAE"]},
    "paper": {"n": 1000, "n_p": 768, "n_q": 16000, "k": 32, "steps": 10000,
              "batch_size": 4096, "lr": 3e-4, "anchors": 100, "methods": None},
}  # fmt: skip

#: (row label, activation, transcoder, Matryoshka prefixes as shares of n_q)
METHODS: list[tuple[str, str, bool, tuple[float, ...]]] = [
    ("ReLU SAE", "relu", False, ()),
    ("TopK SAE", "topk", False, ()),
    ("BatchTopK SAE", "batchtopk", False, ()),
    ("JumpReLU SAE", "jumprelu", False, ()),
    ("Matryoshka SAE", "batchtopk", False, (1 / 16, 1 / 4)),
    ("Transcoder", "topk", True, ()),
]

#: the paper's Table 1: method -> (M_GT %, M_IP, +FA M_GT %, +FA M_IP)
PAPER_TABLE_1: dict[str, tuple[float, float, float, float]] = {
    "ReLU SAE": (0.00, 0.205, 0.00, 0.246),
    "JumpReLU SAE": (0.00, 0.237, 0.00, 0.333),
    "TopK SAE": (84.90, 0.983, 87.63, 0.986),
    "BatchTopK SAE": (84.80, 0.981, 89.38, 0.988),
    "Matryoshka SAE": (83.70, 0.982, 87.32, 0.985),
    "Transcoder": (23.60, 0.838, 25.05, 0.838),
    "Crosscoder": (56.42, 0.940, 57.71, 0.941),
}


def run_lrb(
    size: str = "small", *, device: str | torch.device | None = None, seed: int = 0,
    methods: list[str] | None = None, progress: bool = True, **overrides: Any,
) -> list[dict[str, Any]]:  # fmt: skip
    """Train every method of :data:`METHODS` with and without anchoring; one row per method.

    Parameters
    ----------
    size : {"small", "paper"}
        See :data:`SIZES`.
    device : str or torch.device, optional
        Where to train (``"cuda"`` for the paper size).
    seed : int
        Seeds the bench, the dictionaries, the anchors and the batches.
    methods : list of str, optional
        Row labels of :data:`METHODS` to run (default: the size's ``methods``; the small size
        runs the ReLU, TopK and BatchTopK SAEs, the paper size all of them).
    progress : bool
        Progress bars.
    **overrides
        Replace entries of ``SIZES[size]`` (e.g. ``steps=500``).

    Returns
    -------
    list of dict
        ``method``, ``gt``, ``ip``, ``fa_gt``, ``fa_ip`` (encoder rows, normalised: cosines),
        ``raw_gt``, ``raw_ip``, ``fa_raw_gt``, ``fa_raw_ip`` (encoder rows as trained: inner
        products), ``dec_gt``, ``fa_dec_gt`` (decoder columns, an extra), ``seconds`` and the
        ``settings``.
    """
    check_choice(size, "size", tuple(SIZES))
    seed = check_int(seed, "seed", low=0)
    check_bool(progress, "progress")
    cfg = {**SIZES[size], **overrides}
    known = [m[0] for m in METHODS]
    methods = cfg["methods"] if methods is None else methods
    for name in methods or []:
        check_choice(name, "each method", known)
    bench = make_bench(cfg["n"], cfg["n_p"], 0.99, 0.1, seed=seed)
    rows = []
    for label, activation, transcoder, shares in METHODS:
        if methods is not None and label not in methods:
            continue
        row: dict[str, Any] = {"method": label}
        t0 = time.perf_counter()
        for anchored in (False, True):
            cls = Transcoder if transcoder else SparseAutoencoder
            extra = {"n_out": cfg["n_p"]} if transcoder else {}
            model = cls(cfg["n_p"], cfg["n_q"], activation=activation, k=cfg["k"], seed=seed,
                        **extra)  # fmt: skip
            anchors = gt_anchors(bench, cfg["anchors"], weight=0.1, seed=seed,
                                 target="r" if transcoder else "p") if anchored else None  # fmt: skip
            prefixes = [max(1, int(s * cfg["n_q"])) for s in shares] or None
            train_sae(model, bench, steps=cfg["steps"], batch_size=cfg["batch_size"],
                      lr=cfg["lr"], anchors=anchors, prefixes=prefixes, device=device,
                      seed=seed, progress=progress)  # fmt: skip
            exclude = anchors.features if anchors is not None else None
            directions = model.encoder_directions()
            enc = dictionary_recovery(directions, bench.w_p, exclude=exclude)
            raw = dictionary_recovery(directions, bench.w_p, exclude=exclude, normalize=False)
            # a transcoder's decoder writes W_r's space
            truth = bench.w_r if transcoder else bench.w_p
            dec = dictionary_recovery(model.decoder_directions(), truth, exclude=exclude)
            pre = "fa_" if anchored else ""
            row.update({f"{pre}gt": 100 * enc.gt_recovery, f"{pre}ip": enc.max_inner_product,
                        f"{pre}raw_gt": 100 * raw.gt_recovery,
                        f"{pre}raw_ip": raw.max_inner_product,
                        f"{pre}dec_gt": 100 * dec.gt_recovery})  # fmt: skip
        row["seconds"] = time.perf_counter() - t0
        row["settings"] = {**cfg, "size": size, "seed": seed, "S": 0.99, "M": 0.1,
                           "anchor_weight": 0.1, "activation": activation,
                           "prefixes": list(shares)}  # fmt: skip
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]], *, paper: bool = True) -> str:
    """The measured rows as a text table, the paper's Table 1 beside them.

    Both readings of the encoder metric: "cos" normalises the encoder rows (cosines), "raw"
    takes them as trained (inner products; rows from before the raw columns show "-").

    Examples
    --------
    >>> row = {"method": "TopK SAE", "gt": 80.0, "ip": 0.97, "fa_gt": 85.0, "fa_ip": 0.98,
    ...        "raw_gt": 90.0, "raw_ip": 0.99, "fa_raw_gt": 95.0, "fa_raw_ip": 1.0,
    ...        "dec_gt": 90.0, "fa_dec_gt": 92.0, "seconds": 1.0}
    >>> print(format_table([row]).splitlines()[3])
    TopK SAE          80.0%  0.970  85.0%  0.980 |  90.0%  0.990  95.0%  1.000 |  84.9%  0.983  87.6%  0.986 |  90.0%  92.0%    1
    """
    four = f"{'GT':>7}{'IP':>7}{'+FA GT':>7}{'+FA IP':>7}"
    head = (f"{'':<16}{'encoder rows, cos':^28} |{'encoder rows, raw':^28} |{'paper':^28} |"
            f"{'decoder GT':^14}")  # fmt: skip
    sub = f"{'method':<16}{four} |{four} |{four} |{'':>7}{'+FA':>7}{'s':>5}"
    lines = [head, sub, "-" * len(sub)]

    def cells(gt: Any, ip: Any, fa_gt: Any, fa_ip: Any) -> str:
        if gt is None:
            return f"{'-':>7}{'-':>7}{'-':>7}{'-':>7}"
        return f"{gt:>6.1f}%{ip:>7.3f}{fa_gt:>6.1f}%{fa_ip:>7.3f}"

    for r in rows:
        p = PAPER_TABLE_1.get(r["method"]) if paper else None
        raw = [r.get(k) for k in ("raw_gt", "raw_ip", "fa_raw_gt", "fa_raw_ip")]
        lines.append(
            f"{r['method']:<16}{cells(r['gt'], r['ip'], r['fa_gt'], r['fa_ip'])} |"
            f"{cells(*raw)} |{cells(*(p or (None,) * 4))} |"
            f"{r['dec_gt']:>6.1f}%{r['fa_dec_gt']:>6.1f}%{r['seconds']:>5.0f}"
        )
    return "\n".join(lines)
