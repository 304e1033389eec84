"""Plain multi-plane TIFF: one file holding the four channels as [4, H, W] or [H, W, 4] in the canonical
order (nucleus, microtubules, ER, protein), without OME-XML naming them (those are ``ome_tiff``).

Also the TIFF plumbing the channel files share: decoding with tifffile's complaints turned into a
DataError, and the pixel size a TIFF states in its resolution tags.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from protloc.data.channels import CHANNELS
from protloc.data.formats.base import Sample
from protloc.data.formats.physical import tiff_resolution_pixel_size
from protloc.data.limits import check_image_header
from protloc.data.pixel_size import UNKNOWN, PixelSize
from protloc.errors import DataError

KEY = "multichannel"


# tifffile reports some damage (a strip cut short, a bad tag) through its logger and returns what it
# could read. Those records are collected per thread during a read and turned into a DataError, so a
# damaged file is never mistaken for a good one.
class _TiffLogCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.local = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        records = getattr(self.local, "records", None)
        if records is not None:
            records.append(record.getMessage())


_TIFF_LOG = _TiffLogCapture()
logging.getLogger("tifffile").addHandler(_TIFF_LOG)


def read_tiff_array(path: Path) -> np.ndarray:
    import tifffile

    _TIFF_LOG.local.records = []
    try:
        array = tifffile.imread(path)
        problems = _TIFF_LOG.local.records
    finally:
        _TIFF_LOG.local.records = None
    if problems:
        raise DataError(f"damaged TIFF {path.name}: {problems[0]}")
    return np.asarray(array)


def stated_pixel_size(path: str | Path, name: str | None = None) -> PixelSize:
    """The pixel size a TIFF states: its OME-XML's PhysicalSize where it has one, else its first page's
    resolution tags; UNKNOWN when neither says; DataError when the value is absurd. ``name``: the
    file's name in messages (an upload stored under its hash)."""
    import tifffile

    from protloc.data.formats.ome_tiff import parse_ome_xml
    from protloc.data.formats.ome_tiff import pixel_size as ome_pixel_size

    path = Path(path)
    name = name or path.name
    try:
        with tifffile.TiffFile(path) as tif:
            xml, page = tif.ome_metadata, tif.pages[0]
            try:
                header = parse_ome_xml(xml, name) if xml else None
            except DataError:  # damaged OME-XML in a TIFF read by plane order: its tags may still say
                header = None
            stated = ome_pixel_size(header, name) if header is not None else UNKNOWN
            return stated if stated.known else tiff_resolution_pixel_size(page, name)
    except DataError:
        raise
    except Exception:  # noqa: BLE001  an unreadable file: decoding it says why
        return UNKNOWN


def describe_shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def check_dtype(array: np.ndarray, name: str) -> None:
    """Intensities are numbers: complex, text or object arrays are refused instead of cast."""
    if array.dtype.kind not in "biuf":
        raise DataError(f"{name}: holds {array.dtype} values; expected integer or floating-point intensities")


def limit_of(max_pixels: int | None) -> int:
    from protloc.data.limits import max_pixels as limit_in_force

    return limit_in_force() if max_pixels is None else int(max_pixels)


def canonical_from_planes(array: np.ndarray, order: tuple[str, ...], name: str) -> np.ndarray:
    """[H, W, 4] or [4, H, W] with channels in ``order`` -> float32 [4, H, W] in CHANNELS order."""
    array = np.asarray(array)
    check_dtype(array, name)
    if array.ndim != 3 or 4 not in (array.shape[0], array.shape[-1]):
        if array.ndim == 3:
            small = int(np.argmin(array.shape))
            rest = [d for i, d in enumerate(array.shape) if i != small]
            held = f"{array.shape[small]} planes of {rest[0]}x{rest[1]} pixels"
        else:
            held = f"a {array.ndim}-D array of {describe_shape(array.shape)} values"
        raise DataError(f"{name}: holds {held}; expected 4 channels (nucleus, microtubules, ER, protein) as "
                        "4xHxW or HxWx4")
    if array.shape[-1] == 4:
        array = np.moveaxis(array, -1, 0)
    if array.shape[1] == 0 or array.shape[2] == 0:
        raise DataError(f"{name}: empty image of shape {array.shape}")
    source = {channel: i for i, channel in enumerate(order)}
    # Each plane converted straight into the result (no stacked copy in the source type first).
    out = np.empty((len(CHANNELS), *array.shape[1:]), dtype=np.float32)
    for k, channel in enumerate(CHANNELS):
        out[k] = array[source[channel]]
    if array.dtype.kind == "f" and not np.isfinite(out).all():  # whole numbers are always finite
        raise DataError(f"{name}: contains NaN or infinite values")
    return out


def read(sources: dict[str, str], max_pixels: int | None = None, given: PixelSize | None = None) -> Sample:
    """A 4-plane TIFF in the canonical order as a Sample; its pixel size from its resolution tags."""
    path = Path(sources[KEY])
    if path.suffix.lower() not in (".tif", ".tiff"):
        raise DataError(f"{path.name}: a multichannel file must be a 4-plane TIFF or an .npz with 'sample'")
    if not path.is_file():
        raise DataError(f"missing file {path.name}")
    check_image_header(path, limit=limit_of(max_pixels))
    try:
        array = read_tiff_array(path)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"unreadable {path.name}: {str(exc).strip() or type(exc).__name__}") from None
    while array.ndim > 3 and array.shape[0] == 1:  # a 1 x 4 x H x W series
        array = array[0]
    image = canonical_from_planes(array, CHANNELS, path.name)
    return Sample(image, given or stated_pixel_size(path))
