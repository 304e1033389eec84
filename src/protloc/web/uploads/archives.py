"""Batch archives: a zip checked from its central directory before anything is extracted (escaping
paths, zip bombs), extracted within a byte budget, and its files grouped into samples (HPA-style
channel files sharing an id, or multi-channel files)."""

from __future__ import annotations

import zipfile
from pathlib import Path, PurePosixPath

from protloc.data.channels import CHANNELS
from protloc.web.storage.store import CHUNK_SIZE
from protloc.web.errors import UploadError


# Below this many bytes a zip may unpack to anything (within the total limit): a few blank test
# images compress a thousandfold and are no threat; above it the expansion ratio is bounded too.
ZIP_RATIO_FREE_BYTES = 16 << 20


def zip_budget(path: Path, max_total_bytes: int, max_ratio: float) -> int:
    """The most bytes a zip of this size may unpack to: the total limit, and the expansion ratio."""
    return min(max_total_bytes, max(ZIP_RATIO_FREE_BYTES, int(path.stat().st_size * max_ratio)))


def check_zip(path: Path, max_total_bytes: int, max_ratio: float = 100.0, max_members: int = 100_000) -> list[zipfile.ZipInfo]:
    """The members of a zip that is safe to extract; UploadError for escaping paths or a zip bomb.

    Decided from the central directory alone, before anything is extracted: the declared sizes must
    stay within the total limit and within ``max_ratio`` times the archive's own size.
    """
    from protloc.data.limits import sniff_kind

    if sniff_kind(path) != "zip":
        raise UploadError(415, "batch upload must be a zip archive")
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except zipfile.BadZipFile as exc:
        raise UploadError(422, f"damaged zip archive ({exc})") from None
    if len(members) > max_members:
        raise UploadError(413, f"zip has {len(members)} members (at most {max_members})")
    budget = zip_budget(path, max_total_bytes, max_ratio)
    total = 0
    for info in members:
        name = info.filename.replace("\\", "/")
        pure = PurePosixPath(name)
        if pure.is_absolute() or ".." in pure.parts or (len(name) > 1 and name[1] == ":"):
            raise UploadError(400, f"zip member {info.filename!r} escapes the archive's folder")
        if (info.external_attr >> 16) & 0o170000 == 0o120000:
            raise UploadError(400, f"zip member {info.filename!r} is a symbolic link")
        total += info.file_size
    if total > max_total_bytes:
        raise UploadError(413, f"zip unpacks to more than {max_total_bytes / 2**20:g} MB")
    if total > budget:
        raise UploadError(413, f"zip bomb refused: {path.stat().st_size / 2**20:.2f} MB would unpack to "
                               f"{total / 2**20:.0f} MB ({total / max(1, path.stat().st_size):.0f}:1; at most {max_ratio:g}:1)")
    return members


def extract_zip(path: Path, dest: Path, max_total_bytes: int, max_ratio: float = 100.0) -> list[Path]:
    """Extract a checked zip under ``dest``; every file provably inside it, sizes enforced on the fly."""
    members = check_zip(path, max_total_bytes, max_ratio)
    max_total_bytes = zip_budget(path, max_total_bytes, max_ratio)
    dest = dest.resolve()
    written = 0
    files = []
    with zipfile.ZipFile(path) as archive:
        for info in members:
            if info.is_dir():
                continue
            target = (dest / info.filename.replace("\\", "/")).resolve()
            if not target.is_relative_to(dest):
                raise UploadError(400, f"zip member {info.filename!r} escapes the archive's folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as src, open(target, "wb") as out:
                while chunk := src.read(CHUNK_SIZE):
                    written += len(chunk)
                    if written > max_total_bytes:  # declared sizes can lie
                        raise UploadError(413, f"zip unpacks to more than {max_total_bytes / 2**20:g} MB")
                    out.write(chunk)
            files.append(target)
    return files


def sample_id_of(filename: str) -> str | None:
    """The sample id of a channel file ``<id>_<colour>.<ext>`` by the readers' parser, else None."""
    from protloc.data.filenames import parse_channel_filename

    parsed = parse_channel_filename(PurePosixPath(filename).name)
    return parsed.prefix if parsed else None


def shared_sample_id(filenames: list[str]) -> str | None:
    """The sample id four channel files share (HPA's and Kaggle's names), the one ``group_samples``
    groups a batch by; None when the names do not share one."""
    ids = {sample_id_of(filename) for filename in filenames}
    return ids.pop() if len(ids) == 1 and None not in ids else None


def _zarr_store_of(path: Path, root: Path) -> Path | None:
    from protloc.data.formats.ome_zarr import is_zarr_group

    stores = [parent for parent in path.parents if root in parent.parents and is_zarr_group(parent)]
    return stores[-1] if stores else None  # the outermost group: the store itself, not its arrays


def group_samples(files: list[Path], root: Path) -> tuple[list[dict], list[dict]]:
    """Samples in an extracted batch, listed by the input layer (``protloc.data.formats.discover``)
    folder by folder, so a zip holds the samples the command line finds in the same files.

    Returns (samples, skipped); a sample is {"name", "kind": "channels"|"multichannel", "files":
    {channel: Path} or {"image": Path}}; its name is its folder and its id (``plate1/a``), the folder
    alone for bare ``blue.png`` files.
    """
    from protloc.data.filenames import IMAGE_EXTENSIONS, is_label_image_name, parse_channel_filename
    from protloc.data.formats import discover
    from protloc.data.formats.listing import PATH_KEYS
    from protloc.errors import ProtlocError

    samples: list[dict] = []
    skipped: list[dict] = []
    folders: dict[Path, list[Path]] = {}
    stores: set[Path] = set()
    for file in sorted(files):
        relative = file.relative_to(root).as_posix()
        if any(part.startswith(".") or part == "__MACOSX" for part in PurePosixPath(relative).parts):
            continue
        store = _zarr_store_of(file, root)
        if store is not None:
            if store not in stores:
                stores.add(store)
                skipped.append({"name": store.relative_to(root).as_posix(), "reason": "an OME-Zarr store: the "
                                "platform takes files; send the image as OME-TIFF, or run protloc predict on it"})
            continue
        if not file.name.lower().endswith(IMAGE_EXTENSIONS + (".npz",)):
            skipped.append({"name": relative, "reason": "not an image file"})
            continue
        if not is_label_image_name(file.name):
            folders.setdefault(file.parent, []).append(file)
    for folder, images in folders.items():
        prefix = folder.relative_to(root)
        entries = []
        channel_files = [f for f in images if parse_channel_filename(f.name) is not None]
        # channel files together (they make samples with their siblings), every other file on its own
        for group in ([channel_files] if channel_files else []) + [[f] for f in images if f not in channel_files]:
            try:
                entries += discover(group)
            except ProtlocError as exc:  # a file that is none of the formats, an OME-TIFF without usable channels
                skipped.append({"name": group[0].relative_to(root).as_posix(), "reason": str(exc)})
        for entry in entries:
            bare = entry.id == folder.name and all(sample_id_of(Path(v).name) is None
                                                   for k, v in entry.sources.items() if k in CHANNELS)
            name = (prefix if bare else prefix / entry.id).as_posix()
            name = "sample" if name == "." else name
            if entry.problem is not None:
                skipped.append({"name": name, "reason": entry.problem})
            elif set(entry.sources) <= set(CHANNELS):
                samples.append({"name": name, "kind": "channels",
                                "files": {c: Path(entry.sources[c]) for c in CHANNELS}})
            else:
                path = next(v for k, v in entry.sources.items() if k in PATH_KEYS)
                samples.append({"name": name, "kind": "multichannel", "files": {"image": Path(path)}})
    samples.sort(key=lambda s: s["name"])
    return samples, skipped
