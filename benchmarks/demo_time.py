"""Wall time of a cold ``neuronsplit demo`` (empty model cache: both models trained), on a quiet
machine and with the cores kept busy by other processes.

Each run is a fresh ``python`` process running ``neuronsplit demo --quiet`` with a new empty
cache directory. "busy" runs start ``--busy`` background processes (default: one per core),
each spinning a pure-Python loop, before the demo and stop them after it; ``--other-session``
starts them in a session of their own, as a job started from another terminal or by a
service would be (Linux's autogroup scheduling then shares the cores between the two sessions
rather than between the processes). Quiet and busy runs
alternate (order swapped every round) and the medians are reported with their ratio; the CPU
time of the demo process is printed too (on a shared machine it moves less than wall time).

``--baseline DIR`` runs another source tree's demo right after this tree's in every round
(``mkdir /tmp/old && git archive HEAD~1 src | tar -x -C /tmp/old``, then ``--baseline
/tmp/old/src``): the machine's speed drifts, so only runs side by side compare.
``--threads`` compares thread settings: ``demo`` is what the demo sets itself (one torch thread,
:mod:`neuronsplit.demo._threads`; the ViT trains in a forked process while the CNN half
runs), an integer N makes the demo run on N torch threads instead (2 is torch's default on a
2-core machine). ``--no-report`` times the demo without its HTML report. ``--pythonpath DIR`` runs the demo from another source
tree, e.g. an earlier commit's ``src`` (``mkdir /tmp/old && git archive HEAD~1 src | tar -x -C
/tmp/old``, then ``--pythonpath /tmp/old/src``), as a baseline measured on the same machine.

Usage::

    python benchmarks/demo_time.py                    # one thread (the demo's setting)
    python benchmarks/demo_time.py --threads demo 2   # ... and two threads
    python benchmarks/demo_time.py --rounds 2 --busy 1 --baseline /tmp/old/src
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
    threads: int | None, pythonpath: str | None, n_busy: int, extra: tuple[str, ...] = (),
    other_session: bool = False,
) -> tuple[float, float]:  # fmt: skip
    """:func:`cold_demo` while ``n_busy`` processes spin on the cores."""
    spinners = [
        subprocess.Popen([sys.executable, "-c", SPIN], start_new_session=other_session)
        for _ in range(n_busy)
    ]
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
    p.add_argument(
        "--baseline", default=None, metavar="DIR",
        help="also run the demo from this source tree (e.g. the previous commit's src), each "
        "round right after this tree's, and print the two side by side",
    )  # fmt: skip
    p.add_argument("--no-report", action="store_true", help="run the demo without report.html")
    p.add_argument(
        "--other-session", action="store_true",
        help="start the spinning processes in a session of their own (autogroup scheduling)",
    )  # fmt: skip
    args = p.parse_args()
    extra = ("--no-report",) if args.no_report else ()
    session = " in their own session" if args.other_session else ""
    print(f"cores: {os.cpu_count()}, busy: {args.busy} spinning process(es){session}, "
          f"load average before: {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
    trees = [("this tree", args.pythonpath)]
    if args.baseline:
        trees.append(("baseline", args.baseline))
    runs: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    for r in range(args.rounds):
        for setting in args.threads:
            threads = None if setting == "demo" else int(setting)
            order = ["quiet", "busy"] if r % 2 == 0 else ["busy", "quiet"]
            for tree, path in trees:  # side by side: the machine's speed drifts
                for name in order:
                    runs.setdefault((tree, setting, name), []).append(
                        cold_demo(threads, path, extra) if name == "quiet"
                        else busy_demo(threads, path, args.busy, extra, args.other_session)
                    )  # fmt: skip
                    wall, cpu = runs[(tree, setting, name)][-1]
                    print(f"  {tree} threads={setting} {name}: {wall:.1f} s (cpu {cpu:.1f} s)",
                          flush=True)  # fmt: skip
    print(f"\n{'tree':<10} {'threads':<9} {'quiet s':>8} {'cpu s':>7} {'busy s':>8} "
          f"{'busy/quiet':>10}")  # fmt: skip
    for tree, path in trees:
        for setting in args.threads:
            quiet, busy = runs[(tree, setting, "quiet")], runs[(tree, setting, "busy")]
            q = statistics.median(w for w, _ in quiet)
            b = statistics.median(w for w, _ in busy)
            qc = statistics.median(c for _, c in quiet)
            shown = "demo (1)" if setting == "demo" and not path else setting
            print(f"{tree:<10} {shown:<9} {q:>8.1f} {qc:>7.1f} {b:>8.1f} {b / q:>10.2f}")
    print("targets: quiet <= 20 s on 2 cores, busy/quiet <= 1.5")
    return 0


if __name__ == "__main__":
    sys.exit(main())
