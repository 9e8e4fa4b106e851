"""The demo's thread count: one thread for torch and for numpy's / scikit-learn's pools.

The demo models are tiny (a 40k-parameter CNN, a 130k-parameter ViT on 8x8 images): an op is
too small to gain from a second thread, and on a machine whose cores are shared with other
work, torch's default (one thread per core) makes each op wait for a descheduled thread.
Measured on a 2-core machine shared with other jobs (load about 7): training the demo CNN took
31 s with one thread and 392 s with two (6 s and 110 s of CPU time). One thread also makes the
trained weights independent of the machine's core count, so the demo prints the same figures
everywhere (the README's sample output is checked against them by a test).

A cold demo trains the ViT in a forked process (a thread where there is no ``fork``; also one
torch thread) while the CNN half runs (:func:`~neuronsplit.demo.vit.demo_vit_in_background`):
two workers on two cores, each model's figures still computed on one torch thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from threadpoolctl import threadpool_limits

#: threads the demo runs on (see the module docstring for the measurement behind 1)
DEMO_THREADS = 1


@contextmanager
def demo_threads() -> Iterator[None]:
    """Run the block on :data:`DEMO_THREADS` torch and BLAS/OpenMP threads; the caller's
    settings are restored afterwards (the demo is a library function, not the process)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(DEMO_THREADS)
    try:
        with threadpool_limits(DEMO_THREADS):
            yield
    finally:
        torch.set_num_threads(threads)
