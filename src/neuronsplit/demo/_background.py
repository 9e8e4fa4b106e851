"""Training a demo model's cache file in the background while the demo goes on.

The demo models are trained on one torch thread each (:mod:`neuronsplit.demo._threads`); on a
machine with two cores the ViT can train while the CNN half of the demo runs. Whoever reads the
cache file first waits for the job that writes it (:func:`wait_for_background`).

The job runs in a forked process on Linux (:func:`forks`), else in a thread. :func:`beside`
runs a job that returns a value in a forked process (the demo ViT's checks while its report is
built), and at once where there is no fork (a thread would share the model with the caller,
whose forward passes and hooks it would meet).
A thread shares the interpreter lock with the demo's own Python work: the tiny demo models
spend most of their time in Python dispatch, so the two halves slowed each other down
(cold demo 26.4 s with a thread; ``benchmarks/demo_time.py``). A forked child needs no new
imports and inherits the untrained model; it writes the cache file atomically and exits.
"""

from __future__ import annotations

import multiprocessing
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Generic, TypeVar

__all__ = ["in_background", "wait_for_background", "pending", "forks", "beside", "Beside"]

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


def _forked(target: Callable[[], object], name: str) -> multiprocessing.Process | None:
    """``target`` started in a forked daemon process (nothing to pickle, no imports), or None
    where :func:`forks` is false or the fork itself fails (no memory, no process slots)."""
    if not forks():
        return None
    process = multiprocessing.get_context("fork").Process(target=target, name=name, daemon=True)
    try:
        process.start()
    except OSError:
        return None
    return process


def _start(job: Callable[[], object], name: str) -> threading.Thread | multiprocessing.Process:
    """A started forked process (:func:`_forked`), else a thread: the same work, only slower."""
    process = _forked(lambda: _quietly(job), name)
    if process is not None:
        return process
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


class Beside(Generic[T]):
    """A job started by :func:`beside`: :meth:`result` waits for its value, :meth:`cancel`
    stops it (the caller failed and will not ask)."""

    def __init__(self, job: Callable[[], T], *, fork: bool = True) -> None:
        self._job = job
        self._outcome: tuple[bool, Any] | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        self._receive: Any = None
        if fork:
            self._fork()
        if self._process is None:  # no fork here, or the fork failed: the job runs now
            self._outcome = _run(job)

    def _fork(self) -> None:
        receive, send = multiprocessing.get_context("fork").Pipe(duplex=False)

        def child() -> None:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the parent's to handle
            outcome = _run(self._job)
            try:
                send.send(outcome)
            except Exception as err:  # noqa: BLE001 - an unpicklable value or error
                send.send((False, RuntimeError(f"the job's result could not be sent: {err!r}")))

        process = _forked(child, "beside")
        send.close()  # the child's end: a child that dies leaves the parent an EOF
        if process is None:
            receive.close()
            return
        self._process, self._receive = process, receive

    def result(self, timeout: float = TIMEOUT_S) -> T:
        """Wait for the job (at most ``timeout`` seconds, then it is stopped and run here) and
        return its value, or raise its error; later calls give the same outcome."""
        if self._outcome is None:
            self._outcome = self._wait(timeout)
        ok, value = self._outcome
        if not ok:
            raise value
        return value

    def _wait(self, timeout: float) -> tuple[bool, Any]:
        process, receive = self._process, self._receive
        try:
            if not receive.poll(timeout):  # a hung child must not hang the caller
                self.cancel()
                return _run(self._job)
            return receive.recv()
        except Exception as err:  # noqa: BLE001 - reported below
            # EOFError: the child died without a word; others: a value that did not unpickle
            process.join()
            return False, RuntimeError(
                f"the background job ended without a result (exit code {process.exitcode}; "
                f"{type(err).__name__})"
            )
        except BaseException:  # Ctrl+C while waiting: the child ignores SIGINT, so stop it
            self.cancel()
            raise
        finally:
            self._close()

    def cancel(self) -> None:
        """Stop the job if it still runs (a no-op once its result is in)."""
        if self._process is not None and self._process.is_alive():
            self._process.terminate()
        self._close()

    def _close(self) -> None:
        if self._process is not None:
            self._process.join()
        if self._receive is not None:
            self._receive.close()
        self._receive = None


def _run(job: Callable[[], T]) -> tuple[bool, Any]:
    """``(True, value)`` or ``(False, error)`` with the traceback attached as a note."""
    try:
        return True, job()
    except Exception as err:  # noqa: BLE001 - raised again by Beside.result
        err.add_note(traceback.format_exc())
        return False, err


def beside(job: Callable[[], T], *, fork: bool = True) -> Beside[T]:
    """Start ``job`` in a forked process and return its :class:`Beside` handle.

    The child inherits everything (no pickling of the job or its inputs); only the value
    travels back, pickled through a pipe, so it should be small (a summary, not a model).
    Where :func:`forks` is false, the fork fails or ``fork=False``, the job runs at once,
    before this returns: a thread would share the objects it reads with the caller.

    Examples
    --------
    >>> handle = beside(lambda: sum(range(10)))
    >>> handle.result()
    45
    """
    return Beside(job, fork=fork)
