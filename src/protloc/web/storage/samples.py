"""A submission's sample decoded again from its stored files: what the worker and the picture
renderer read (the upload was checked when it arrived: ``decoding``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from protloc.data.channels import CHANNELS, COLOUR_OF_CHANNEL
from protloc.web.storage.store import KIND_SUFFIX, BlobStore


def load_stored_sample(store: BlobStore, input_kind: str, files: list[dict], max_pixels: int | None = None) -> np.ndarray:
    """A submission's sample, decoded again from its stored files (the worker's view), under the
    server's pixel limit (``WebSettings.max_pixels``; None: the default)."""
    from protloc.data.formats import read_file
    from protloc.data.formats.channel_files import read_channel_file

    def path(entry: dict) -> Path:
        return store.path_of(entry["sha256"], KIND_SUFFIX.get(entry["kind"], ""))

    if input_kind == "multichannel":
        return np.asarray(read_file(path(files[0]), max_pixels).image, dtype=np.float32)
    by_channel = {entry["channel"]: entry for entry in files}
    planes = [
        np.asarray(read_channel_file(path(by_channel[c]), colour=COLOUR_OF_CHANNEL[c], max_pixels=max_pixels),
                   dtype=np.float32)
        for c in CHANNELS
    ]
    return np.stack(planes)
