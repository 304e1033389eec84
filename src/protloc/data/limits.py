"""The pixel limit: images too large to decode are refused from their header, before any decoding.

One limit for every entry point: ``protloc data scan``, ``predict``, ``train`` (``--max-pixels``) and
the web server (``protloc serve --max-pixels``, which passes its own value). A TIFF of a few MB can
claim 100000 x 100000 pixels and take tens of GB once decoded; ``check_image_header`` reads only the
header (TIFF page shapes, PNG/JPEG sizes, the NPZ arrays' ``.npy`` headers) and raises
``ImageTooLargeError`` for a plane over the limit.

The limit is per image plane (the two largest dimensions; channel and colour planes are the small
ones), and a whole file may hold at most ``MAX_PLANES`` such planes' worth of values. The limit is an
argument that travels with each call (``formats.read(..., max_pixels=)``, ``scan_dataset``, the batch's
dataset object, which data-loader worker processes receive pickled); None means DEFAULT_MAX_PIXELS.
Nothing is written to the environment, so two calls in one process can use two limits.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

from protloc.errors import DataError, ProtlocError

DEFAULT_MAX_PIXELS = 50_000_000  # a 7071 x 7071 plane; HPA fields are 2048 x 2048 (4.2 M), large scans 20-40 M
MAX_PLANES = 4  # four channels, or an RGBA channel file
RAISE_HINT = "raise the limit with --max-pixels"


class ImageTooLargeError(DataError):
    """An image whose header claims more pixels than the limit (a decompression bomb, or a real giant)."""


class NotAnImageError(DataError):
    """A file whose content is none of the image formats protloc reads."""


def limit_of(max_pixels: int | None) -> int:
    """The limit a call applies: ``max_pixels`` when given (positive, else ProtlocError), else the default."""
    if max_pixels is None:
        return DEFAULT_MAX_PIXELS
    if int(max_pixels) <= 0:
        raise ProtlocError(f"--max-pixels must be positive, got {max_pixels}")
    return int(max_pixels)


def add_max_pixels_argument(parser) -> None:
    """The ``--max-pixels`` option of the CLI commands that read images."""
    parser.add_argument("--max-pixels", type=int, default=None, metavar="N",
                        help=f"largest image plane in pixels; larger images are refused from their header, "
                        f"before decoding (default {DEFAULT_MAX_PIXELS})")


def sniff_kind(path: str | Path) -> str:
    """'tiff', 'png', 'jpeg', 'zip' (NPZ is a zip) or 'unknown', from the file's first bytes."""
    with open(path, "rb") as handle:
        head = handle.read(8)
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:4] == b"PK\x03\x04":
        return "zip"
    return "unknown"


def check_pixels(shape: tuple[int, ...], name: str, limit: int | None = None) -> None:
    """ImageTooLargeError when one plane of ``shape`` (its two largest dimensions) or the whole array
    (more than MAX_PLANES planes' worth) exceeds the limit."""
    limit = limit_of(limit)
    dims = sorted((int(d) for d in shape), reverse=True)
    if len(dims) >= 2 and dims[0] * dims[1] > limit:
        raise ImageTooLargeError(f"{name}: image of {dims[0]}x{dims[1]} pixels exceeds the limit of {limit} "
                                 f"pixels ({RAISE_HINT})")
    total = math.prod(dims) if dims else 0
    if total > MAX_PLANES * limit:
        raise ImageTooLargeError(f"{name}: holds {total} values (shape {'x'.join(map(str, shape))}), more than "
                                 f"{MAX_PLANES} planes at the limit of {limit} pixels ({RAISE_HINT})")


def _check_tiff(path: Path, name: str, limit: int, size: int) -> None:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if not tif.pages:
            raise DataError(f"{name}: TIFF without images")
        for page in tif.pages:
            check_pixels(tuple(page.shape), name, limit)
            # A truncated file: the image data is said to lie beyond the end of the file.
            for offset, count in zip(page.dataoffsets, page.databytecounts):
                if offset + count > size:
                    raise DataError(f"{name}: truncated TIFF (image data ends after the file)")
        # What the readers decode: the first series, all its pages together.
        if tif.series:
            check_pixels(tuple(tif.series[0].shape), name, limit)


def _check_pillow(path: Path, name: str, kind: str, limit: int) -> None:
    # The format's own header parser, not Image.open: Pillow's decompression-bomb guard inside
    # Image.open would answer with its limit instead of ours. Nothing is decoded here.
    from PIL import JpegImagePlugin, PngImagePlugin

    parser = PngImagePlugin.PngImageFile if kind == "png" else JpegImagePlugin.JpegImageFile
    try:
        with parser(str(path)) as image:
            width, height = image.size
            bands = len(image.getbands())
    except Exception as exc:
        raise DataError(f"unreadable {name}: damaged {kind.upper()} ({_one_line(exc)})") from None
    check_pixels((height, width, bands), name, limit)


def _check_npz(path: Path, name: str, limit: int) -> None:
    import numpy as np

    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if info.file_size > 16 * MAX_PLANES * limit:  # float32/64 planes at the limit and more
                raise ImageTooLargeError(f"{name}: array {info.filename} unpacks to {info.file_size} bytes, more "
                                         f"than {MAX_PLANES} planes at the limit of {limit} pixels ({RAISE_HINT})")
            if info.filename.endswith(".npy"):
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shape, _, _ = read_header(member)
                check_pixels(tuple(shape), name, limit)


def check_image_header(path: str | Path, name: str | None = None, limit: int | None = None) -> str:
    """Check a file's header against the pixel limit without decoding it; returns its kind.

    The kind is 'tiff', 'png', 'jpeg' or 'npz'. ImageTooLargeError for an image over the limit,
    NotAnImageError for another kind of file, DataError for a header that cannot be read (damaged,
    truncated TIFF). ``name`` is how messages call the file (default: its name); ``limit`` defaults to
    DEFAULT_MAX_PIXELS.
    """
    path = Path(path)
    name = path.name if name is None else name
    limit = limit_of(limit)
    try:
        kind = sniff_kind(path)
        size = path.stat().st_size
    except OSError as exc:
        raise DataError(f"unreadable {name}: {exc.strerror or type(exc).__name__}") from None
    try:
        if kind == "tiff":
            _check_tiff(path, name, limit, size)
        elif kind in ("png", "jpeg"):
            _check_pillow(path, name, kind, limit)
        elif kind == "zip":
            _check_npz(path, name, limit)
            kind = "npz"
        else:
            raise NotAnImageError(f"unreadable {name}: not an image (expected TIFF, PNG, JPEG or NPZ)")
    except DataError:
        raise
    except Exception as exc:  # header parsers raise many types on damaged data
        what = {"tiff": "TIFF", "zip": "NPZ"}.get(kind, kind.upper())
        raise DataError(f"unreadable {name}: damaged {what} ({type(exc).__name__}: {_one_line(exc)})") from None
    return kind


def allow_pillow_up_to(limit: int) -> None:
    """Pillow refuses images over its own MAX_IMAGE_PIXELS (2 x 89 M by default) when it opens them;
    once our header check passed, lift Pillow's limit to ours, never above it."""
    from PIL import Image

    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < limit:
        Image.MAX_IMAGE_PIXELS = limit


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
