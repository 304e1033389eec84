"""Listing a data folder: which samples it holds, before anything is decoded.

``protloc.data.formats.discover`` (every command, the napari reader, the platform's batches) and
``protloc data scan`` (``list_dataset``, then decoding in index.py) list folders through here, so they
agree on every sample:

- ``<id>_<channel>.<ext>`` channel files side by side, or one folder per sample holding
  ``<channel>.<ext>`` / ``<anything>_<channel>.<ext>`` (names parsed by ``filenames``);
- a folder whose own files are one sample's channels (``blue.png``, ...) is that sample;
- multichannel files (4-plane TIFFs not named as channel files, ``.npz``, OME-TIFFs: id without
  ``.ome.tif``) and OME-Zarr stores (one image, a well or an HCS plate) are samples of their own, in a
  folder exactly as when named one by one;
- label images (``<id>_cellmask.<ext>``, ``<id>_nucleimask.<ext>``) are never inputs;
- two files for one channel, an id given twice, a symlink looping back into the folder: the sample is
  excluded with the reason (the paths involved), never built from a guess;
- ids from file names that are not UTF-8 are written with ``\\xff`` escapes (``filenames.printable_id``).

Labels are matched here too, but only scanning needs them: prediction lists a folder whose labels file
is broken and predicts every sample.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from protloc.data.channels import CHANNELS, COLOUR_OF_CHANNEL
from protloc.data.filenames import (
    IMAGE_EXTENSIONS,
    is_label_image_name,
    is_multichannel_candidate,
    parse_channel_filename,
    printable_id,
)
from protloc.data.formats import ome_tiff, ome_zarr
from protloc.data.labelfile import find_labels_file, read_labels_file
from protloc.errors import ProtlocError, printable
from protloc.labels import LabelSet, load_label_set

FORMATS: tuple[str, ...] = ("channels", "npz", "kaggle-hpa")
# Keys of a sample's sources that name one file or store holding the whole sample (the others name
# channel files, or are reader options such as ``channels`` and ``ome-zarr-image``).
WHOLE_SAMPLE_KEYS: tuple[str, ...] = ("npz", "multichannel", ome_tiff.KEY, ome_zarr.KEY)
PATH_KEYS: frozenset[str] = frozenset(WHOLE_SAMPLE_KEYS + CHANNELS)


def is_whole_sample(sources: dict) -> bool:
    return any(key in sources for key in WHOLE_SAMPLE_KEYS)


@dataclass
class SampleEntry:
    id: str
    sources: dict[str, str]  # channel -> file, or {'npz'|'multichannel'|'ome-tiff'|'ome-zarr': path, options}
    labels: tuple[int, ...] | None  # class indices in the index's label set; None = unlabeled
    height: int
    width: int
    problem: str | None = None  # why the listing already knows this sample cannot be used (not saved)

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "sources": dict(self.sources),
            "labels": None if self.labels is None else list(self.labels),
            "height": self.height,
            "width": self.width,
        }

    @classmethod
    def from_json(cls, data: dict) -> SampleEntry:
        labels = data.get("labels")
        return cls(
            id=str(data["id"]),
            sources={str(k): str(v) for k, v in data["sources"].items()},
            labels=None if labels is None else tuple(int(i) for i in labels),
            height=int(data["height"]),
            width=int(data["width"]),
        )


# ----------------------------------------------------------------------------------------------------
# Listing a folder


@dataclass
class _Listing:
    """What listing a folder found, before any file is decoded."""

    root: Path
    sources: dict[str, dict[str, str]] = field(default_factory=dict)  # id -> sources (relative to root)
    problems: dict[str, str] = field(default_factory=dict)  # id -> reason found while listing
    options: dict[str, str] = field(default_factory=dict)  # OME reader options (--channels, ...)

    def rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def add_channel(self, sample_id: str, channel: str, path: Path) -> None:
        sample_id = printable_id(sample_id)
        sources = self.sources.setdefault(sample_id, {})
        rel = self.rel(path)
        if is_whole_sample(sources):
            self.problems.setdefault(sample_id, printable(
                f"id {sample_id!r} names both a multichannel file and channel files: "
                f"{next(iter(sources.values()))}, {rel}"))
        elif channel in sources and sources[channel] != rel:
            self.problems.setdefault(sample_id, printable(
                f"two files for the {COLOUR_OF_CHANNEL[channel]} channel: {sources[channel]}, {rel}"))
        else:
            sources[channel] = rel

    def add_multichannel(self, prefix: str, path: Path) -> None:
        """A file holding a whole sample, id ``prefix`` + its stem (an OME-TIFF's id drops ``.ome``)."""
        if path.suffix.lower() == ".npz":
            key, stem, extra = "npz", path.stem, {}
        elif ome_tiff.read_by_names(path):
            key, stem, extra = ome_tiff.KEY, ome_tiff.sample_id(path), self.options
        else:
            key, stem, extra = "multichannel", path.stem, {}
        self.add_whole(prefix + stem, {key: self.rel(path), **extra})

    def add_whole(self, sample_id: str, sources: dict[str, str]) -> None:
        sample_id = printable_id(sample_id)
        if sample_id in self.sources:
            other = ", ".join(sorted(v for k, v in self.sources[sample_id].items() if k in PATH_KEYS))
            self.problems.setdefault(sample_id, printable(
                f"id {sample_id!r} is given twice: {other}, {next(iter(sources.values()))}"))
            return
        self.sources[sample_id] = sources

    def add_zarr(self, path: Path, prefix: str = "") -> None:
        """An OME-Zarr store's samples (one image, a well, a plate's fields); a store protloc cannot
        read is listed as a problem under its name, not a reason to stop listing the folder."""
        try:
            found = ome_zarr.list_samples(path, self.options)
        except ProtlocError as exc:
            sample_id = printable_id(prefix + ome_zarr.store_name(path))
            self.sources.setdefault(sample_id, {})
            self.problems.setdefault(sample_id, str(exc))
            return
        for sample_id, sources in found:
            self.add_whole(prefix + sample_id, {**sources, ome_zarr.KEY: self.rel(path)})


def _entries(folder: Path) -> tuple[list[Path], list[Path]]:
    """(files, folders) in a folder, sorted, hidden names left out; a broken symlink counts as a file
    (reading it then says which file is missing)."""
    try:
        children = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError as exc:
        raise ProtlocError(f"cannot list {folder}: {exc.strerror or exc}") from None
    files, folders = [], []
    for child in children:
        try:
            (folders if child.is_dir() else files).append(child)
        except OSError:  # a symlink loop (a -> a) or a name the OS cannot stat
            files.append(child)
    return files, folders


def _image_names(files: list[Path]) -> list[Path]:
    return [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS + (".npz",) and not is_label_image_name(p.name)]


def _list_root_files(listing: _Listing, files: list[Path]) -> None:
    """The data folder's own files: channel files by prefix (bare ``blue.png`` ones make the folder
    itself a sample), multichannel files by their stem."""
    for path in _image_names(files):
        parsed = parse_channel_filename(path.name)
        if parsed is not None:
            prefix = parsed.prefix if parsed.prefix is not None else listing.root.name
            listing.add_channel(prefix, parsed.channel, path)
        elif is_multichannel_candidate(path.name):
            listing.add_multichannel("", path)


def _loops_back(folder: Path, root: Path) -> bool:
    """A folder (through a symlink) that is the root itself or one of its parents: listing it would
    list the data set again under another name."""
    try:
        target = folder.resolve(strict=True)
    except (OSError, RuntimeError):
        return True
    return target == root or target in root.parents


def _list_channels(root: Path, options: dict[str, str]) -> _Listing:
    listing = _Listing(root, options=options)
    files, folders = _entries(root)
    _list_root_files(listing, files)
    zarr_stores = [folder for folder in folders if ome_zarr.is_zarr_group(folder)]
    for store in zarr_stores:
        listing.add_zarr(store)
    top_level_ids = set(listing.sources)
    for folder in folders:
        if folder in zarr_stores:
            continue
        sample_id = printable_id(folder.name)
        if folder.is_symlink() and _loops_back(folder, root):
            listing.problems[sample_id] = printable(
                f"{folder.name} -> {os.readlink(folder)} is a symlink back into the data folder; not a sample")
            listing.sources.setdefault(sample_id, {})
            continue
        try:
            inner, _ = _entries(folder)
        except ProtlocError as exc:
            listing.problems[sample_id] = str(exc)
            listing.sources.setdefault(sample_id, {})
            continue
        sub = _Listing(root, options=options)
        for path in _image_names(inner):
            parsed = parse_channel_filename(path.name)
            if parsed is not None:
                sub.add_channel(folder.name, parsed.channel, path)
            elif is_multichannel_candidate(path.name):
                sub.add_multichannel(f"{folder.name}/", path)
        for found_id, sources in sub.sources.items():
            if found_id in top_level_ids:
                listing.problems.setdefault(found_id, f"id {found_id!r} has both a folder and files beside it")
            listing.sources.setdefault(found_id, {}).update(sources)
        for found_id, reason in sub.problems.items():
            listing.problems.setdefault(found_id, reason)
    return listing


def _list_npz(root: Path, options: dict[str, str]) -> _Listing:
    listing = _Listing(root, options=options)
    files, _ = _entries(root)
    for path in files:
        if path.suffix.lower() == ".npz":
            listing.add_multichannel("", path)
    return listing


def _list_kaggle(root: Path, options: dict[str, str]) -> _Listing:
    listing = _Listing(root, options=options)
    # Kaggle ships train.csv beside a train/ folder of images.
    for folder in (root, root / "train", root / "test"):
        if folder.is_dir() and not (folder != root and folder.is_symlink() and _loops_back(folder, root)):
            files, _ = _entries(folder)
            for path in _image_names(files):
                parsed = parse_channel_filename(path.name)
                if parsed is not None and parsed.prefix is not None:
                    listing.add_channel(parsed.prefix, parsed.channel, path)
    return listing


def detect_format(root: str | Path) -> str:
    """'kaggle-hpa' when a train.csv with an Id,Target header is present, 'npz' when *.npz files are
    and no channel files, else 'channels'."""
    import csv

    root = Path(root)
    train = root / "train.csv"
    if train.is_file():
        try:
            with train.open(newline="") as handle:
                header = next(csv.reader(handle), [])
        except (OSError, UnicodeDecodeError, csv.Error):
            header = []
        if [h.strip().lower() for h in header[:2]] == ["id", "target"]:
            return "kaggle-hpa"
    files, _ = _entries(root)
    if any(p.suffix.lower() == ".npz" for p in files) and not any(parse_channel_filename(p.name) for p in files):
        return "npz"
    return "channels"


@dataclass
class DatasetListing:
    """A data folder listed and matched with its labels, before any image is decoded."""

    root: Path
    format: str
    label_set: LabelSet
    sources: dict[str, dict[str, str]]  # id -> sources relative to root
    labels: dict[str, tuple[int, ...]] | None  # None when the data set has no (readable) labels file
    labels_path: Path | None
    problems: dict[str, str]  # id -> why its images cannot be used, found without decoding
    label_problems: dict[str, str]  # id -> why its labels cannot be used (matters for training, not prediction)
    orphan_label_ids: list[str]  # label rows for ids without image files
    labels_error: str | None = None  # the labels file could not be read (only when need_labels is False)


_EXPECTED = {
    "channels": "channel files named <id>_<blue|red|yellow|green>.<tif|png|jpg>, sample folders or 4-plane TIFFs",
    "npz": "<key>.npz files",
    "kaggle-hpa": "<Id>_<colour>.png|tif files",
}


def list_dataset(root, format: str | None = None, labels=None, label_set=None,
                 need_labels: bool = True, options: dict[str, str] | None = None) -> DatasetListing:
    """List a data folder and match it with its labels without decoding any image.

    ``need_labels`` False (prediction): a labels file that cannot be read is reported in
    ``labels_error`` instead of raising, and the samples are listed all the same.
    """
    root_path = Path(root).expanduser()
    if not root_path.exists():
        raise ProtlocError(f"no such folder: {root}")
    if not root_path.is_dir():
        raise ProtlocError(f"not a folder: {root}")
    root_path = root_path.resolve()
    if format is None:
        format = detect_format(root_path)
    if format not in FORMATS:
        raise ProtlocError(f"unknown data format {format!r}: use one of {', '.join(FORMATS)}")
    if label_set is None:
        label_set = "kaggle28" if format == "kaggle-hpa" else "hpa13"
    labelset = load_label_set(label_set)

    listing = {"channels": _list_channels, "npz": _list_npz, "kaggle-hpa": _list_kaggle}[format](
        root_path, dict(options or {}))

    labels_path = Path(labels).expanduser() if labels is not None else find_labels_file(root_path, format)
    if labels is not None and not labels_path.is_file():
        raise ProtlocError(f"no such labels file: {labels}")
    label_map: dict[str, tuple[int, ...]] | None = None
    label_problems: dict[str, str] = {}
    labels_error = None
    if labels_path is not None:
        try:
            label_map, label_problems = read_labels_file(labels_path, format, labelset)
        except ProtlocError as exc:
            if need_labels:
                raise
            labels_error = str(exc)

    if not listing.sources:
        raise ProtlocError(f"no samples in {root} (format {format}: expected {_EXPECTED[format]})")

    problems: dict[str, str] = {}
    for sample_id in sorted(listing.sources):
        sources = listing.sources[sample_id]
        if sample_id in listing.problems:
            problems[sample_id] = listing.problems[sample_id]
        elif not is_whole_sample(sources) and len(sources) < len(CHANNELS):
            missing = [c for c in CHANNELS if c not in sources]
            problems[sample_id] = "missing channel " + ", ".join(f"{COLOUR_OF_CHANNEL[c]} ({c})" for c in missing)
    unlabelled: dict[str, str] = {}
    for sample_id in sorted(listing.sources):
        if sample_id in label_problems:
            unlabelled[sample_id] = label_problems[sample_id]
        elif label_map is not None and sample_id not in label_map:
            unlabelled[sample_id] = f"unlabeled: no row for this id in {labels_path.name}"
    orphans = []
    if label_map is not None:
        orphans = sorted((set(label_map) | set(label_problems)) - set(listing.sources))
    return DatasetListing(root_path, format, labelset, listing.sources, label_map, labels_path, problems,
                          unlabelled, orphans, labels_error)


def named_channel_sample(path: Path) -> tuple[str, dict[str, str], str | None]:
    """A channel file named on its own: the sample it belongs to, with its sibling channel files."""
    parsed = parse_channel_filename(path.name)
    folder = path.parent
    listing = _Listing(folder)
    files, _ = _entries(folder)
    for sibling in _image_names(files):
        other = parse_channel_filename(sibling.name)
        if other is not None and other.prefix == parsed.prefix:
            listing.add_channel(other.prefix if other.prefix is not None else folder.name, other.channel, sibling)
    sample_id = printable_id(parsed.prefix if parsed.prefix is not None else folder.name)
    sources = {k: str(folder / v) for k, v in listing.sources.get(sample_id, {}).items()}
    return sample_id, sources, listing.problems.get(sample_id)
