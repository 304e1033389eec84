"""protloc's one label-image writer (cell and nucleus masks): the per-cell pipeline, the platform's
worker and the synthetic generator all write through ``write_label_image``.

It lives in the data layer, below ``cells/``, because the synthetic generator (``data/synth/``)
writes its truth masks with it; ``protloc.cells.masks`` reads the same layout back.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from protloc.files import atomic_write

MAX_PNG_ID = 65535  # a 16-bit PNG holds ids up to this; more cells go to a 32-bit TIFF


def write_label_image(path: str | Path, labels: np.ndarray) -> Path:
    """A label image as 16-bit PNG, or 32-bit TIFF (``path`` with suffix ``.tif``) when ids exceed
    65535, the layout ``protloc.cells.masks.read_masks`` reads back; written atomically (a reader never
    sees half a file) and reproducibly (no date or software tags). Returns the path written."""
    path = Path(path)
    if labels.size and int(labels.max()) > MAX_PNG_ID:
        import tifffile

        path = path.with_suffix(".tif")
        buffer = io.BytesIO()  # tifffile wants a named file or a seekable buffer, not a bare descriptor
        tifffile.imwrite(buffer, labels.astype(np.uint32), photometric="minisblack", metadata=None,
                         software=False, datetime=None)
        atomic_write(path, lambda handle: handle.write(buffer.getvalue()))
        return path
    from PIL import Image

    picture = Image.fromarray(labels.astype(np.uint16))
    # zlib's fastest level: a label image is long runs of one id, 3x the size of the default level's
    # file (tens of kB) in 60% of the time (the web worker writes one per submission).
    atomic_write(path, lambda handle: picture.save(handle, format="PNG", compress_level=1))
    return path
