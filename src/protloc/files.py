"""Atomic file writers (temporary file in the same folder, fsync, rename): a crash never leaves a
half-written file; and the one rule that turns a sample id into a file name (``sample_file_stem``)."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

import numpy as np


# A spreadsheet runs a cell that starts with one of these as a formula (OWASP "CSV injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(text: str) -> str:
    """A text cell a spreadsheet shows as text: a leading quote defuses a formula. The one function
    for every CSV protloc writes (the CLI's tables and the platform's exports)."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def _umask_mode() -> int:
    # mkstemp makes 0600 files; what protloc writes is readable as any file the user makes
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def fsync_file(path: str | Path) -> None:
    """Flush a written file to the disk (before it is renamed into place)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary file name beside ``path`` for a writer that wants a name (pandas, torch, ONNX,
    a zip writer): when the block ends without error the file is synced and renamed to ``path``;
    otherwise it is removed and ``path`` is untouched. ``suffix``: for writers that go by it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, _umask_mode())
    try:
        yield Path(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_paths(paths: list[str | Path]) -> Iterator[list[Path]]:
    """Temporary names (each keeping its target's suffix) for several files that appear together:
    when the block ends without error every file is synced, then all are renamed; otherwise all are
    removed and no target is touched (a table never says "finished" beside a missing AnnData file)."""
    targets = [Path(p) for p in paths]
    temporaries: list[Path] = []
    try:
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=target.suffix, dir=target.parent)
            os.close(fd)
            os.chmod(tmp, _umask_mode())
            temporaries.append(Path(tmp))
        yield temporaries
        for tmp in temporaries:
            fsync_file(tmp)
    except BaseException:
        for tmp in temporaries:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, target in zip(temporaries, targets):
        os.replace(tmp, target)


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", **options) -> Iterator[IO]:
    """An open handle (text ``w`` or binary ``wb``; ``options`` as ``open`` takes them) whose file
    appears at ``path`` complete, only when the block ends without error."""
    with atomic_path(path) as tmp, open(tmp, mode, **options) as handle:
        yield handle


def atomic_write(path: str | Path, write) -> None:
    """Write `path` through `write(binary_handle)` atomically."""
    with atomic_open(path, "wb") as handle:
        write(handle)


def move_into_place(source: str | Path, target: str | Path) -> Path:
    """Move a finished file (written elsewhere in the same file system) to ``target`` in one step, synced
    first: a reader sees the whole file or none."""
    fsync_file(source)
    os.replace(source, target)
    return Path(target)


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
