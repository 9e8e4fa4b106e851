"""Wall time of a cold ``neuronsplit demo`` (empty model cache: both models trained), on a quiet
machine and with the cores kept busy by other processes.

Each run is a fresh ``python`` process running ``neuronsplit demo --quiet`` with a new empty
cache directory. "busy" runs start ``--busy`` background processes (default: one per core),
each spinning a pure-Python loop, before the demo and stop them after it. Quiet and busy runs
alternate (order swapped every round) and the medians are reported with their ratio; the CPU
time of the demo process is printed too (on a shared machine it moves less than wall time).

``--threads`` compares thread settings: ``demo`` is what the demo sets itself (one torch thread,
:mod:`neuronsplit.demo._threads`; the ViT trains in a forked process while the CNN half
runs), an integer N makes the demo run on N torch threads instead (2 is torch's default on a
2-core machine). ``--no-report`` times the demo without its HTML report. ``--pythonpath DIR`` runs the demo from another source
tree, e.g. an earlier commit's ``src`` (``mkdir /tmp/old && git archive HEAD~1 src | tar -x -C
/tmp/old``, then ``--pythonpath /tmp/old/src``), as a baseline measured on the same machine.

Usage::

    python benchmarks/demo_time.py                    # one thread (the demo's setting)
    python benchmarks/demo_time.py --threads demo 2   # ... and two threads
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

#: the demo in a child process; {threads} patches the demo's thread count (None: as it is),
#: {extra} adds command-line arguments (``--no-report``)
CHILD = """
import sys
threads = {threads}
if threads is not None:
    import neuronsplit.demo._threads as t
    t.DEMO_THREADS = threads
from neuronsplit.cli import main
sys.exit(main(["demo", "--quiet", "--out", sys.argv[1], "--cache", sys.argv[2], *{extra}]))
"""
SPIN = "while True: pass"


def cold_demo(
    threads: int | None, pythonpath: str | None, extra: tuple[str, ...] = ()
) -> tuple[float, float]:
    """Wall and CPU seconds of one cold demo in a fresh process."""
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath, env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory() as out, tempfile.TemporaryDirectory() as cache:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", CHILD.format(threads=threads, extra=list(extra)), out, cache],
            check=True, env=env, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def busy_demo(
    threads: int | None, pythonpath: str | None, n_busy: int, extra: tuple[str, ...] = ()
) -> tuple[float, float]:
    """:func:`cold_demo` while ``n_busy`` processes spin on the cores."""
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(n_busy)]
    try:
        time.sleep(0.5)  # let them start spinning
        return cold_demo(threads, pythonpath, extra)
    finally:
        for p in spinners:
            p.kill()
            p.wait()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=1, help="quiet + busy runs per setting")
    p.add_argument("--busy", type=int, default=os.cpu_count() or 1, help="spinning processes")
    p.add_argument(
        "--threads", nargs="+", default=["demo"], help="'demo' (its own setting) or a count"
    )
    p.add_argument("--pythonpath", default=None, help="run the demo from this source tree")
    p.add_argument("--no-report", action="store_true", help="run the demo without report.html")
    args = p.parse_args()
    extra = ("--no-report",) if args.no_report else ()
    print(f"cores: {os.cpu_count()}, busy: {args.busy} spinning process(es), "
          f"load average before: {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
    rows = []
    for setting in args.threads:
        threads = None if setting == "demo" else int(setting)
        quiet: list[tuple[float, float]] = []
        busy: list[tuple[float, float]] = []
        for r in range(args.rounds):
            order = [("quiet", quiet), ("busy", busy)]
            for name, runs in order if r % 2 == 0 else order[::-1]:
                runs.append(
                    cold_demo(threads, args.pythonpath, extra) if name == "quiet"
                    else busy_demo(threads, args.pythonpath, args.busy, extra)
                )  # fmt: skip
                wall, cpu = runs[-1]
                print(f"  threads={setting} {name}: {wall:.1f} s (cpu {cpu:.1f} s)", flush=True)
        q = statistics.median(w for w, _ in quiet)
        b = statistics.median(w for w, _ in busy)
        qc = statistics.median(c for _, c in quiet)
        rows.append((setting, q, qc, b, b / q))
    label = "threads" + (f" ({args.pythonpath})" if args.pythonpath else "")
    print(f"\n{label:<12} {'quiet s':>8} {'cpu s':>7} {'busy s':>8} {'busy/quiet':>10}")
    for setting, q, qc, b, ratio in rows:
        shown = "demo (1)" if setting == "demo" and not args.pythonpath else setting
        print(f"{shown:<12} {q:>8.1f} {qc:>7.1f} {b:>8.1f} {ratio:>10.2f}")
    print("targets: quiet <= 20 s on 2 cores, busy/quiet <= 1.5")
    return 0


if __name__ == "__main__":
    sys.exit(main())
