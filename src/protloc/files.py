"""Atomic file writers (temporary file in the same folder, fsync, rename): a crash never leaves a
half-written file; and the one rule that turns a sample id into a file name (``sample_file_stem``)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np


# A spreadsheet runs a cell that starts with one of these as a formula (OWASP "CSV injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(text: str) -> str:
    """A text cell a spreadsheet shows as text: a leading quote defuses a formula. The one function
    for every CSV protloc writes (the CLI's tables and the platform's exports)."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def atomic_write(path: str | Path, write) -> None:
    """Write `path` through `write(binary_handle)` atomically."""
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
    atomic_write(Path(path), lambda handle: handle.write(text.encode("utf-8")))


def atomic_save_npy(path: str | Path, array: np.ndarray) -> None:
    atomic_write(Path(path), lambda handle: np.save(handle, array, allow_pickle=False))


def atomic_save_npz(path: str | Path, **arrays) -> None:
    atomic_write(Path(path), lambda handle: np.savez(handle, **arrays))


_MAX_STEM_BYTES = 200


def sample_file_stem(sample_id: str) -> str:
    """protloc's one rule from a sample id to a file or folder name: distinct ids give distinct stems, and
    ``urllib.parse.unquote(stem)`` gives the id back (``a/b`` -> ``a%2Fb``, ``a_b`` stays ``a_b``).

    Every byte outside ASCII letters, digits, ``-``, ``_`` and ``.`` is percent-encoded (ids that are
    not UTF-8 keep their raw bytes through surrogate escapes). An id whose stem would pass 200 bytes
    keeps the first 150 and a hash of the whole id: still distinct and stable, no longer reversible.
    """
    import hashlib
    from urllib.parse import quote

    raw = sample_id.encode("utf-8", "surrogateescape")
    stem = quote(raw, safe="-_.")
    if stem in {".", ".."}:
        stem = stem.replace(".", "%2E")
    if len(stem) > _MAX_STEM_BYTES:
        stem = f"{stem[:150].rstrip('%0123456789ABCDEF')}~{hashlib.sha256(raw).hexdigest()[:32]}"
    return stem
