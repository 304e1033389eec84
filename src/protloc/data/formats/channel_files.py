"""Channel files: one image file per channel (TIFF 8/16-bit, PNG, JPEG), named by HPA's colour of the
channel or its name, ``<id>_<colour>.<ext>`` side by side or one folder per sample holding
``<colour>.<ext>`` / ``<anything>_<colour>.<ext>`` (names parsed by ``protloc.data.filenames``). The
Kaggle 2018 layout (512² PNGs) and HPA's web downloads (2048² JPEGs) are channel files too; their
pixel size follows from the layout when the files do not state one.

A sample's ``sources`` map each channel to its file. Anything unusable raises ``DataError`` with a
reason a person can act on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from protloc.data.channels import CHANNELS, COLOUR_OF_CHANNEL, HPA_COLOURS
from protloc.data.filenames import TIFF_EXTENSIONS, colour_of_file
from protloc.data.formats.base import Sample
from protloc.data.formats.tiff import check_dtype, describe_shape, limit_of, read_tiff_array, stated_pixel_size
from protloc.data.limits import allow_pillow_up_to, check_image_header
from protloc.data.pixel_size import (
    HPA_CONFOCAL_PIXEL_SIZE_UM,
    HPA_DOWNLOAD_SIZE,
    HPA_DOWNLOAD_SOURCE,
    KAGGLE2018_PIXEL_SIZE_UM,
    KAGGLE2018_SIZE,
    KAGGLE2018_SOURCE,
    UNKNOWN,
    PixelSize,
)
from protloc.errors import DataError

KEYS: tuple[str, ...] = CHANNELS  # a channel-file sample's sources: {channel: file}

# Which RGB planes carry a colour-encoded channel file's signal. HPA serves its channel images as
# pseudo-coloured RGB: the blue file in the B plane, green in G, red in R, and yellow (= red + green)
# in both R and G. Yellow becomes the mean of R and G, which equals either plane where they agree and
# averages out their independent JPEG noise where they do not.
COLOUR_PLANES: dict[str, tuple[int, ...]] = {"red": (0,), "green": (1,), "blue": (2,), "yellow": (0, 1)}


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


def _to_plane(array: np.ndarray, colour: str | None, name: str) -> np.ndarray:
    """A decoded image as one 2-D plane: grayscale as is, colour-encoded RGB(A) by its signal planes."""
    if array.size == 0:
        raise DataError(f"{name}: empty image")
    check_dtype(array, name)
    # Drop only extra leading/trailing axes of length 1 (a 1 x H x W page): a 1 x 1 image stays 2-D.
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    while array.ndim > 2 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        return array
    if array.ndim != 3:
        raise DataError(f"{name}: holds a {array.ndim}-D array of {describe_shape(array.shape)} values; a channel "
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
    limit = limit_of(max_pixels)
    check_image_header(path, limit=limit)
    suffix = path.suffix.lower()
    try:
        array = read_tiff_array(path) if suffix in TIFF_EXTENSIONS else _read_pillow(path, limit)
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


def read_planes(sources: dict[str, str], max_pixels: int | None = None) -> list[np.ndarray]:
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




def _hpa_colour_files(files, suffix: str) -> bool:
    names = sorted(Path(str(f)).name.lower() for f in files)
    return len(names) == 4 and sorted(colour for name in names for colour in HPA_COLOURS
                                      if name.endswith(f"_{colour}{suffix}")) == sorted(HPA_COLOURS)


def is_kaggle2018_layout(files, height: int, width: int) -> bool:
    """Four ``<id>_<colour>.png`` files (HPA colours) of 512x512: the Kaggle 2018 PNG layout."""
    return (height, width) == (KAGGLE2018_SIZE, KAGGLE2018_SIZE) and _hpa_colour_files(files, ".png")


def is_hpa_download_layout(files, height: int, width: int) -> bool:
    """Four ``<id>_<colour>.jpg`` files of 2048x2048: HPA's web-download format of a confocal field."""
    return (height, width) == (HPA_DOWNLOAD_SIZE, HPA_DOWNLOAD_SIZE) and _hpa_colour_files(files, ".jpg")


def pixel_size(files, height: int, width: int, names=None) -> PixelSize:
    """What channel files state (TIFF resolution tags) or their layout implies; UNKNOWN otherwise.

    ``names``: the files' original names where they are stored under others (the platform's
    content-addressed blobs); the layout is recognised by those. DataError for an absurd stated size.
    """
    files = [Path(f) for f in files]
    for path, name in zip(files, names or files):
        if path.suffix.lower() in TIFF_EXTENSIONS:
            stated = stated_pixel_size(path, Path(str(name)).name)
            if stated.known:
                return stated
    names = list(names) if names is not None else files
    if is_kaggle2018_layout(names, height, width):
        return PixelSize(KAGGLE2018_PIXEL_SIZE_UM, KAGGLE2018_SOURCE)
    if is_hpa_download_layout(names, height, width):
        return PixelSize(HPA_CONFOCAL_PIXEL_SIZE_UM, HPA_DOWNLOAD_SOURCE)
    return UNKNOWN


def read(sources: dict[str, str], max_pixels: int | None = None, given: PixelSize | None = None) -> Sample:
    """The four channel files of a sample as one canonical Sample (DataError: a missing channel, an
    unreadable file, channels of different shapes, an absurd stated pixel size)."""
    planes = read_planes(sources, max_pixels)
    image = np.empty((len(CHANNELS),) + planes[0].shape, dtype=np.float32)
    for i, plane in enumerate(planes):
        image[i] = plane
    size = given or pixel_size([sources[c] for c in CHANNELS], *image.shape[1:])
    return Sample(image, size)


def check(sources: dict[str, str], max_pixels: int | None = None) -> tuple[int, int]:
    """Decode every file fully and return (height, width): cheaper than ``read`` (no float32 copy)."""
    planes = read_planes(sources, max_pixels)
    pixel_size([sources[c] for c in CHANNELS], *planes[0].shape)  # an absurd stated size excludes it too
    return int(planes[0].shape[0]), int(planes[0].shape[1])
