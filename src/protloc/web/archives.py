"""Batch archives: a zip checked from its central directory before anything is extracted (escaping
paths, zip bombs), extracted within a byte budget, and its files grouped into samples (HPA-style
channel files sharing an id, or multi-channel files)."""

from __future__ import annotations

import zipfile
from pathlib import Path, PurePosixPath

from protloc.data.channels import CHANNELS
from protloc.web.store import CHUNK_SIZE
from protloc.web.storage import IMAGE_SUFFIXES, UploadError, channel_from_filename


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


def group_samples(files: list[Path], root: Path) -> tuple[list[dict], list[dict]]:
    """Samples in an extracted batch: HPA-style channel files sharing a prefix, or multi-channel files.

    Returns (samples, skipped); a sample is {"name", "kind": "channels"|"multichannel", "files":
    {channel: Path} or {"image": Path}}.
    """
    samples: list[dict] = []
    skipped: list[dict] = []
    groups: dict[str, dict[str, Path]] = {}
    for file in sorted(files):
        relative = file.relative_to(root).as_posix()
        if any(part.startswith(".") or part == "__MACOSX" for part in PurePosixPath(relative).parts):
            continue
        lower = file.name.lower()
        if not lower.endswith(IMAGE_SUFFIXES):
            skipped.append({"name": relative, "reason": "not an image file"})
            continue
        channel = channel_from_filename(file.name)
        if channel is None:
            samples.append({"name": relative, "kind": "multichannel", "files": {"image": file}})
            continue
        # ``blue.png`` without an id: the folder holds one sample and names it
        stem = sample_id_of(file.name)
        folder = PurePosixPath(relative).parent
        key = (folder / stem).as_posix() if stem else (folder.as_posix() if folder.parts else "sample")
        group = groups.setdefault(key, {})
        if channel in group:
            skipped.append({"name": relative, "reason": f"second {channel} file for sample {key}"})
            continue
        group[channel] = file
    for key, group in groups.items():
        missing = [c for c in CHANNELS if c not in group]
        if missing:
            skipped.append({"name": key, "reason": f"missing channel(s): {', '.join(missing)}"})
            continue
        samples.append({"name": key, "kind": "channels", "files": group})
    samples.sort(key=lambda s: s["name"])
    return samples, skipped
