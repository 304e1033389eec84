"""Prepared-data cache: one memory-mapped .npy array [4, H, W] per sample.

Decoding four full-resolution image files per sample per epoch would starve a GPU. The cache decodes
each sample once (``DatasetIndex.load_image``) and stores it in the smallest dtype that holds it
exactly: uint8 or uint16 for the integer intensities of 8- and 16-bit microscopy files (the native
dtype, 2-4x smaller than float32), float32 for anything else. A training crop then maps the file
and reads only the pixels of its window (``protloc.data.patches.random_crop`` slices the memmap).

Entries are named by a hash of the sample id and keyed by a fingerprint of the source files
(paths, sizes, modification times, the index format), so changed data is re-prepared and never
read stale. Files are written atomically; several processes building the same cache (DDP, one
per node) at worst do the same work twice.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from protloc.errors import ProtlocError
from protloc.files import atomic_save_npy


def compact(image: np.ndarray) -> np.ndarray:
    """The image in uint8/uint16 when that represents every value exactly, else float32."""
    image = np.asarray(image)
    if image.size and np.isfinite(image).all():
        low, high = float(image.min()), float(image.max())
        if low >= 0 and high <= 65535 and np.array_equal(image, np.floor(image)):
            return image.astype(np.uint8 if high <= 255 else np.uint16)
    return image.astype(np.float32, copy=False)


class SampleCache:
    def __init__(self, index, folder: str | Path) -> None:
        self.index = index
        self.folder = Path(folder)

    def fingerprint(self, sample_id: str) -> str:
        entry = self.index.entry(sample_id)
        stats = {}
        from protloc.data.formats.listing import PATH_KEYS

        for key, source in sorted(entry.sources.items()):
            if key not in PATH_KEYS:  # a reader option or a store's inner image path, not a file
                stats[key] = source
                continue
            path = self.index.resolve(source)
            try:
                stat = path.stat()
            except OSError:
                raise ProtlocError(f"sample {sample_id!r}: cannot read {path}") from None
            stats[key] = [str(path.resolve()), stat.st_size, stat.st_mtime_ns]
        blob = json.dumps([self.index.format, entry.height, entry.width, stats], sort_keys=True)
        return hashlib.blake2b(blob.encode(), digest_size=10).hexdigest()

    def path(self, sample_id: str) -> Path:
        name = hashlib.blake2b(sample_id.encode(), digest_size=10).hexdigest()
        return self.folder / f"{name}-{self.fingerprint(sample_id)}.npy"

    def missing(self, ids: Sequence[str]) -> list[str]:
        return [sample_id for sample_id in ids if not self.path(sample_id).is_file()]

    def build(self, ids: Sequence[str], progress: bool | None = None) -> int:
        """Prepare every sample of ``ids`` not cached yet; returns how many were written."""
        from tqdm.auto import tqdm

        todo = self.missing(ids)
        if not todo:
            return 0
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ProtlocError(f"cannot create the data cache {self.folder}: {exc.strerror}") from None
        if progress is None:
            progress = sys.stderr.isatty()
        for sample_id in tqdm(todo, desc="preparing data cache", unit="sample", disable=not progress):
            atomic_save_npy(self.path(sample_id), compact(self.index.load_image(sample_id)))
        return len(todo)

    def open(self, sample_id: str) -> np.ndarray:
        """The cached sample as a read-only memory map [4, H, W] (native dtype)."""
        path = self.path(sample_id)
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise ProtlocError(f"sample {sample_id!r} is not in the data cache {self.folder}") from None
