"""Training a demo model's cache file in the background while the demo goes on.

The demo models are trained on one torch thread each (:mod:`neuronsplit.demo._threads`); on a
machine with two cores the ViT can train while the CNN half of the demo runs. Whoever reads the
cache file first waits for the job that writes it (:func:`wait_for_background`).

The job runs in a forked process on Linux (:func:`forks`), else in a thread.
A thread shares the interpreter lock with the demo's own Python work: the tiny demo models
spend most of their time in Python dispatch, so the two halves slowed each other down
(cold demo 26.4 s with a thread; ``benchmarks/demo_time.py``). A forked child needs no new
imports and inherits the untrained model; it writes the cache file atomically and exits.
"""

from __future__ import annotations

import multiprocessing
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["in_background", "wait_for_background", "forks"]

_PENDING: dict[Path, threading.Thread | multiprocessing.process.BaseProcess] = {}
_LOCK = threading.Lock()
#: a background job that has not written its file after this many seconds is stopped, and
#: the reader trains the model itself (a forked child that hangs must not hang the demo)
TIMEOUT_S = 600.0


def _quietly(job: Callable[[], object]) -> None:
    """Run ``job``; an error is left for the reader to meet (the cache file is then missing,
    so :func:`get_demo_vit <neuronsplit.demo.get_demo_vit>` trains again and raises it)."""
    try:
        job()
    except Exception:  # noqa: BLE001 - raised again by the synchronous retry
        pass


def forks() -> bool:
    """Whether background jobs run in a forked process: on Linux, and not inside a daemonic
    process (which may not have children). macOS has ``fork`` too, but forking once torch and
    Accelerate have started threads is unsafe there (why CPython spawns by default on it).

    Examples
    --------
    >>> forks() == sys.platform.startswith("linux")
    True
    """
    return sys.platform.startswith("linux") and not multiprocessing.current_process().daemon


def _start(job: Callable[[], object], name: str) -> threading.Thread | multiprocessing.Process:
    """A started forked process (nothing to pickle, no imports) where :func:`forks`, and
    where the fork itself fails (no memory, no process slots), else a thread."""
    if forks():
        process = multiprocessing.get_context("fork").Process(
            target=_quietly, args=(job,), name=name, daemon=True
        )
        try:
            process.start()
            return process
        except OSError:
            pass  # a thread does the same work, only slower
    thread = threading.Thread(target=_quietly, args=(job,), name=name, daemon=True)
    thread.start()
    return thread


@contextmanager
def in_background(path: Path, job: Callable[[], object]) -> Iterator[None]:
    """Run ``job`` (which writes ``path``) in a forked process (or a thread) for the duration
    of the block; leaving the block waits for it, so no job outlives the demo's settings.

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "model.bin"
    >>> with in_background(path, lambda: path.write_text("weights")):
    ...     wait_for_background(path)
    ...     path.read_text()
    'weights'
    """
    worker = _start(job, f"train {path.name}")
    with _LOCK:
        _PENDING[path] = worker
    try:
        yield
    except BaseException:
        # the block failed (or Ctrl+C): stop a forked job rather than wait for its training
        if isinstance(worker, multiprocessing.process.BaseProcess):
            worker.terminate()
        raise
    finally:
        wait_for_background(path)


def wait_for_background(path: Path) -> None:
    """Wait until no background job is writing ``path`` (returns at once if none is)."""
    with _LOCK:
        worker = _PENDING.get(path)
    if worker is None or worker is threading.current_thread():
        return
    worker.join(TIMEOUT_S)
    if isinstance(worker, multiprocessing.process.BaseProcess) and worker.is_alive():
        worker.terminate()  # the reader then finds no file and trains the model itself
        worker.join()
    with _LOCK:
        if _PENDING.get(path) is worker:
            del _PENDING[path]
