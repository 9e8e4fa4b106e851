"""Every benchmark, one table: ``python benchmarks/run_all.py [--quick]``.

Runs ``scan_throughput.py``, ``split_overhead.py``, ``plan_scale.py``, ``lrp_faithfulness.py``
and ``elude_ground_truth.py`` one after the other (each prints its own details) and then one
table of every figure with its target. Each ratio is measured against a baseline in the same
run, in interleaved rounds: the machines are noisy, so read ratios, not absolute times.
``--quick`` uses fewer rounds (and fewer test digits for the pixel flipping, fewer seeds for the
ground truth): a smoke run, not a measurement to report. ``discover_vit.py`` (ELUDe on whole
ViT-B layers, many minutes) is not run here; run it on its own.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

from _table import Figure, print_table

HERE = Path(__file__).parent

#: benchmark script -> (arguments for a measurement, arguments for --quick)
BENCHMARKS: dict[str, tuple[list[str], list[str]]] = {
    "scan_throughput.py": (["--repeats", "5"], ["--repeats", "1", "--batches", "1"]),
    "split_overhead.py": (["--repeats", "15"], ["--repeats", "2", "--batch", "2"]),
    "plan_scale.py": (["--rounds", "8"], ["--rounds", "1"]),
    "lrp_faithfulness.py": (
        ["--rounds", "15"],
        ["--images", "64", "--rounds", "3", "--vit-b-rounds", "1"],
    ),
    "elude_ground_truth.py": (["--seeds", "10"], ["--quick"]),
}


def _load(script: str):
    spec = importlib.util.spec_from_file_location(script.removesuffix(".py"), HERE / script)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="few rounds: a smoke run")
    p.add_argument("--only", nargs="*", default=None, help="run only these scripts")
    args = p.parse_args()
    figures: list[Figure] = []
    start = time.perf_counter()
    for script, (full, quick) in BENCHMARKS.items():
        if args.only and script not in args.only:
            continue
        print(f"\n=== {script} {' '.join(quick if args.quick else full)}", flush=True)
        figures.extend(_load(script).run(quick if args.quick else full))
    print(f"\n=== all benchmarks ({time.perf_counter() - start:.0f} s)")
    print_table(figures)
    return 0 if all(f.ok is not False for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
