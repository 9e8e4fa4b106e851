"""Training a demo model's cache file in a background thread while the demo goes on.

The demo models are trained on one torch thread each (:mod:`neuronsplit.demo._threads`); on a
machine with two cores the ViT can train while the CNN half of the demo runs. Whoever reads the
cache file first waits for the thread that writes it (:func:`wait_for_background`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["in_background", "wait_for_background"]

_PENDING: dict[Path, threading.Thread] = {}
_LOCK = threading.Lock()


def _quietly(job: Callable[[], object]) -> None:
    """Run ``job``; an error is left for the reader to meet (the cache file is then missing,
    so :func:`get_demo_vit <neuronsplit.demo.get_demo_vit>` trains again and raises it)."""
    try:
        job()
    except Exception:  # noqa: BLE001 - raised again by the synchronous retry
        pass


@contextmanager
def in_background(path: Path, job: Callable[[], object]) -> Iterator[None]:
    """Run ``job`` (which writes ``path``) in a thread for the duration of the block; leaving
    the block waits for it, so no thread outlives the demo's thread settings.

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "model.bin"
    >>> with in_background(path, lambda: path.write_text("weights")):
    ...     wait_for_background(path)
    ...     path.read_text()
    'weights'
    """
    thread = threading.Thread(target=_quietly, args=(job,), name=f"train {path.name}")
    with _LOCK:
        _PENDING[path] = thread
    thread.start()
    try:
        yield
    finally:
        wait_for_background(path)


def wait_for_background(path: Path) -> None:
    """Wait until no background job is writing ``path`` (returns at once if none is)."""
    with _LOCK:
        thread = _PENDING.get(path)
    if thread is not None and thread is not threading.current_thread():
        thread.join()
        with _LOCK:
            if _PENDING.get(path) is thread:
                del _PENDING[path]
