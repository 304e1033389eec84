"""The scanned index of a data set: which samples are usable, where their files are, their labels.

``scan_dataset`` lists a data folder in one of the three formats, decodes every file of every sample
(the only way to find a truncated file) and keeps the samples that read; every other one is listed in
``excluded`` with its reason. The index is saved as JSON under ``<root>/.protloc/index.json`` so that
later steps (training, evaluation) use exactly the same samples.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from protloc.data.channels import CHANNELS, COLOUR_OF_CHANNEL, HPA_COLOURS
from protloc.data.readers import (
    CHANNEL_FILE_RE,
    FOLDER_CHANNEL_FILE_RE,
    check_sample,
    read_sample,
)
from protloc.errors import DataError, ProtlocError
from protloc.labels import LabelSet, load_label_set

FORMATS: tuple[str, ...] = ("channels", "npz", "kaggle-hpa")
INDEX_DIRNAME = ".protloc"
INDEX_VERSION = 1


def default_index_path(root: str | Path) -> Path:
    """Where ``protloc data scan ROOT`` saves the index: ROOT/.protloc/index.json."""
    return Path(root) / INDEX_DIRNAME / "index.json"


def default_splits_path(root: str | Path) -> Path:
    """Where ``protloc data scan ROOT`` saves the splits: ROOT/.protloc/splits.json."""
    return Path(root) / INDEX_DIRNAME / "splits.json"


def folder_is_writable(path: str | Path) -> bool:
    """Whether files may be created at ``path`` (its nearest existing ancestor is checked).

    A folder whose permission bits allow nobody to write counts as read-only even for a user who could
    override them (root): shared, read-only data folders must stay untouched.
    """
    path = Path(path).expanduser().absolute()
    while not path.exists():
        if path.parent == path:
            return False
        path = path.parent
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return path.is_dir() and bool(mode & 0o222) and os.access(path, os.W_OK)


@dataclass
class SampleEntry:
    id: str
    sources: dict[str, str]  # channel name -> file, or {'npz': file}; relative to the index root or absolute
    labels: tuple[int, ...] | None  # class indices in the index's label set; None = unlabeled
    height: int
    width: int

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


@dataclass
class DatasetIndex:
    root: str
    format: str
    label_set: LabelSet
    samples: list[SampleEntry]
    excluded: list[dict] = field(default_factory=list)  # {"id": ..., "reason": ...}

    def __post_init__(self) -> None:
        self._by_id = {entry.id: entry for entry in self.samples}

    def __len__(self) -> int:
        return len(self.samples)

    def ids(self) -> list[str]:
        return [entry.id for entry in self.samples]

    def entry(self, sample_id: str | SampleEntry) -> SampleEntry:
        if isinstance(sample_id, SampleEntry):
            return sample_id
        if len(self._by_id) != len(self.samples):  # samples list was changed after construction
            self._by_id = {entry.id: entry for entry in self.samples}
        try:
            return self._by_id[sample_id]
        except KeyError:
            raise ProtlocError(f"no sample {sample_id!r} in the index of {self.root}") from None

    def resolve(self, source: str) -> Path:
        """A source path as stored in the index, made usable (relative paths are relative to root)."""
        path = Path(source)
        return path if path.is_absolute() else Path(self.root) / path

    def load_image(self, entry_or_id: str | SampleEntry) -> np.ndarray:
        """The sample's raw image, float32 [4, H, W] in CHANNELS order. DataError if it cannot be read."""
        entry = self.entry(entry_or_id)
        sources = {key: str(self.resolve(value)) for key, value in entry.sources.items()}
        return read_sample(sources, self.format)

    def label_vector(self, entry_or_id: str | SampleEntry) -> np.ndarray:
        """Binary float32 vector over the label set's classes; ProtlocError if the sample is unlabeled."""
        entry = self.entry(entry_or_id)
        if entry.labels is None:
            raise ProtlocError(f"sample {entry.id!r} has no labels")
        return self.label_set.vector(entry.labels)

    def labelled(self) -> bool:
        return any(entry.labels is not None for entry in self.samples)

    def summary(self) -> dict:
        """The ``protloc data scan --json`` dict."""
        shapes = Counter(f"{entry.height}x{entry.width}" for entry in self.samples)
        counts = Counter()
        labelled = [entry for entry in self.samples if entry.labels is not None]
        for entry in labelled:
            counts.update(entry.labels)
        multi = sum(1 for entry in labelled if len(entry.labels) > 1)
        return {
            "valid": len(self.samples),
            "excluded": [dict(item) for item in self.excluded],
            "shapes": dict(sorted(shapes.items(), key=lambda kv: (-kv[1], kv[0]))),
            "class_counts": {name: int(counts.get(i, 0)) for i, name in enumerate(self.label_set.classes)}
            if labelled
            else {},
            "multi_label_fraction": round(multi / len(labelled), 6) if labelled else 0.0,
        }

    def to_json(self) -> dict:
        return {
            "protloc_index": INDEX_VERSION,
            "root": str(self.root),
            "format": self.format,
            "label_set": self.label_set.to_json(),
            "samples": [entry.to_json() for entry in self.samples],
            "excluded": [dict(item) for item in self.excluded],
        }

    def save(self, path: str | Path) -> None:
        """Write the index as JSON (atomically: a reader never sees half a file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = self.to_json()
        # Also remember the root relative to the index file, so a data folder moved together with its
        # .protloc/ keeps working.
        data["root_relative_to_index"] = os.path.relpath(Path(self.root).resolve(), path.parent.resolve())
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> DatasetIndex:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            if data.get("protloc_index") is None:
                raise ValueError("not a protloc index")
            root = Path(data["root"])
            relative = data.get("root_relative_to_index")
            if not root.is_dir() and relative is not None:
                root = (path.parent / relative).resolve()
            label_set = LabelSet(name=data["label_set"]["name"], classes=tuple(data["label_set"]["classes"]))
            samples = [SampleEntry.from_json(item) for item in data["samples"]]
            excluded = [dict(item) for item in data.get("excluded", [])]
            return cls(root=str(root), format=str(data["format"]), label_set=label_set, samples=samples,
                       excluded=excluded)
        except FileNotFoundError:
            raise ProtlocError(f"no index file {path}") from None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ProtlocError(f"{path} is not a protloc index ({exc})") from None


# ----------------------------------------------------------------------------------------------------
# Listing the three formats


@dataclass
class _Listing:
    """What listing a folder found, before any file is decoded."""

    sources: dict[str, dict[str, str]] = field(default_factory=dict)  # id -> sources (relative to root)
    problems: dict[str, str] = field(default_factory=dict)  # id -> reason found while listing


def _image_files(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    except OSError as exc:
        raise ProtlocError(f"cannot list {folder}: {exc.strerror or exc}") from None


def _add_channel(listing: _Listing, sample_id: str, channel: str, rel: str) -> None:
    sources = listing.sources.setdefault(sample_id, {})
    if channel in sources and sources[channel] != rel:
        listing.problems.setdefault(
            sample_id, f"two files for the {COLOUR_OF_CHANNEL[channel]} channel: {sources[channel]}, {rel}"
        )
    else:
        sources[channel] = rel


def _list_channel_files(root: Path, folder: Path, listing: _Listing) -> None:
    for path in _image_files(folder):
        match = CHANNEL_FILE_RE.match(path.name)
        if match:
            _add_channel(listing, match.group("id"), HPA_COLOURS[match.group("colour").lower()],
                         path.relative_to(root).as_posix())


def _list_channels(root: Path) -> _Listing:
    listing = _Listing()
    _list_channel_files(root, root, listing)
    flat_ids = set(listing.sources)
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        sample_id = folder.name
        found = False
        for path in _image_files(folder):
            match = FOLDER_CHANNEL_FILE_RE.match(path.name)
            if not match:
                continue
            if not found and sample_id in flat_ids:
                listing.problems.setdefault(sample_id, f"id {sample_id!r} has both a folder and files beside it")
            found = True
            _add_channel(listing, sample_id, HPA_COLOURS[match.group("colour").lower()],
                         path.relative_to(root).as_posix())
    return listing


def _list_npz(root: Path) -> _Listing:
    listing = _Listing()
    for path in _image_files(root):
        if path.suffix.lower() == ".npz":
            listing.sources[path.stem] = {"npz": path.name}
    return listing


def _list_kaggle(root: Path) -> _Listing:
    listing = _Listing()
    _list_channel_files(root, root, listing)
    # Kaggle ships train.csv beside a train/ folder of images.
    for sub in ("train", "test"):
        if (root / sub).is_dir():
            _list_channel_files(root, root / sub, listing)
    return listing


def detect_format(root: str | Path) -> str:
    """'kaggle-hpa' when a train.csv with an Id,Target header is present, 'npz' when *.npz files are,
    else 'channels'."""
    root = Path(root)
    train = root / "train.csv"
    if train.is_file():
        try:
            with train.open(newline="") as handle:
                header = next(csv.reader(handle), [])
        except (OSError, UnicodeDecodeError):
            header = []
        if [h.strip().lower() for h in header[:2]] == ["id", "target"]:
            return "kaggle-hpa"
    if any(p.suffix.lower() == ".npz" for p in root.iterdir() if p.is_file()):
        return "npz"
    return "channels"


# ----------------------------------------------------------------------------------------------------
# Labels files

_HEADER_IDS = {"id", "sample", "sample_id", "key", "image", "name"}


def find_labels_file(root: Path, format: str) -> Path | None:
    """The labels file a data folder carries by convention, or None."""
    if format == "kaggle-hpa":
        candidates = [root / "train.csv"]
    elif format == "npz":
        candidates = [root / "labels.txt", root / "labels.csv"]
        others = sorted(p for p in root.glob("*.txt") if p.is_file())
        if len(others) == 1:
            candidates.append(others[0])
    else:
        candidates = [root / "labels.csv", root / "labels.txt"]
    return next((p for p in candidates if p.is_file()), None)


def read_labels_file(path: Path, format: str, label_set: LabelSet) -> tuple[dict, dict]:
    """Parse a labels file into ({id: label indices}, {id: reason it could not be parsed}).

    ``channels`` / ``kaggle-hpa``: CSV ``id,labels`` (``Id,Target``) with an optional header; labels are
    class names separated by ';' or class indices separated by spaces. ``npz``: lines
    ``key, Class name, Class name`` (the authors' format).
    """
    labels: dict[str, tuple[int, ...]] = {}
    problems: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProtlocError(f"cannot read labels file {path}: {exc}") from None

    if format == "npz":
        rows = [[part.strip() for part in line.split(",")] for line in text.splitlines() if line.strip()]
        cells = [(row[0], ";".join(part for part in row[1:] if part)) for row in rows]
    else:
        rows = [row for row in csv.reader(text.splitlines()) if row and any(c.strip() for c in row)]
        if rows and rows[0][0].strip().lower() in _HEADER_IDS:
            rows = rows[1:]
        cells = []
        for row in rows:
            rest = [c.strip() for c in row[1:] if c.strip()]
            # "id,Name,Name" (unquoted extra columns) reads as names; "id,0 5" as indices.
            cells.append((row[0].strip(), ";".join(rest) if len(rest) > 1 else (rest[0] if rest else "")))

    seen: Counter = Counter(sample_id for sample_id, _ in cells)
    for sample_id, cell in cells:
        if not sample_id:
            continue
        if seen[sample_id] > 1:
            problems[sample_id] = f"{seen[sample_id]} label rows in {path.name}"
            continue
        try:
            labels[sample_id] = label_set.parse(cell)
        except ProtlocError as exc:
            problems[sample_id] = f"labels: {exc}"
    return labels, problems


# ----------------------------------------------------------------------------------------------------
# Scanning


def _check_sample(root: Path, sources: dict[str, str]) -> tuple[int, int]:
    return check_sample({k: str(root / v) for k, v in sources.items()})


def _default_workers() -> int:
    # Decoders (libtiff codecs, zlib, libjpeg) release the GIL, so threads overlap decoding with file
    # reads even on few cores; more threads than cores only adds memory.
    return max(1, min(4, os.cpu_count() or 1))


@dataclass
class DatasetListing:
    """A data folder listed and matched with its labels, before any image is decoded."""

    root: Path
    format: str
    label_set: LabelSet
    sources: dict[str, dict[str, str]]  # id -> sources relative to root
    labels: dict[str, tuple[int, ...]] | None  # None when the data set has no labels file
    labels_path: Path | None
    problems: dict[str, str]  # id -> reason it cannot be used, found without decoding
    orphan_label_ids: list[str]  # label rows for ids without image files


def list_dataset(root, format: str | None = None, labels=None, label_set=None) -> DatasetListing:
    """List a data folder and match it with its labels without decoding any image (see scan_dataset)."""
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

    listing = {"channels": _list_channels, "npz": _list_npz, "kaggle-hpa": _list_kaggle}[format](root_path)

    labels_path = Path(labels).expanduser() if labels is not None else find_labels_file(root_path, format)
    if labels is not None and not labels_path.is_file():
        raise ProtlocError(f"no such labels file: {labels}")
    label_map: dict[str, tuple[int, ...]] | None = None
    label_problems: dict[str, str] = {}
    if labels_path is not None:
        label_map, label_problems = read_labels_file(labels_path, format, labelset)

    if not listing.sources:
        what = {
            "channels": "channel files named <id>_<blue|red|yellow|green>.<tif|png|jpg> or sample folders",
            "npz": "<key>.npz files",
            "kaggle-hpa": "<Id>_<colour>.png|tif files",
        }[format]
        raise ProtlocError(f"no samples in {root} (format {format}: expected {what})")

    problems: dict[str, str] = {}
    for sample_id in sorted(listing.sources):
        sources = listing.sources[sample_id]
        if sample_id in listing.problems:
            problems[sample_id] = listing.problems[sample_id]
        elif format != "npz" and len(sources) < len(CHANNELS):
            missing = [c for c in CHANNELS if c not in sources]
            problems[sample_id] = "missing channel " + ", ".join(f"{COLOUR_OF_CHANNEL[c]} ({c})" for c in missing)
        elif sample_id in label_problems:
            problems[sample_id] = label_problems[sample_id]
        elif label_map is not None and sample_id not in label_map:
            problems[sample_id] = f"unlabeled: no row for this id in {labels_path.name}"
    orphans = []
    if label_map is not None:
        orphans = sorted((set(label_map) | set(label_problems)) - set(listing.sources))
    return DatasetListing(root_path, format, labelset, listing.sources, label_map, labels_path, problems, orphans)


def scan_dataset(
    root,
    format: str | None = None,
    labels=None,
    label_set=None,
    progress: bool = False,
    workers: int | None = None,
) -> DatasetIndex:
    """List, decode and index a data folder; never stops at the first bad sample.

    ``format`` None detects it (``detect_format``). ``labels`` is a labels file, or None to use the
    folder's own (labels.csv for channels, train.csv for kaggle-hpa, labels.txt / the only *.txt for
    npz) when there is one. ``label_set`` is a LabelSet, a built-in name or a JSON file; None means
    ``kaggle28`` for kaggle-hpa and ``hpa13`` otherwise. ProtlocError for a wrong path or a folder
    without any sample.
    """
    plan = list_dataset(root, format=format, labels=labels, label_set=label_set)
    root_path, format, labelset, label_map = plan.root, plan.format, plan.label_set, plan.labels
    excluded = dict(plan.problems)
    to_read = [sample_id for sample_id in sorted(plan.sources) if sample_id not in excluded]

    shapes: dict[str, tuple[int, int]] = {}
    from tqdm import tqdm

    with ThreadPoolExecutor(max_workers=workers or _default_workers()) as pool:
        futures = {sample_id: pool.submit(_check_sample, root_path, plan.sources[sample_id]) for sample_id in to_read}
        bar = tqdm(total=len(futures), desc="scanning", unit="sample", disable=not progress, file=sys.stderr,
                   dynamic_ncols=True)
        with bar:
            for sample_id, future in futures.items():
                try:
                    shapes[sample_id] = future.result()
                except DataError as exc:
                    excluded[sample_id] = str(exc)
                except (MemoryError, RecursionError) as exc:  # absurd files must not end the scan
                    excluded[sample_id] = f"unreadable: {type(exc).__name__}"
                bar.update(1)

    samples = []
    for sample_id in to_read:
        if sample_id in shapes:
            height, width = shapes[sample_id]
            sample_labels = label_map[sample_id] if label_map is not None else None
            samples.append(SampleEntry(sample_id, dict(plan.sources[sample_id]), sample_labels, height, width))

    excluded_list = [{"id": sample_id, "reason": excluded[sample_id]} for sample_id in sorted(excluded)]
    excluded_list += [{"id": sample_id, "reason": f"label row in {plan.labels_path.name} but no image files"}
                      for sample_id in plan.orphan_label_ids]
    return DatasetIndex(root=str(root_path), format=format, label_set=labelset, samples=samples,
                        excluded=excluded_list)


def open_dataset(path, format=None, labels=None, label_set=None, refresh: bool = False) -> DatasetIndex:
    """A data set's index: ``path`` is an index.json, or a data folder whose saved index is used (the
    folder is scanned and the index saved when there is none, when ``refresh`` is set, or when the saved
    one was made with another format or label set than asked for)."""
    path = Path(path).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".json":
            raise ProtlocError(f"{path}: give a data folder or an index.json")
        return DatasetIndex.load(path)
    if not path.is_dir():
        raise ProtlocError(f"no such folder: {path}")
    saved = default_index_path(path)
    if saved.is_file() and not refresh and labels is None:
        index = DatasetIndex.load(saved)
        wanted_set = None if label_set is None else load_label_set(label_set)
        if (format is None or format == index.format) and (wanted_set is None or wanted_set.classes ==
                                                           index.label_set.classes):
            return index
    index = scan_dataset(path, format=format, labels=labels, label_set=label_set, progress=sys.stderr.isatty())
    if folder_is_writable(saved.parent):
        try:
            index.save(saved)
        except OSError:
            pass  # a read-only data folder is still usable, just not cached
    return index

