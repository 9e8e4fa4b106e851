"""Cost of ``ns.discover`` on whole ViT-B layers: time and memory as tokens and units grow.

Models (timm, random init, eval, random images at 224 x 224): ViT-B/16
(``vit_base_patch16_224``, 197 tokens per image) and DINOv2 ViT-B/14
(``vit_base_patch14_dinov2``, ``img_size=224``: 257 tokens per image). Layers
``blocks.11.mlp.fc1`` (3072 units, 768 inputs) and ``blocks.11.mlp.fc2`` (768 units, 3072
inputs). ``discover`` runs at its default settings (every token a sample, ``top_n =
DEFAULT_TOP_N``, ``K <= 4``, ``n_jobs`` unless ``--n-jobs``) on ``N`` tokens
(``ceil(N / tokens per image)`` images in batches of ``--batch``), for ``N`` in ``--tokens``,
and on the first ``u`` units of fc1 for ``u`` in ``--units``.

Every configuration runs in its own subprocess (``torch.set_num_threads(--threads)``, 2 by
default), which also measures, over the same images, one plain forward pass of the model (the
baseline; once per model and ``N``) and reports:

* ``discover`` wall time, split into its two phases -- the collection pass (forward + reservoir
  updates, ``_collect``) and the clustering (``_layer_concepts``, scikit-learn on the CPU) -- by
  timing the library's own internal calls within the one ``discover`` call;
* ``discover / forward``: the whole call against the plain forward pass over the same images;
* memory: the reservoir's own tensors (pool of input vectors + per-unit values and keys), and
  the peak resident set size (RSS, sampled every 5 ms from ``/proc/self/statm``) of each phase
  above the baseline RSS (model loaded, one warm-up forward of a batch); the process's
  ``ru_maxrss`` is printed too, and the summed RSS of child processes during the clustering
  (discover's joblib workers, ``--n-jobs``). ``tracemalloc`` cannot see torch's allocations,
  hence RSS.
  With ``--device cuda`` the scan runs on the GPU and ``torch.cuda.max_memory_allocated`` is
  reported as well (clustering is on the CPU either way).

Targets, printed next to the measurements: all 3072 fc1 units on 10k tokens in <= 60 s on 2
CPU cores; memory independent of ``N`` beyond the reservoirs.

Finally, equivalence: for each model and layer (the 10k-token runs, or the largest ``N`` below),
``apply_plan`` with discover's plan plus forced splits (the ``units="all"`` rule) of the first
32 units it left alone -- a random-init ViT has few clear concepts, and an empty plan checks
nothing -- and ``verify_equivalence`` on 4 random images in float32 and float64; the max
deltas are printed.

Usage::

    python benchmarks/discover_vit.py [--quick] [--device cuda] [--tokens 2000 10000 50000]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from _table import Figure, print_table

MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "vit_b16": ("vit_base_patch16_224", {}),
    "dinov2_b14": ("vit_base_patch14_dinov2", {"img_size": 224}),
}
TOKENS_PER_IMAGE = {"vit_b16": 197, "dinov2_b14": 257}
FC1, FC2 = "blocks.11.mlp.fc1", "blocks.11.mlp.fc2"
TARGET_S = 60.0  # all 3072 fc1 units, 10k tokens, 2 CPU cores
HEADLINE_TOKENS = 10_000
FORCED_UNITS = 32  # extra forced splits per layer in the equivalence check
VERIFY_IMAGES = 4


@dataclass(frozen=True)
class Config:
    """One subprocess: a model, a layer, N tokens, the first ``units`` units (None: all)."""

    model: str
    layer: str
    tokens: int
    units: int | None = None
    forward: bool = False  # also time the plain forward baseline
    verify: bool = False  # also apply the plan and verify equivalence
    batch: int = 16
    threads: int = 2
    device: str = "cpu"
    seed: int = 0
    n_jobs: int | None = None  # discover's n_jobs (None: its default)


# ---------------------------------------------------------------------- worker (subprocess)
class _RssSampler(threading.Thread):
    """Peak RSS per phase of this process and, separately, of its child processes (the
    clustering's joblib workers, if any), sampled every ``interval`` seconds."""

    def __init__(self, interval: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.phase = "base"
        self.peak: dict[str, int] = {}
        self.peak_children: dict[str, int] = {}
        self._halt = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self, pid: int | str) -> int:
        try:
            with open(f"/proc/{pid}/statm") as f:
                return int(f.read().split()[1]) * self._page
        except (OSError, IndexError, ValueError):  # a child that just exited
            return 0

    def _children(self, pid: int) -> list[int]:
        out: list[int] = []
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    out += [int(c) for c in f.read().split()]
        except OSError:
            pass
        return out

    def sample(self) -> None:
        self.peak[self.phase] = max(self.peak.get(self.phase, 0), self._rss("self"))
        children, stack = 0, self._children(os.getpid())
        while stack:
            pid = stack.pop()
            children += self._rss(pid)
            stack += self._children(pid)
        self.peak_children[self.phase] = max(self.peak_children.get(self.phase, 0), children)

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            time.sleep(self.interval)

    def enter(self, phase: str) -> None:
        self.sample()
        self.phase = phase
        self.sample()

    def stop(self) -> None:
        self.sample()
        self._halt.set()
        self.join()


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


class _Images:
    """Re-iterable random images, generated batch by batch (memory does not grow with N)."""

    def __init__(self, n: int, batch: int, seed: int) -> None:
        self.n, self.batch, self.seed = n, batch, seed

    def __iter__(self):
        import torch

        gen = torch.Generator().manual_seed(self.seed)
        for start in range(0, self.n, self.batch):
            yield torch.randn(min(self.batch, self.n - start), 3, 224, 224, generator=gen)


def _worker(cfg: Config) -> dict[str, Any]:
    import timm
    import torch

    import neuronsplit as ns

    elude = sys.modules[ns.discover.__module__]  # the module whose internals are timed
    torch.set_num_threads(cfg.threads)
    sampler = _RssSampler()
    sampler.start()
    torch.manual_seed(cfg.seed)
    arch, kwargs = MODELS[cfg.model]
    model = timm.create_model(arch, pretrained=False, **kwargs).eval().to(cfg.device)
    n_images = math.ceil(cfg.tokens / TOKENS_PER_IMAGE[cfg.model])
    images = _Images(n_images, cfg.batch, cfg.seed + 1)
    cuda = cfg.device.startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    out: dict[str, Any] = {"config": asdict(cfg), "images": n_images}
    with torch.inference_mode():  # warm-up: one forward of a batch sets the baseline RSS
        model(next(iter(images)).to(cfg.device))
    sync()
    sampler.enter("forward")
    out["rss_base"] = sampler.peak["base"]
    if cfg.forward:
        t0 = time.perf_counter()
        with torch.inference_mode():
            for x in images:
                model(x.to(cfg.device))
        sync()
        out["forward_s"] = time.perf_counter() - t0
    out["maxrss_before_discover"] = _maxrss()
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    # time discover's two phases inside the one call, through its own internal functions
    phases: dict[str, Any] = {}
    orig_collect, orig_layer = elude._collect, elude._layer_concepts

    def collect(*args: Any, **kw: Any) -> Any:
        sampler.enter("collect")
        t0 = time.perf_counter()
        tops = orig_collect(*args, **kw)
        sync()
        phases["collect_s"] = time.perf_counter() - t0
        phases["tops"] = tops
        sampler.enter("cluster")
        return tops

    def layer_concepts(*args: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        found = orig_layer(*args, **kw)
        phases["cluster_s"] = phases.get("cluster_s", 0.0) + time.perf_counter() - t0
        return found

    elude._collect, elude._layer_concepts = collect, layer_concepts
    units = "polysemantic" if cfg.units is None else list(range(cfg.units))
    try:
        t0 = time.perf_counter()
        jobs = {} if cfg.n_jobs is None else {"n_jobs": cfg.n_jobs}
        plan = ns.discover(model, images, [cfg.layer], units=units, progress=False, **jobs)
        out["discover_s"] = time.perf_counter() - t0
    finally:
        elude._collect, elude._layer_concepts = orig_collect, orig_layer
    sampler.enter("after")
    out["collect_s"] = phases.get("collect_s")
    out["cluster_s"] = phases.get("cluster_s")
    out["maxrss"] = _maxrss()
    if cuda:
        out["cuda_peak"] = torch.cuda.max_memory_allocated()
    top = phases["tops"][cfg.layer]
    out["pool_vectors"] = int(top.pool.shape[0])
    out["pool_bound"] = int(min(top.count, top.values.shape[0] * top.n))
    out["reservoir_bytes"] = sum(
        t.numel() * t.element_size() for t in (top.pool, top.slots, top.values, top.keys)
    )
    out["samples_seen"] = top.count
    out["top_n"] = plan.meta["elude"]["top_n"]
    summary = plan.meta["elude"]["layers"][cfg.layer]
    out["summary"] = {k: summary[k] for k in ("examined", "split", "k_histogram", "left_alone")}
    if cfg.verify:
        sampler.enter("verify")
        out["verify"] = _verify(model, plan, top, cfg)
    sampler.stop()
    out["rss_peak"] = sampler.peak
    out["rss_peak_children"] = sampler.peak_children
    return out


def _verify(model: Any, plan: Any, top: Any, cfg: Config) -> dict[str, Any]:
    """apply_plan + verify_equivalence with discover's splits plus some forced ones."""
    import numpy as np
    import torch

    import neuronsplit as ns
    from neuronsplit.methods.elude import ConceptRule, find_concepts, span_coordinates
    from neuronsplit.plan import LayerSplit, SplitPlan

    layer_split = plan.by_layer().get(cfg.layer)
    found = set() if layer_split is None else set(layer_split.units.tolist())
    layer = model.get_submodule(cfg.layer)
    weight = layer.weight.detach().cpu().double()
    sign = getattr(top, "sign", None)  # a LayerScale's sign (DINOv2 fc2), where discover has one
    forced = {}
    for u in [u for u in range(weight.shape[0]) if u not in found][:FORCED_UNITS]:
        # the units="all" rule, one unit at a time through the public per-unit API
        contrib = top.vectors(u).cpu().double() * weight[u]
        if sign is not None:
            contrib = contrib * sign[u].to(contrib)
        coords = span_coordinates(contrib / contrib.norm(dim=-1, keepdim=True).clamp_min(1e-300))
        acts = top.values[u, : contrib.shape[0]].cpu()
        c = find_concepts(contrib, coords, ConceptRule(), acts, force=True)
        if c.k >= 2:
            forced[u] = c
    units = sorted(found | set(forced))
    rows, ks = [], []
    for u in units:
        if u in forced:
            rows.append(forced[u].assignment)
            ks.append(forced[u].k)
        else:
            rows.append(layer_split.assignment[layer_split.position(u)].numpy())
            ks.append(int(layer_split.num_subunits[layer_split.position(u)]))
    full = SplitPlan([LayerSplit(cfg.layer, units, np.stack(rows), ks)])
    split_model = ns.apply_plan(model.cpu(), full)
    x = torch.randn(VERIFY_IMAGES, 3, 224, 224, generator=torch.Generator().manual_seed(99))
    report = ns.verify_equivalence(model.cpu(), split_model, x)
    rows_out = []
    for d in report.rows:
        lr = d.layers[0]
        worst = lr.worst_split
        rows_out.append({
            "dtype": d.dtype, "passed": d.passed, "out_max_abs": d.output_max_abs,
            "out_rel": d.output_rel, "layer_unsplit_max_abs": lr.unsplit_max_abs,
            "layer_split_max_abs": worst.max_abs if worst else float("nan"),
            "layer_split_rel": worst.rel if worst else float("nan"),
        })  # fmt: skip
    return {
        "discover_splits": len(found), "forced_splits": len(forced),
        "passed": report.passed, "rows": rows_out,
    }  # fmt: skip


# ---------------------------------------------------------------------- driver
@dataclass
class Outcome:
    """A finished configuration (``result`` None when its subprocess failed)."""

    cfg: Config
    result: dict[str, Any] | None
    error: str = ""
    wall_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def _spawn(cfg: Config) -> Outcome:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(asdict(cfg))],
        capture_output=True, text=True,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return Outcome(cfg, json.loads(line[len("RESULT ") :]), wall_s=wall)
    return Outcome(cfg, None, error=(proc.stderr or proc.stdout)[-2000:], wall_s=wall)


def _mb(b: float | None) -> str:
    return "-" if b is None else f"{b / 2**20:.0f}"


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def run(argv: list[str] | None = None) -> list[Figure]:
    """Measure, print, and return the figures."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, nargs="+", default=[2_000, 10_000, 50_000])
    p.add_argument(
        "--units",
        type=int,
        nargs="*",
        default=[256, 1024],
        help="unit counts of the fc1 unit sweep (all 3072 come from the token sweep)",
    )
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument(
        "--sweep-models",
        nargs="+",
        default=["vit_b16"],
        choices=list(MODELS),
        help="models that get the full token and unit sweeps; the others run at "
        f"{HEADLINE_TOKENS} tokens only (a full sweep of both takes ~2x as long)",
    )
    p.add_argument("--batch", type=int, default=16, help="images per batch")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--n-jobs",
        type=int,
        default=None,
        help="discover's n_jobs (clustering processes); default: discover's default",
    )
    p.add_argument("--device", default="cpu", help="where the scan runs, e.g. cuda")
    p.add_argument("--json", default=None, help="also write the raw results to this file")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 2k tokens, fc2 only, no unit sweep")  # fmt: skip
    args = p.parse_args(argv)
    if args.quick:
        args.tokens, args.units, args.sweep_models, layers = [2_000], [], [], [FC2]
        headline = 2_000
    else:
        layers = [FC1, FC2]
        headline = HEADLINE_TOKENS if HEADLINE_TOKENS in args.tokens else max(args.tokens)

    configs: list[Config] = []
    common = {"batch": args.batch, "threads": args.threads, "device": args.device,
              "n_jobs": args.n_jobs}  # fmt: skip
    for model in args.models:
        tokens = args.tokens if model in args.sweep_models else [headline]
        for n in tokens:
            for i, layer in enumerate(layers):
                configs.append(Config(model, layer, n, forward=i == 0,
                                      verify=n == headline, **common))  # fmt: skip
        if model in args.sweep_models:
            for u in args.units:
                configs.append(Config(model, FC1, headline, units=u, **common))

    load0 = os.getloadavg()
    print(
        f"ns.discover, timm ViT-B random init, random 224px images, batches of {args.batch}, "
        f"{args.threads} torch threads, device {args.device}, discover n_jobs "
        f"{'default' if args.n_jobs is None else args.n_jobs}; {len(configs)} configurations, "
        f"one subprocess each; load average at start {load0[0]:.1f} on {os.cpu_count()} CPUs",
        flush=True,
    )
    outcomes: list[Outcome] = []
    start = time.perf_counter()
    for cfg in configs:
        units = "all" if cfg.units is None else cfg.units
        print(f"  {cfg.model} {cfg.layer} units={units} tokens={cfg.tokens} ...", end="",
              flush=True)  # fmt: skip
        o = _spawn(cfg)
        outcomes.append(o)
        print(f" {o.wall_s:.0f} s" + ("" if o.result else " FAILED"), flush=True)
        if o.error:
            print(o.error)
    total = time.perf_counter() - start
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(o) for o in outcomes], indent=1))
    top_n = sorted({o.result["top_n"] for o in outcomes if o.result})

    # forward baseline per (model, N): measured once, in the first configuration of that N
    forward = {
        (o.cfg.model, o.cfg.tokens): o.result["forward_s"]
        for o in outcomes
        if o.result and "forward_s" in o.result
    }
    figures: list[Figure] = []
    print(f"\n=== time and memory (all {total:.0f} s; load average now "
          f"{os.getloadavg()[0]:.1f}; discover's default top_n = {top_n})")  # fmt: skip
    head = (
        f"{'model':<11}{'layer':<6}{'units':>6}{'tokens':>8}{'images':>7}{'forward s':>10}"
        f"{'discover s':>11}{'collect s':>10}{'cluster s':>10}{'disc/fwd':>9}"
        f"{'coll/fwd':>9}{'split':>7}{'pool vec':>9}{'reserv MB':>10}{'collect MB':>11}"
        f"{'cluster MB':>11}{'workers MB':>11}{'maxrss MB':>10}"
    )
    print(head)
    print("-" * len(head))
    for o in outcomes:
        r, c = o.result, o.cfg
        if r is None:
            print(f"{c.model:<11}{c.layer[-3:]:<6} FAILED")
            continue
        fwd = forward.get((c.model, c.tokens))
        base = r["rss_base"]
        peak = r["rss_peak"]
        n_units = r["summary"]["examined"]
        ratio = r["discover_s"] / fwd if fwd else None
        coll_ratio = r["collect_s"] / fwd if fwd and r["collect_s"] else None
        print(
            f"{c.model:<11}{c.layer[-3:]:<6}{n_units:>6}{r['samples_seen']:>8}{r['images']:>7}"
            f"{_s(fwd):>10}{_s(r['discover_s']):>11}{_s(r['collect_s']):>10}"
            f"{_s(r['cluster_s']):>10}{'-' if ratio is None else f'{ratio:.2f}':>9}"
            f"{'-' if coll_ratio is None else f'{coll_ratio:.2f}':>9}"
            f"{r['summary']['split']:>7}{r['pool_vectors']:>9}{_mb(r['reservoir_bytes']):>10}"
            f"{_mb(peak.get('collect', base) - base):>11}"
            f"{_mb(peak.get('cluster', base) - base):>11}"
            f"{_mb(r['rss_peak_children'].get('cluster', 0)):>11}{_mb(r['maxrss']):>10}"
        )
        if c.layer == FC1 and c.units is None and c.tokens == headline:
            figures.append(Figure(
                "discover_vit", f"{c.model} fc1 all 3072 units, {r['samples_seen']} tokens, s",
                r["discover_s"], fmt="{:.1f}",
                target=f"<= {TARGET_S:g}" if headline == HEADLINE_TOKENS else "",
            ))  # fmt: skip
            if ratio is not None:
                figures.append(Figure("discover_vit", f"{c.model} fc1 same, discover / forward",
                                      ratio, fmt="{:.2f}"))  # fmt: skip
    print(
        "columns: forward s = one plain forward pass over the same images (the baseline); "
        "discover s = the whole ns.discover call = collect s (forward + reservoir updates) + "
        "cluster s (k-means/silhouette on CPU) + a little bookkeeping; disc/fwd, coll/fwd = "
        "ratios to forward s; split = units discover split; pool vec = input vectors held in "
        "the reservoir's pool (at most min(tokens, units x top_n)); reserv MB = pool + per-unit "
        "values and keys; collect MB, cluster MB = peak RSS during that phase above the "
        "baseline RSS (model + one warm-up forward), this process only; workers MB = peak summed "
        "RSS of child processes during clustering (discover's joblib workers; shared pages "
        "counted in each); maxrss MB = this process's ru_maxrss"
    )
    print(f"target: all 3072 fc1 units with 10k tokens in <= {TARGET_S:g} s on 2 CPU cores "
          "(this machine: %d CPUs, %d threads)" % (os.cpu_count(), args.threads))  # fmt: skip
    if args.device.startswith("cuda"):
        print("cuda peak allocated MB: " + ", ".join(
            f"{o.cfg.model} {o.cfg.layer[-3:]} {o.cfg.tokens}: {_mb(o.result.get('cuda_peak'))}"
            for o in outcomes if o.result
        ))  # fmt: skip

    # memory against N: peak during collection minus the reservoir, per model and layer
    print("\ntarget: memory independent of N beyond the reservoirs -- collection peak RSS above "
          "baseline, minus the reservoir's tensors, as N grows (MB)")  # fmt: skip
    for model in args.models:
        for layer in layers:
            rows = sorted(
                (o.cfg.tokens, o.result) for o in outcomes
                if o.result and o.cfg.model == model and o.cfg.layer == layer
                and o.cfg.units is None
            )  # fmt: skip
            if len(rows) < 2:
                continue
            parts = []
            for n, r in rows:
                extra = r["rss_peak"].get("collect", r["rss_base"]) - r["rss_base"]
                parts.append(f"{n}: {_mb(extra - r['reservoir_bytes'])} "
                             f"(reservoir {_mb(r['reservoir_bytes'])})")  # fmt: skip
            print(f"  {model} {layer}: " + ", ".join(parts))
            (n0, r0), (n1, r1) = rows[0], rows[-1]
            beyond = [
                (r["rss_peak"].get("collect", r["rss_base"]) - r["rss_base"]
                 - r["reservoir_bytes"]) / 2**20
                for r in (r0, r1)
            ]  # fmt: skip
            figures.append(Figure(
                "discover_vit",
                f"{model} {layer[-3:]} collect MB beyond reservoir, {n1} - {n0} tokens",
                beyond[1] - beyond[0], fmt="{:.0f}",
            ))  # fmt: skip

    # equivalence
    print("\n=== equivalence: apply_plan + verify_equivalence on "
          f"{VERIFY_IMAGES} random images")  # fmt: skip
    print(
        f"{'model':<11}{'layer':<6}{'splits':>14}{'dtype':>9}{'out max|Δ|':>12}"
        f"{'out rel':>10}{'layer split max|Δ|':>19}{'unsplit max|Δ|':>15}{'passed':>8}"
    )
    for o in outcomes:
        v = o.result.get("verify") if o.result else None
        if not v:
            continue
        for row in v["rows"]:
            splits = f"{v['discover_splits']}+{v['forced_splits']}f"
            print(
                f"{o.cfg.model:<11}{o.cfg.layer[-3:]:<6}{splits:>14}{row['dtype']:>9}"
                f"{row['out_max_abs']:>12.2e}{row['out_rel']:>10.2e}"
                f"{row['layer_split_max_abs']:>19.2e}{row['layer_unsplit_max_abs']:>15.2e}"
                f"{row['passed']!s:>8}"
            )
            if row["dtype"] == "float32":
                figures.append(Figure(
                    "discover_vit", f"{o.cfg.model} {o.cfg.layer[-3:]} split, rel out Δ float32",
                    row["out_rel"], fmt="{:.1e}", target="<= 1e-5",
                ))  # fmt: skip
    print(
        "splits = discover's splits + forced splits (units='all' rule) of the first "
        f"{FORCED_UNITS} units it left alone; passed = verify_equivalence's default tolerance"
    )
    return figures


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        cfg = Config(**json.loads(sys.argv[2]))
        print("RESULT " + json.dumps(_worker(cfg), default=dict), flush=True)
        return
    print()
    print_table(run())


if __name__ == "__main__":
    main()
