"""Readers of the image files of HTI data sets.

Three on-disk formats reach the same canonical sample, a float32 array [4, H, W] in ``CHANNELS`` order
(nucleus, microtubules, ER, protein) holding raw intensities:

- ``channels``: one image file per channel (TIFF 8/16-bit, PNG, JPEG) named by HPA's colour of the
  channel, either ``<id>_<colour>.<ext>`` side by side in one folder or one folder per sample holding
  ``<colour>.<ext>`` / ``<anything>_<colour>.<ext>``.
- ``npz``: the authors' release, ``<key>.npz`` with ``sample`` (H x W x 4, uint8).
- ``kaggle-hpa``: the Kaggle "Human Protein Atlas Image Classification" layout, ``<Id>_<colour>.png|tif``.

Anything unusable raises ``DataError`` with a reason a person can act on; the scanner turns those into
the list of excluded samples.
"""

from __future__ import annotations

import logging
import threading
import zipfile
from pathlib import Path

import numpy as np

from protloc.data.channels import AUTHORS_CHANNEL_ORDER, CHANNELS, COLOUR_OF_CHANNEL
from protloc.data.filenames import (  # noqa: F401  (IMAGE_EXTENSIONS, channel_file_id: re-exported)
    IMAGE_EXTENSIONS,
    TIFF_EXTENSIONS,
    channel_file_id,
    colour_of_file,
)
from protloc.data.limits import allow_pillow_up_to, check_image_header
from protloc.errors import DataError

# Which RGB planes carry a colour-encoded channel file's signal. HPA serves its channel images as
# pseudo-coloured RGB: the blue file in the B plane, green in G, red in R, and yellow (= red + green)
# in both R and G. Yellow becomes the mean of R and G, which equals either plane where they agree and
# averages out their independent JPEG noise where they do not.
COLOUR_PLANES: dict[str, tuple[int, ...]] = {"red": (0,), "green": (1,), "blue": (2,), "yellow": (0, 1)}

# The authors' ``sample`` arrays (H x W x 4) are in their network's input order (see channels.py).
NPZ_CHANNEL_ORDER: tuple[str, ...] = AUTHORS_CHANNEL_ORDER


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


def _read_tiff(path: Path) -> np.ndarray:
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


def _read_pillow(path: Path, limit: int) -> np.ndarray:
    from PIL import Image

    allow_pillow_up_to(limit)
    with Image.open(path) as image:
        image.load()  # decodes fully: a truncated PNG/JPEG fails here, not later
        mode = image.mode
        if mode == "P":
            image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        elif mode == "1":
            image = image.convert("L")
        elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            image = image.convert("RGB")
        array = np.asarray(image)
    if mode == "LA":  # grey + alpha
        array = array[..., 0]
    return array


def _describe(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def _check_dtype(array: np.ndarray, name: str) -> None:
    """Intensities are numbers: complex, text or object arrays are refused instead of cast."""
    if array.dtype.kind not in "biuf":
        raise DataError(f"{name}: holds {array.dtype} values; expected integer or floating-point intensities")


def _to_plane(array: np.ndarray, colour: str | None, name: str) -> np.ndarray:
    """A decoded image as one 2-D plane: grayscale as is, colour-encoded RGB(A) by its signal planes."""
    if array.size == 0:
        raise DataError(f"{name}: empty image")
    _check_dtype(array, name)
    # Drop only extra leading/trailing axes of length 1 (a 1 x H x W page): a 1 x 1 image stays 2-D.
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    while array.ndim > 2 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        return array
    if array.ndim != 3:
        raise DataError(f"{name}: holds a {array.ndim}-D array of {_describe(array.shape)} values; a channel "
                        "file must be one 2-D image (grayscale, or RGB/RGBA)")
    # Which axis holds the planes: the short one, first (planar TIFF: [planes, H, W]) or last ([H, W, 3]).
    planes_first = array.shape[0] < min(array.shape[1:]) or (
        array.shape[0] in (3, 4) and array.shape[-1] not in (3, 4))
    if planes_first:
        array = np.moveaxis(array, 0, -1)
    if array.shape[-1] not in (3, 4):
        raise DataError(
            f"{name}: holds {array.shape[-1]} planes of {array.shape[0]}x{array.shape[1]} pixels; a channel file "
            "must be grayscale (1 plane) or RGB/RGBA (3 or 4 planes): use one file per channel, or a 4-plane "
            "multichannel file (nucleus, microtubules, ER, protein)"
        )
    rgb = array[..., :3]  # alpha carries no signal
    planes = COLOUR_PLANES.get(colour or "")
    if planes is not None:
        # A file coloured other than its name says (e.g. ER drawn in green) keeps its signal: fall back
        # to the maximum over planes when the expected planes hold much less than another plane (JPEG
        # leaks a little of the signal into every plane, so "empty" cannot mean exactly zero).
        # A 4x4-subsampled grid estimates the plane means well enough and costs 1/16 of the full pass.
        plane_means = np.array([rgb[::4, ::4, k].mean(dtype=np.float64) for k in range(3)])
        if plane_means[list(planes)].min() >= 0.5 * plane_means.max():
            if len(planes) == 1:
                return np.ascontiguousarray(rgb[..., planes[0]])
            total = rgb[..., planes[0]].astype(np.float32)
            for k in planes[1:]:
                total += rgb[..., k]
            return total / np.float32(len(planes))
    # Unknown colour: the signal sits in one or more planes, the others are (near) zero.
    return rgb.max(axis=-1)


def read_channel_file(path: str | Path, colour: str | None = None, max_pixels: int | None = None) -> np.ndarray:
    """Read one channel image as a 2-D array in its native dtype (uint8, uint16, ...).

    RGB(A) colour-encoded files become grayscale from the planes the channel's HPA colour is drawn in
    (``COLOUR_PLANES``; yellow = mean of R and G, returned as float32), or from the maximum over the
    planes when the colour is unknown. ``colour`` defaults to the one in the file name.
    DataError when the file is missing, truncated or not an image; ImageTooLargeError (a DataError),
    from the header and before decoding, when it has more pixels than ``max_pixels`` (default: the limit
    in force, see protloc.data.limits).
    """
    path = Path(path)
    if colour is None:
        colour = colour_of_file(path)
    if not path.is_file():
        raise DataError(f"missing file {path.name}")
    limit = _limit(max_pixels)
    check_image_header(path, limit=limit)
    suffix = path.suffix.lower()
    try:
        array = _read_tiff(path) if suffix in TIFF_EXTENSIONS else _read_pillow(path, limit)
    except DataError:
        raise
    except Exception as exc:  # decoders raise many types (OSError, ValueError, codec errors)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"unreadable {path.name}: {reason}") from None
    plane = _to_plane(array, colour, path.name)
    if plane.size == 0:
        raise DataError(f"{path.name}: empty image")
    if plane.dtype.kind == "f" and not np.isfinite(plane).all():
        raise DataError(f"{path.name}: contains NaN or infinite values")
    return plane


def _canonical_from_hwc(array: np.ndarray, order: tuple[str, ...], name: str) -> np.ndarray:
    """[H, W, 4] or [4, H, W] with channels in ``order`` -> float32 [4, H, W] in CHANNELS order."""
    array = np.asarray(array)
    _check_dtype(array, name)
    if array.ndim != 3 or 4 not in (array.shape[0], array.shape[-1]):
        if array.ndim == 3:
            small = int(np.argmin(array.shape))
            rest = [d for i, d in enumerate(array.shape) if i != small]
            held = f"{array.shape[small]} planes of {rest[0]}x{rest[1]} pixels"
        else:
            held = f"a {array.ndim}-D array of {_describe(array.shape)} values"
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


def read_npz_sample(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """The authors' ``<key>.npz`` (``sample``: H x W x 4) as float32 [4, H, W] in CHANNELS order."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing file {path.name}")
    if check_image_header(path, limit=_limit(max_pixels)) != "npz":
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
    return _canonical_from_hwc(array, NPZ_CHANNEL_ORDER, path.name)


def read_multichannel_file(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """One file holding all four channels -> float32 [4, H, W] in CHANNELS order.

    Accepts an ``.npz`` with ``sample`` (H x W x 4, ``NPZ_CHANNEL_ORDER``) or a 4-plane TIFF stored as
    [4, H, W] or [H, W, 4] in the canonical order (nucleus, microtubules, ER, protein). Meant for
    single-file uploads and prediction inputs.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return read_npz_sample(path, max_pixels)
    if suffix not in TIFF_EXTENSIONS:
        raise DataError(f"{path.name}: a multichannel file must be a 4-plane TIFF or an .npz with 'sample'")
    if not path.is_file():
        raise DataError(f"missing file {path.name}")
    check_image_header(path, limit=_limit(max_pixels))
    # --- hook (issue 14): an OME-TIFF that names its channels is read by those names, not plane order ---
    from protloc.data.ome_tiff import read_if_named
    if (named := read_if_named(path, max_pixels)) is not None:
        return named.image
    # --- end hook ---
    try:
        array = _read_tiff(path)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"unreadable {path.name}: {str(exc).strip() or type(exc).__name__}") from None
    while array.ndim > 3 and array.shape[0] == 1:  # a 1 x 4 x H x W series
        array = array[0]
    return _canonical_from_hwc(array, CHANNELS, path.name)


def _read_planes(sources: dict[str, str], max_pixels: int | None = None) -> list[np.ndarray]:
    """The four channel planes in CHANNELS order, native dtype, checked for presence and equal shapes."""
    missing = [c for c in CHANNELS if c not in sources]
    if missing:
        raise DataError("missing channel " + ", ".join(f"{COLOUR_OF_CHANNEL[c]} ({c})" for c in missing))
    planes = [read_channel_file(sources[c], colour=COLOUR_OF_CHANNEL[c], max_pixels=max_pixels) for c in CHANNELS]
    shapes = {channel: plane.shape for channel, plane in zip(CHANNELS, planes)}
    if len(set(shapes.values())) > 1:
        described = ", ".join(f"{COLOUR_OF_CHANNEL[c]} {s[0]}x{s[1]}" for c, s in shapes.items())
        raise DataError(f"channels of different shapes: {described}")
    return planes


def read_sample(sources: dict[str, str], format: str | None = None, max_pixels: int | None = None) -> np.ndarray:
    """Read one sample from its sources into float32 [4, H, W] (CHANNELS order).

    ``sources`` maps each channel name to its file (``channels`` and ``kaggle-hpa`` formats), or is
    ``{'npz': path}`` / ``{'multichannel': path}``. DataError names the first problem: a missing
    channel, an unreadable file, or channels of different shapes. ``format`` is informational: the
    sources' keys say how to read them.
    """
    if "npz" in sources:
        return read_npz_sample(sources["npz"], max_pixels)
    # --- hook (issue 14): OME-TIFF / OME-Zarr samples listed by protloc.data.ome.ome_inputs ---
    from protloc.data.ome import is_ome_source, read_ome_source
    if is_ome_source(sources):
        return read_ome_source(sources, max_pixels).image
    # --- end hook ---
    if "multichannel" in sources:
        return read_multichannel_file(sources["multichannel"], max_pixels)
    planes = _read_planes(sources, max_pixels)
    out = np.empty((len(CHANNELS),) + planes[0].shape, dtype=np.float32)
    for i, plane in enumerate(planes):
        out[i] = plane
    return out


def check_sample(sources: dict[str, str], max_pixels: int | None = None) -> tuple[int, int]:
    """Decode every file of a sample fully and return its (height, width); DataError like read_sample.

    Cheaper than read_sample for channel files: the planes are not converted to one float32 array.
    """
    if "npz" in sources or "multichannel" in sources:
        image = read_sample(sources, max_pixels=max_pixels)
        return int(image.shape[1]), int(image.shape[2])
    planes = _read_planes(sources, max_pixels)
    return int(planes[0].shape[0]), int(planes[0].shape[1])


def _limit(max_pixels: int | None) -> int:
    from protloc.data.limits import max_pixels as limit_in_force

    return limit_in_force() if max_pixels is None else int(max_pixels)

