"""Small atomic file writers for the run directory: temporary file, fsync, rename."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np


def _atomic_write(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    _atomic_write(Path(path), lambda handle: handle.write(text.encode("utf-8")))


def atomic_save_npy(path: str | Path, array: np.ndarray) -> None:
    _atomic_write(Path(path), lambda handle: np.save(handle, array, allow_pickle=False))


def atomic_save_npz(path: str | Path, **arrays) -> None:
    _atomic_write(Path(path), lambda handle: np.savez(handle, **arrays))
