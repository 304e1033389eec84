"""What the client lists and what a worker reads: the one place the distributed runs touch the input layer.

The client lists the samples (``list_entries``; nothing is decoded there), workers decode them. Local
paths must be visible to every worker (a shared filesystem); OME-Zarr stores and HCS plates are listed
from their metadata and each worker reads its own fields lazily from the store; ``PROTOCOL://`` URLs
are listed and read through fsspec (any protocol the user's fsspec has: s3, gcs, http, ...), each worker
caching the files it reads. A path a worker cannot see stops the run with one line naming the worker.
"""

from __future__ import annotations

import os
from pathlib import Path

from protloc.errors import ProtlocError

class WorkerCannotRead(ProtlocError):
    """A worker does not see an input the client listed: no shared filesystem between them."""


def is_url(text: str) -> bool:
    """``PROTOCOL://...`` (s3, gs, http, file, ...): read through fsspec."""
    import re

    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text) is not None


def list_entries(inputs: list[str], input_format: str | None, reader_options: dict | None) -> list:
    """The samples of the command line, in order, as ``protloc.data.formats.SampleEntry`` (local paths
    through ``protloc.data.formats.discover``, the listing ``protloc predict`` uses; URLs through fsspec)."""
    from protloc.data.formats import discover

    local = [raw for raw in inputs if not is_url(str(raw))]
    entries = discover(local, format=input_format, reader_options=reader_options) if local else []
    used = {e.id for e in entries}
    for raw in inputs:
        if is_url(str(raw)):
            for entry in _url_entries(str(raw)):
                while entry.id in used:
                    entry.id += "#2"
                used.add(entry.id)
                entries.append(entry)
    if not entries:
        raise ProtlocError("no images found in the inputs")
    return entries


def _url_entries(url: str) -> list:
    """A URL naming a multichannel file (4-plane TIFF, .npz), a channel file, or a folder of those."""
    import fsspec

    from protloc.data.filenames import is_multichannel_candidate, parse_channel_filename, printable_id
    from protloc.data.formats import SampleEntry

    try:
        fs, path = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:  # an unknown protocol, or one whose package is missing
        raise ProtlocError(f"{url}: fsspec cannot open it ({exc})") from None
    try:
        names = sorted(fs.ls(path, detail=False)) if fs.isdir(path) else [path]
    except (OSError, FileNotFoundError) as exc:
        raise ProtlocError(f"{url}: cannot list it ({exc})") from None
    full = [n if "://" in n else fs.unstrip_protocol(n) for n in names]
    entries, channel_samples = [], {}
    for name in full:
        base = name.rstrip("/").rsplit("/", 1)[-1]
        parsed = parse_channel_filename(base)
        if parsed is not None and parsed.prefix is not None:
            channel_samples.setdefault(printable_id(parsed.prefix), {})[parsed.channel] = name
        elif is_multichannel_candidate(base):
            key = "npz" if base.lower().endswith(".npz") else "multichannel"
            entries.append(SampleEntry(printable_id(base.rsplit(".", 1)[0]), {key: name}, None, 0, 0))
    entries += [SampleEntry(i, sources, None, 0, 0) for i, sources in channel_samples.items()]
    if not entries:
        raise ProtlocError(f"{url}: no channel files (<id>_<blue|red|yellow|green>.<ext>), 4-plane TIFFs or .npz")
    return entries


def file_sources(sources: dict) -> list[str]:
    """The values that are files (the others are reader options such as an OME channel mapping)."""
    from protloc.data.formats.listing import PATH_KEYS

    return [v for k, v in sources.items() if k in PATH_KEYS]


def worker_sources(sources: dict, worker: str) -> dict:
    """The sources as this worker reads them: URLs fetched into the worker's cache (keeping their file
    names, which carry the layout's pixel size), local paths checked to exist here."""
    readable = dict(sources)
    for key, value in sources.items():
        if value not in file_sources(sources):
            continue
        if is_url(value):
            readable[key] = _cached(value)
        elif not os.path.exists(value):
            raise WorkerCannotRead(f"worker {worker} cannot see {value}: the inputs must lie on a filesystem "
                                   "every worker mounts at the same path")
    return readable


def _cached(url: str) -> str:
    import hashlib
    import tempfile

    import fsspec

    cache = Path(tempfile.gettempdir()) / f"protloc-fsspec-{os.getuid() if hasattr(os, 'getuid') else 0}"
    folder = cache / hashlib.sha1(url.rsplit("/", 1)[0].encode()).hexdigest()[:16]  # same names from two folders must not collide
    return fsspec.open_local(f"simplecache::{url}", simplecache={"cache_storage": str(folder), "same_names": True})
