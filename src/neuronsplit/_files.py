"""File helpers shared by every writer: atomic writes and content hashes."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "atomic_write_text", "staged", "sha256_file"]


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


@contextlib.contextmanager
def staged(*paths: Path) -> Iterator[tuple[Path, ...]]:
    """Temporary siblings of ``paths`` to write; renamed into place, in the given order, when the
    block succeeds, and removed when it fails.

    A failure while writing (an exception, a full disk) leaves every previous file as it was.
    Only a failure between two renames can leave files of two saves side by side; the readers
    detect that through the hashes that link the files (each file records the hash of the one
    renamed before it).
    """
    temps = tuple(_temporary(Path(p)) for p in paths)
    try:
        yield temps
        for tmp, path in zip(temps, paths, strict=True):
            os.replace(tmp, path)
    finally:
        for tmp in temps:
            with contextlib.suppress(OSError):
                tmp.unlink()


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp)`` on a temporary sibling of ``path``, then rename it into place."""
    with staged(path) as (tmp,):
        write(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
