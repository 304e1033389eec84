"""Uploaded files on disk: streamed in chunks, size-limited while streaming, stored under their sha256.

Nothing here trusts an upload. A request body is parsed as it arrives (``stream_multipart``) and each
file part is written to a temporary file in chunks while its sha256 is computed and the request's
byte count checked against the limit, so an oversized upload is cut off after ``limit`` bytes, not
after it has been read into memory. Images are inspected before they are decoded (``inspect_image``):
TIFF page shapes and strip offsets, PNG/JPEG headers and NPZ array headers are checked against the
pixel limit (decompression bombs) and the file size (truncated files). Zip archives: ``archives``.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import AsyncIterator

import numpy as np

from protloc.data.channels import CHANNELS, COLOUR_OF_CHANNEL, HPA_COLOURS, canonical_channel
from protloc.errors import ProtlocError
from protloc.web.store import KIND_SUFFIX, BlobStore, ReceivedFile, UploadStore

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npz")


class UploadError(Exception):
    """Bad input from a client: an HTTP status and one line saying why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class ReceivedForm:
    files: list[ReceivedFile] = field(default_factory=list)
    fields: dict[str, list[str]] = field(default_factory=dict)

    def value(self, name: str, default: str | None = None) -> str | None:
        values = self.fields.get(name)
        return values[-1] if values else default

    def discard(self) -> None:
        for received in self.files:
            received.path.unlink(missing_ok=True)


async def stream_multipart(
    content_type: str | None,
    body: AsyncIterator[bytes],
    store: BlobStore,
    limit_bytes: int,
    max_files: int = 8,
) -> ReceivedForm:
    """Parse a multipart body as it arrives; file parts go to temporary files in ``store``.

    Raises UploadError (413) as soon as more than ``limit_bytes`` of file data have arrived, and
    (400) for a body that is not multipart. On any error every temporary file is removed.
    """
    import asyncio

    from python_multipart.multipart import MultipartParser, parse_options_header

    if not content_type:
        raise UploadError(400, "send the sample as multipart/form-data")
    mime, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if mime != b"multipart/form-data" or not boundary:
        raise UploadError(400, "send the sample as multipart/form-data with a boundary")

    form = ReceivedForm()
    state: dict = {"headers": [], "name": b"", "value": b"", "part": None, "total": 0, "pending": []}

    class Part:
        def __init__(self) -> None:
            self.disposition = b""
            self.field = ""
            self.filename: str | None = None
            self.handle = None
            self.path: Path | None = None
            self.digest = hashlib.sha256()
            self.size = 0
            self.data = bytearray()

    def on_part_begin() -> None:
        state["part"] = Part()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["name"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        if state["name"].lower() == b"content-disposition":
            state["part"].disposition = state["value"]
        state["name"], state["value"] = b"", b""

    def on_headers_finished() -> None:
        part = state["part"]
        _, options = parse_options_header(part.disposition)
        part.field = options.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in options:
            if len(form.files) >= max_files:
                raise UploadError(400, f"too many files in one request (at most {max_files})")
            # Only the base name: a client's folder structure means nothing here.
            raw = options[b"filename"].decode("utf-8", "replace")
            part.filename = PurePosixPath(raw.replace("\\", "/")).name or "upload"
            fd, part.path = store.temp_file()
            part.handle = os.fdopen(fd, "wb")
            form.files.append(ReceivedFile(part.field, part.filename, part.path, "", 0))

    def on_part_data(data: bytes, start: int, end: int) -> None:
        part = state["part"]
        chunk = data[start:end]
        if part.handle is None:
            if len(part.data) + len(chunk) > 64 * 1024:
                raise UploadError(400, f"form field {part.field!r} is too long")
            part.data.extend(chunk)
            return
        state["total"] += len(chunk)
        if state["total"] > limit_bytes:
            raise UploadError(413, f"upload exceeds the limit of {limit_bytes / 2**20:g} MB per sample")
        part.digest.update(chunk)
        part.size += len(chunk)
        state["pending"].append((part.handle, chunk))

    def on_part_end() -> None:
        part = state["part"]
        if part.handle is None:
            form.fields.setdefault(part.field, []).append(part.data.decode("utf-8", "replace"))
        else:
            received = form.files[-1]
            received.sha256 = part.digest.hexdigest()
            received.size = part.size
            state["pending"].append((part.handle, None))  # close after the pending writes

    callbacks = {
        "on_part_begin": on_part_begin, "on_part_data": on_part_data, "on_part_end": on_part_end,
        "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished,
    }

    def flush(pending: list) -> None:
        for handle, chunk in pending:
            if chunk is None:
                handle.close()
            else:
                handle.write(chunk)

    open_handles = []
    try:
        parser = MultipartParser(boundary, callbacks)
        async for chunk in body:
            try:
                parser.write(chunk)
            except UploadError:
                raise
            except Exception as exc:
                raise UploadError(400, f"malformed multipart body: {exc}") from None
            pending, state["pending"] = state["pending"], []
            open_handles.extend(h for h, c in pending if c is not None)
            if pending:
                # Disk writes in a worker thread: the event loop keeps serving other requests.
                await asyncio.to_thread(flush, pending)
        parser.finalize()
        flush(state["pending"])
        state["pending"] = []
    except BaseException:
        for handle in open_handles:
            if not handle.closed:
                handle.close()
        part = state["part"]
        if part is not None and part.handle is not None and not part.handle.closed:
            part.handle.close()
        form.discard()
        raise
    return form


# --------------------------------------------------------------------------------------------------
# image inspection and decoding


def channel_from_filename(filename: str) -> str | None:
    """The channel of a channel file's name, by the readers' own parser (protloc.data.filenames):
    ``..._blue.tif`` or ``..._nucleus.tif`` -> nucleus; anything else (``s1-blue.tif``) -> None."""
    from protloc.data.filenames import parse_channel_filename

    parsed = parse_channel_filename(PurePosixPath(filename).name)
    return parsed.channel if parsed else None


def normalise_channel_name(value: str) -> str | None:
    """A form field's channel name or HPA colour as protloc's channel (the one alias table)."""
    return canonical_channel(value)


def _check_pixels(shape: tuple[int, ...], max_pixels: int, name: str) -> None:
    """The data layer's pixel limit (protloc.data.limits.check_pixels) as a 413."""
    from protloc.data.limits import ImageTooLargeError, check_pixels

    try:
        check_pixels(shape, name, max_pixels)
    except ImageTooLargeError as exc:
        raise UploadError(413, str(exc)) from None


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
        image = read_file(received.path).image
    except Exception as exc:
        raise UploadError(422, f"{name}: {_one_line(exc).replace(received.path.name, name)}") from None
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3 or image.shape[0] != len(CHANNELS):
        raise UploadError(422, f"{name}: expected {len(CHANNELS)} channels, got shape {list(image.shape)}")
    return image


def load_stored_sample(store: BlobStore, input_kind: str, files: list[dict]) -> np.ndarray:
    """A submission's sample, decoded again from its stored files (the worker's view)."""
    from protloc.data.formats import read_file
    from protloc.data.formats.channel_files import read_channel_file

    def path(entry: dict) -> Path:
        return store.path_of(entry["sha256"], KIND_SUFFIX.get(entry["kind"], ""))

    if input_kind == "multichannel":
        return np.asarray(read_file(path(files[0])).image, dtype=np.float32)
    by_channel = {entry["channel"]: entry for entry in files}
    planes = [
        np.asarray(read_channel_file(path(by_channel[c]), colour=COLOUR_OF_CHANNEL[c]), dtype=np.float32)
        for c in CHANNELS
    ]
    return np.stack(planes)


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


# --------------------------------------------------------------------------------------------------
# zip archives


__all__ = [
    "ReceivedForm", "UploadError", "assemble_sample",
    "channel_from_filename", "decode_channel", "decode_multichannel",
    "inspect_image", "load_stored_sample", "normalise_channel_name", "stream_multipart",
]
