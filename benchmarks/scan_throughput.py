"""Throughput of ``ns.scan`` against the computation it cannot avoid.

Baseline: a bare loop of forward pass plus ``torch.autograd.grad`` of the label logits to the
output of the scanned layer (hook-captured), which is the least any gradient x activation scan
must compute. Both run on the same batches, interleaved (baseline, scan, baseline, scan, ...), so
machine noise hits both alike; the printed ratio (scan images/s / baseline images/s) is what
matters, target >= 0.95. Also prints the size of the statistics for 1000 classes.

    python benchmarks/scan_throughput.py [--batch 8] [--batches 3] [--repeats 5] [--size 224]
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch
from _table import Figure, print_table

import neuronsplit as ns


def bare_loop(model: torch.nn.Module, layer: torch.nn.Module, batches: list) -> None:
    store: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda m, i, o: store.append(o))
    try:
        for x, y in batches:
            store.clear()
            logits = model(x)
            torch.autograd.grad(logits.gather(1, y[:, None]).sum(), store[-1])
    finally:
        handle.remove()


def run(argv: list[str] | None = None) -> list[Figure]:
    """Measure, print, and return the figures (for ``run_all.py``)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--layer", default="layer4.2.conv3")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--classes", type=int, default=1000)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False, num_classes=args.classes).eval()
    layer = model.get_submodule(args.layer)
    gen = torch.Generator().manual_seed(0)
    batches = [
        (
            torch.randn(args.batch, 3, args.size, args.size, generator=gen),
            torch.randint(0, args.classes, (args.batch,), generator=gen),
        )
        for _ in range(args.batches)
    ]
    images = args.batch * args.batches

    # warm-up both paths once
    bare_loop(model, layer, batches[:1])
    ns.scan(model, batches[:1], [args.layer], args.classes, progress=False)

    bare_times, scan_times = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        bare_loop(model, layer, batches)
        bare_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        result = ns.scan(model, batches, [args.layer], args.classes, progress=False)
        scan_times.append(time.perf_counter() - t0)

    bare_ips = images / statistics.median(bare_times)
    scan_ips = images / statistics.median(scan_times)
    stats = result.layer(args.layer)
    print(
        f"model {args.model}, layer {args.layer}, batch {args.batch} x {args.batches}, "
        f"{args.size}px, {torch.get_num_threads()} threads, {args.repeats} interleaved repeats"
    )
    name = "scan_throughput"
    figures = [
        Figure(name, f"ns.scan / bare forward+backward ({args.model})", scan_ips / bare_ips,
               target=">= 0.95"),
        Figure(name, "  bare forward + grad-to-layer, images/s", bare_ips, "{:.2f}"),
        Figure(name, "  ns.scan, images/s", scan_ips, "{:.2f}"),
        Figure(name, f"  statistics for {result.num_classes} classes, MiB",
               result.memory_bytes() / 2**20, "{:.1f}"),
    ]  # fmt: skip
    print_table(figures)
    print(
        f"statistics: {stats.num_units} units, {stats.num_inputs} inputs x "
        f"{stats.weight.shape[2]} taps, tau grid {len(result.tau_grid)}, top-N reservoirs; "
        "their size does not depend on the number of images"
    )
    return figures


if __name__ == "__main__":
    run()
