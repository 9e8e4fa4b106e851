"""Seconds to build the demo's HTML report (``neuronsplit demo`` writes it as report.html).

The report of both demo plans -- Hesse et al.'s of the CNN (3 fc2 units) and ELUDe's discover
of every MLP layer of the ViT, the first 3 units of each -- on the 397 test digits, with the
demo's settings (128 feature-visualisation steps) and with ``ns.report``'s defaults (256 steps,
up to 8 units). The baseline, measured in the same run and in interleaved rounds, is
``ns.evaluate`` of both plans alone (the one pass over the data every report makes): the ratio
says what the figures, reference images and feature visualisations cost on top. Wall-clock
seconds (median of the rounds) and the process CPU seconds of one report are printed: on a
machine other work keeps busy, the CPU seconds are the steadier figure.

Usage::

    python benchmarks/report_time.py              # 3 rounds, one thread (as the demo runs)
    python benchmarks/report_time.py --rounds 1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _table import Figure, print_table
from _timing import interleaved_ratio
from torch.utils.data import DataLoader, TensorDataset

import neuronsplit as ns
from neuronsplit.demo import demo_plan, digits_loader, get_demo_model, get_demo_vit, load_digits
from neuronsplit.demo.vit_pipeline import vit_demo_layers
from neuronsplit.reporting import report_part, write_report

#: the issue's budget for the demo report on 2 cores
TARGET_SECONDS = 60.0


def _report(worlds: list[tuple], loader: DataLoader, out: Path, **options: object) -> Callable:
    def run() -> None:
        parts = [report_part(model, plan, loader, prefix=name, title=name, progress=False,
                             **options)  # type: ignore[arg-type]
                 for name, model, plan in worlds]  # fmt: skip
        write_report(out, parts)

    return run


def _evaluate(worlds: list[tuple], loader: DataLoader) -> Callable:
    def run() -> None:
        for _, model, plan in worlds:
            ns.evaluate(model, None, loader, plan, k=8, progress=False)

    return run


def _cpu(fn: Callable[[], None]) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def run(argv: list[str] | None = None) -> list[Figure]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the demo uses 1)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cnn = get_demo_model()
    _, _, cnn_plan = demo_plan(cnn)
    vit = get_demo_vit()
    vit_plan = ns.discover(vit, digits_loader("train", batch_size=256), vit_demo_layers(),
                           progress=False)  # fmt: skip
    worlds = [("cnn", cnn, cnn_plan), ("vit", vit, vit_plan)]
    test = load_digits("test")
    loader = DataLoader(TensorDataset(test.images, test.labels), batch_size=256)
    out = Path(tempfile.mkdtemp()) / "report.html"
    base = _evaluate(worlds, loader)
    figures = []
    for label, options in (("demo settings", {"max_units": 3, "feature_steps": 128}),
                           ("ns.report defaults", {})):  # fmt: skip
        report = _report(worlds, loader, out, **options)
        ratio, t_base, t_report = interleaved_ratio(base, report, args.rounds)
        cpu = _cpu(report)
        print(
            f"{label}: report {t_report:.2f} s (CPU {cpu:.2f} s, {out.stat().st_size / 1e6:.2f} "
            f"MB), evaluate alone {t_base:.2f} s, ratio {ratio:.1f}",
            flush=True,
        )
        bench = "report_time"
        figures += [
            Figure(bench, f"{label}: s, CNN + ViT report", t_report, "{:.2f}",
                   f"<= {TARGET_SECONDS:g}"),
            Figure(bench, f"{label}: CPU s", cpu, "{:.2f}"),
            Figure(bench, f"{label}: / evaluate alone", ratio, "{:.1f}"),
        ]  # fmt: skip
    return figures


def main() -> int:
    figures = run()
    print()
    print_table(figures)
    return 0 if all(f.ok is not False for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
