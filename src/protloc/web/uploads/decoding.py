"""Uploaded images checked and decoded: headers before pixels, then the data layer's readers.

Images are inspected before they are decoded (``inspect_image``): TIFF page shapes and strip offsets,
PNG/JPEG headers and NPZ array headers are checked against the pixel limit (decompression bombs) and
the file size (truncated files). A decoder's failure is answered in one line (``UploadError`` 422).
Receiving the bytes: ``receiving``; a stored submission read back: ``samples``.
"""

from __future__ import annotations

import struct
from pathlib import Path, PurePosixPath

import numpy as np

from protloc.data.channels import CHANNELS, COLOUR_OF_CHANNEL, canonical_channel
from protloc.errors import ProtlocError
from protloc.web.errors import UploadError
from protloc.web.storage.store import ReceivedFile

def channel_from_filename(filename: str) -> str | None:
    """The channel of a channel file's name, by the readers' own parser (protloc.data.filenames):
    ``..._blue.tif`` or ``..._nucleus.tif`` -> nucleus; anything else (``s1-blue.tif``) -> None."""
    from protloc.data.filenames import parse_channel_filename

    parsed = parse_channel_filename(PurePosixPath(filename).name)
    return parsed.channel if parsed else None


def normalise_channel_name(value: str) -> str | None:
    """A form field's channel name or HPA colour as protloc's channel (the one alias table)."""
    return canonical_channel(value)


def inspect_image(path: Path, name: str, max_pixels: int) -> str:
    """Check an upload's headers before decoding anything; returns its kind (tiff/png/jpeg/npz).

    The data layer's header check (protloc.data.limits.check_image_header, the one the CLI applies):
    413 over the pixel limit, 415 not an image, 422 a damaged or truncated header.
    """
    from protloc.data.limits import ImageTooLargeError, NotAnImageError, check_image_header
    from protloc.errors import DataError

    try:
        return check_image_header(path, name=name, limit=max_pixels)
    except ImageTooLargeError as exc:
        raise UploadError(413, str(exc)) from None
    except NotAnImageError as exc:
        raise UploadError(415, str(exc)) from None
    except DataError as exc:
        raise UploadError(422, str(exc)) from None


def decode_channel(received: ReceivedFile, channel: str, max_pixels: int) -> np.ndarray:
    """One channel file as a 2-D float32 array, after the header checks."""
    from protloc.data.formats.channel_files import read_channel_file

    name = received.filename
    received.kind = inspect_image(received.path, name, max_pixels)
    received.take_suffix()
    try:
        # The colour picks the RGB plane(s) of an HPA colour-encoded file.
        plane = read_channel_file(received.path, colour=COLOUR_OF_CHANNEL[channel])
    except UploadError:
        raise
    except Exception as exc:  # DataError or a decoder's own error on damaged data
        reason = _one_line(exc).replace(received.path.name, name)
        raise UploadError(422, f"{name}: cannot decode image ({reason})") from None
    plane = np.asarray(plane)
    if plane.ndim != 2:
        raise UploadError(422, f"{name}: expected a single-channel image, got shape {list(plane.shape)}")
    return plane.astype(np.float32, copy=False)


def decode_multichannel(received: ReceivedFile, max_pixels: int) -> np.ndarray:
    """One multi-channel TIFF/NPZ as float32 [4, H, W], after the header checks."""
    from protloc.data.formats import read_file

    name = received.filename
    received.kind = inspect_image(received.path, name, max_pixels)
    if received.kind not in ("tiff", "npz"):
        raise UploadError(422, f"{name}: a single file must be a four-channel TIFF or NPZ, or send four channel files")
    received.take_suffix()
    try:
        image = read_file(received.path, max_pixels).image
    except Exception as exc:
        raise UploadError(422, f"{name}: {_one_line(exc).replace(received.path.name, name)}") from None
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3 or image.shape[0] != len(CHANNELS):
        raise UploadError(422, f"{name}: expected {len(CHANNELS)} channels, got shape {list(image.shape)}")
    return image


# A decoder's own bug-like failure (tifffile's IndexError on a damaged file, ...) means nothing to a
# user: the answer says what protloc knows, in its own words.
_DECODER_INTERNALS = (IndexError, KeyError, TypeError, AttributeError, AssertionError, ZeroDivisionError,
                      RecursionError, struct.error)


def _one_line(exc: BaseException) -> str:
    cause = exc.__context__ if isinstance(exc, ProtlocError) else exc
    if isinstance(exc, _DECODER_INTERNALS) or isinstance(cause, _DECODER_INTERNALS):
        return "damaged or unsupported image data"
    text = str(exc).strip()
    return text.splitlines()[0] if text else "damaged or unsupported image data"


def assemble_sample(planes: dict[str, np.ndarray], names: dict[str, str]) -> np.ndarray:
    """Four decoded channel planes as float32 [4, H, W]; 422 when their sizes differ."""
    shapes = {channel: planes[channel].shape for channel in CHANNELS}
    if len(set(shapes.values())) != 1:
        described = ", ".join(f"{names[c]} {shapes[c][0]}x{shapes[c][1]}" for c in CHANNELS)
        raise UploadError(422, f"channels differ in size: {described}")
    return np.stack([planes[channel] for channel in CHANNELS]).astype(np.float32, copy=False)

