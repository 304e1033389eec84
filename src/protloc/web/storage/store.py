"""Where uploads and pictures live: the interface the platform uses, and the directory store.

``UploadStore`` is everything the web server, the workers and the batch extraction ask of a store;
``BlobStore`` implements it on a directory (local, or one every machine mounts: NFS, SMB). Another
store (an S3-compatible bucket, say) implements the same methods, keeping local copies where a
method returns a path (decoders and PNG writers read and write local files), and is handed to the
platform as ``WebSettings(store=...)``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from protloc.files import move_into_place

CHUNK_SIZE = 1 << 20
KIND_SUFFIX = {"tiff": ".tif", "png": ".png", "jpeg": ".jpg", "npz": ".npz", "zip": ".zip"}


@dataclass
class ReceivedFile:
    field: str
    filename: str
    path: Path  # temporary file until ``BlobStore.keep`` moves it
    sha256: str
    size: int
    kind: str = ""  # tiff | png | jpeg | npz | zip, from the file's content once inspected

    @property
    def suffix(self) -> str:
        return KIND_SUFFIX.get(self.kind, "")

    def take_suffix(self) -> None:
        """Give the temporary file the suffix of its content: decoders go by the suffix."""
        target = self.path.with_suffix(self.suffix)
        if target != self.path:
            self.path = move_into_place(self.path, target)


class UploadStore(Protocol):
    """A store of uploaded files (by content address) and of rendered pictures (by submission)."""

    tmp: Path  # local scratch: uploads being received, batches being extracted

    def temp_file(self, suffix: str = "") -> tuple[int, Path]:
        """A new local temporary file (descriptor, path) for an upload being received."""

    def keep(self, received: ReceivedFile) -> Path:
        """Store a received temporary file under its sha256 (once per content); its stored path."""

    def receive_file(self, source: Path) -> ReceivedFile:
        """A local file (an extracted zip member) copied to a temporary file and hashed."""

    def path_of(self, sha256: str, suffix: str = "") -> Path:
        """A local path of a stored file, to read."""

    def render_dir(self, submission_id: str) -> Path:
        """The local folder of a submission's pictures."""

    def clean_tmp(self) -> None:
        """Drop temporary files a crash left behind."""


class BlobStore:
    """Files under ``root/blobs/ab/<sha256>.<ext>``; identical uploads share one file.

    The suffix follows the content (``.tif`` for any TIFF), so readers that go by suffix can open it.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs"
        self.tmp = self.root / "tmp"
        self.renders = self.root / "renders"
        for folder in (self.blobs, self.tmp, self.renders):
            folder.mkdir(parents=True, exist_ok=True)

    def path_of(self, sha256: str, suffix: str = "") -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a sha256: {sha256!r}")
        if suffix not in KIND_SUFFIX.values() and suffix != "":
            raise ValueError(f"unexpected suffix {suffix!r}")
        return self.blobs / sha256[:2] / f"{sha256}{suffix}"

    def temp_file(self, suffix: str = "") -> tuple[int, Path]:
        fd, name = tempfile.mkstemp(dir=self.tmp, suffix=suffix)
        return fd, Path(name)

    def keep(self, received: ReceivedFile) -> Path:
        """Move a received temporary file to its content address (or drop it if already stored)."""
        target = self.path_of(received.sha256, received.suffix)
        if target.exists():
            received.path.unlink(missing_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            move_into_place(received.path, target)
        received.path = target
        return target

    def receive_file(self, source: Path) -> ReceivedFile:
        """Copy a local file (e.g. an extracted zip member) to a temporary file, hashing it."""
        digest = hashlib.sha256()
        fd, tmp = self.temp_file()
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            while chunk := src.read(CHUNK_SIZE):
                digest.update(chunk)
                out.write(chunk)
        return ReceivedFile("", source.name, tmp, digest.hexdigest(), source.stat().st_size)

    def render_dir(self, submission_id: str) -> Path:
        return self.renders / submission_id

    def clean_tmp(self) -> None:
        """Temporary files left by a crash mid-upload are garbage."""
        for leftover in self.tmp.iterdir():
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
