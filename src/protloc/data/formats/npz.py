"""The authors' release: ``<key>.npz`` holding ``sample`` (H x W x 4, uint8) in their network's input
order (``protloc.data.channels.AUTHORS_CHANNEL_ORDER``). An npz states no pixel size."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from protloc.data.channels import AUTHORS_CHANNEL_ORDER
from protloc.data.formats.base import Sample
from protloc.data.formats.tiff import canonical_from_planes, limit_of
from protloc.data.limits import check_image_header
from protloc.data.pixel_size import UNKNOWN, PixelSize
from protloc.errors import DataError

KEY = "npz"
# The authors' ``sample`` arrays (H x W x 4) are in their network's input order (see channels.py).
NPZ_CHANNEL_ORDER: tuple[str, ...] = AUTHORS_CHANNEL_ORDER


def read_array(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """The ``sample`` array of an npz as float32 [4, H, W] in CHANNELS order."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing file {path.name}")
    if check_image_header(path, limit=limit_of(max_pixels)) != "npz":
        raise DataError(f"unreadable {path.name}: not an NPZ archive")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "sample" not in npz.files:
                raise DataError(f"{path.name}: no 'sample' array (holds {', '.join(npz.files) or 'nothing'})")
            array = npz["sample"]
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise DataError(f"unreadable {path.name}: {str(exc).strip() or type(exc).__name__}") from None
    return canonical_from_planes(array, NPZ_CHANNEL_ORDER, path.name)


def read(sources: dict[str, str], max_pixels: int | None = None, given: PixelSize | None = None) -> Sample:
    return Sample(read_array(sources[KEY], max_pixels), given or UNKNOWN)
