"""Uploaded files received: a request body streamed in chunks, size-limited while streaming, stored under their sha256.

Nothing here trusts an upload. A request body is parsed as it arrives (``stream_multipart``) and each
file part is written to a temporary file in chunks while its sha256 is computed and the request's
byte count checked against the limit, so an oversized upload is cut off after ``limit`` bytes, not
after it has been read into memory. The images' checks and decoding: ``decoding``; zip archives:
``archives``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import AsyncIterator

from protloc.web.errors import UploadError
from protloc.web.storage.store import BlobStore, ReceivedFile


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
