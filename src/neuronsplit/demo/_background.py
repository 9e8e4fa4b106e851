"""Training a demo model's cache file in the background while the demo goes on.

The demo models are trained on one torch thread each (:mod:`neuronsplit.demo._threads`); on a
machine with two cores the ViT can train while the CNN half of the demo runs. Whoever reads the
cache file first waits for the job that writes it (:func:`wait_for_background`).

The job runs in a forked process on Linux (:func:`forks`), else in a thread. :func:`beside`
runs a job that returns a value the same way (the demo ViT's checks while its report is built).
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
from typing import Any, TypeVar

__all__ = ["in_background", "wait_for_background", "pending", "forks", "beside"]

T = TypeVar("T")

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


def pending(path: Path) -> bool:
    """Whether a background job of this process is writing ``path`` (a second job for the
    same file would train the same model twice).

    Examples
    --------
    >>> pending(Path("nothing-trains-this.bin"))
    False
    """
    with _LOCK:
        worker = _PENDING.get(path)
    return worker is not None and worker.is_alive()


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


def beside(job: Callable[[], T]) -> Callable[[], T]:
    """Start ``job`` in a forked process (a thread where :func:`forks` is false, or where the
    fork fails) and return a function that waits for it and returns its value, or raises its
    error.

    The child inherits everything (no pickling of the job or its inputs); only the value
    travels back, pickled through a pipe, so it should be small (a summary, not a model).

    Examples
    --------
    >>> result = beside(lambda: sum(range(10)))
    >>> result()
    45
    """
    if forks():
        ctx = multiprocessing.get_context("fork")
        receive, send = ctx.Pipe(duplex=False)

        def child() -> None:
            try:
                outcome: tuple[bool, Any] = (True, job())
            except Exception as err:  # noqa: BLE001 - raised again in the parent
                outcome = (False, err)
            try:
                send.send(outcome)
            except Exception as err:  # noqa: BLE001 - an unpicklable value or error
                send.send((False, RuntimeError(f"the job's result could not be sent: {err!r}")))

        process = ctx.Process(target=child, name="beside", daemon=True)
        try:
            process.start()
        except OSError:
            process = None  # no memory or process slots: a thread does the same work
        if process is not None:
            send.close()  # the child's end: a child that dies leaves the parent an EOF

            def result() -> T:
                try:
                    ok, value = receive.recv()
                except EOFError:
                    process.join()
                    raise RuntimeError(
                        f"the background job ended without a result (exit code {process.exitcode})"
                    ) from None
                process.join()
                if not ok:
                    raise value
                return value

            return result
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = job()
        except BaseException as err:  # noqa: BLE001 - raised again by result()
            box["error"] = err

    thread = threading.Thread(target=run, name="beside", daemon=True)
    thread.start()

    def joined() -> T:
        thread.join()
        if "error" in box:
            raise box["error"]
        return box["value"]

    return joined
